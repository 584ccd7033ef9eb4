//! The Llama-family forward pass (Llama 2/3, Mistral, Qwen2 with QKV bias, Qwen3 with q/k
//! norm, tied embeddings): loaded through a [`Backend`], its forward pass written once
//! against the math-only [`Ops`].

use crate::backend::{AttentionShape, Backend, ForwardBatch, Ops, Residual};
use crate::config::{Architecture, ModelConfig};
use crate::error::Result;
use crate::weights::{HostTensor, WeightSource};

use super::{load_checked, load_matrix, load_projection, quantized_head};

/// Weights of one decoder layer. QKV and gate/up are fused at load time so each is one GEMM.
pub struct LayerWeights<B: Ops> {
    pub input_norm: B::Vector,
    /// Rows: q (heads × head_dim), then k, then v.
    pub qkv: B::Matrix,
    pub qkv_bias: Option<B::Vector>,
    pub q_norm: Option<B::Vector>,
    pub k_norm: Option<B::Vector>,
    pub o_proj: B::Matrix,
    pub post_attention_norm: B::Vector,
    /// Rows: gate (intermediate), then up (intermediate).
    pub gate_up: B::Matrix,
    pub down: B::Matrix,
}

/// A Llama-family model on backend `B`.
pub struct LlamaModel<B: Ops> {
    pub config: ModelConfig,
    pub embed_tokens: B::Matrix,
    pub layers: Vec<LayerWeights<B>>,
    pub norm: B::Vector,
    /// `None` when the embeddings are tied and serve as the LM head as loaded.
    pub lm_head: Option<B::Matrix>,
    /// RoPE inverse frequencies (`head_dim / 2`), scaling applied.
    pub inv_freq: Vec<f32>,
}

/// Activation buffers for steps of up to `max_tokens` rows, allocated once.
pub struct StepBuffers<B: Ops> {
    pub max_tokens: usize,
    /// Most rows per step whose logits can be computed.
    pub max_logits: usize,
    hidden: B::Buf,
    residual: B::Buf,
    normed: B::Buf,
    qkv: B::Buf,
    attn: B::Buf,
    gate_up: B::Buf,
    act: B::Buf,
    last_residual: B::Buf,
    last_hidden: B::Buf,
    last_normed: B::Buf,
    logits: B::Buf,
}

impl<B: Ops> StepBuffers<B> {
    /// The logits of the last step's logits rows (f32, `vocab_size` each).
    pub fn logits(&self) -> &B::Buf {
        &self.logits
    }
}

impl<B: Backend> StepBuffers<B> {
    /// Buffers for `max_tokens` rows per step, `max_logits` of which need logits.
    pub fn new(
        backend: &B,
        cfg: &ModelConfig,
        max_tokens: usize,
        max_logits: usize,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(StepBuffers {
            max_tokens,
            max_logits,
            hidden: backend.buffer(max_tokens * h)?,
            residual: backend.buffer(max_tokens * h)?,
            normed: backend.buffer(max_tokens * h)?,
            qkv: backend.buffer(max_tokens * cfg.qkv_size())?,
            attn: backend.buffer(max_tokens * cfg.num_attention_heads * cfg.head_dim)?,
            gate_up: backend.buffer(max_tokens * 2 * cfg.intermediate_size)?,
            act: backend.buffer(max_tokens * cfg.intermediate_size)?,
            last_residual: backend.buffer(max_logits * h)?,
            last_hidden: backend.buffer(max_logits * h)?,
            last_normed: backend.buffer(max_logits * h)?,
            logits: backend.logits_buffer(max_logits * cfg.vocab_size)?,
        })
    }
}

