//! The device sampler: picks the token of each logits row on the GPU (the argmax kernel when
//! every row is plain greedy, else the sample kernel with the rows' parameters, penalty
//! entries and grammar masks, uploaded from page-locked memory in one copy) and copies the
//! token ids to page-locked host memory inside the step, so that only they leave the device.

use std::sync::Arc;

use cudarc::driver::{result, CudaContext, CudaStream, PinnedHostSlice};

use super::device_mem::{cuda_err, DeviceMem};
use super::kernels::Kernels;
use crate::error::{Error, Result};
use crate::sampling::StepSampling;

/// 32-bit words per row of the `sample` kernel's parameters (`SampleParam` in sampling.cu).
const SAMPLE_PARAM_WORDS: usize = 12;
/// Marks a penalty entry's token as seen in the prompt or output (`SEEN_BIT` in sampling.cu).
const SEEN_BIT: u32 = 1 << 31;
/// A row's mask offset when it has no mask (`NO_MASK` in sampling.cu).
const NO_MASK: u32 = u32::MAX;

/// Page-locked host memory for `len` token ids, cached (not write-combined: the host reads
/// it).
///
/// # Safety
/// The memory is uninitialized.
unsafe fn pinned_tokens(
    ctx: &Arc<CudaContext>,
    len: usize,
) -> std::result::Result<PinnedHostSlice<i32>, cudarc::driver::DriverError> {
    ctx.alloc_pinned_with_flags::<i32>(len, 0)
}

/// Page-locked host memory for `len` words of the sample kernel's input, write-combined: the
/// host only writes it, and the device reads it over the bus faster so.
///
/// # Safety
/// The memory is uninitialized.
unsafe fn pinned_upload(
    ctx: &Arc<CudaContext>,
    len: usize,
) -> std::result::Result<PinnedHostSlice<u32>, cudarc::driver::DriverError> {
    ctx.alloc_pinned_with_flags::<u32>(len, cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED)
}

/// Where the parts of the sample kernel's input lie, in words from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// The penalty entries (after the rows' parameters).
    entries: usize,
    /// The masks (after the entries).
    masks: usize,
    /// The whole input.
    total: usize,
}

/// What one step's sampling needs on the device and the host.
pub struct DeviceSampler {
    /// Token ids of the logits rows.
    tokens_out: DeviceMem,
    /// Their page-locked host copy.
    tokens_host: PinnedHostSlice<i32>,
    /// The sample kernel's parameters and penalty entries of the current step, packed on the
    /// host.
    params_host: Vec<u32>,
    /// The page-locked copy of the kernel's whole input (parameters, entries, masks), which
    /// the upload reads asynchronously: rewritten only by the next step's sampling, once the
    /// engine has waited for this one.
    upload: PinnedHostSlice<u32>,
    /// The input's device copy.
    params: DeviceMem,
}

impl DeviceSampler {
    pub fn new(ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>) -> Result<DeviceSampler> {
        Ok(DeviceSampler {
            tokens_out: DeviceMem::zeroed(stream, 4 << 10)?,
            // SAFETY: written only by the tokens' copies (`start`) before the host reads them.
            tokens_host: unsafe { pinned_tokens(ctx, 1024) }.map_err(cuda_err)?,
            params_host: Vec::new(),
            // SAFETY: written by `upload` before each copy reads it.
            upload: unsafe { pinned_upload(ctx, 4 << 10) }.map_err(cuda_err)?,
            params: DeviceMem::zeroed(stream, 16 << 10)?,
        })
    }

