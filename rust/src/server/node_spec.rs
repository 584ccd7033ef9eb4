//! What a node serves: each model's declaration ([`ModelSpec`]: served name and aliases, engine
//! options, memory budget, `on_demand`) parsed from the JSON list that `infire.serve(models=...)`
//! and `infire serve --model ... / --config node.toml` hand over, and the memory arithmetic of
//! budgets on the CPU (the KV pool a budget leaves once weights and step buffers are counted).

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::backend::{KvDtype, KvLayout};
use crate::engine::{EngineArgs, PROMPT_LOGPROB_ROWS};
use crate::error::{Error, Result};
use crate::loader::ModelFiles;

/// The keys of a model's entry that are the node's; every other key is an engine option.
const NODE_KEYS: &[&str] = &[
    "model",
    "served_model_name",
    "aliases",
    "memory",
    "on_demand",
];

/// A model's memory budget: weights, KV pool and step buffers together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Bytes(usize),
    /// A share of the device's memory (the machine's RAM on the CPU, the card on CUDA).
    Share(f64),
}

impl Budget {
    /// An integer is bytes; a number in (0, 1) a share; a string bytes with a unit ("512MiB",
    /// "4GiB", "2GB", "1000000") or a share ("0.25", "25%").
    pub fn parse(v: &Value) -> Result<Budget> {
        let bad = || {
            Error::InvalidConfig(format!(
                "memory must be bytes (an integer or \"4GiB\", \"512MiB\") or a share of the \
                 device in (0, 1] (0.25 or \"25%\"), got {v}"
            ))
        };
        let share = |f: f64| {
            (f > 0.0 && f <= 1.0)
                .then_some(Budget::Share(f))
                .ok_or_else(bad)
        };
        match v {
            Value::Number(n) if n.is_u64() => match n.as_u64() {
                Some(0) | None => Err(bad()),
                Some(b) => Ok(Budget::Bytes(b as usize)),
            },
            Value::Number(n) => share(n.as_f64().ok_or_else(bad)?),
            Value::String(s) => {
                let s = s.trim();
                if let Some(p) = s.strip_suffix('%') {
                    return share(p.trim().parse::<f64>().map_err(|_| bad())? / 100.0);
                }
                let units = [
                    ("GiB", 1usize << 30),
                    ("MiB", 1 << 20),
                    ("KiB", 1 << 10),
                    ("GB", 1_000_000_000),
                    ("MB", 1_000_000),
                    ("KB", 1000),
                    ("B", 1),
                ];
                for (unit, scale) in units {
                    if let Some(num) = s.strip_suffix(unit) {
                        let x: f64 = num.trim().parse().map_err(|_| bad())?;
                        return (x > 0.0)
                            .then_some(Budget::Bytes((x * scale as f64) as usize))
                            .ok_or_else(bad);
                    }
                }
                let x: f64 = s.parse().map_err(|_| bad())?;
                if x.fract() == 0.0 && x >= 1.0 {
                    Ok(Budget::Bytes(x as usize))
                } else {
                    share(x)
                }
            }
            _ => Err(bad()),
        }
    }

    /// The budget in bytes on a device of `total` bytes.
    pub fn bytes(&self, total: usize) -> usize {
        match *self {
            Budget::Bytes(b) => b,
            Budget::Share(f) => (total as f64 * f) as usize,
        }
    }
}

/// One model a node serves, as declared.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The name requests give (default: the model file's stem).
    pub name: String,
    /// Other names requests may give for it.
    pub aliases: Vec<String>,
    pub path: PathBuf,
    pub args: EngineArgs,
    pub memory: Option<Budget>,
    /// Loaded on its first request rather than at start.
    pub on_demand: bool,
}

impl ModelSpec {
    /// Every name the model answers to, its own first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    /// One model's entry: `{"model": PATH, "served_model_name"?, "aliases"?, "memory"?,
    /// "on_demand"?, ...engine options}`.
    pub fn from_value(v: &Value) -> Result<ModelSpec> {
        let bad = |m: String| Error::InvalidConfig(m);
        let obj = v
            .as_object()
            .ok_or_else(|| bad(format!("a model entry must be an object, got {v}")))?;
        let path = match obj.get("model") {
            Some(Value::String(p)) => PathBuf::from(p),
            _ => return Err(bad(format!("model entry {v} has no \"model\" path"))),
        };
        let stem = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        let name = match obj.get("served_model_name") {
            None | Some(Value::Null) => stem,
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(bad(format!(
                    "served_model_name must be a name, got {other}"
                )))
            }
        };
        let aliases = match obj.get("aliases") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().filter(|s| !s.is_empty()).map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(format!("aliases of {name} must be names, got {a:?}")))?,
            Some(other) => {
                return Err(bad(format!(
                    "aliases of {name} must be a list, got {other}"
                )))
            }
        };
        let memory = match obj.get("memory") {
            None | Some(Value::Null) => None,
            Some(m) => Some(Budget::parse(m).map_err(|e| in_model(&name, e))?),
        };
        let on_demand = match obj.get("on_demand") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(bad(format!(
                    "on_demand of {name} must be a bool, got {other}"
                )))
            }
        };
        let engine: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| !NODE_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let args = EngineArgs::from_json(&Value::Object(engine).to_string())
            .map_err(|e| in_model(&name, e))?;
        Ok(ModelSpec {
            name,
            aliases,
            path,
            args,
            memory,
            on_demand,
        })
    }

    /// A JSON list of entries; every name and alias must be unique.
    pub fn parse_list(json: &str) -> Result<Vec<ModelSpec>> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| Error::InvalidConfig(format!("models: {e}")))?;
        let Value::Array(entries) = value else {
            return Err(Error::InvalidConfig("models must be a list".into()));
        };
        if entries.is_empty() {
            return Err(Error::InvalidConfig(
                "a node serves at least one model".into(),
            ));
        }
        let specs = entries
            .iter()
            .map(ModelSpec::from_value)
            .collect::<Result<Vec<_>>>()?;
        let mut seen = std::collections::HashSet::new();
        for name in specs.iter().flat_map(ModelSpec::names) {
            if !seen.insert(name) {
                return Err(Error::InvalidConfig(format!(
                    "the model name {name:?} is given twice: served names and aliases must be \
                     unique"
                )));
            }
        }
        Ok(specs)
    }
}

