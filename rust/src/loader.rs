//! Opens a model given by path: an HF directory or a GGUF file. Returns the config, the
//! weight source, the tokenizer and the generation defaults, each validated.

use std::path::{Path, PathBuf};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;
use crate::weights::gguf::GgufFile;
use crate::weights::safetensors::SafetensorsWeights;
use crate::weights::WeightSource;

/// Everything read from a model's files, before weights go to a backend.
pub struct ModelFiles {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub weights: Box<dyn WeightSource>,
    pub tokenizer: Tokenizer,
    /// Every id that ends a sequence: model config, tokenizer and `generation_config.json`.
    pub eos_token_ids: Vec<u32>,
    /// Sampling defaults from `generation_config.json` (vLLM's `generation_config="auto"`).
    pub default_sampling: SamplingParams,
}

/// Opens `path`: a directory with `config.json` (HF layout) or a `.gguf` file.
pub fn open_model(path: &Path) -> Result<ModelFiles> {
    let meta = std::fs::metadata(path).map_err(|e| Error::ModelNotFound {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let files = if meta.is_dir() {
        open_hf_dir(path)?
    } else {
        open_gguf(path)?
    };
    check_layer_count(path, &files.config, files.weights.as_ref())?;
    if files.tokenizer.vocab_size() > files.config.vocab_size {
        return Err(Error::invalid_model(
            path,
            format!(
                "tokenizer has {} tokens but the model's vocabulary is {}",
                files.tokenizer.vocab_size(),
                files.config.vocab_size
            ),
        ));
    }
    Ok(files)
}

/// Errors when the weights hold a layer at or past the config's `num_hidden_layers` (GGUF
/// `block_count`): a file that claims fewer layers than it stores would otherwise load the first
/// few and run a truncated model that emits garbage. (Missing layers fail when they load.)
fn check_layer_count(path: &Path, config: &ModelConfig, weights: &dyn WeightSource) -> Result<()> {
    let layers = config.num_hidden_layers;
    let deepest = weights
        .names()
        .iter()
        .filter_map(|n| {
            n.strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max();
    match deepest {
        Some(d) if d >= layers => Err(Error::invalid_model(
            path,
            format!(
                "the weights hold layer {d} but the config says num_hidden_layers (GGUF \
                 block_count) = {layers}"
            ),
        )),
        _ => Ok(()),
    }
}

fn open_gguf(path: &Path) -> Result<ModelFiles> {
    let gguf = GgufFile::open(path)?;
    let has_output = gguf.contains("lm_head.weight");
    let config = ModelConfig::from_gguf(gguf.metadata(), has_output, path)?;
    let tokenizer = Tokenizer::from_gguf_metadata(gguf.metadata())?;
    let mut eos = config.eos_token_ids.clone();
    eos.extend(tokenizer.eos_token_ids());
    Ok(ModelFiles {
        path: path.to_path_buf(),
        eos_token_ids: dedup(eos),
        config,
        weights: Box::new(gguf),
        tokenizer,
        default_sampling: SamplingParams::default(),
    })
}

fn open_hf_dir(dir: &Path) -> Result<ModelFiles> {
    if !dir.join("config.json").is_file() {
        return Err(Error::invalid_model(
            dir,
            "directory has no config.json (not an HF model)",
        ));
    }
    let config = ModelConfig::from_hf_dir(dir)?;
    let weights = SafetensorsWeights::open_dir(dir)?.with_quantization(config.quantization.clone());
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    let mut eos = config.eos_token_ids.clone();
    eos.extend(tokenizer.eos_token_ids());
    let mut default_sampling = SamplingParams::default();
    let gen_path = dir.join("generation_config.json");
    if gen_path.is_file() {
        let bytes = std::fs::read(&gen_path).map_err(|e| Error::io(&gen_path, e))?;
        let gen: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid_model(&gen_path, format!("not valid JSON: {e}")))?;
        eos.extend(json_ids(gen.get("eos_token_id")));
        apply_generation_defaults(&gen, &mut default_sampling);
        default_sampling
            .validate()
            .map_err(|e| Error::invalid_model(&gen_path, e.to_string()))?;
    }
    Ok(ModelFiles {
        path: dir.to_path_buf(),
        eos_token_ids: dedup(eos),
        config,
        weights: Box::new(weights),
        tokenizer,
        default_sampling,
    })
}

/// Copies the sampling fields vLLM takes from `generation_config.json` (it ignores
/// `do_sample`, and so does this).
fn apply_generation_defaults(gen: &serde_json::Value, p: &mut SamplingParams) {
    let f = |k: &str| {
        gen.get(k)
            .and_then(serde_json::Value::as_f64)
            .map(|v| v as f32)
    };
    if let Some(t) = f("temperature") {
        p.temperature = t;
    }
    if let Some(n) = gen
        .get("max_new_tokens")
        .and_then(serde_json::Value::as_u64)
    {
        p.max_tokens = Some(n as usize);
    }
    if let Some(v) = f("top_p") {
        p.top_p = v;
    }
    if let Some(v) = gen.get("top_k").and_then(serde_json::Value::as_i64) {
        p.top_k = v.clamp(-1, i32::MAX as i64) as i32;
    }
    if let Some(v) = f("min_p") {
        p.min_p = v;
    }
    if let Some(v) = f("repetition_penalty") {
        p.repetition_penalty = v;
    }
}

fn json_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        None => Vec::new(),
    }
}

fn dedup(mut ids: Vec<u32>) -> Vec<u32> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Opens only the tokenizer of the model at `path` (a `.gguf` file or an HF directory).
pub fn open_tokenizer(path: &Path) -> Result<Tokenizer> {
    let meta = std::fs::metadata(path).map_err(|e| Error::ModelNotFound {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if meta.is_dir() {
        Tokenizer::from_hf_dir(path)
    } else {
        Tokenizer::from_gguf_metadata(GgufFile::open(path)?.metadata())
    }
}

/// Infire's cache directory: `$INFIRE_CACHE_DIR`, else `$XDG_CACHE_HOME/infire`, else
/// `~/.cache/infire` (where the Python layer keeps downloaded models; compiled kernels and
/// model fingerprints go under it).
pub fn cache_root() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("INFIRE_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("infire")))
        .or_else(|| env("HOME").map(|h| h.join(".cache").join("infire")))
}
