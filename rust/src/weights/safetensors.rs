//! Hugging Face safetensors reader: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists, memory-mapped and converted to f32 on demand.
//!
//! A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
//! (`{"name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]}, ...}` plus an
//! optional `"__metadata__"` map of strings), then the data; offsets are relative to the data.
//! Every entry is checked at open time (offsets inside the file, byte length equal to shape times
//! element size), so a tensor that loads is exactly as described.
//!
//! FP8 (`F8_E4M3`) weights are read with the scale tensors `quantization_config` names
//! ([`crate::config::Fp8Config`]): handed over as stored through [`WeightSource::fp8`], or
//! dequantized by [`WeightSource::load_f32`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use half::f16;
use memmap2::Mmap;
use rayon::prelude::*;
use serde::Deserialize;

use super::finite::{check_finite, sample_is_finite};
use super::fp8::dequantize;
use super::{Fp8Tensor, HostTensor, RawTensor, WeightSource};
use crate::config::Fp8Config;
use crate::error::{Error, Result};

#[path = "safetensors_fp8.rs"]
mod fp8_reader;

/// The single-file checkpoint name transformers writes.
const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
const INDEX_FILE: &str = "model.safetensors.index.json";
/// Largest JSON header accepted, as in the `safetensors` crate (`MAX_HEADER_SIZE`).
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Elements converted per rayon task.
const ELEMENTS_PER_TASK: usize = 1 << 16;

/// One tensor's description in a safetensors header, checked against its file.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    /// The dtype as written (`"F32"`, `"BF16"`, `"I64"`, ...).
    dtype: String,
    /// Row-major shape.
    shape: Vec<usize>,
    /// Absolute byte range in the file; inside the file, and exactly shape × element size long
    /// when the dtype's element size is known.
    range: Range<usize>,
}

/// A header entry as serialized.
#[derive(Deserialize)]
struct RawEntry {
    /// Element type name.
    dtype: String,
    /// Row-major shape.
    shape: Vec<u64>,
    /// Begin and end, relative to the end of the header.
    data_offsets: [u64; 2],
}

/// The `weight_map` of `model.safetensors.index.json` (other fields are ignored).
#[derive(Deserialize)]
struct RawIndex {
    /// Tensor name → shard file name (in the index's directory).
    weight_map: BTreeMap<String, String>,
}

/// One memory-mapped file of the checkpoint.
struct Shard {
    /// Named in errors.
    path: PathBuf,
    /// The whole file.
    mmap: Mmap,
}

/// The tensors of a Hugging Face checkpoint directory, read from memory-mapped safetensors files.
pub struct SafetensorsWeights {
    /// The open files.
    shards: Vec<Shard>,
    /// Tensor name → (index in `shards`, entry).
    tensors: BTreeMap<String, (usize, Entry)>,
    /// How FP8 weights are scaled (the config's `quantization_config`); `None`: an FP8 weight
    /// is an error.
    quantization: Option<Fp8Config>,
}

