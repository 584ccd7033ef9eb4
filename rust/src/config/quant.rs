//! `quantization_config` of a Hugging Face `config.json`: the FP8 checkpoint formats the loader
//! reads, parsed into [`Fp8Config`]. Anything else is [`Error::Unsupported`], naming the method.
//!
//! Two families are accepted, as published today:
//! - `quant_method: "compressed-tensors"` (llm-compressor, Neural Magic / Red Hat releases),
//!   `format: "float-quantized"` (or `"naive-quantized"` with float weights): config groups whose
//!   `weights` are 8-bit floats with one scale per tensor, per output channel or per block, named
//!   `<weight>_scale` (`...q_proj.weight_scale`); activations static (`input_scale`), dynamic per
//!   token, or absent (weight-only); an `ignore` list of modules left unquantized.
//! - `quant_method: "fp8"` (Qwen3's and DeepSeek's FP8 releases, transformers' fine-grained FP8):
//!   e4m3 weights with `weight_block_size` tiles whose scales are `<weight>_scale_inv` (despite
//!   the name, a weight is its code times this scale, as vLLM reads it), or without blocks one
//!   `<weight>_scale` per tensor.

use regex::Regex;
use serde_json::Value;

use crate::error::{Error, Result};

/// Which format the checkpoint declares (it decides the scale tensors' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Format {
    /// `quant_method: "compressed-tensors"`.
    CompressedTensors,
    /// `quant_method: "fp8"`.
    Fp8,
}

/// How a weight's scales are laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8ScaleLayout {
    /// One scale for the whole matrix: shape `[]` or `[1]`.
    Tensor,
    /// One scale per output row: shape `[rows, 1]` or `[rows]`.
    Channel,
    /// One scale per `[block[0], block[1]]` tile: shape `[ceil(rows / b0), ceil(cols / b1)]`.
    Block([usize; 2]),
}

/// How the checkpoint quantized the activations. Only recorded: the engine computes dynamic
/// per-token activation scales at run time whatever the checkpoint says, so static
/// `input_scale` tensors are read by no one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Activations {
    /// FP8 activations with scales computed at run time (per token or per tensor).
    Dynamic,
    /// FP8 activations with a calibrated `input_scale` per projection.
    Static,
    /// Weight-only quantization (`input_activations: null`).
    None,
}

/// A module the checkpoint left unquantized: a full name (`lm_head`,
/// `model.layers.0.mlp.down_proj`) or, written `re:<pattern>`, a regular expression matched at
/// the start of the name (Python's `re.match`, as compressed-tensors and vLLM apply it).
#[derive(Debug, Clone)]
pub enum IgnoredModule {
    Exact(String),
    Pattern(Regex),
}

impl PartialEq for IgnoredModule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Pattern(a), Self::Pattern(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// An FP8 checkpoint's quantization, as its `quantization_config` declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Config {
    pub format: Fp8Format,
    /// Layout of every quantized weight's scales.
    pub scales: Fp8ScaleLayout,
    pub activations: Fp8Activations,
    /// Modules stored unquantized (`ignore`, `ignored_layers`, `modules_to_not_convert`).
    pub ignore: Vec<IgnoredModule>,
    /// Whether the config declares an 8-bit float KV cache (`kv_cache_scheme`): its
    /// per-layer scales are then in the checkpoint (see [`crate::weights::fp8::kv_cache_scales`]).
    pub kv_cache_scheme: bool,
}

impl Fp8Config {
    /// The name of the scale tensor of the FP8 weight `weight` (`...q_proj.weight`).
    pub fn scale_name(&self, weight: &str) -> String {
        match (self.format, self.scales) {
            (Fp8Format::Fp8, Fp8ScaleLayout::Block(_)) => format!("{weight}_scale_inv"),
            _ => format!("{weight}_scale"),
        }
    }

    /// Whether `module` (a weight's name without `.weight`) is listed as left unquantized.
    pub fn ignores(&self, module: &str) -> bool {
        self.ignore.iter().any(|i| match i {
            IgnoredModule::Exact(name) => name == module,
            IgnoredModule::Pattern(re) => re.is_match(module),
        })
    }
}

