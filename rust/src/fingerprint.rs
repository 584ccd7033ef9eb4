//! A model's content fingerprint: sha256 over the files that decide what it answers (config,
//! weights, tokenizer, chat template, generation defaults), written `fp_<64 hex digits>`. Every
//! response carries it as OpenAI's `system_fingerprint`, and a cluster routes a request pinned
//! to one fingerprint only to replicas that hold it.
//!
//! Hashing a large model takes a while, so the result is kept in a small JSON file keyed by each
//! file's name, size and modification time: beside the model (`<dir>/.infire-fingerprint.json`,
//! or `<file>.infire-fingerprint.json` for a GGUF file), or, where that cannot be written, under
//! the cache directory (`$INFIRE_CACHE_DIR/fingerprints/`, as for compiled kernels). A file that
//! changed size or time is hashed again.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::loader::cache_root;

/// Name of the cache file beside an HF directory's files.
const CACHE_NAME: &str = ".infire-fingerprint.json";
/// Bumped when what is hashed changes, so older cache files are not trusted.
const VERSION: u32 = 1;

/// One hashed file as the cache records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileStamp {
    name: String,
    size: u64,
    mtime_ns: u128,
}

/// The cache file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    version: u32,
    files: Vec<FileStamp>,
    fingerprint: String,
}

/// The fingerprint of the model at `path` (an HF directory or a GGUF file), from the cache when
/// its files are unchanged, otherwise hashed and cached.
pub fn fingerprint(path: &Path) -> Result<String> {
    let files = model_files(path)?;
    let stamps = files.iter().map(|f| stamp(f)).collect::<Result<Vec<_>>>()?;
    let places = cache_places(path);
    for place in &places {
        if let Some(fp) = read_cache(place, &stamps) {
            return Ok(fp);
        }
    }
    let fp = hash_files(&files, &stamps, path.is_dir())?;
    let cached = Cached {
        version: VERSION,
        files: stamps,
        fingerprint: fp.clone(),
    };
    // The first place that takes the file keeps it; a read-only model and no cache directory
    // only cost a new hash next time.
    let text = serde_json::to_vec_pretty(&cached).expect("the cache record serializes");
    for place in &places {
        if write_cache(place, &text).is_ok() {
            break;
        }
    }
    Ok(fp)
}

/// The files that decide the model's answers, sorted by name: the GGUF file itself, or in an HF
/// directory every `*.json`, `*.safetensors`, `*.jinja`, `*.model` and `*.txt` file that is not
/// hidden (config, generation defaults, weights and their index, tokenizer, chat template).
fn model_files(path: &Path) -> Result<Vec<PathBuf>> {
    let io = |e: std::io::Error| Error::ModelNotFound {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if !std::fs::metadata(path).map_err(io)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let wanted = ["json", "safetensors", "jinja", "model", "txt"];
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !name.starts_with('.') && wanted.contains(&ext) && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// `file`'s name, size and modification time.
fn stamp(file: &Path) -> Result<FileStamp> {
    let meta = std::fs::metadata(file).map_err(|e| Error::ModelNotFound {
        path: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(FileStamp {
        name: file_name(file),
        size: meta.len(),
        mtime_ns,
    })
}

fn file_name(file: &Path) -> String {
    file.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// sha256 over each file's size and bytes, in order, and its name when `named` (a directory's
/// files: moving bytes from one file to another, a template into the config, changes the
/// fingerprint). Neither the directory's name nor a lone GGUF file's is hashed, so a copy under
/// another name keeps the fingerprint.
fn hash_files(files: &[PathBuf], stamps: &[FileStamp], named: bool) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for (file, stamp) in files.iter().zip(stamps) {
        if named {
            hasher.update(stamp.name.as_bytes());
            hasher.update([0]);
        }
        hasher.update(stamp.size.to_le_bytes());
        let io = |e: std::io::Error| Error::ModelNotFound {
            path: file.clone(),
            reason: e.to_string(),
        };
        let mut f = File::open(file).map_err(io)?;
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("fp_{hex}"))
}

/// Where the cache file of the model at `path` may be, in order of preference.
fn cache_places(path: &Path) -> Vec<PathBuf> {
    let beside = if path.is_dir() {
        path.join(CACHE_NAME)
    } else {
        let mut name = path.as_os_str().to_owned();
        name.push(".infire-fingerprint.json");
        PathBuf::from(name)
    };
    let mut places = vec![beside];
    if let Some(root) = cache_root() {
        // Keyed by the model's absolute path: one cache file per model location.
        let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let key = Sha256::digest(abs.to_string_lossy().as_bytes());
        let key: String = key[..16].iter().map(|b| format!("{b:02x}")).collect();
        places.push(root.join("fingerprints").join(format!("{key}.json")));
    }
    places
}

/// The cached fingerprint at `place` when it was made from exactly `stamps`.
fn read_cache(place: &Path, stamps: &[FileStamp]) -> Option<String> {
    let text = std::fs::read(place).ok()?;
    let cached: Cached = serde_json::from_slice(&text).ok()?;
    (cached.version == VERSION && cached.files == stamps).then_some(cached.fingerprint)
}

/// Writes the cache file through a temporary file and a rename, so a reader never sees half.
fn write_cache(place: &Path, text: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = place.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = place.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, place).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
#[path = "fingerprint_tests.rs"]
mod tests;
