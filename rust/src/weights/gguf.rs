//! GGUF reader (versions 2 and 3, little-endian), memory-mapped.
//!
//! Layout: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count, the metadata
//! key/value pairs, the tensor infos (name, dims fastest-first, ggml type, offset), padding to
//! `general.alignment` (default 32), then the tensor data; tensor offsets are relative to it.
//!
//! `header` parses all of that up to the data, bounding every length by the bytes that remain;
//! this file checks each tensor's data range, so a truncated or hostile file yields
//! [`Error::InvalidModel`], never a panic or a huge allocation. Tensors are dequantized to f32 on
//! demand and handed out under Hugging Face names (`hf_names`), with llama.cpp's Q/K row
//! permutation undone for the `llama` architecture.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::Mmap;

use super::finite::check_finite;
use super::ggml_quants::{block_scales_finite, dequantize, DequantError, GgmlType};
use super::gguf_value::GgufValue;
use super::{HostTensor, RawTensor, WeightSource};
use crate::error::{Error, Result};

mod header;
mod hf_names;
#[cfg(test)]
pub(crate) mod test_writer;

pub use hf_names::{hf_name, reverse_permute_rows};

/// One tensor as described in the file's header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// The tensor's GGUF name (`blk.3.attn_q.weight`).
    pub name: String,
    /// Dimensions as GGUF lists them, fastest-varying first (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    /// The ggml type id as stored; see [`GgufTensorInfo::ggml_type`].
    pub type_id: u32,
    /// Byte offset of the data from the start of the data section.
    pub offset: u64,
    /// Number of elements, the product of `dims` (checked not to overflow).
    pub n_elements: usize,
}

impl GgufTensorInfo {
    /// The tensor's ggml type, or `None` for a type id this build does not know.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        GgmlType::from_id(self.type_id)
    }

    /// The shape in row-major (Hugging Face / PyTorch) order: `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        // Lossless on the 64-bit targets Infire builds for.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// The bytes of the file: memory-mapped from disk, or owned (files built in memory).
enum Storage {
    /// A file opened with [`GgufFile::open`].
    Mapped(Mmap),
    /// Bytes given to [`GgufFile::from_bytes`].
    Owned(Vec<u8>),
}

/// An open GGUF file: parsed header and metadata, with tensor data read on demand.
pub struct GgufFile {
    /// Where the file came from; named in every error.
    path: PathBuf,
    /// The whole file.
    storage: Storage,
    /// The GGUF version (2 or 3).
    version: u32,
    /// Alignment of the data section and tensor data, a power of two.
    alignment: u64,
    /// Offset of the data section in the file; may equal the file size when there is no data.
    data_start: usize,
    /// Metadata, keys unique.
    metadata: BTreeMap<String, GgufValue>,
    /// Tensor infos in file order; each known-type tensor's data lies inside the file.
    tensors: Vec<GgufTensorInfo>,
    /// Hugging Face name (or, for a tensor with no HF equivalent, its GGUF name) → index in
    /// `tensors`.
    by_hf_name: BTreeMap<String, usize>,
    /// Each tensor's row-major shape ([`GgufTensorInfo::shape`]), kept for [`WeightSource::raw`].
    shapes: Vec<Vec<usize>>,
    /// Per tensor, its quantized rows with llama.cpp's Q/K permutation undone, made on the
    /// first [`WeightSource::raw`] of a permuted tensor (`None`: the rows cannot be split
    /// into the file's heads; `load_f32` reports why).
    unpermuted: Vec<OnceLock<Option<Box<[u8]>>>>,
}

impl GgufFile {
    /// Memory-maps and parses the GGUF file at `path`, checking the header and that every
    /// tensor's data lies within the file.
    pub fn open(path: &Path) -> Result<GgufFile> {
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
        Self::parse(path.to_path_buf(), Storage::Mapped(mmap))
    }

