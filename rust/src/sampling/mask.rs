//! Token masks: the tokens a grammar allows at one pick, as a bitmask over a logits row in
//! llguidance's order (token `t` is bit `t % 32` of word `t / 32`), the form in which the CUDA
//! sampler uploads it. Disallowed tokens get -inf before any other rule, on every backend.

/// Sets every logit whose token `mask` does not allow to -inf; tokens past the mask's words
/// are not allowed either.
pub fn apply_token_mask(logits: &mut [f32], mask: &[u32]) {
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = mask.get(w).copied().unwrap_or(0);
        if bits == u32::MAX && chunk.len() == 32 {
            continue;
        }
        for (b, l) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_little_endian_within_words() {
        let mut logits = vec![1.0f32; 70];
        // Tokens 0, 31, 33 and 64 allowed.
        apply_token_mask(&mut logits, &[1 | 1 << 31, 1 << 1, 1]);
        let kept: Vec<usize> = (0..70).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(kept, [0, 31, 33, 64]);
        // A short mask allows nothing past its words.
        let mut logits = vec![1.0f32; 40];
        apply_token_mask(&mut logits, &[u32::MAX]);
        assert!(logits[..32].iter().all(|l| *l == 1.0));
        assert!(logits[32..].iter().all(|l| *l == f32::NEG_INFINITY));
    }
}
