//! The `gemm` crate path, for prefill (`m >` [`super::TILED_MAX_M`] under
//! [`super::Kernel::Auto`]).

/// The `gemm` crate path: `out = 1·out + 1·(x · wᵀ)` with `out` pre-filled with the bias, or
/// `out = x · wᵀ` without one. `wᵀ` is described by strides (row stride 1, column stride `k`),
/// so nothing is transposed in memory.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_gemm(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    match bias {
        Some(b) => out
            .chunks_exact_mut(n)
            .for_each(|row| row.copy_from_slice(b)),
        None if k == 0 => out.fill(0.0),
        None => {}
    }
    if k == 0 {
        return;
    }
    // SAFETY: `check_shapes` verified x: m·k, w: n·k, out: m·n elements, and every address
    // gemm forms from these sizes and strides lies inside those slices:
    // dst[i][j] = out[i·n + j], lhs[i][p] = x[i·k + p], rhs[p][j] = w[j·k + p]. `out` is a
    // unique borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            bias.is_some(),
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}
