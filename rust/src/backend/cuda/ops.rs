//! The operations of the forward pass on the GPU: each enqueues a kernel or a cuBLASLt GEMM on
//! the backend's stream and returns at once; failures are kept for the next wait.
//! While a captured decode graph replays a step, the operations enqueue nothing.

use super::device_mem::{self, DeviceMem};
use super::gemm::{ElemType, GemmShape};
use super::jit::KernelDtype;
use super::kernels::{GemvInput, GemvOutput};
use super::{graphs, CudaBackend, CudaBuf, CudaKvCache, CudaMatrix, CudaVector, ELEM_BYTES};
use crate::backend::{AttentionShape, Backend, ForwardBatch, Residual, StepTiming};
use crate::error::{Error, Result};
use crate::sampling::StepSampling;
use crate::weights::{HostTensor, RawTensor};

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type KvCache = CudaKvCache;

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
        })
    }

    fn matrix_raw(&self, parts: &[RawTensor<'_>]) -> Option<Result<CudaMatrix>> {
        let want = match self.opts.dtype {
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
            let mem = DeviceMem::zeroed(&self.stream, rows * cols * ELEM_BYTES)?;
            let mut slot = self.uploader.borrow_mut();
            let uploader = match slot.as_mut() {
                Some(u) => u,
                None => slot.insert(device_mem::Uploader::new(&self.stream)?),
            };
            let mut offset = 0u64;
            for p in parts {
                uploader.upload(&self.stream, mem.ptr + offset, p.bytes)?;
                offset += p.bytes.len() as u64;
            }
            Ok(CudaMatrix { mem, rows, cols })
        })())
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

    fn kv_element_bytes(&self) -> usize {
        ELEM_BYTES
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

    fn kv_cache(
        &self,
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        shape: AttentionShape,
    ) -> Result<CudaKvCache> {
        if block_size != self.opts.block_size || shape != self.shape {
            return Err(Error::Engine(format!(
                "KV cache shape {shape:?} / block {block_size} differs from the kernels' \
                 {:?} / {}",
                self.shape, self.opts.block_size
            )));
        }
        let plane_bytes = num_blocks
            .checked_mul(block_size * shape.kv_size() * ELEM_BYTES)
            .ok_or_else(|| Error::InvalidConfig("KV cache size overflows".into()))?;
        Ok(CudaKvCache {
            mem: DeviceMem::zeroed(&self.stream, 2 * num_layers * plane_bytes)?,
            plane_bytes,
        })
    }

    fn finish_loading(&self) -> Result<()> {
        // The staging buffers go once the copies out of them are done.
        self.stream.synchronize().map_err(device_mem::cuda_err)?;
        self.uploader.borrow_mut().take();
        self.kernels().map(|_| ())
    }

    fn decode_graph_rows(&self, rows: usize) -> Option<usize> {
        graphs::bucket_rows(rows)
    }

    fn decode_graph_shapes(&self, max_blocks_per_seq: usize) -> Vec<(usize, usize)> {
        // Per bucket, the narrowest power-of-two width (the step description rounds widths up
        // to one) of each split count decode attention can take.
        let mut shapes = Vec::new();
        for rows in graphs::BUCKETS {
            let mut last = None;
            let mut width = 1;
            loop {
                let splits = self.decode_splits(rows, width);
                if last != Some(splits) {
                    shapes.push((rows, width));
                    last = Some(splits);
                }
                if width >= max_blocks_per_seq {
                    break;
                }
                width *= 2;
            }
        }
        shapes
    }

    fn reserve_steps(&mut self, rows: usize, seqs: usize, max_blocks_per_seq: usize) -> Result<()> {
        if self
            .meta
            .reserve(&self.stream, rows, seqs, max_blocks_per_seq)?
        {
            self.graphs.clear(); // graphs captured before read the old addresses
        }
        Ok(())
    }

    fn prepare_step(&mut self, batch: &ForwardBatch) {
        self.step_started.set(Some(std::time::Instant::now()));
        // Recorded before `begin_step`, which may start a graph capture (an event recorded
        // during a capture would belong to the graph).
        if let Some(t) = &self.timer {
            self.record(t.begin(&self.stream));
        }
        let min_keys = self.step_min_split_keys(batch);
        let r = self
            .meta
            .upload(&self.stream, batch, min_keys)
            .and_then(|moved| {
                if moved {
                    self.graphs.clear();
                }
                // A decode-only step of a bucket's size repeats its launches exactly.
                let decode = batch.seqs.len() == batch.num_tokens()
                    && batch.logits_rows.len() == batch.num_tokens()
                    && self.meta.max_query_len == 1;
                let rows = batch.num_tokens();
                let key = (decode && graphs::bucket_rows(rows) == Some(rows))
                    .then(|| (rows, self.decode_splits(rows, self.meta.max_blocks)));
                self.graphs.begin_step(&self.stream, key)
            });
        self.record(r);
    }

    fn embedding(&self, table: &CudaMatrix, _ids: &[u32], out: &mut CudaBuf) {
        self.enqueue(|k| {
            k.embedding(
                &self.stream,
                table.mem.ptr,
                self.meta.token_ids(),
                out.mem.ptr,
                self.meta.rows,
                table.cols,
            )
        });
    }

    fn rms_norm(&self, x: &CudaBuf, w: &CudaVector, eps: f32, rows: usize, out: &mut CudaBuf) {
        self.enqueue(|k| {
            k.rms_norm(
                &self.stream,
                x.mem.ptr,
                w.mem.ptr,
                out.mem.ptr,
                rows,
                w.len,
                eps,
            )
        });
    }

    fn add_rms_norm(
        &self,
        residual: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaVector,
        eps: f32,
        rows: usize,
        out: &mut CudaBuf,
    ) {
        self.enqueue(|k| {
            k.add_rms_norm(
                &self.stream,
                residual.mem.ptr,
                x.mem.ptr,
                w.mem.ptr,
                out.mem.ptr,
                rows,
                w.len,
                eps,
            )
        });
    }

    fn linear(
        &self,
        x: &CudaBuf,
        rows: usize,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        out: &mut CudaBuf,
    ) {
        debug_assert!(rows * w.cols <= x.len && rows * w.rows <= out.len);
        if self.use_gemv(rows, w) {
            let output = Self::gemv_output(out);
            return self.gemv(GemvInput::Plain, output, rows, w, x, None, bias, out, 0.0);
        }
        let shape = GemmShape {
            rows,
            n: w.rows,
            k: w.cols,
            input: self.elem_type(),
            output: out.dtype,
            bias: bias.is_some(),
        };
        self.enqueue(|_| {
            self.gemm.run(
                shape,
                x.mem.ptr,
                w.mem.ptr,
                bias.map(|b| b.mem.ptr),
                out.mem.ptr,
                &self.stream,
            )
        });
    }

    fn norm_linear(
        &self,
        residual: &mut CudaBuf,
        add: Option<&CudaBuf>,
        norm_w: &CudaVector,
        eps: f32,
        rows: usize,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        normed: &mut CudaBuf,
        out: &mut CudaBuf,
    ) {
        if add.is_some() || !self.use_gemv(rows, w) {
            match add {
                Some(x) => self.add_rms_norm(residual, x, norm_w, eps, rows, normed),
                None => self.rms_norm(residual, norm_w, eps, rows, normed),
            }
            return self.linear(normed, rows, w, bias, out);
        }
        let output = Self::gemv_output(out);
        let norm = Some(norm_w);
        self.gemv(
            GemvInput::Norm,
            output,
            rows,
            w,
            residual,
            norm,
            bias,
            out,
            eps,
        );
    }

    fn linear_residual(
        &self,
        x: &CudaBuf,
        rows: usize,
        w: &CudaMatrix,
        residual: &mut CudaBuf,
        out: &mut CudaBuf,
    ) -> Residual {
        if !self.use_gemv(rows, w) {
            self.linear(x, rows, w, None, out);
            return Residual::Pending;
        }
        self.gemv(
            GemvInput::Plain,
            GemvOutput::Add,
            rows,
            w,
            x,
            None,
            None,
            residual,
            0.0,
        );
        Residual::Added
    }

    fn norm_linear_silu_mul(
        &self,
        residual: &mut CudaBuf,
        add: Option<&CudaBuf>,
        norm_w: &CudaVector,
        eps: f32,
        rows: usize,
        n: usize,
        w: &CudaMatrix,
        normed: &mut CudaBuf,
        gate_up: &mut CudaBuf,
        act: &mut CudaBuf,
    ) {
        if add.is_some() || !self.use_gemv(rows, w) || w.rows % 4 != 0 {
            self.norm_linear(residual, add, norm_w, eps, rows, w, None, normed, gate_up);
            return self.silu_mul(gate_up, rows, n, act);
        }
        debug_assert_eq!(2 * n, w.rows);
        let (input, output, norm) = (GemvInput::Norm, GemvOutput::Silu, Some(norm_w));
        self.gemv(input, output, rows, w, residual, norm, None, act, eps);
    }

    fn qk_norm(
        &self,
        qkv: &mut CudaBuf,
        rows: usize,
        shape: AttentionShape,
        q_w: &CudaVector,
        k_w: &CudaVector,
        eps: f32,
    ) {
        self.enqueue(|k| {
            k.qk_norm(
                &self.stream,
                qkv.mem.ptr,
                q_w.mem.ptr,
                k_w.mem.ptr,
                rows,
                shape,
                eps,
            )
        });
    }

    fn rope_and_cache_write(
        &self,
        qkv: &mut CudaBuf,
        _batch: &ForwardBatch,
        inv_freq: &[f32],
        shape: AttentionShape,
        cache: &mut CudaKvCache,
        layer: usize,
    ) {
        self.enqueue(|k| {
            k.rope_cache_write(
                &self.stream,
                qkv.mem.ptr,
                &self.meta,
                self.inv_freq_ptr(inv_freq)?,
                cache.k_ptr(layer),
                cache.v_ptr(layer),
                shape,
            )
        });
    }

    fn attention(
        &self,
        qkv: &CudaBuf,
        _batch: &ForwardBatch,
        shape: AttentionShape,
        cache: &CudaKvCache,
        layer: usize,
        out: &mut CudaBuf,
    ) {
        self.enqueue(|k| {
            k.attention(
                &self.stream,
                qkv.mem.ptr,
                cache.k_ptr(layer),
                cache.v_ptr(layer),
                out.mem.ptr,
                &self.meta,
                shape,
                &self.split_buffers(self.meta.max_blocks),
            )
        });
    }

    fn silu_mul(&self, x: &CudaBuf, rows: usize, n: usize, out: &mut CudaBuf) {
        self.enqueue(|k| k.silu_mul(&self.stream, x.mem.ptr, out.mem.ptr, rows, n));
    }

    fn gather_rows(&self, x: &CudaBuf, rows: &[u32], width: usize, out: &mut CudaBuf) {
        debug_assert_eq!(rows.len(), self.meta.num_logits);
        self.enqueue(|k| {
            k.gather_rows(
                &self.stream,
                x.mem.ptr,
                self.meta.logits_rows(),
                out.mem.ptr,
                rows.len(),
                width,
            )
        });
    }

    fn to_host(&self, x: &CudaBuf, len: usize) -> Result<Vec<f32>> {
        self.finish_graph()?;
        self.wait()?;
        x.mem.read_f32(&self.stream, x.dtype, len)
    }

    fn sample_rows(
        &self,
        logits: &CudaBuf,
        sampling: &StepSampling,
        width: usize,
    ) -> Result<Vec<u32>> {
        let rows = sampling.rows.len();
        self.finish_graph()?;
        if self.sampling_started.take() != Some(rows) {
            self.start_sampling(logits, sampling, width)?;
        }
        self.wait()?;
        self.sampled_tokens(rows)
    }

    fn launches_ahead(&self) -> bool {
        true
    }

    fn time_steps(&mut self) {
        // A diagnostic: without its events the engine runs on untimed.
        if self.timer.is_none() {
            self.timer = super::StepTimer::new(&self.ctx).ok();
        }
    }

    fn step_timing(&self) -> Option<StepTiming> {
        self.timer.as_ref().and_then(|t| t.last.get())
    }

    fn submit_step(&self, logits: &CudaBuf, sampling: Option<(&StepSampling, usize)>) {
        let r = self.finish_graph().and_then(|()| match sampling {
            Some((s, width)) => {
                self.start_sampling(logits, s, width)?;
                self.sampling_started.set(Some(s.rows.len()));
                Ok(())
            }
            None => Ok(()),
        });
        self.record(r);
    }
}