impl SafetensorsWeights {
    /// Opens the checkpoint in `dir`: `model.safetensors` if present, otherwise the shards listed
    /// in `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::open_file(&single);
        }
        let index_path = dir.join(INDEX_FILE);
        if !index_path.is_file() {
            let reason = if dir.is_dir() {
                format!("no {SINGLE_FILE} or {INDEX_FILE} in the directory")
            } else {
                "not a directory".to_string()
            };
            return Err(Error::ModelNotFound {
                path: dir.to_path_buf(),
                reason,
            });
        }
        let text = std::fs::read(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let index: RawIndex = serde_json::from_slice(&text)
            .map_err(|e| Error::invalid_model(&index_path, format!("bad index JSON: {e}")))?;
        let mut shard_of_file = BTreeMap::new();
        let mut parsed = Vec::new();
        let mut tensors = BTreeMap::new();
        for (name, file) in &index.weight_map {
            let shard = match shard_of_file.get(file.as_str()) {
                Some(&i) => i,
                None => {
                    let path = shard_path(dir, &index_path, file)?;
                    if !path.is_file() {
                        let reason = format!("shard {file} (holding {name}) is missing");
                        return Err(Error::invalid_model(&index_path, reason));
                    }
                    parsed.push(open_shard(&path)?);
                    shard_of_file.insert(file.as_str(), parsed.len() - 1);
                    parsed.len() - 1
                }
            };
            let entry = parsed[shard].1.get(name).cloned().ok_or_else(|| {
                let reason = format!("index maps {name} to {file}, which does not contain it");
                Error::invalid_model(&index_path, reason)
            })?;
            tensors.insert(name.clone(), (shard, entry));
        }
        let shards = parsed.into_iter().map(|(shard, _)| shard).collect();
        Ok(SafetensorsWeights {
            shards,
            tensors,
            quantization: None,
        })
    }

    /// Opens one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        let (shard, entries) = open_shard(path)?;
        let tensors = entries
            .into_iter()
            .map(|(name, entry)| (name, (0, entry)))
            .collect();
        Ok(SafetensorsWeights {
            shards: vec![shard],
            tensors,
            quantization: None,
        })
    }

    /// Reads FP8 weights as `quantization` (the model config's) declares them.
    pub fn with_quantization(mut self, quantization: Option<Fp8Config>) -> Self {
        self.quantization = quantization;
        self
    }

    /// A tensor's dtype as written in its file (`"BF16"`), if the tensor exists.
    pub fn dtype(&self, name: &str) -> Option<&str> {
        self.tensors.get(name).map(|(_, e)| e.dtype.as_str())
    }

    /// A tensor's row-major shape, if the tensor exists.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|(_, e)| e.shape.as_slice())
    }
}

impl WeightSource for SafetensorsWeights {
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn load_f32(&self, name: &str) -> Result<HostTensor> {
        let Some((shard, entry)) = self.tensors.get(name) else {
            let reason = format!(
                "no tensor {name} ({} tensors in checkpoint)",
                self.tensors.len()
            );
            let path = self
                .shards
                .first()
                .map_or_else(PathBuf::new, |s| s.path.clone());
            return Err(Error::invalid_model(path, reason));
        };
        if let Some(t) = self.fp8(name) {
            let t = t?;
            return Ok(HostTensor {
                shape: t.shape.to_vec(),
                data: dequantize(&t),
            });
        }
        let shard = &self.shards[*shard];
        let data = convert(&entry.dtype, &shard.mmap[entry.range.clone()]).map_err(|e| {
            Error::Unsupported(format!("{}: tensor {name}: {e}", shard.path.display()))
        })?;
        check_finite(&data)
            .map_err(|e| Error::invalid_model(&shard.path, format!("tensor {name} {e}")))?;
        Ok(HostTensor {
            shape: entry.shape.clone(),
            data,
        })
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        let (shard, entry) = self.tensors.get(name)?;
        let bytes = &self.shards[*shard].mmap[entry.range.clone()];
        // FP8 codes mean nothing without their scales: they go through `fp8`.
        if entry.dtype.starts_with("F8_") || !sample_is_finite(&entry.dtype, bytes) {
            return None;
        }
        Some(RawTensor {
            dtype: &entry.dtype,
            shape: &entry.shape,
            bytes,
        })
    }

    fn fp8(&self, name: &str) -> Option<Result<Fp8Tensor<'_>>> {
        let (shard, entry) = self.tensors.get(name)?;
        match entry.dtype.as_str() {
            "F8_E4M3" => Some(self.fp8_tensor(name, *shard, entry)),
            "F8_E5M2" => Some(Err(Error::Unsupported(format!(
                "{}: tensor {name}: dtype F8_E5M2 (FP8 weights must be e4m3, F8_E4M3)",
                self.shards[*shard].path.display()
            )))),
            _ => None,
        }
    }
}

/// `dir/file` for a shard named in the index, refusing names that would leave the directory.
fn shard_path(dir: &Path, index_path: &Path, file: &str) -> Result<PathBuf> {
    let mut components = Path::new(file).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) => Ok(dir.join(file)),
        _ => Err(Error::invalid_model(
            index_path,
            format!("shard name {file:?} is not a plain file name"),
        )),
    }
}