    /// Enqueues the choice of the token of each of `sampling.rows` rows of `width` f32 logits
    /// at `logits`, and the copy of the tokens to the host.
    pub fn start(
        &mut self,
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        k: &Kernels,
        logits: u64,
        sampling: &StepSampling,
        width: usize,
    ) -> Result<()> {
        let rows = sampling.rows.len();
        if rows == 0 {
            return Ok(()); // a step with no logits rows (a prompt chunk short of its end)
        }
        self.tokens_out.grow(stream, rows * 4)?;
        let out = self.tokens_out.ptr;
        if sampling.is_plain_greedy() {
            k.argmax(stream, logits, rows, width, out)?;
        } else {
            let at = self.upload(ctx, stream, sampling, width)?;
            let word = |offset: usize| self.params.ptr + 4 * offset as u64;
            let (entries, masks) = (word(at.entries), word(at.masks));
            k.sample(stream, logits, rows, width, word(0), entries, masks, out)?;
        }
        // The tokens' copy to the host is part of the step: once the wait sees the step's end,
        // they are there (a copy and a stream synchronize after it would add a round trip and,
        // with blocking synchronization, the thread's wake-up to every step).
        if self.tokens_host.len() < rows {
            // A step that failed was not waited for: its copy may still be in flight into the
            // old buffer, which must outlive it (growing is rare: a step of more logits rows
            // than any before).
            stream.synchronize().map_err(cuda_err)?;
            // SAFETY: page-locked memory that only the copies below write and that the host
            // reads after the stream has passed them (`tokens`).
            self.tokens_host =
                unsafe { pinned_tokens(ctx, rows.next_power_of_two()) }.map_err(cuda_err)?;
        }
        let dst = &mut self.tokens_host.as_mut_slice().map_err(cuda_err)?[..rows];
        // SAFETY: `dst` is pinned and outlives the copy (the sampler keeps it and replaces it
        // only above, once the stream is idle); the host reads it after waiting for the step.
        unsafe { result::memcpy_dtoh_async(dst, self.tokens_out.ptr, stream.cu_stream()) }
            .map_err(cuda_err)
    }

    /// Packs the sample kernel's input into page-locked memory and enqueues its copy to the
    /// device; returns where its parts lie.
    fn upload(
        &mut self,
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        sampling: &StepSampling,
        width: usize,
    ) -> Result<Layout> {
        let at = pack_sampling(sampling, width, &mut self.params_host)?;
        if self.upload.len() < at.total {
            // The last copy may still read the old buffer if its step failed unwaited.
            stream.synchronize().map_err(cuda_err)?;
            // SAFETY: written below before the copy reads it.
            self.upload =
                unsafe { pinned_upload(ctx, at.total.next_power_of_two()) }.map_err(cuda_err)?;
        }
        let up = &mut self.upload.as_mut_slice().map_err(cuda_err)?[..at.total];
        up[..at.masks].copy_from_slice(&self.params_host);
        let masks = sampling.rows.iter().filter_map(|r| r.mask.as_deref());
        for (dst, mask) in up[at.masks..]
            .chunks_exact_mut(width.div_ceil(32))
            .zip(masks)
        {
            dst.copy_from_slice(mask);
        }
        self.params.grow(stream, at.total * 4)?;
        // SAFETY: the device buffer holds `at.total` words; the page-locked source stays
        // untouched until the next step's sampling, after the engine has waited for this one.
        unsafe { result::memcpy_htod_async(self.params.ptr, &up[..], stream.cu_stream()) }
            .map_err(cuda_err)?;
        Ok(at)
    }

    /// The tokens of the last step's `rows` logits rows; read after the wait for the step.
    pub fn tokens(&self, rows: usize) -> Result<Vec<u32>> {
        let ids = &self.tokens_host.as_slice().map_err(cuda_err)?[..rows];
        Ok(ids.iter().map(|&t| t as u32).collect())
    }
}

