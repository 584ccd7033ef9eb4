//! The device sampler: picks the token of each logits row on the GPU (the argmax kernel when
//! every row is plain greedy, else the sample kernel with the rows' parameters) and copies the
//! token ids to page-locked host memory inside the step, so that only they leave the device.

use std::sync::Arc;

use cudarc::driver::{result, CudaContext, CudaStream, PinnedHostSlice};

use super::device_mem::{cuda_err, DeviceMem};
use super::kernels::Kernels;
use crate::error::Result;
use crate::sampling::StepSampling;

/// 32-bit words per row of the `sample` kernel's parameters (`SampleParam` in sampling.cu).
const SAMPLE_PARAM_WORDS: usize = 12;
/// Marks a penalty entry's token as seen in the prompt or output (`SEEN_BIT` in sampling.cu).
const SEEN_BIT: u32 = 1 << 31;

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

/// What one step's sampling needs on the device and the host.
pub struct DeviceSampler {
    /// Token ids of the logits rows.
    tokens_out: DeviceMem,
    /// Their page-locked host copy.
    tokens_host: PinnedHostSlice<i32>,
    /// The sample kernel's parameters of the current step, packed on the host (kept until the
    /// next step: the copy reads them asynchronously).
    params_host: Vec<u32>,
    /// Their device copy.
    params: DeviceMem,
}

impl DeviceSampler {
    pub fn new(ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>) -> Result<DeviceSampler> {
        Ok(DeviceSampler {
            tokens_out: DeviceMem::zeroed(stream, 4 << 10)?,
            // SAFETY: written only by the tokens' copies (`start`) before the host reads them.
            tokens_host: unsafe { pinned_tokens(ctx, 1024) }.map_err(cuda_err)?,
            params_host: Vec::new(),
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
        let out = &mut self.tokens_out;
        out.grow(stream, rows * 4)?;
        if sampling.is_plain_greedy() {
            k.argmax(stream, logits, rows, width, out.ptr)?;
        } else {
            let entries = pack_sampling(sampling, &mut self.params_host);
            let host = &self.params_host;
            self.params.grow(stream, host.len() * 4)?;
            // SAFETY: the device buffer holds the host vector; the host vector stays untouched
            // until the next step's sampling, after the engine has waited for this one.
            unsafe { result::memcpy_htod_async(self.params.ptr, &host[..], stream.cu_stream()) }
                .map_err(cuda_err)?;
            let entries_ptr = self.params.ptr + 4 * entries as u64;
            k.sample(
                stream,
                logits,
                rows,
                width,
                self.params.ptr,
                entries_ptr,
                out.ptr,
            )?;
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

    /// The tokens of the last step's `rows` logits rows; read after the wait for the step.
    pub fn tokens(&self, rows: usize) -> Result<Vec<u32>> {
        let ids = &self.tokens_host.as_slice().map_err(cuda_err)?[..rows];
        Ok(ids.iter().map(|&t| t as u32).collect())
    }
}

/// Packs a step's sampling as the `sample` kernel reads it: [`SAMPLE_PARAM_WORDS`] words per
/// row (floats as their bits, in the order of sampling.cu's `SampleParam`), then two words
/// (token, output count | [`SEEN_BIT`]) per penalty entry. Returns the offset, in words, of
/// the entries.
fn pack_sampling(s: &StepSampling, out: &mut Vec<u32>) -> usize {
    out.clear();
    for r in &s.rows {
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
            0,
        ];
        out.extend(words);
    }
    let entries = out.len();
    for t in &s.penalty_tokens {
        let seen = if t.seen { SEEN_BIT } else { 0 };
        out.extend([t.token, t.output_count.min(SEEN_BIT - 1) | seen]);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_layout_matches_sampling_cu() {
        let src = include_str!("../../../../kernels/cuda/sampling.cu");
        assert!(src.contains(&format!("SAMPLE_PARAM_WORDS = {SAMPLE_PARAM_WORDS},")));
        assert!(src.contains(&format!("SEEN_BIT = {SEEN_BIT:#x}u;")));
        let step = StepSampling {
            rows: vec![crate::sampling::RowSampling {
                key: 0x1234_5678_9abc_def0,
                penalties: (0, 1),
                ..crate::sampling::RowSampling::GREEDY
            }],
            penalty_tokens: vec![crate::sampling::PenaltyToken {
                token: 7,
                output_count: 3,
                seen: true,
            }],
        };
        let mut out = Vec::new();
        assert_eq!(pack_sampling(&step, &mut out), SAMPLE_PARAM_WORDS);
        assert_eq!(out[9..11], [0x9abc_def0, 0x1234_5678]);
        assert_eq!(out[SAMPLE_PARAM_WORDS..], [7, 3 | SEEN_BIT]);
    }
}
