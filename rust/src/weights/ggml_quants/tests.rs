//! Each kernel on hand-built blocks, bad inputs, and gguf-py's output on the fixtures.

use super::*;

fn h(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

#[test]
fn type_table_round_trips_ids() {
    for id in 0..64 {
        if let Some(ty) = GgmlType::from_id(id) {
            assert_eq!(ty.id(), id);
        }
    }
    assert_eq!(GgmlType::from_id(4), None, "Q4_2 was removed from ggml");
    assert_eq!(GgmlType::Q4_K.type_size(), 144);
    assert_eq!(GgmlType::Q6_K.type_size(), 210);
    assert_eq!(GgmlType::Q6_K.byte_size(512), Some(420));
    assert_eq!(GgmlType::Q6_K.byte_size(100), None);
}

#[test]
fn scalar_types() {
    let f32s: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(
        dequantize(GgmlType::F32, &f32s, 2).unwrap(),
        vec![1.5, -2.0]
    );
    let f16s = [h(0.5), h(-65504.0)].concat();
    assert_eq!(
        dequantize(GgmlType::F16, &f16s, 2).unwrap(),
        vec![0.5, -65504.0]
    );
    // bf16 is the high half of an f32: 0x3FC0 = 1.5, 0xC2F7 = -123.5.
    let bf16s = [0xC0, 0x3F, 0xF7, 0xC2];
    assert_eq!(
        dequantize(GgmlType::BF16, &bf16s, 2).unwrap(),
        vec![1.5, -123.5]
    );
}

#[test]
fn q8_0_block() {
    let mut block = h(0.5).to_vec();
    block.extend((0..32).map(|i: i32| (i * 8 - 128) as i8 as u8));
    let y = dequantize(GgmlType::Q8_0, &block, 32).unwrap();
    for (i, v) in y.iter().enumerate() {
        assert_eq!(*v, (i as f32 * 8.0 - 128.0) * 0.5);
    }
}

#[test]
fn q4_0_and_q4_1_blocks_put_low_nibbles_first() {
    let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
    let y = dequantize(GgmlType::Q4_0, &[&h(2.0)[..], &qs].concat(), 32).unwrap();
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 2.0);
        assert_eq!(y[j + 16], (7.0 - j as f32) * 2.0);
    }
    let y = dequantize(GgmlType::Q4_1, &[&h(0.25)[..], &h(-1.0), &qs].concat(), 32).unwrap();
    for j in 0..16 {
        assert_eq!(y[j], j as f32 * 0.25 - 1.0);
        assert_eq!(y[j + 16], (15 - j) as f32 * 0.25 - 1.0);
    }
}

/// Packs eight 6-bit scales and mins as the Q4_K/Q5_K layout documents (gguf-py's diagram):
/// bytes 0..4 hold scales 0..4 plus the top 2 bits of scales 4..8, bytes 4..8 the same for
/// mins, bytes 8..12 the low nibbles of scales 4..8 (low) and mins 4..8 (high).
fn pack_k4_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
    let mut p = [0u8; 12];
    for i in 0..4 {
        p[i] = sc[i] | ((sc[i + 4] >> 4) << 6);
        p[i + 4] = m[i] | ((m[i + 4] >> 4) << 6);
        p[i + 8] = (sc[i + 4] & 0x0F) | ((m[i + 4] & 0x0F) << 4);
    }
    p
}

#[test]
fn q4_k_block() {
    let sc = [1, 2, 3, 63, 17, 33, 48, 5];
    let m = [0, 9, 62, 4, 50, 1, 31, 63];
    let q: Vec<u8> = (0..256).map(|e| (e * 7 % 16) as u8).collect();
    let mut qs = [0u8; 128];
    for (e, &qe) in q.iter().enumerate() {
        let (chunk, within) = (e / 64, e % 64);
        qs[chunk * 32 + within % 32] |= qe << (4 * (within / 32));
    }
    let (d, dmin) = (0.125f32, 0.5f32);
    let block = [&h(d)[..], &h(dmin), &pack_k4_scales(sc, m), &qs].concat();
    let y = dequantize(GgmlType::Q4_K, &block, 256).unwrap();
    for e in 0..256 {
        let sub = e / 32;
        let want = d * f32::from(sc[sub]) * f32::from(q[e]) - dmin * f32::from(m[sub]);
        assert_eq!(y[e], want, "element {e}");
    }
}

#[test]
fn q6_k_block() {
    let q: Vec<i8> = (0..256).map(|e| (e * 13 % 64) as i8 - 32).collect();
    let scales: Vec<i8> = (0..16).map(|i: i32| (i * 9 - 70) as i8).collect();
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for (e, &qe) in q.iter().enumerate() {
        let (n, quarter, l) = (e / 128, e % 128 / 32, e % 32);
        let v = (qe + 32) as u8;
        ql[n * 64 + (quarter % 2) * 32 + l] |= (v & 0x0F) << (4 * (quarter / 2));
        qh[n * 32 + l] |= (v >> 4) << (2 * quarter);
    }
    let d = 0.01f32;
    let sc_bytes: Vec<u8> = scales.iter().map(|&s| s as u8).collect();
    let block = [&ql[..], &qh, &sc_bytes, &h(d)].concat();
    let y = dequantize(GgmlType::Q6_K, &block, 256).unwrap();
    let d = f16::from_f32(d).to_f32();
    for e in 0..256 {
        let want = d * f32::from(scales[e / 16]) * f32::from(q[e]);
        assert_eq!(y[e], want, "element {e}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let err = dequantize(GgmlType::IQ2_XXS, &[0; 66], 256).unwrap_err();
    assert!(
        err.to_string().contains("IQ2_XXS cannot be dequantized"),
        "{err}"
    );
    assert!(matches!(
        dequantize(GgmlType::Q4_0, &[0; 18], 31),
        Err(DequantError::PartialBlock { .. })
    ));
    assert_eq!(
        dequantize(GgmlType::Q4_0, &[0; 17], 32),
        Err(DequantError::ByteLength {
            ty: GgmlType::Q4_0,
            n_elements: 32,
            expected: 18,
            actual: 17
        })
    );
    assert_eq!(dequantize(GgmlType::Q6_K, &[], 0), Ok(vec![]));
}

/// Compares with gguf-py's numpy dequantization, written by `tests/make_gguf_fixtures.py`.
/// Both compute the same f32 operations in the same order, so the match is exact (bitwise).
#[test]
fn matches_gguf_py_fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for ty in DEQUANTIZABLE {
        let path = dir.join(format!("dequant_{}.bin", ty.name()));
        let file = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(&file[..8], b"GGMLFIX1");
        let word = |i: usize| u32::from_le_bytes(file[8 + 4 * i..12 + 4 * i].try_into().unwrap());
        let (id, n, n_bytes) = (word(0), word(1) as usize, word(2) as usize);
        assert_eq!(GgmlType::from_id(id), Some(*ty));
        let raw = &file[20..20 + n_bytes];
        let expected: Vec<f32> = file[20 + n_bytes..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(expected.len(), n);
        let got = dequantize(*ty, raw, n).unwrap();
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g.to_bits(), e.to_bits(), "{ty} element {i}: {g} != {e}");
        }
    }
}