/// Memory-maps and parses one file.
fn open_shard(path: &Path) -> Result<(Shard, BTreeMap<String, Entry>)> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::ModelNotFound {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        _ => Error::io(path, e),
    })?;
    // SAFETY: the map is read-only; as with every mmap-based reader, a file truncated or
    // rewritten by another process while it is open is outside what we can defend against.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let entries = parse_header(&mmap).map_err(|reason| Error::invalid_model(path, reason))?;
    Ok((
        Shard {
            path: path.to_path_buf(),
            mmap,
        },
        entries,
    ))
}

/// Parses and checks the header of the safetensors file `bytes`.
fn parse_header(bytes: &[u8]) -> Result<BTreeMap<String, Entry>, String> {
    let Some((len_bytes, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(format!(
            "file of {} bytes is too short for a safetensors header",
            bytes.len()
        ));
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    if header_len > rest.len() as u64 || header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "header length {header_len} exceeds the file size {} or the {MAX_HEADER_BYTES}-byte \
             limit",
            bytes.len()
        ));
    }
    let (header, data) = rest.split_at(header_len as usize);
    let data_start = 8 + header.len();
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("bad header JSON: {e}"))?;
    let mut entries = BTreeMap::new();
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let e: RawEntry =
            serde_json::from_value(value).map_err(|e| format!("tensor {name}: {e}"))?;
        let shape: Option<Vec<usize>> = e.shape.iter().map(|&d| usize::try_from(d).ok()).collect();
        let numel = shape
            .as_ref()
            .and_then(|s| s.iter().try_fold(1usize, |n, &d| n.checked_mul(d)));
        let (Some(shape), Some(numel)) = (shape, numel) else {
            return Err(format!("tensor {name}: shape {:?} overflows", e.shape));
        };
        let [begin, end] = e.data_offsets;
        if begin > end || end > data.len() as u64 {
            return Err(format!(
                "tensor {name}: data offsets {begin}..{end} exceed the {} data bytes",
                data.len()
            ));
        }
        if let Some(size) = dtype_size(&e.dtype) {
            let want = (numel as u128) * (size as u128);
            if want != u128::from(end - begin) {
                return Err(format!(
                    "tensor {name}: shape {:?} of {} needs {want} bytes, offsets give {}",
                    e.shape,
                    e.dtype,
                    end - begin
                ));
            }
        }
        // end <= data.len(), so the casts are lossless.
        let range = data_start + begin as usize..data_start + end as usize;
        entries.insert(
            name,
            Entry {
                dtype: e.dtype,
                shape,
                range,
            },
        );
    }
    Ok(entries)
}

/// Bytes per element of a safetensors dtype, for the dtypes whose elements are whole bytes.
fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Converts little-endian `bytes` of `dtype` (F32, F16 or BF16) to f32, in parallel.
/// The length is a whole number of elements (checked when the header was parsed).
fn convert(dtype: &str, bytes: &[u8]) -> Result<Vec<f32>, String> {
    Ok(match dtype {
        "F32" => convert_le::<4>(bytes, f32::from_le_bytes),
        "F16" => convert_le::<2>(bytes, |b| f16::from_le_bytes(b).to_f32()),
        // bf16 is the high half of an f32.
        "BF16" => convert_le::<2>(bytes, |b| {
            f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)
        }),
        other => {
            return Err(format!(
                "dtype {other} cannot be converted to f32 (F32, F16, BF16 can)"
            ))
        }
    })
}

/// Applies `to_f32` to each `N`-byte element of `bytes`. Generic so each dtype's loop is
/// compiled with its conversion inlined.
fn convert_le<const N: usize>(bytes: &[u8], to_f32: impl Fn([u8; N]) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; bytes.len() / N];
    out.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(bytes.par_chunks(ELEMENTS_PER_TASK * N))
        .for_each(|(ys, xs)| {
            for (y, x) in ys.iter_mut().zip(xs.chunks_exact(N)) {
                let mut element = [0u8; N];
                element.copy_from_slice(x);
                *y = to_f32(element);
            }
        });
    out
}

#[cfg(test)]
#[path = "safetensors_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "safetensors_fp8_tests.rs"]
mod fp8_tests;
