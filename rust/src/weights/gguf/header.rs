//! Parsing of a GGUF header: magic, version, counts, metadata and tensor infos.
//!
//! Every length and count is checked against the bytes that remain before anything is allocated
//! from it, so a truncated or hostile file yields [`Error::InvalidModel`], never a panic or a huge
//! allocation.

use std::collections::BTreeMap;
use std::path::Path;

use super::GgufTensorInfo;
use crate::error::{Error, Result};
use crate::weights::gguf_value::GgufValue;

/// The four bytes every GGUF file starts with.
const MAGIC: &[u8; 4] = b"GGUF";
/// Data alignment when the file has no `general.alignment` key (GGUF_DEFAULT_ALIGNMENT).
const DEFAULT_ALIGNMENT: u64 = 32;
/// Smallest `general.alignment` accepted. The GGUF spec requires "a multiple of 8" and ggml a
/// power of two; a smaller value is no file any writer produces, but one byte flipped in a real
/// file, which would shift the data section and load garbage weights.
const MIN_ALIGNMENT: u64 = 8;
/// ggml's `GGML_MAX_DIMS`: no ggml tensor has more dimensions.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of metadata arrays accepted; bounds the parser's recursion.
const MAX_ARRAY_DEPTH: usize = 4;
/// Most metadata values (array elements included) kept in memory. The largest real tokenizers
/// store well under a million; the cap bounds memory at about 32 bytes per value, since a value
/// in memory is bigger than its 1-byte encoding.
const MAX_METADATA_VALUES: usize = 1 << 24;
/// Fewest bytes one metadata pair takes: key length, empty key, value type, a 1-byte value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// Fewest bytes one tensor info takes: name length, empty name, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;

/// What [`parse_header`] reads from the front of the file.
pub(super) struct Header {
    /// 2 or 3.
    pub(super) version: u32,
    /// `general.alignment` or the default; a power of two.
    pub(super) alignment: u64,
    /// Offset of the data section: the end of the tensor infos, aligned up.
    pub(super) data_start: usize,
    /// Metadata, keys unique.
    pub(super) metadata: BTreeMap<String, GgufValue>,
    /// Tensor infos in file order (data ranges not yet checked).
    pub(super) tensors: Vec<GgufTensorInfo>,
}

/// Reads the fixed header, metadata and tensor infos of the GGUF file `bytes`.
pub(super) fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let mut c = Cursor {
        path,
        bytes,
        pos: 0,
        values: 0,
    };
    if c.take(4, "magic")? != MAGIC {
        return Err(c.invalid(format!("bad magic {:02x?}, expected \"GGUF\"", &bytes[..4])));
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        let hint = match version {
            1 => " (GGUF v1 is obsolete; reconvert the model)",
            v if matches!(v.swap_bytes(), 2 | 3) => " (big-endian GGUF files are not supported)",
            _ => "",
        };
        return Err(c.invalid(format!(
            "unsupported GGUF version {version}, expected 2 or 3{hint}"
        )));
    }
    let n_tensors = c.count("tensor count", MIN_TENSOR_INFO_BYTES)?;
    let n_kv = c.count("metadata count", MIN_KV_BYTES)?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.utf8(&format!("metadata key #{i}"))?;
        let ty = c.u32(&key)?;
        let value = c.value(ty, &key, 0)?;
        if metadata.contains_key(&key) {
            return Err(c.invalid(format!("metadata key {key} appears twice")));
        }
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && (MIN_ALIGNMENT..=u32::MAX as u64).contains(&a) => a,
            _ => {
                return Err(c.invalid(format!(
                    "general.alignment {v:?} is not a power of two of at least {MIN_ALIGNMENT}"
                )))
            }
        },
    };
    let mut tensors = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.utf8(&format!("tensor info #{i}"))?;
        let n_dims = c.u32(&name)?;
        if n_dims > MAX_DIMS {
            return Err(c.invalid(format!(
                "tensor {name}: {n_dims} dimensions, at most {MAX_DIMS} allowed"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&name)?);
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| {
                if d > i64::MAX as u64 {
                    None
                } else {
                    acc.checked_mul(d)
                }
            })
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| c.invalid(format!("tensor {name}: dims {dims:?} overflow")))?;
        let type_id = c.u32(&name)?;
        let offset = c.u64(&name)?;
        tensors.push(GgufTensorInfo {
            name,
            dims,
            type_id,
            offset,
            n_elements,
        });
    }
    let padding = (alignment - c.pos as u64 % alignment) % alignment;
    // pos <= bytes.len() and alignment <= u32::MAX, so this neither overflows nor truncates.
    let data_start = c.pos + padding as usize;
    Ok(Header {
        version,
        alignment,
        data_start,
        metadata,
        tensors,
    })
}

/// A bounds-checked reader over the header bytes.
struct Cursor<'a> {
    /// Named in errors.
    path: &'a Path,
    /// The whole file.
    bytes: &'a [u8],
    /// Next byte to read; always `<= bytes.len()`.
    pos: usize,
    /// Metadata values read so far, against [`MAX_METADATA_VALUES`].
    values: usize,
}

