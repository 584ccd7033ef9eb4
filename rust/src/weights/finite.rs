//! Detection of non-finite weights (NaN, ±inf). A checkpoint holding one loads, runs and emits
//! garbage (token 0 forever, typically); checking at load turns that into an error naming the
//! tensor.
//!
//! Two checks: [`check_finite`] scans every value of a tensor already converted to f32 (one
//! parallel pass over memory the conversion just wrote, small next to the conversion itself);
//! [`sample_is_finite`] looks at an evenly spread sample of a tensor still in its file's dtype,
//! for paths that copy the bytes as they are and convert nothing.

use half::f16;
use rayon::prelude::*;

/// Values per parallel task of [`check_finite`].
const CHUNK: usize = 1 << 16;
/// Values [`sample_is_finite`] looks at per tensor, at most.
const SAMPLES: usize = 4096;

/// `Err` naming the first non-finite value of `data` (by flat index), if there is one.
pub fn check_finite(data: &[f32]) -> Result<(), String> {
    let bad = data
        .par_chunks(CHUNK)
        .enumerate()
        .find_first(|(_, c)| c.iter().any(|v| !v.is_finite()))
        .and_then(|(i, c)| {
            let at = c.iter().position(|v| !v.is_finite())?;
            Some((i * CHUNK + at, c[at]))
        });
    match bad {
        None => Ok(()),
        Some((index, value)) => Err(format!(
            "holds a non-finite value ({value}) at flat index {index}; the checkpoint is corrupt"
        )),
    }
}

/// Whether an evenly spread sample (first and last element included) of `bytes`, little-endian
/// elements of safetensors dtype `dtype`, is finite. Dtypes other than F32, F16 and BF16 are not
/// looked at (`true`).
pub fn sample_is_finite(dtype: &str, bytes: &[u8]) -> bool {
    let (size, to_f32): (usize, fn(&[u8]) -> f32) = match dtype {
        "F32" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "F16" => (2, |b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
        "BF16" => (2, |b| {
            f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
        }),
        _ => return true,
    };
    let n = bytes.len() / size;
    if n == 0 {
        return true;
    }
    let step = n.div_ceil(SAMPLES).max(1);
    (0..n)
        .step_by(step)
        .chain(std::iter::once(n - 1))
        .all(|i| to_f32(&bytes[i * size..(i + 1) * size]).is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_non_finite_value() {
        let mut data = vec![0.5f32; 3 * CHUNK];
        assert!(check_finite(&data).is_ok());
        data[2 * CHUNK + 7] = f32::INFINITY;
        data[CHUNK + 3] = f32::NAN;
        let e = check_finite(&data).unwrap_err();
        assert!(
            e.contains(&format!("index {}", CHUNK + 3)) && e.contains("NaN"),
            "{e}"
        );
    }

    #[test]
    fn samples_each_dtype_and_always_the_last_element() {
        let f32s: Vec<u8> = [1.0f32, 2.0, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert!(!sample_is_finite("F32", &f32s));
        assert!(sample_is_finite("F32", &f32s[..8]));
        let f16s: Vec<u8> = [f16::ONE, f16::INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert!(!sample_is_finite("F16", &f16s));
        // bf16 NaN: exponent all ones, mantissa non-zero.
        assert!(!sample_is_finite("BF16", &[0x80, 0x3F, 0xC1, 0x7F]));
        assert!(sample_is_finite("BF16", &[0x80, 0x3F]));
        assert!(sample_is_finite("I8", &[0xFF]));
        assert!(sample_is_finite("F32", &[]));
    }
}
