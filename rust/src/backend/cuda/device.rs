//! The CUDA backend's device side: weights and buffers in device memory, the KV pool, and a
//! step's life on the stream (its batch's upload, the device sampler, the wait, graphs), and
//! sleep: the weights and the KV pool live in arenas (`arena.rs`) whose memory a sleep frees
//! and a wake restores at the same addresses, so the recorded graphs stay valid.

use std::time::Instant;

use half::{bf16, f16};
use rayon::prelude::*;

use super::arena::Arena;
use super::device_mem::{self, DeviceMem};
use super::gemm::ElemType;
use super::graphs::{self, CudaStepGraph};
use super::jit::KernelDtype;
use super::share;
use super::{CudaBackend, CudaBuf, CudaKvCache, CudaMatrix, CudaVector, ELEM_BYTES};
use crate::backend::{Backend, ForwardBatch, KvLayout, SleepReport, StepTiming};
use crate::error::{Error, Result};
use crate::sampling::StepSampling;
use crate::weights::{Fp8Tensor, HostTensor, RawTensor};

impl Backend for CudaBackend {
    type Graph = CudaStepGraph;

    fn kv_layout(&self) -> KvLayout {
        self.layout
    }

    fn matrix(&self, t: HostTensor) -> Result<CudaMatrix> {
        let [rows, cols] = t.shape[..] else {
            return Err(Error::Engine(format!(
                "expected a 2-D weight, got shape {:?}",
                t.shape
            )));
        };
        Ok(CudaMatrix {
            mem: self.upload_weights(&t)?,
            rows,
            cols,
            fp8: None,
        })
    }