impl<B: Backend> LayerWeights<B> {
    /// Loads layer `i` of `c`'s model from `src`, fusing QKV (and its bias) and gate/up.
    fn load(backend: &B, c: &ModelConfig, src: &dyn WeightSource, i: usize) -> Result<Self> {
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_rows, kv_rows) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let vector = |name: &str, len: usize| -> Result<B::Vector> {
            backend.vector(load_checked(src, name, &[len])?)
        };
        let p = format!("model.layers.{i}");
        let attn = |n: &str| format!("{p}.self_attn.{n}");
        if let Some(scales) = crate::weights::fp8::kv_cache_scales(src, i)? {
            backend.set_kv_cache_scales(i, scales);
        }
        let qkv = load_projection(
            backend,
            src,
            &[
                (&attn("q_proj.weight"), q_rows, h),
                (&attn("k_proj.weight"), kv_rows, h),
                (&attn("v_proj.weight"), kv_rows, h),
            ],
        )?;
        let qkv_bias = if src.contains(&attn("q_proj.bias")) {
            let parts = [
                ("q_proj.bias", q_rows),
                ("k_proj.bias", kv_rows),
                ("v_proj.bias", kv_rows),
            ];
            let mut data = Vec::with_capacity(q_rows + 2 * kv_rows);
            for (name, len) in parts {
                data.extend(load_checked(src, &attn(name), &[len])?.data);
            }
            Some(backend.vector(HostTensor {
                shape: vec![data.len()],
                data,
            })?)
        } else {
            None
        };
        let (q_norm, k_norm) =
            if c.architecture == Architecture::Qwen3 || src.contains(&attn("q_norm.weight")) {
                (
                    Some(vector(&attn("q_norm.weight"), hd)?),
                    Some(vector(&attn("k_norm.weight"), hd)?),
                )
            } else {
                (None, None)
            };
        let mlp = |n: &str| format!("{p}.mlp.{n}");
        let inter = c.intermediate_size;
        Ok(LayerWeights {
            input_norm: vector(&format!("{p}.input_layernorm.weight"), h)?,
            qkv,
            qkv_bias,
            q_norm,
            k_norm,
            o_proj: load_projection(backend, src, &[(&attn("o_proj.weight"), h, q_rows)])?,
            post_attention_norm: vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
            gate_up: load_projection(
                backend,
                src,
                &[
                    (&mlp("gate_proj.weight"), inter, h),
                    (&mlp("up_proj.weight"), inter, h),
                ],
            )?,
            down: load_projection(backend, src, &[(&mlp("down_proj.weight"), h, inter)])?,
        })
    }
}

