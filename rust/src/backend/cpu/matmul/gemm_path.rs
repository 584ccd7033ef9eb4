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

/// `out[i][j0 + j] = x[i] · w[j]` for `i < m`, `j < np`: the `gemm` crate on a panel of `np`
/// weight rows (`w`: `np × k`), written into columns `j0..j0 + np` of `out` (`m × n`, row
/// stride `n`). No bias. Used by the quantized layer's prefill path, which dequantizes one
/// panel of weights at a time.
///
/// # Panics
///
/// When `x.len() != m·k`, `w.len() != np·k`, `out.len() != m·n` or `j0 + np > n`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_into_columns(
    x: &[f32],
    m: usize,
    w: &[f32],
    np: usize,
    k: usize,
    out: &mut [f32],
    n: usize,
    j0: usize,
) {
    assert!(x.len() == m * k && w.len() == np * k && out.len() == m * n && j0 + np <= n);
    if m == 0 || np == 0 {
        return;
    }
    if k == 0 {
        out.chunks_exact_mut(n)
            .for_each(|row| row[j0..j0 + np].fill(0.0));
        return;
    }
    // SAFETY: the lengths are checked above, and every address gemm forms lies inside the
    // slices: dst[i][j] = out[i·n + j0 + j] < m·n since j0 + j < n; lhs[i][p] = x[i·k + p];
    // rhs[p][j] = w[j·k + p]. `out` is a unique borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            np,
            k,
            out.as_mut_ptr().add(j0),
            1,
            n as isize,
            false,
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
