//! The k-quants as the GGUF reader offers them: a file written by the test writer, its raw
//! blocks kept as a [`QuantMatrix`], against the same tensors loaded through f32.

use super::*;
use crate::weights::gguf::test_writer::Builder;
use crate::weights::gguf::GgufFile;
use crate::weights::WeightSource;

/// A GGUF file with one random matrix per k-quant (odd row counts, 2 super-blocks per row)
/// plus a Q2_K one; each `(Hugging Face name, format, rows)`.
fn kquant_file(rng: &mut StdRng) -> (GgufFile, Vec<(&'static str, QuantFormat, usize)>) {
    let k = 512;
    let mats = [
        (
            "blk.0.ffn_up.weight",
            "model.layers.0.mlp.up_proj.weight",
            QuantFormat::Q4_K,
            7,
        ),
        (
            "blk.0.ffn_gate.weight",
            "model.layers.0.mlp.gate_proj.weight",
            QuantFormat::Q5_K,
            5,
        ),
        (
            "blk.0.ffn_down.weight",
            "model.layers.0.mlp.down_proj.weight",
            QuantFormat::Q6_K,
            3,
        ),
    ];
    let mut b = Builder::new().kv_str("general.architecture", "llama");
    for (gguf, _, format, rows) in mats {
        let bytes = random_blocks(rng, format, rows, k / format.block_elems());
        let ty = format.ggml().id();
        b = b.tensor(gguf, &[k as u64, rows as u64], ty, &bytes);
    }
    // Q2_K: 84-byte super-blocks, d and dmin (f16 1.0 and 0.5) at bytes 80 and 82.
    let mut q2 = vec![0u8; 84];
    q2[..80].iter_mut().for_each(|v| *v = rng.random());
    q2[80..84].copy_from_slice(&[0x00, 0x3C, 0x00, 0x38]);
    b = b.tensor("blk.0.attn_v.weight", &[256, 1], 10, &q2);
    let file = GgufFile::from_bytes(b.build()).unwrap();
    (file, mats.map(|(_, hf, f, r)| (hf, f, r)).to_vec())
}

/// Each k-quant matrix of the file, kept quantized, against the f32 weights the reader
/// loads: the integer path (`m = 3`, `DotKernel::Integer`: `Auto` runs the panels for these) within the activation rounding of the dequantize-then-f32
/// layer on the quantized activations (`|err| ≤ 1e-5 · Σ|terms|`, as in
/// `linear_matches_the_reference_layer`), the panel path (`m = DEQUANT_MIN_M`) within f32
/// GEMM error of the f32 layer. Q2_K is not kept (`from_raw` is `None`) and still loads
/// through f32, as the model loader then does.
#[test]
fn kquant_gguf_tensors_match_their_f32_load() {
    let mut rng = StdRng::seed_from_u64(19);
    let (file, mats) = kquant_file(&mut rng);
    for (name, format, n) in mats {
        let raw = file.raw(name).expect("a raw k-quant tensor");
        let w = QuantMatrix::from_raw(&[raw]).expect("kept quantized");
        assert_eq!((w.format(), w.rows(), w.cols()), (format, n, 512));
        let wf = file.load_f32(name).unwrap();
        assert_eq!(wf.shape, [n, 512]);
        for (m, kernel) in [(3, DotKernel::Integer), (DEQUANT_MIN_M, DotKernel::Auto)] {
            let x = random_x(&mut rng, m * 512);
            let xq: Vec<f64> = x
                .chunks_exact(512)
                .flat_map(|r| dequantized_acts(&quantized(r)))
                .collect();
            // The integer path sees the rounded activations, the panel path the f32 ones.
            let xr: Vec<f32> = if m < DEQUANT_MIN_M {
                xq.iter().map(|&v| v as f32).collect()
            } else {
                x.clone()
            };
            let mut want = vec![0.0; m * n];
            linear_reference(&xr, m, &wf.data, n, 512, None, &mut want);
            let mut out = vec![f32::NAN; m * n];
            linear_with(kernel, &x, m, &w, None, &mut out);
            for i in 0..m {
                let xi: Vec<f64> = xr[i * 512..(i + 1) * 512]
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect();
                for j in 0..n {
                    let mag = term_magnitude(format, w.row(j), &xi);
                    let (g, e) = (out[i * n + j], want[i * n + j]);
                    let err = f64::from((g - e).abs());
                    assert!(err <= 1e-5 * mag, "{format:?} m {m} [{i}][{j}]: {g} vs {e}");
                }
            }
        }
    }
    let q2 = "model.layers.0.self_attn.v_proj.weight";
    assert!(QuantMatrix::from_raw(&[file.raw(q2).unwrap()]).is_none());
    let wf = file.load_f32(q2).unwrap();
    assert_eq!(wf.shape, [1, 256]);
    assert!(wf.data.iter().all(|v| v.is_finite()) && wf.data.iter().any(|&v| v != 0.0));
}