/// Parses `quantization_config` (`None` when absent or null).
pub fn parse_quantization_config(v: Option<&Value>) -> Result<Option<Fp8Config>> {
    let Some(q) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let method = q
        .get("quant_method")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::Unsupported("quantization_config without a \"quant_method\"".into())
        })?;
    match method {
        "compressed-tensors" => compressed_tensors(q).map(Some),
        "fp8" => fp8(q).map(Some),
        other => Err(Error::Unsupported(format!(
            "quantization method \"{other}\" (supported: FP8 checkpoints, \"compressed-tensors\" \
             float-quantized and \"fp8\")"
        ))),
    }
}

fn bad(reason: String) -> Error {
    Error::invalid_model("config.json", format!("quantization_config: {reason}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `quant_method: "fp8"`: `fmt`, `activation_scheme`, `weight_block_size`, ignored layers.
fn fp8(q: &Value) -> Result<Fp8Config> {
    if let Some(fmt) = str_of(q, "fmt").filter(|&f| f != "e4m3") {
        return Err(Error::Unsupported(format!(
            "quantization method \"fp8\" with fmt \"{fmt}\" (only e4m3 weights are supported)"
        )));
    }
    let activations = match str_of(q, "activation_scheme").unwrap_or("dynamic") {
        "dynamic" => Fp8Activations::Dynamic,
        "static" => Fp8Activations::Static,
        other => return Err(bad(format!("unknown activation_scheme \"{other}\""))),
    };
    let scales = match q.get("weight_block_size") {
        None | Some(Value::Null) => Fp8ScaleLayout::Tensor,
        Some(b) => Fp8ScaleLayout::Block(block_size(b, "weight_block_size")?),
    };
    let mut ignore = ignore_list(q.get("ignored_layers"), "ignored_layers")?;
    ignore.extend(ignore_list(
        q.get("modules_to_not_convert"),
        "modules_to_not_convert",
    )?);
    Ok(Fp8Config {
        format: Fp8Format::Fp8,
        scales,
        activations,
        ignore,
        kv_cache_scheme: false,
    })
}

/// `[rows, cols]` of a scale block: two positive integers.
fn block_size(v: &Value, key: &str) -> Result<[usize; 2]> {
    let dims: Option<Vec<usize>> = v.as_array().and_then(|a| {
        a.iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect()
    });
    match dims.as_deref() {
        Some(&[r, c]) if r > 0 && c > 0 && r <= 1 << 16 && c <= 1 << 16 => Ok([r, c]),
        _ => Err(bad(format!(
            "\"{key}\" must be two positive integers, got {v}"
        ))),
    }
}

/// A list of module names, `re:` entries compiled.
fn ignore_list(v: Option<&Value>, key: &str) -> Result<Vec<IgnoredModule>> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(bad(format!("\"{key}\" must be a list, got {other}"))),
    };
    items
        .iter()
        .map(|item| {
            let name = item
                .as_str()
                .ok_or_else(|| bad(format!("\"{key}\" holds {item}, not a module name")))?;
            match name.strip_prefix("re:") {
                None => Ok(IgnoredModule::Exact(name.to_string())),
                Some(pattern) => Regex::new(&format!("^(?:{pattern})"))
                    .map(IgnoredModule::Pattern)
                    .map_err(|e| bad(format!("\"{key}\" entry {name:?}: {e}"))),
            }
        })
        .collect()
}

/// `quant_method: "compressed-tensors"`: every config group must hold the same FP8 scheme.
fn compressed_tensors(q: &Value) -> Result<Fp8Config> {
    let format = str_of(q, "format").unwrap_or("float-quantized");
    if !matches!(format, "float-quantized" | "naive-quantized") {
        return Err(Error::Unsupported(format!(
            "quantization method \"compressed-tensors\" with format \"{format}\" (supported: \
             float-quantized FP8)"
        )));
    }
    let groups = q
        .get("config_groups")
        .and_then(Value::as_object)
        .filter(|g| !g.is_empty())
        .ok_or_else(|| bad("compressed-tensors without \"config_groups\"".into()))?;
    let mut scheme: Option<(Fp8ScaleLayout, Fp8Activations)> = None;
    for (name, group) in groups {
        let this = (
            weight_scheme(name, group.get("weights"))?,
            activation_scheme(name, group.get("input_activations"))?,
        );
        if scheme.is_some_and(|s| s != this) {
            return Err(Error::Unsupported(format!(
                "compressed-tensors config groups with different schemes ({name} differs)"
            )));
        }
        scheme = Some(this);
    }
    let (scales, activations) = scheme.expect("config_groups is not empty");
    Ok(Fp8Config {
        format: Fp8Format::CompressedTensors,
        scales,
        activations,
        ignore: ignore_list(q.get("ignore"), "ignore")?,
        kv_cache_scheme: kv_cache_scheme(q.get("kv_cache_scheme"))?,
    })
}

/// A quantization args object's number of bits and type, which must be 8-bit float.
fn check_fp8_args(group: &str, what: &str, args: &Value) -> Result<()> {
    let bits = args.get("num_bits").and_then(Value::as_u64);
    let kind = str_of(args, "type").unwrap_or("int");
    if bits != Some(8) || kind != "float" {
        let bits = bits.map_or_else(|| "?".into(), |b| b.to_string());
        return Err(Error::Unsupported(format!(
            "quantization method \"compressed-tensors\" with {bits}-bit {kind} {what} (group \
             {group}; supported: 8-bit float)"
        )));
    }
    if args.get("symmetric").and_then(Value::as_bool) == Some(false) {
        return Err(Error::Unsupported(format!(
            "compressed-tensors asymmetric FP8 {what} (group {group})"
        )));
    }
    Ok(())
}

fn weight_scheme(group: &str, weights: Option<&Value>) -> Result<Fp8ScaleLayout> {
    let w = weights
        .filter(|w| w.is_object())
        .ok_or_else(|| bad(format!("config group {group} has no \"weights\"")))?;
    check_fp8_args(group, "weights", w)?;
    match str_of(w, "strategy").unwrap_or("tensor") {
        "tensor" => Ok(Fp8ScaleLayout::Tensor),
        "channel" => Ok(Fp8ScaleLayout::Channel),
        "block" => {
            let b = w.get("block_structure").unwrap_or(&Value::Null);
            Ok(Fp8ScaleLayout::Block(block_size(b, "block_structure")?))
        }
        other => Err(Error::Unsupported(format!(
            "compressed-tensors FP8 weights with strategy \"{other}\" (group {group}; \
             supported: tensor, channel, block)"
        ))),
    }
}

fn activation_scheme(group: &str, acts: Option<&Value>) -> Result<Fp8Activations> {
    let Some(a) = acts.filter(|a| !a.is_null()) else {
        return Ok(Fp8Activations::None);
    };
    check_fp8_args(group, "input activations", a)?;
    let dynamic = a.get("dynamic").and_then(Value::as_bool).unwrap_or(false);
    match (dynamic, str_of(a, "strategy").unwrap_or("tensor")) {
        (true, "token" | "tensor") => Ok(Fp8Activations::Dynamic),
        (false, "tensor") => Ok(Fp8Activations::Static),
        (_, strategy) => Err(Error::Unsupported(format!(
            "compressed-tensors FP8 activations with strategy \"{strategy}\" (dynamic: \
             {dynamic}; group {group})"
        ))),
    }
}

/// `kv_cache_scheme`: absent, or 8-bit float with per-tensor scales.
fn kv_cache_scheme(v: Option<&Value>) -> Result<bool> {
    let Some(kv) = v.filter(|v| !v.is_null()) else {
        return Ok(false);
    };
    check_fp8_args("kv_cache_scheme", "KV cache", kv)?;
    match str_of(kv, "strategy").unwrap_or("tensor") {
        "tensor" => Ok(true),
        other => Err(Error::Unsupported(format!(
            "compressed-tensors FP8 KV cache with strategy \"{other}\" (supported: tensor)"
        ))),
    }
}