    /// Parses a GGUF file held in memory; errors name the file `<memory>`.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(PathBuf::from("<memory>"), Storage::Owned(bytes))
    }

    /// Parses the header in `storage` and checks every tensor's name and data range.
    fn parse(path: PathBuf, storage: Storage) -> Result<GgufFile> {
        let bytes = match &storage {
            Storage::Mapped(m) => &m[..],
            Storage::Owned(v) => &v[..],
        };
        let header = header::parse_header(&path, bytes)?;
        let mut by_gguf_name = HashMap::new();
        let mut by_hf_name = BTreeMap::new();
        for (i, info) in header.tensors.iter().enumerate() {
            if by_gguf_name.insert(info.name.as_str(), i).is_some() {
                let reason = format!("tensor name {} appears twice", info.name);
                return Err(Error::invalid_model(&path, reason));
            }
            // Unknown types are reported when the tensor is loaded; a model may never need it.
            if info.ggml_type().is_some() {
                locate(&path, header.data_start, info, bytes.len())?;
            }
            let hf = hf_name(&info.name).unwrap_or_else(|| info.name.clone());
            if let Some(j) = by_hf_name.insert(hf.clone(), i) {
                let other = &header.tensors[j].name;
                let reason = format!("tensors {other} and {} both map to {hf}", info.name);
                return Err(Error::invalid_model(&path, reason));
            }
        }
        Ok(GgufFile {
            path,
            storage,
            version: header.version,
            alignment: header.alignment,
            data_start: header.data_start,
            metadata: header.metadata,
            shapes: header.tensors.iter().map(GgufTensorInfo::shape).collect(),
            unpermuted: header.tensors.iter().map(|_| OnceLock::new()).collect(),
            tensors: header.tensors,
            by_hf_name,
        })
    }

    /// The file's path (`<memory>` for [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the tensor data in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// `general.architecture` (`"llama"`, `"qwen2"`, ...), if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(GgufValue::as_str)
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The raw (still quantized) bytes of a tensor, in the file's layout, with its type.
    pub fn tensor_data(&self, info: &GgufTensorInfo) -> Result<(GgmlType, &[u8])> {
        let bytes = self.bytes();
        let (ty, range) = locate(&self.path, self.data_start, info, bytes.len())?;
        Ok((ty, &bytes[range]))
    }

    /// The whole file.
    fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }

    /// An [`Error::InvalidModel`] naming this file.
    fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::invalid_model(&self.path, reason)
    }

    /// Number of heads whose rows llama.cpp's converter interleaved for this tensor, if any.
    ///
    /// llama.cpp permutes the rows of Q and K (weights and biases) of `llama` models so that its
    /// RoPE can rotate adjacent pairs; Hugging Face's rotates halves. transformers undoes this
    /// only for `llama` (`LlamaTensorProcessor`), with the KV head count for K.
    fn interleaved_heads(&self, gguf_name: &str) -> Result<Option<usize>> {
        if self.architecture() != Some("llama") {
            return Ok(None);
        }
        let is_q = gguf_name.contains(".attn_q.");
        if !is_q && !gguf_name.contains(".attn_k.") {
            return Ok(None);
        }
        let count = |key: &str| match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                self.invalid(format!(
                    "{key} is {v:?}, not an integer; needed to load {gguf_name}"
                ))
            }),
        };
        let heads = count("llama.attention.head_count")?.ok_or_else(|| {
            self.invalid(format!(
                "llama.attention.head_count missing; needed to load {gguf_name}"
            ))
        })?;
        // llama.cpp defaults the KV head count to the head count.
        let kv_heads = count("llama.attention.head_count_kv")?.unwrap_or(heads);
        let heads = if is_q { heads } else { kv_heads };
        Ok(Some(usize::try_from(heads).unwrap_or(usize::MAX)))
    }
}

impl WeightSource for GgufFile {
    fn contains(&self, name: &str) -> bool {
        self.by_hf_name.contains_key(name)
    }

