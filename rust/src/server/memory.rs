//! The memory of a node: each model's share of it, decided once at start ([`plan`]), and the
//! process's resident memory as the kernel counts it.

use super::node_spec::{cpu_kv_tokens, cpu_step_bytes, cpu_weight_bytes, Budget, ModelSpec};
use crate::backend::{KvDtype, KvLayout};
use crate::engine::launch::device_kind;
use crate::engine::{DeviceKind, EngineArgs, DEFAULT_CPU_KV_BYTES};
use crate::error::{Error, Result};
use crate::loader::open_model;

/// A model's memory, settled.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    /// The engine options it is launched with: on the CPU `kv_cache_tokens` from its budget, on
    /// CUDA `gpu_memory_utilization` from its share.
    pub args: EngineArgs,
    /// The declared budget in bytes (CPU).
    pub budget_bytes: Option<usize>,
    /// Its share of the node's memory (the card's, on CUDA).
    pub share: f64,
}

/// Plans every model: an error names a budget too small for its model, a model larger than the
/// node, or models loaded at start that do not fit together. `node_memory` is the bytes the
/// node may hold on the CPU (default: what the machine has available now).
pub fn plan(specs: &[ModelSpec], node_memory: Option<usize>) -> Result<Vec<MemoryPlan>> {
    let mut plans = Vec::with_capacity(specs.len());
    for spec in specs {
        let plan = match device_kind(&spec.args)? {
            DeviceKind::Cpu => cpu_plan(spec, node_memory)?,
            DeviceKind::Cuda => cuda_plan(spec)?,
        };
        if plan.share > 1.0 + 1e-9 {
            return Err(Error::InvalidConfig(format!(
                "model {} needs {:.0}% of the node's memory on its own",
                spec.name,
                plan.share * 100.0
            )));
        }
        plans.push(plan);
    }
    let at_start: Vec<(&ModelSpec, &MemoryPlan)> = specs
        .iter()
        .zip(&plans)
        .filter(|(s, _)| !s.on_demand)
        .collect();
    let total: f64 = at_start.iter().map(|(_, p)| p.share).sum();
    if total > 1.0 + 1e-9 {
        let each: Vec<String> = at_start
            .iter()
            .map(|(s, p)| format!("{} {:.1}%", s.name, p.share * 100.0))
            .collect();
        return Err(Error::InvalidConfig(format!(
            "the models loaded at start need {:.1}% of the node's memory ({}){}: lower their \
             memory budgets, or declare some on_demand",
            total * 100.0,
            each.join(", "),
            node_memory_note(node_memory)
        )));
    }
    Ok(plans)
}

fn node_memory_note(node_memory: Option<usize>) -> String {
    match (node_memory, meminfo("MemAvailable")) {
        (Some(n), _) => format!("; node_memory is {} MiB", n >> 20),
        (None, Some(a)) => format!("; the machine has {} MiB available", a >> 20),
        (None, None) => String::new(),
    }
}

/// A CPU model: its budget leaves the KV pool what its weights and step buffers do not take;
/// without a budget it costs what it holds by default.
fn cpu_plan(spec: &ModelSpec, node_memory: Option<usize>) -> Result<MemoryPlan> {
    let capacity = node_memory
        .or_else(|| meminfo("MemAvailable"))
        .ok_or_else(|| Error::InvalidConfig("cannot read /proc/meminfo: set node_memory".into()))?;
    let total = meminfo("MemTotal").unwrap_or(capacity);
    let files = open_model(&spec.path)?;
    let config = spec.args.engine_config(DeviceKind::Cpu);
    let (tokens, seqs) = (config.max_num_batched_tokens, config.max_num_seqs);
    let weights = cpu_weight_bytes(&files, &spec.args.dtype);
    let steps = cpu_step_bytes(&files, tokens, seqs);
    let per_token =
        KvLayout::for_model(&files.config, spec.args.block_size, KvDtype::F32).bytes_per_token();
    let mut args = spec.args.clone();
    let budget = spec.memory.map(|b| b.bytes(total));
    let bytes = match (budget, args.kv_cache_tokens) {
        (Some(b), Some(k)) => {
            let need = weights + steps + k * per_token;
            if need > b {
                return Err(Error::InvalidConfig(format!(
                    "model {}: kv_cache_tokens {k} with weights of {} MiB and step buffers of \
                     {} MiB need {} MiB, over its memory budget of {} MiB",
                    spec.name,
                    weights >> 20,
                    steps >> 20,
                    need >> 20,
                    b >> 20
                )));
            }
            b
        }
        (Some(b), None) => {
            args.kv_cache_tokens = Some(cpu_kv_tokens(&spec.name, &files, &args, b, tokens, seqs)?);
            b
        }
        (None, k) => weights + steps + k.map_or(DEFAULT_CPU_KV_BYTES, |k| k * per_token),
    };
    Ok(MemoryPlan {
        args,
        budget_bytes: budget,
        share: bytes as f64 / capacity as f64,
    })
}

/// A CUDA model: its share of the card is its `gpu_memory_utilization`, which bounds what its
/// engine holds (the CUDA backend counts its own memory, so engines loaded one after another
/// each keep to their share).
fn cuda_plan(spec: &ModelSpec) -> Result<MemoryPlan> {
    let mut args = spec.args.clone();
    match spec.memory {
        Some(Budget::Share(f)) => args.gpu_memory_utilization = f,
        Some(Budget::Bytes(_)) => {
            return Err(Error::InvalidConfig(format!(
                "model {}: on CUDA give memory as a share of the card (0.5 or \"50%\")",
                spec.name
            )))
        }
        None => {}
    }
    args.validate()?;
    Ok(MemoryPlan {
        share: args.gpu_memory_utilization,
        args,
        budget_bytes: None,
    })
}

/// A `/proc/meminfo` field in bytes (Linux).
pub fn meminfo(field: &str) -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The process's resident memory in bytes (Linux).
pub fn rss_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Hands memory that an engine freed back to the kernel: glibc keeps freed small and
/// medium blocks in its arenas, where the resident size would still count them.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the kernel; it
    // touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}