/// Packs a step's sampling as the `sample` kernel reads it: [`SAMPLE_PARAM_WORDS`] words per
/// row (floats as their bits, in the order of sampling.cu's `SampleParam`), then two words
/// (token, output count | [`SEEN_BIT`]) per penalty entry, into `out`; the masks of the rows
/// that have one (`width.div_ceil(32)` words each, in row order) follow in the layout
/// returned, each row's `P_MASK` word holding its offset there. A mask of another size is an
/// error: the kernel reads a whole row's worth.
fn pack_sampling(s: &StepSampling, width: usize, out: &mut Vec<u32>) -> Result<Layout> {
    out.clear();
    let mask_words = width.div_ceil(32);
    let mut masks = 0;
    for r in &s.rows {
        let mask = match &r.mask {
            Some(m) if m.len() != mask_words => {
                return Err(Error::Engine(format!(
                    "a token mask of {} words for rows of {width} logits",
                    m.len()
                )))
            }
            Some(_) => {
                masks += 1;
                ((masks - 1) * mask_words) as u32
            }
            None => NO_MASK,
        };
        let words: [u32; SAMPLE_PARAM_WORDS] = [
            r.temperature.to_bits(),
            r.top_p.to_bits(),
            r.min_p.to_bits(),
            r.top_k as u32,
            r.repetition_penalty.to_bits(),
            r.presence_penalty.to_bits(),
            r.frequency_penalty.to_bits(),
            r.penalties.0,
            r.penalties.1,
            r.key as u32,
            (r.key >> 32) as u32,
            mask,
        ];
        out.extend(words);
    }
    let entries = out.len();
    for t in &s.penalty_tokens {
        let seen = if t.seen { SEEN_BIT } else { 0 };
        out.extend([t.token, t.output_count.min(SEEN_BIT - 1) | seen]);
    }
    let masks_at = out.len();
    Ok(Layout {
        entries,
        masks: masks_at,
        total: masks_at + masks * mask_words,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{PenaltyToken, RowSampling};

    #[test]
    fn sampling_layout_matches_sampling_cu() {
        let src = include_str!("../../../../kernels/cuda/sampling.cu");
        assert!(src.contains(&format!("SAMPLE_PARAM_WORDS = {SAMPLE_PARAM_WORDS},")));
        assert!(src.contains(&format!("SEEN_BIT = {SEEN_BIT:#x}u;")));
        assert!(src.contains(&format!("NO_MASK = {NO_MASK:#x}u;")));
        assert!(src.contains("P_KEY_HI,\n    P_MASK,\n    SAMPLE_PARAM_WORDS"));
        let step = StepSampling {
            rows: vec![RowSampling {
                key: 0x1234_5678_9abc_def0,
                penalties: (0, 1),
                ..RowSampling::GREEDY
            }],
            penalty_tokens: vec![PenaltyToken {
                token: 7,
                output_count: 3,
                seen: true,
            }],
        };
        let mut out = Vec::new();
        let at = pack_sampling(&step, 100, &mut out).unwrap();
        let end = SAMPLE_PARAM_WORDS + 2;
        let want = Layout {
            entries: SAMPLE_PARAM_WORDS,
            masks: end,
            total: end,
        };
        assert_eq!(at, want);
        assert_eq!(out[9..12], [0x9abc_def0, 0x1234_5678, NO_MASK]);
        assert_eq!(out[SAMPLE_PARAM_WORDS..], [7, 3 | SEEN_BIT]);
    }

    #[test]
    fn masked_rows_name_their_masks_in_row_order() {
        let masked = |w: u32| RowSampling {
            mask: Some(vec![w; 4].into()),
            ..RowSampling::GREEDY
        };
        let step = StepSampling {
            rows: vec![masked(1), RowSampling::GREEDY, masked(2)],
            penalty_tokens: Vec::new(),
        };
        let mut out = Vec::new();
        // 100 logits: 4 words a mask.
        let at = pack_sampling(&step, 100, &mut out).unwrap();
        let params = 3 * SAMPLE_PARAM_WORDS;
        let want = Layout {
            entries: params,
            masks: params,
            total: params + 8,
        };
        assert_eq!(at, want);
        let mask_word = |r: usize| out[r * SAMPLE_PARAM_WORDS + SAMPLE_PARAM_WORDS - 1];
        assert_eq!([mask_word(0), mask_word(1), mask_word(2)], [0, NO_MASK, 4]);
        // A mask sized for another vocabulary is refused, not read past its end.
        let e = pack_sampling(&step, 129, &mut out).unwrap_err();
        assert!(e.to_string().contains("4 words for rows of 129"), "{e}");
    }
}