    fn load_f32(&self, name: &str) -> Result<HostTensor> {
        let info = self
            .by_hf_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| {
                self.invalid(format!(
                    "no tensor {name} ({} tensors in file)",
                    self.tensors.len()
                ))
            })?;
        let gguf_name = &info.name;
        let (ty, bytes) = self.tensor_data(info)?;
        let mut data = dequantize(ty, bytes, info.n_elements).map_err(|e| match e {
            DequantError::UnsupportedType(_) => {
                Error::Unsupported(format!("{}: tensor {gguf_name}: {e}", self.path.display()))
            }
            _ => self.invalid(format!("tensor {gguf_name}: {e}")),
        })?;
        check_finite(&data).map_err(|e| self.invalid(format!("tensor {gguf_name} {e}")))?;
        let shape = info.shape();
        if let Some(heads) = self.interleaved_heads(gguf_name)? {
            data = reverse_permute_rows(&data, &shape, heads)
                .map_err(|e| self.invalid(format!("tensor {gguf_name}: {e}")))?;
        }
        Ok(HostTensor { shape, data })
    }

    fn names(&self) -> Vec<String> {
        self.by_hf_name.keys().cloned().collect()
    }

    /// The blocks of a block-quantized tensor (`dtype` is ggml's type name, `"Q4_1"`; each row
    /// is a whole number of blocks), with llama.cpp's Q/K row permutation undone as in
    /// `load_f32`. Dense tensors (F32, F16, BF16) are not offered: they load through f32.
    /// `None` as well when a block's scale is not finite, so that `load_f32` reports it.
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        let &i = self.by_hf_name.get(name)?;
        let info = &self.tensors[i];
        let (ty, bytes) = self.tensor_data(info).ok()?;
        if !block_scales_finite(ty, bytes) {
            return None;
        }
        let shape = &self.shapes[i];
        let bytes = match self.interleaved_heads(&info.name).ok()? {
            None => bytes,
            Some(heads) => self.unpermuted[i]
                .get_or_init(|| {
                    reverse_permute_rows(bytes, shape, heads)
                        .ok()
                        .map(Vec::into_boxed_slice)
                })
                .as_deref()?,
        };
        Some(RawTensor {
            dtype: ty.name(),
            shape,
            bytes,
        })
    }
}

/// The type and byte range of `info`'s data in a file of `file_len` bytes whose data section
/// starts at `data_start`. Errors for an unknown type, a row length that is not a whole number of
/// blocks, or data past the end of the file.
fn locate(
    path: &Path,
    data_start: usize,
    info: &GgufTensorInfo,
    file_len: usize,
) -> Result<(GgmlType, Range<usize>)> {
    let name = &info.name;
    let Some(ty) = info.ggml_type() else {
        let (path, id) = (path.display(), info.type_id);
        return Err(Error::Unsupported(format!(
            "{path}: tensor {name} has unknown ggml type id {id}"
        )));
    };
    let (block, row) = (
        ty.block_size() as u64,
        info.dims.first().copied().unwrap_or(1),
    );
    if row % block != 0 {
        let reason = format!(
            "tensor {name}: row length {row} is not a multiple of the {ty} block size {block}"
        );
        return Err(Error::invalid_model(path, reason));
    }
    // In u128 nothing here can overflow: offset < 2^64, and n_elements < 2^64 shrinks per block.
    let start = data_start as u128 + u128::from(info.offset);
    let end = start + (info.n_elements as u128 / u128::from(block)) * ty.type_size() as u128;
    if end > file_len as u128 {
        let reason =
            format!("tensor {name}: data range {start}..{end} exceeds file size {file_len}");
        return Err(Error::invalid_model(path, reason));
    }
    // end <= file_len, so both fit in usize.
    Ok((ty, start as usize..end as usize))
}

#[cfg(test)]
mod tests;