impl<'a> Cursor<'a> {
    /// An [`Error::InvalidModel`] naming the file.
    fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::invalid_model(self.path, reason)
    }

    /// Bytes not yet read.
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes, or an error naming `what` if the file ends first.
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(self.invalid(format!(
                "truncated at offset {}: {what} needs {n} bytes, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    /// A little-endian u32.
    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// A little-endian u64.
    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A u64 count of items that each take at least `min_item_bytes`, checked to fit in what
    /// remains of the file so that it can size an allocation.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = (self.remaining() / min_item_bytes.max(1)) as u64;
        if n > fits {
            return Err(self.invalid(format!(
                "{what} {n} cannot fit in the {} bytes left at offset {}",
                self.remaining(),
                self.pos
            )));
        }
        Ok(n as usize)
    }

    /// A GGUF string's bytes (u64 length, then the bytes).
    fn string_bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = self.u64(what)?;
        self.take(len, what)
    }

    /// A string that must be valid UTF-8 (keys and tensor names).
    fn utf8(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let raw = self.string_bytes(what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| self.invalid(format!("{what} at offset {at} is not valid UTF-8")))
    }

    /// One metadata value of GGUF value type `ty`, for key `key`, at array depth `depth`.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue> {
        self.values += 1;
        if self.values > MAX_METADATA_VALUES {
            return Err(self.invalid(format!("more than {MAX_METADATA_VALUES} metadata values")));
        }
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(key)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(key)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(key)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => GgufValue::Bool(u8::from_le_bytes(self.array(key)?) != 0),
            // Values (unlike keys) are decoded leniently: some converters wrote token strings
            // that are not valid UTF-8, and refusing the whole model for one token helps nobody.
            8 => GgufValue::String(String::from_utf8_lossy(self.string_bytes(key)?).into_owned()),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(format!(
                        "{key}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem = self.u32(key)?;
                let min_bytes = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => {
                        return Err(
                            self.invalid(format!("{key}: unknown array element type {elem}"))
                        )
                    }
                };
                let n = self.count(&format!("{key}: array length"), min_bytes)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(key)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            _ => return Err(self.invalid(format!("{key}: unknown metadata value type {ty}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_writer::{err_of, sample, Builder};
    use super::*;

    #[test]
    fn bad_magic_and_versions() {
        let mut bytes = sample().build();
        bytes[..4].copy_from_slice(b"GGML");
        assert!(err_of(bytes).contains("bad magic"));
        for (version, hint) in [
            (1u32, "obsolete"),
            (4, "expected 2 or 3"),
            (3 << 24, "big-endian"),
        ] {
            let mut b = sample();
            b.version = version;
            let e = err_of(b.build());
            assert!(e.contains(hint), "{e}");
        }
    }

    #[test]
    fn absurd_counts_and_lengths() {
        let header = |n_tensors: u64, n_kv: u64| {
            let mut b = b"GGUF".to_vec();
            b.extend(3u32.to_le_bytes());
            b.extend(n_tensors.to_le_bytes());
            b.extend(n_kv.to_le_bytes());
            b
        };
        assert!(err_of(header(u64::MAX, 0)).contains("tensor count"));
        assert!(err_of(header(0, 1 << 40)).contains("metadata count"));
        let mut huge_key = header(0, 1);
        huge_key.extend(u64::MAX.to_le_bytes());
        huge_key.extend([0; 64]);
        assert!(err_of(huge_key).contains("metadata key #0"));
        let cases: [(Builder, &str); 6] = [
            (
                Builder::new().kv("s", 8, &(1u64 << 62).to_le_bytes()),
                "truncated",
            ),
            (
                Builder::new().kv(
                    "a",
                    9,
                    &[&4u32.to_le_bytes()[..], &u64::MAX.to_le_bytes()].concat(),
                ),
                "array length",
            ),
            (
                Builder::new().kv("a", 9, &[&77u32.to_le_bytes()[..], &[0; 8]].concat()),
                "element type 77",
            ),
            (Builder::new().kv("v", 13, &[0; 8]), "value type 13"),
            (
                Builder::new().kv_u32("k", 1).kv_u32("k", 2),
                "appears twice",
            ),
            (
                Builder::new().info("t", &[1, 1, 1, 1, 1], 0, 0),
                "5 dimensions",
            ),
        ];
        for (b, want) in cases {
            let e = err_of(b.build());
            assert!(e.contains(want), "{e} should mention {want}");
        }
        let mut deep = 0u32.to_le_bytes().to_vec();
        deep.extend(0u64.to_le_bytes());
        for _ in 0..MAX_ARRAY_DEPTH {
            deep = [&9u32.to_le_bytes()[..], &1u64.to_le_bytes(), &deep].concat();
        }
        assert!(err_of(Builder::new().kv("deep", 9, &deep).build()).contains("nested deeper"));
        let e = err_of(Builder::new().info("t", &[1 << 62, 1 << 62], 0, 0).build());
        assert!(e.contains("overflow"), "{e}");
        let b = Builder::new()
            .tensor("t", &[1], 0, &[0; 4])
            .tensor("t", &[1], 0, &[0; 4]);
        assert!(err_of(b.build()).contains("appears twice"));
    }
}