    fn matrix_raw(&self, parts: &[RawTensor<'_>]) -> Option<Result<CudaMatrix>> {
        let want = match self.dtype {
            KernelDtype::Bf16 => "BF16",
            KernelDtype::F16 => "F16",
        };
        let cols = parts.first()?.shape.get(1).copied()?;
        if parts
            .iter()
            .any(|p| p.dtype != want || p.shape.len() != 2 || p.shape[1] != cols)
        {
            return None;
        }
        let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
        Some((|| {
            let mem = self.weight_mem(rows * cols * ELEM_BYTES)?;
            let mut offset = 0u64;
            for p in parts {
                self.upload_at(mem.ptr + offset, p.bytes)?;
                offset += p.bytes.len() as u64;
            }
            Ok(CudaMatrix {
                mem,
                rows,
                cols,
                fp8: None,
            })
        })())
    }

    fn matrix_fp8(&self, parts: &[Fp8Tensor<'_>]) -> Option<Result<CudaMatrix>> {
        self.fp8_matrix(parts)
    }

    fn projection(&self, m: CudaMatrix) -> Result<CudaMatrix> {
        self.quantize_matrix(m)
    }

    fn vector(&self, t: HostTensor) -> Result<CudaVector> {
        Ok(CudaVector {
            mem: self.upload_weights(&t)?,
            len: t.data.len(),
        })
    }

    fn buffer(&self, len: usize) -> Result<CudaBuf> {
        Ok(CudaBuf {
            mem: DeviceMem::zeroed(&self.stream, len * ELEM_BYTES)?,
            len,
            dtype: self.elem_type(),
        })
    }

    fn logits_buffer(&self, len: usize) -> Result<CudaBuf> {
        Ok(CudaBuf {
            mem: DeviceMem::zeroed(&self.stream, len * 4)?,
            len,
            dtype: ElemType::F32,
        })
    }

    fn kv_cache_budget_bytes(&self) -> Option<usize> {
        let (free, total) = self.ctx.mem_get_info().ok()?;
        // gpu_memory_utilization is this engine's share of the card (as in vLLM), so other
        // processes' memory does not count against it; what is free bounds it all the same.
        // 256 MiB stay for what comes later (cuBLASLt, CUDA graphs).
        let own = self.free_at_start.saturating_sub(free);
        let allowed = (total as f64 * self.opts.gpu_memory_utilization) as usize;
        let reserve = 256 << 20;
        Some(
            allowed
                .saturating_sub(own + reserve)
                .min(free.saturating_sub(reserve)),
        )
    }

    fn kv_cache(&self, num_blocks: usize) -> Result<CudaKvCache> {
        let plane_bytes = self
            .layout
            .plane_len(num_blocks)?
            .checked_mul(self.layout.dtype.bytes())
            .ok_or_else(|| Error::InvalidConfig("KV cache size overflows".into()))?;
        let bytes = plane_bytes
            .checked_mul(2 * self.layout.num_layers)
            .ok_or_else(|| Error::InvalidConfig("KV cache size overflows".into()))?;
        let fp8 = self.layout.dtype == crate::backend::KvDtype::Fp8E4m3;
        let from_checkpoint = self.kv_scales.borrow();
        let scales = (0..self.layout.num_layers)
            .map(|l| match from_checkpoint.get(l) {
                Some(&s) if fp8 => s,
                _ => [1.0, 1.0],
            })
            .collect();
        // Its own arena, one chunk: a sleep drops it whole and a wake maps it back empty.
        let arena = Arena::new(&self.ctx, "KV pool", bytes, bytes, false)?;
        let mem = DeviceMem::in_arena(&arena, &self.stream, bytes)?;
        *self.kv_arena.borrow_mut() = Some(arena);
        Ok(CudaKvCache {
            mem,
            plane_bytes,
            scales,
        })
    }

    fn set_kv_cache_scales(&self, layer: usize, scales: [f32; 2]) {
        let mut all = self.kv_scales.borrow_mut();
        if all.len() <= layer {
            all.resize(layer + 1, [1.0, 1.0]);
        }
        all[layer] = scales;
    }

    fn finish_loading(&self) -> Result<()> {
        // The staging buffers go once the copies out of them are done.
        self.stream.synchronize().map_err(device_mem::cuda_err)?;
        self.uploader.borrow_mut().take();
        self.kernels().map(|_| ())
    }

    fn reserve_steps(&mut self, rows: usize, seqs: usize, max_blocks_per_seq: usize) -> Result<()> {
        self.reserve_fp8(rows)?;
        let moved = self
            .meta
            .reserve(&self.stream, rows, seqs, max_blocks_per_seq)?;
        if moved && self.graphs_recorded {
            return Err(Error::Engine(
                "steps were reserved again after decode graphs were recorded".into(),
            ));
        }
        Ok(())
    }

    fn begin_step(&mut self, batch: &ForwardBatch) {
        let min_keys = self.plan.step_min_split_keys(batch);
        let r = self.clock.begin(&self.stream).and_then(|()| {
            let moved = self.meta.upload(&self.stream, batch, min_keys)?;
            if moved && self.graphs_recorded {
                // Recorded graphs read the old addresses: the reservation was too small.
                return Err(Error::Engine(format!(
                    "a step of {} rows and {} sequences outgrew the step buffers reserved \
                     for the decode graphs",
                    batch.num_tokens(),
                    batch.seqs.len()
                )));
            }
            Ok(())
        });
        self.record(r);
    }

    fn start_sampling(&mut self, logits: &CudaBuf, sampling: &StepSampling, width: usize) {
        if self.error.get_mut().is_some() {
            return; // the step failed: the wait reports it
        }
        let rows = sampling.rows.len();
        debug_assert!(logits.dtype == ElemType::F32 && rows * width <= logits.len);
        let r = self.kernels.get(&self.ctx).and_then(|k| {
            let (ctx, stream) = (&self.ctx, &self.stream);
            self.sampler
                .start(ctx, stream, k, logits.mem.ptr, sampling, width)
        });
        self.record(r);
    }

    fn sampled_tokens(
        &mut self,
        _logits: &CudaBuf,
        sampling: &StepSampling,
        _width: usize,
    ) -> Result<Vec<u32>> {
        self.wait()?;
        self.sampler.tokens(sampling.rows.len())
    }

    fn to_host(&mut self, x: &CudaBuf, len: usize) -> Result<Vec<f32>> {
        self.wait()?;
        x.mem.read_f32(&self.stream, x.dtype, len)
    }

    fn launches_ahead(&self) -> bool {
        true
    }

    fn time_steps(&mut self) {
        self.clock.time_steps(&self.ctx);
    }

    fn step_timing(&self) -> Option<StepTiming> {
        self.clock.timing()
    }

    fn records_graphs(&self) -> bool {
        true
    }

    fn graph_table_widths(&self, rows: usize, max_blocks_per_seq: usize) -> Vec<usize> {
        self.plan.graph_table_widths(rows, max_blocks_per_seq)
    }

    fn graph_variant(&self) -> usize {
        self.plan.splits(self.meta.rows, self.meta.max_blocks)
    }

    fn begin_capture(&mut self) -> Result<()> {
        if let Some(e) = self.error.get_mut().take() {
            return Err(e);
        }
        graphs::begin_capture(&self.stream)
    }

    fn end_capture(&mut self) -> Result<CudaStepGraph> {
        let failed = self.error.get_mut().take();
        let graph = graphs::end_capture(&self.stream, failed)?;
        self.graphs_recorded = true;
        Ok(graph)
    }

    fn replay(&mut self, graph: &CudaStepGraph) {
        if self.error.get_mut().is_none() {
            let r = graph.launch();
            self.record(r);
        }
    }

    fn can_sleep(&self) -> bool {
        true
    }

    fn device_failure(&mut self) -> Option<String> {
        // A sticky error fails every call on the context from then on; a step that failed for
        // a passing reason (an allocation) leaves it usable.
        self.ctx
            .synchronize()
            .err()
            .map(|e| format!("the GPU context is unusable: {e:?}"))
    }

    fn sleep(&mut self) -> Result<SleepReport> {
        if let Some(e) = self.error.get_mut().take() {
            return Err(e);
        }
        let started = Instant::now();
        let w = self.weights.sleep(&self.stream)?;
        let kv = match self.kv_arena.get_mut() {
            Some(a) => a.sleep(&self.stream)?,
            None => Default::default(),
        };
        // The card's memory is free for others until the wake claims it again.
        self.share = None;
        Ok(SleepReport {
            seconds: started.elapsed().as_secs_f64(),
            device_bytes: w.device_bytes + kv.device_bytes,
            copied_bytes: w.copied_bytes,
            copy_seconds: w.copy_seconds,
        })
    }

    fn wake(&mut self) -> Result<SleepReport> {
        let started = Instant::now();
        if self.share.is_none() && self.opts.claim_share {
            let claim = share::Claim::new(self.opts.device, self.opts.gpu_memory_utilization)?;
            self.share = Some(claim);
        }
        let w = self.weights.wake(&self.stream)?;
        let kv = match self.kv_arena.get_mut() {
            Some(a) => a.wake(&self.stream)?,
            None => Default::default(),
        };
        Ok(SleepReport {
            seconds: started.elapsed().as_secs_f64(),
            device_bytes: w.device_bytes + kv.device_bytes,
            copied_bytes: w.copied_bytes,
            copy_seconds: w.copy_seconds,
        })
    }
}

/// Where weights go: the weights' arena, which a sleep empties and a wake refills.
impl CudaBackend {
    /// Converts a weight to the activation dtype (in parallel) and copies it to the device.
    pub(super) fn upload_weights(&self, t: &HostTensor) -> Result<DeviceMem> {
        match self.dtype {
            KernelDtype::F16 => {
                let v: Vec<f16> = t.data.par_iter().map(|&x| f16::from_f32(x)).collect();
                self.weight_from_host(bytemuck::cast_slice(&v))
            }
            KernelDtype::Bf16 => {
                let v: Vec<bf16> = t.data.par_iter().map(|&x| bf16::from_f32(x)).collect();
                self.weight_from_host(bytemuck::cast_slice(&v))
            }
        }
    }

    /// `bytes` zeroed bytes for a weight, in the weights' arena.
    pub(super) fn weight_mem(&self, bytes: usize) -> Result<DeviceMem> {
        DeviceMem::in_arena(&self.weights, &self.stream, bytes)
    }

    /// A copy of `bytes` for a weight, in the weights' arena.
    pub(super) fn weight_from_host(&self, bytes: &[u8]) -> Result<DeviceMem> {
        DeviceMem::from_host_in(&self.weights, &self.stream, bytes)
    }
}
