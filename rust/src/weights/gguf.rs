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
mod test_writer;

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
mod tests {
    use super::test_writer::{err_of, f32_bytes, llama_cpp_permute, sample, Builder};
    use super::*;

    #[test]
    fn parses_metadata_and_tensors() {
        let file = GgufFile::from_bytes(sample().build()).unwrap();
        assert_eq!((file.version(), file.alignment()), (3, 32));
        assert_eq!(file.architecture(), Some("qwen2"));
        assert_eq!(file.get("f"), Some(&GgufValue::F32(0.5)));
        assert_eq!(file.get("b"), Some(&GgufValue::Bool(true)));
        assert_eq!(file.get("i8"), Some(&GgufValue::I8(-1)));
        assert_eq!(file.get("u64").and_then(GgufValue::as_u64), Some(u64::MAX));
        assert_eq!(file.get("f64"), Some(&GgufValue::F64(2.5)));
        let tokens = file.get("tokens").and_then(GgufValue::as_array).unwrap();
        assert_eq!(tokens[1].as_str(), Some("héllo"));
        let nested = GgufValue::Array(vec![GgufValue::Array(vec![
            GgufValue::I32(-1),
            GgufValue::I32(7),
        ])]);
        assert_eq!(file.get("nested"), Some(&nested));
        let names = file.names();
        assert_eq!(
            names,
            [
                "model.embed_tokens.weight",
                "model.layers.0.self_attn.k_proj.weight",
                "model.layers.0.self_attn.q_proj.bias",
                "rope_freqs.weight"
            ]
        );
        let embed = file.load_f32("model.embed_tokens.weight").unwrap();
        assert_eq!(embed.shape, [2, 3], "GGUF dims [3, 2] are 2 rows of 3");
        assert_eq!(embed.data, [0., 1., 2., 3., 4., 5.]);
        let bias = file
            .load_f32("model.layers.0.self_attn.q_proj.bias")
            .unwrap();
        assert_eq!((bias.shape, bias.data), (vec![2], vec![1.0, -2.0]));
        let k = file
            .load_f32("model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        assert_eq!((k.shape, k.data), (vec![1, 32], vec![1.0; 32]));
        assert_eq!(file.load_f32("rope_freqs.weight").unwrap().data, [9.0]);
        assert!(file.contains("model.layers.0.self_attn.q_proj.bias"));
        assert!(!file.contains("lm_head.weight"));
        assert!(file
            .load_f32("lm_head.weight")
            .unwrap_err()
            .to_string()
            .contains("no tensor"));

        let mut v2 = sample();
        v2.version = 2;
        assert_eq!(GgufFile::from_bytes(v2.build()).unwrap().version(), 2);
    }

    #[test]
    fn honours_general_alignment() {
        let mut b = Builder::new().kv_u32("general.alignment", 256);
        b.alignment = 256;
        let b = b
            .tensor("a", &[1], 0, &f32_bytes(&[1.0]))
            .tensor("b", &[1], 0, &f32_bytes(&[2.0]));
        let file = GgufFile::from_bytes(b.build()).unwrap();
        assert_eq!(file.alignment(), 256);
        assert_eq!(file.tensors()[1].offset, 256);
        assert_eq!(file.load_f32("b").unwrap().data, [2.0]);
        for bad in [48, 0, 1, 4] {
            let e = err_of(Builder::new().kv_u32("general.alignment", bad).build());
            assert!(e.contains("general.alignment"), "{bad}: {e}");
        }
        let mut nan = Builder::new().tensor("n", &[2], 0, &f32_bytes(&[1.0, f32::NAN]));
        nan.alignment = 32;
        let e = GgufFile::from_bytes(nan.build())
            .unwrap()
            .load_f32("n")
            .unwrap_err();
        assert!(
            e.to_string().contains("tensor n holds a non-finite value"),
            "{e}"
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = sample().build();
        for len in 0..full.len() {
            assert!(
                GgufFile::from_bytes(full[..len].to_vec()).is_err(),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let full = sample().build();
        for at in 0..full.len() {
            for mask in [0x01, 0x80, 0xFF] {
                let mut bytes = full.clone();
                bytes[at] ^= mask;
                if let Ok(file) = GgufFile::from_bytes(bytes) {
                    for name in file.names() {
                        let _ = file.load_f32(&name);
                    }
                }
            }
        }
    }

    #[test]
    fn tensor_data_past_the_end() {
        let b = Builder::new()
            .tensor("blk.3.attn_q.weight", &[2], 0, &[0; 8])
            .info("late", &[4], 0, 64);
        let e = err_of(b.build());
        assert!(
            e.contains("tensor late: data range 192..208 exceeds file size 136"),
            "{e}"
        );
        let e = err_of(Builder::new().info("far", &[1], 0, u64::MAX).build());
        assert!(e.contains("exceeds file size"), "{e}");
        let e = err_of(
            Builder::new()
                .info("big", &[1 << 40, 1 << 20], 0, 0)
                .build(),
        );
        assert!(e.contains("exceeds file size"), "{e}");
    }

    #[test]
    fn row_not_a_whole_number_of_blocks() {
        let e = err_of(Builder::new().tensor("q", &[16, 2], 2, &[0; 18]).build());
        assert!(
            e.contains("row length 16 is not a multiple of the Q4_0 block size 32"),
            "{e}"
        );
    }

    #[test]
    fn unknown_and_unsupported_types_fail_only_at_load() {
        let b = Builder::new()
            .info("odd", &[8], 99, 0)
            .tensor("iq", &[256], 16, &[0; 66]);
        let file = GgufFile::from_bytes(b.build()).unwrap();
        let e = file.load_f32("odd").unwrap_err();
        assert!(
            matches!(e, Error::Unsupported(_)) && e.to_string().contains("unknown ggml type id 99"),
            "{e}"
        );
        let e = file.load_f32("iq").unwrap_err().to_string();
        assert!(
            e.contains("tensor iq: ggml type IQ2_XXS cannot be dequantized"),
            "{e}"
        );
    }

    #[test]
    fn unpermutes_q_and_k_for_llama_only() {
        let (q, k): (Vec<f32>, Vec<f32>) = (
            (0..16 * 2).map(|v| v as f32).collect(),
            (0..8).map(|v| -(v as f32)).collect(),
        );
        let build = |arch: &str| {
            Builder::new()
                .kv_str("general.architecture", arch)
                .kv_u32("llama.attention.head_count", 4)
                .kv_u32("llama.attention.head_count_kv", 2)
                .tensor(
                    "blk.0.attn_q.weight",
                    &[2, 16],
                    0,
                    &f32_bytes(&llama_cpp_permute(&q, 16, 4)),
                )
                .tensor(
                    "blk.0.attn_k.bias",
                    &[8],
                    0,
                    &f32_bytes(&llama_cpp_permute(&k, 8, 2)),
                )
                .build()
        };
        let llama = GgufFile::from_bytes(build("llama")).unwrap();
        assert_eq!(
            llama
                .load_f32("model.layers.0.self_attn.q_proj.weight")
                .unwrap()
                .data,
            q
        );
        assert_eq!(
            llama
                .load_f32("model.layers.0.self_attn.k_proj.bias")
                .unwrap()
                .data,
            k
        );
        let qwen = GgufFile::from_bytes(build("qwen2")).unwrap();
        let stored = qwen
            .load_f32("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .data;
        assert_eq!(stored, llama_cpp_permute(&q, 16, 4));
    }

    #[test]
    fn llama_head_counts_are_checked_when_q_or_k_loads() {
        let rows: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let with = |b: Builder| {
            let b = b.kv_str("general.architecture", "llama");
            let b = b.tensor("blk.0.attn_k.bias", &[8], 0, &f32_bytes(&rows));
            GgufFile::from_bytes(
                b.tensor("output_norm.weight", &[8], 0, &f32_bytes(&rows))
                    .build(),
            )
            .unwrap()
        };
        let k = "model.layers.0.self_attn.k_proj.bias";
        let e = with(Builder::new()).load_f32(k).unwrap_err().to_string();
        assert!(e.contains("head_count missing"), "{e}");
        assert_eq!(
            with(Builder::new())
                .load_f32("model.norm.weight")
                .unwrap()
                .data,
            rows
        );
        let bad = Builder::new().kv_u32("llama.attention.head_count", 1);
        let e = with(bad.kv_str("llama.attention.head_count_kv", "2"))
            .load_f32(k)
            .unwrap_err();
        assert!(e.to_string().contains("not an integer"), "{e}");
        // Without head_count_kv, K has as many heads as Q (llama.cpp's default).
        let one_head = with(Builder::new().kv_u32("llama.attention.head_count", 1));
        assert_eq!(
            one_head.load_f32(k).unwrap().data,
            [0., 2., 4., 6., 1., 3., 5., 7.]
        );
        let e = with(Builder::new().kv_u32("llama.attention.head_count", 3)).load_f32(k);
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("cannot be split into 3 heads"));
    }

    /// `raw` offers block-quantized tensors only, with the Q/K rows in Hugging Face order
    /// (their dequantization equals `load_f32`), and refuses a block with an infinite scale.
    #[test]
    fn raw_blocks_are_unpermuted_and_checked() {
        // 8 rows of one Q4_1 block (20 bytes): scale 2⁻⁴ and min −2⁻³ (f16), then the row's
        // index in every nibble, so that each row dequantizes to its own values.
        let block = |row: u8, d: [u8; 2]| {
            let mut b = vec![d[0], d[1], 0x00, 0xB0];
            b.extend([row | (row << 4); 16]);
            b
        };
        let good: Vec<u8> = (0..8).flat_map(|r| block(r, [0x00, 0x2C])).collect();
        let mut bad = good.clone();
        bad[20..22].copy_from_slice(&[0x00, 0x7C]);
        let file = GgufFile::from_bytes(
            Builder::new()
                .kv_str("general.architecture", "llama")
                .kv_u32("llama.attention.head_count", 2)
                .tensor("blk.0.attn_q.weight", &[32, 8], 3, &good)
                .tensor("blk.0.attn_v.weight", &[32, 8], 3, &good)
                .tensor("blk.0.attn_k.weight", &[32, 8], 3, &bad)
                .tensor("output_norm.weight", &[2], 0, &f32_bytes(&[1.0, 2.0]))
                .build(),
        )
        .unwrap();
        for (name, permuted) in [("q_proj", true), ("v_proj", false)] {
            let name = format!("model.layers.0.self_attn.{name}.weight");
            let raw = file.raw(&name).unwrap();
            assert_eq!((raw.dtype, raw.shape), ("Q4_1", &[8, 32][..]));
            assert_eq!(raw.bytes != &good[..], permuted, "{name}");
            let values = dequantize(GgmlType::Q4_1, raw.bytes, 256).unwrap();
            assert_eq!(values, file.load_f32(&name).unwrap().data, "{name}");
        }
        assert!(file.raw("model.layers.0.self_attn.k_proj.weight").is_none());
        assert!(file.raw("model.norm.weight").is_none());
        assert!(file.raw("lm_head.weight").is_none());
    }

    /// Reads `tiny_llama.gguf`, written by gguf-py's `GGUFWriter`, and compares every tensor with
    /// gguf-py's dequantization followed by transformers' un-permutation
    /// (`tests/make_gguf_fixtures.py`). Exact: both sides do the same f32 arithmetic.
    #[test]
    fn matches_gguf_py_and_transformers_fixture() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let file = GgufFile::open(&dir.join("tiny_llama.gguf")).unwrap();
        assert_eq!(file.architecture(), Some("llama"));
        assert_eq!(
            file.get("general.name").and_then(GgufValue::as_str),
            Some("tiny llama fixture")
        );
        assert_eq!(
            file.get("llama.attention.head_count_kv")
                .and_then(GgufValue::as_u64),
            Some(2)
        );
        assert_eq!(
            file.get("tokenizer.ggml.add_bos_token"),
            Some(&GgufValue::Bool(true))
        );
        let tokens = file
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .unwrap();
        assert_eq!(
            tokens
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect::<Vec<_>>(),
            ["<s>", "</s>", "héllo", "wörld"]
        );
        assert_eq!(
            file.get("fixture.negative").and_then(GgufValue::as_i64),
            Some(-5)
        );
        assert_eq!(
            file.get("fixture.pi"),
            Some(&GgufValue::F64(std::f64::consts::PI))
        );

        let expected = std::fs::read(dir.join("tiny_llama.expected.bin")).unwrap();
        let mut rest = &expected[..];
        let mut take = |n: usize| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        };
        let (mut seen, mut compared) = (0, 0);
        while seen < file.tensors().len() {
            let name_len = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
            let name = String::from_utf8(take(name_len).to_vec()).unwrap();
            let rank = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
            let shape: Vec<usize> = (0..rank)
                .map(|_| u64::from_le_bytes(take(8).try_into().unwrap()) as usize)
                .collect();
            let n: usize = shape.iter().product();
            let want: Vec<f32> = take(4 * n)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            if want.iter().any(|v| !v.is_finite()) {
                // Random bits include infinities and NaNs: such a weight is refused by name.
                let e = file.load_f32(&name).unwrap_err().to_string();
                assert!(e.contains("holds a non-finite value"), "{name}: {e}");
                seen += 1;
                continue;
            }
            compared += 1;
            let got = file.load_f32(&name).unwrap();
            assert_eq!(got.shape, shape, "{name}");
            for (i, (g, w)) in got.data.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: {g} != {w}");
            }
            seen += 1;
        }
        assert!(rest.is_empty());
        assert!(compared > 0, "no tensor was compared bit for bit");
    }
}
