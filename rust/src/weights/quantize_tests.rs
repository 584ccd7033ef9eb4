//! Quantization at load: hand-computed blocks, the round trip through ggml's dequantizer,
//! dtype conversion from file bytes, and refusals. (Bit-exactness against a numpy copy of
//! ggml's reference is `tests/test_cpu_quant_load.py`.)

use super::*;
use crate::weights::ggml_quants::dequantize;

/// A reproducible row of `n` values of assorted magnitudes.
fn row(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let unit = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            unit * if i % 7 == 0 { 3.0 } else { 0.1 }
        })
        .collect()
}

#[test]
fn q8_0_block_by_hand() {
    let mut x = [0.0f32; 32];
    x[0] = 127.0; // d = 1
    x[1] = -63.5; // a half: rounds away from zero, to -64
    x[2] = 0.499; // rounds to 0
    let mut out = [0u8; 34];
    LoadQuant::Q8_0.quantize_row(&x, &mut out);
    let d = f16::from_le_bytes([out[0], out[1]]);
    assert_eq!(d, f16::from_f32(1.0));
    assert_eq!(out[2] as i8, 127);
    assert_eq!(out[3] as i8, -64);
    assert_eq!(out[4] as i8, 0);
    assert!(out[5..].iter().all(|&q| q == 0));
}

#[test]
fn q4_0_block_by_hand() {
    let mut x = [0.0f32; 32];
    x[3] = -2.0; // the first value of largest magnitude sets d = -2 / -8 = 0.25
    x[20] = 2.0; // same magnitude, later: code min(15, trunc(2 / -0.25 ... )) = 0
    x[5] = 0.25; // -1 step + 8.5 → 7.5 → 7
    let mut out = [0u8; 18];
    LoadQuant::Q4_0.quantize_row(&x, &mut out);
    assert_eq!(f16::from_le_bytes([out[0], out[1]]).to_f32(), 0.25);
    let qs = &out[2..];
    assert_eq!(qs[3] & 0x0F, 0, "-2 / 0.25 = -8 steps, + 8.5 → 0");
    assert_eq!(
        qs[4] >> 4,
        15,
        "2 / 0.25 = 8 steps, + 8.5 = 16.5 → clamped to 15"
    );
    assert_eq!(qs[5] & 0x0F, 9, "0.25 / 0.25 = 1 step, + 8.5 → 9");
    assert_eq!(qs[0], 0x88, "zeros are code 8 in both nibbles");
}

#[test]
fn round_trip_is_within_half_a_step() {
    for q in [LoadQuant::Q8_0, LoadQuant::Q4_0] {
        let x = row(32 * 9, 7);
        let bytes = q.quantize_f32(&x, x.len()).expect("finite values");
        let back = dequantize(q.ggml(), &bytes, x.len()).unwrap();
        for (b, (x, back)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // Q8_0: half a step of rounding. Q4_0: a whole step, as codes reach 8 steps on the
            // side of the largest value but only 7 on the other, where values clamp.
            let max_error = match q {
                LoadQuant::Q8_0 => amax / 127.0 * 0.5,
                LoadQuant::Q4_0 => amax / 8.0,
            };
            // Plus the f16 rounding of d (2^-11 relative) over up to 8 or 127 steps.
            let bound = max_error + amax * 128.0 / 2048.0 / 127.0 + 1e-7;
            for (x, y) in x.iter().zip(back) {
                assert!((x - y).abs() <= bound, "{q:?} block {b}: {x} → {y}");
            }
        }
    }
}

#[test]
fn file_dtypes_give_the_blocks_of_their_values() {
    let x: Vec<f32> = row(64 * 3, 3)
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_f32())
        .collect();
    let bf16: Vec<u8> = x
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    let f16s: Vec<u8> = x
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect();
    let f32s: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    for q in [LoadQuant::Q8_0, LoadQuant::Q4_0] {
        let want = q.quantize_f32(&x, 64).unwrap();
        for (dtype, bytes) in [("BF16", &bf16), ("F32", &f32s)] {
            let mut out = vec![0u8; want.len()];
            assert!(q.quantize_bytes(dtype, bytes, 64, &mut out));
            assert_eq!(out, want, "{q:?} from {dtype}");
        }
        // f16 holds these bf16 values exactly except where its range ends; they are small.
        let mut out = vec![0u8; want.len()];
        assert!(q.quantize_bytes("F16", &f16s, 64, &mut out));
        let via_f16: Vec<f32> = x.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
        assert_eq!(out, q.quantize_f32(&via_f16, 64).unwrap());
    }
}

#[test]
fn refuses_what_it_cannot_quantize() {
    let q = LoadQuant::Q8_0;
    let mut x = row(64, 1);
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = vec![0u8; 2 * 34];
    assert!(
        !q.quantize_bytes("I32", &bytes, 64, &mut out),
        "not a float dtype"
    );
    assert!(
        !q.quantize_bytes("F32", &bytes, 48, &mut out),
        "cols not a multiple of 32"
    );
    assert!(
        !q.quantize_bytes("F32", &bytes, 64, &mut out[..34]),
        "out sized for other rows"
    );
    x[40] = f32::NAN;
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(!q.quantize_bytes("F32", &bytes, 64, &mut out), "a NaN");
    assert_eq!(q.quantize_f32(&x, 64), None);
    x[40] = f32::INFINITY;
    assert_eq!(q.quantize_f32(&x, 64), None);
    assert_eq!(LoadQuant::from_option("q4_0"), Some(LoadQuant::Q4_0));
    assert_eq!(
        LoadQuant::from_option("Q8_0"),
        None,
        "option values are lower case"
    );
}
