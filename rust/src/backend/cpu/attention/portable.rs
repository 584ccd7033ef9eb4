//! The kernels in plain Rust, for CPUs without AVX2+FMA (and head sizes not a multiple of 8).

use super::{Kernels, KEY_BLOCK};

pub(super) struct Portable;

impl Kernels for Portable {
    fn scores(&self, q: &[f32], kt: &[f32], hd: usize, s: &mut [f32]) {
        for (qm, sm) in q.chunks_exact(hd).zip(s.chunks_exact_mut(KEY_BLOCK)) {
            sm.fill(0.0);
            // Row-wise over the transposed keys: the inner loop runs along `KEY_BLOCK`
            // contiguous columns, which the compiler vectorizes.
            for (&x, k) in qm.iter().zip(kt.chunks_exact(KEY_BLOCK)) {
                sm.iter_mut().zip(k).for_each(|(s, k)| *s += x * k);
            }
        }
    }

    fn softmax_step(
        &self,
        row: &mut [f32],
        n: usize,
        max: &mut f32,
        sum: &mut f32,
        acc: &mut [f32],
    ) {
        let new_max = row[..n].iter().fold(*max, |a, &b| a.max(b));
        if new_max > *max {
            let factor = (*max - new_max).exp();
            *sum *= factor;
            acc.iter_mut().for_each(|a| *a *= factor);
            *max = new_max;
        }
        for p in row[..n].iter_mut() {
            *p = (*p - new_max).exp();
            *sum += *p;
        }
        row[n..].fill(0.0);
    }

    fn pv(&self, p: &[f32], v: &[f32], rows: &[usize], hd: usize, n: &[usize], acc: &mut [f32]) {
        for ((pm, am), &nm) in p
            .chunks_exact(KEY_BLOCK)
            .zip(acc.chunks_exact_mut(hd))
            .zip(n)
        {
            for (&w, &at) in pm[..nm].iter().zip(rows) {
                let vt = &v[at..at + hd];
                am.iter_mut().zip(vt).for_each(|(a, v)| *a += w * v);
            }
        }
    }
}