/// `e`, its message prefixed with the model it is about.
fn in_model(name: &str, e: Error) -> Error {
    match e {
        Error::InvalidConfig(m) => Error::InvalidConfig(format!("model {name}: {m}")),
        e => e,
    }
}

/// Bytes the CPU backend holds for `files`' weights: GGUF blocks as stored with `dtype` "auto",
/// every other tensor (and every tensor with "float32") as f32, FP8 weights included (the CPU
/// dequantizes them).
pub fn cpu_weight_bytes(files: &ModelFiles, dtype: &str) -> usize {
    let w = files.weights.as_ref();
    w.names()
        .iter()
        .filter_map(|n| {
            let Some(r) = w.raw(n) else {
                let fp8 = w.fp8(n)?.ok()?;
                return Some(fp8.bytes.len() * 4);
            };
            let numel: usize = r.shape.iter().product();
            let dense = matches!(r.dtype, "F32" | "F16" | "BF16");
            Some(if dtype == "auto" && !dense {
                r.bytes.len()
            } else {
                numel * 4
            })
        })
        .sum()
}

/// Bytes of one step's buffers on the CPU: activations of `max_tokens` rows and the logits
/// rows (a generous count: the buffers are f32).
pub fn cpu_step_bytes(files: &ModelFiles, max_tokens: usize, max_seqs: usize) -> usize {
    let c = &files.config;
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let row = 4 * c.hidden_size + 3 * c.intermediate_size + q + 2 * kv;
    4 * (max_tokens * row + (max_seqs + PROMPT_LOGPROB_ROWS) * c.vocab_size)
}

/// The KV-cache tokens a CPU budget of `budget` bytes leaves for `files` once its weights and
/// step buffers are counted; an error naming the model when it leaves less than one block.
pub fn cpu_kv_tokens(
    name: &str,
    files: &ModelFiles,
    args: &EngineArgs,
    budget: usize,
    max_tokens: usize,
    max_seqs: usize,
) -> Result<usize> {
    let weights = cpu_weight_bytes(files, &args.dtype);
    let steps = cpu_step_bytes(files, max_tokens, max_seqs);
    let layout = KvLayout::for_model(&files.config, args.block_size, KvDtype::F32);
    let per_token = layout.bytes_per_token();
    let left = budget.saturating_sub(weights + steps);
    let tokens = left / per_token / args.block_size * args.block_size;
    if tokens == 0 {
        return Err(Error::InvalidConfig(format!(
            "model {name}: a memory budget of {} MiB does not fit: its weights take {} MiB and \
             its step buffers {} MiB, leaving nothing for a KV block of {} tokens ({} KiB \
             each); raise its memory or lower max_num_batched_tokens / max_num_seqs",
            budget >> 20,
            weights >> 20,
            steps >> 20,
            args.block_size,
            per_token >> 10
        )));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn budgets_parse_as_bytes_or_shares() {
        let p = |v: Value| Budget::parse(&v);
        assert_eq!(p(json!(1024)).unwrap(), Budget::Bytes(1024));
        assert_eq!(p(json!("2GiB")).unwrap(), Budget::Bytes(2 << 30));
        assert_eq!(p(json!("512 MiB")).unwrap(), Budget::Bytes(512 << 20));
        assert_eq!(p(json!(0.25)).unwrap(), Budget::Share(0.25));
        assert_eq!(p(json!("50%")).unwrap(), Budget::Share(0.5));
        assert_eq!(Budget::Share(0.5).bytes(1000), 500);
        for bad in [json!(0), json!(-1), json!(1.5), json!("lots"), json!(true)] {
            assert!(p(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn entries_split_node_keys_from_engine_options() {
        let specs = ModelSpec::parse_list(
            r#"[{"model": "/m/a.gguf", "aliases": ["x"], "memory": "1GiB", "max_num_seqs": 4},
                {"model": "/m/a.gguf", "served_model_name": "b", "on_demand": true}]"#,
        )
        .unwrap();
        assert_eq!(specs[0].name, "a");
        assert_eq!(specs[0].args.max_num_seqs, Some(4));
        assert_eq!(specs[0].memory, Some(Budget::Bytes(1 << 30)));
        assert!(specs[1].on_demand && specs[1].name == "b");
        for (json, named) in [
            (
                r#"[{"model": "/m/a.gguf", "max_num_seq": 4}]"#,
                "max_num_seq",
            ),
            (
                r#"[{"model": "/m/a.gguf"}, {"model": "/n/a.gguf"}]"#,
                "twice",
            ),
            (r#"[{"served_model_name": "a"}]"#, "model"),
            (r#"[]"#, "at least one"),
            (r#"[{"model": "/m/a.gguf", "memory": "x"}]"#, "memory"),
        ] {
            let e = ModelSpec::parse_list(json).unwrap_err().to_string();
            assert!(e.contains(named), "{json}: {e}");
        }
    }
}