impl<B: Backend> LlamaModel<B> {
    /// Loads and fuses the weights named with HF names from `src`, checking every shape.
    pub fn load(backend: &B, config: ModelConfig, src: &dyn WeightSource) -> Result<Self> {
        let c = &config;
        let h = c.hidden_size;
        let layers = (0..c.num_hidden_layers)
            .map(|i| LayerWeights::load(backend, c, src, i))
            .collect::<Result<Vec<_>>>()?;
        let vector = |name: &str, len: usize| -> Result<B::Vector> {
            backend.vector(load_checked(src, name, &[len])?)
        };
        let embed_tokens = load_matrix(
            backend,
            src,
            &[("model.embed_tokens.weight", c.vocab_size, h)],
        )?;
        let tied = c.tie_word_embeddings || !src.contains("lm_head.weight");
        let head_name = if tied {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        // A backend that quantizes at load gets its own LM head, tied or not (the embedding
        // rows stay as loaded).
        let lm_head = match quantized_head(backend, src, (head_name, c.vocab_size, h)) {
            Some(m) => Some(m?),
            None if tied => None,
            None => Some(load_matrix(backend, src, &[(head_name, c.vocab_size, h)])?),
        };
        Ok(LlamaModel {
            inv_freq: config.rope_inv_freq(),
            norm: vector("model.norm.weight", h)?,
            embed_tokens,
            layers,
            lm_head,
            config,
        })
    }
}

impl<B: Ops> LlamaModel<B> {
    /// The attention shape of this model.
    pub fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            num_heads: self.config.num_attention_heads,
            num_kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// The forward pass of one step: enqueues (or, on the CPU, computes) it; the logits of
    /// `batch.logits_rows` end in `bufs.logits()`, and the batch's keys and values in `cache`.
    /// Returns the number of logits rows. The caller has begun the step on the backend
    /// ([`Backend::begin_step`]) and guarantees `batch.num_tokens() <= bufs.max_tokens`, that
    /// the logits rows fit the buffers, and that every slot and block id lies inside `cache`.
    pub fn forward(
        &self,
        backend: &B,
        batch: &ForwardBatch,
        cache: &mut B::KvCache,
        bufs: &mut StepBuffers<B>,
    ) -> usize {
        let (c, eps) = (&self.config, self.config.rms_norm_eps);
        backend.embedding(&self.embed_tokens, &batch.token_ids, &mut bufs.residual);
        // Whether `bufs.hidden` holds a projection not yet added to the residual stream (the
        // backend left the add to the next norm: see `Ops::linear_residual`).
        let mut pending = false;
        for i in 0..self.layers.len() {
            pending = self.layer(backend, i, batch, cache, bufs, pending);
        }
        // Only the rows that need logits go through the final norm and the LM head (none in a
        // step that only prefills part of a prompt).
        let n = batch.logits_rows.len();
        if n == 0 {
            return 0;
        }
        let h = c.hidden_size;
        backend.gather_rows(
            &bufs.residual,
            &batch.logits_rows,
            h,
            &mut bufs.last_residual,
        );
        if pending {
            backend.gather_rows(&bufs.hidden, &batch.logits_rows, h, &mut bufs.last_hidden);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        backend.norm_linear(
            &mut bufs.last_residual,
            pending.then_some(&bufs.last_hidden),
            &self.norm,
            eps,
            n,
            head,
            None,
            &mut bufs.last_normed,
            &mut bufs.logits,
        );
        n
    }

    /// Enqueues decoder layer `i` over the step's rows: attention, then the MLP, each with
    /// its residual add. `pending` says whether `bufs.hidden` holds a projection not yet added
    /// to the residual stream; returns the same for the layer's last projection.
    fn layer(
        &self,
        backend: &B,
        i: usize,
        batch: &ForwardBatch,
        cache: &mut B::KvCache,
        bufs: &mut StepBuffers<B>,
        pending: bool,
    ) -> bool {
        let (c, layer) = (&self.config, &self.layers[i]);
        let (rows, shape, eps) = (batch.num_tokens(), self.attention_shape(), c.rms_norm_eps);
        backend.norm_linear(
            &mut bufs.residual,
            pending.then_some(&bufs.hidden),
            &layer.input_norm,
            eps,
            rows,
            &layer.qkv,
            layer.qkv_bias.as_ref(),
            &mut bufs.normed,
            &mut bufs.qkv,
        );
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            backend.qk_norm(&mut bufs.qkv, rows, shape, qn, kn, eps);
        }
        backend.rope_and_cache_write(&mut bufs.qkv, batch, &self.inv_freq, shape, cache, i);
        backend.attention(&bufs.qkv, batch, shape, cache, i, &mut bufs.attn);
        let o = backend.linear_residual(
            &bufs.attn,
            rows,
            &layer.o_proj,
            &mut bufs.residual,
            &mut bufs.hidden,
        );
        backend.norm_linear_silu_mul(
            &mut bufs.residual,
            (o == Residual::Pending).then_some(&bufs.hidden),
            &layer.post_attention_norm,
            eps,
            rows,
            c.intermediate_size,
            &layer.gate_up,
            &mut bufs.normed,
            &mut bufs.gate_up,
            &mut bufs.act,
        );
        let down = backend.linear_residual(
            &bufs.act,
            rows,
            &layer.down,
            &mut bufs.residual,
            &mut bufs.hidden,
        );
        down == Residual::Pending
    }
}
