//! How one row of logits becomes a token: a grammar's mask (structured outputs), penalties,
//! then greedy or temperature with top-k, min-p and top-p, then one draw. This is the host reference of the device sampler
//! (`kernels/cuda/sampling.cu`, whose header states the same rules) and what the CPU backend
//! runs, so both backends sample by the same rules from the same random keys.
//!
//! Randomness: the draw is an exponential race — the argmax over kept tokens of
//! `s - ln(-ln u)`, `s` the temperature-scaled logit and `u` uniform from a counter-based hash
//! of (the row's key, token index) — which picks each token with probability proportional to
//! `exp(s)` and needs no prefix sum over the vocabulary. Each step's key comes from the
//! sequence's seeded random stream ([`crate::sampling::Sampler`]).

use std::sync::Arc;

use rayon::prelude::*;

use super::mask::apply_token_mask;
use super::SamplingParams;

/// What a backend needs to pick one row's token.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSampling {
    /// 0: greedy.
    pub temperature: f32,
    /// ≤ 0 or ≥ the vocabulary: off.
    pub top_k: i32,
    /// 1: off.
    pub top_p: f32,
    /// 0: off.
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// This step's random key.
    pub key: u64,
    /// The row's entries in [`StepSampling::penalty_tokens`]: `begin..end`.
    pub penalties: (u32, u32),
    /// The tokens a grammar allows (structured outputs), as a bitmask over the row
    /// ([`crate::structured::pack_token_mask`]); `None`: every token.
    pub mask: Option<Arc<[u32]>>,
}

impl RowSampling {
    /// Plain greedy (padding rows, and rows of greedy requests).
    pub const GREEDY: RowSampling = RowSampling {
        temperature: 0.0,
        top_k: -1,
        top_p: 1.0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        key: 0,
        penalties: (0, 0),
        mask: None,
    };

    /// The row of a request with `params`, before its key and penalty entries are set. A
    /// greedy request (temperature below 1e-5, `GREEDY_TEMPERATURE`, or top-k 1) gets
    /// temperature 0, so that no backend divides by a tiny one.
    pub fn new(params: &SamplingParams) -> RowSampling {
        RowSampling {
            temperature: if params.is_greedy() {
                0.0
            } else {
                params.temperature
            },
            top_k: params.top_k,
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            presence_penalty: params.presence_penalty,
            frequency_penalty: params.frequency_penalty,
            ..RowSampling::GREEDY
        }
    }

    /// Whether the row takes the argmax (no random draw).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// A token a penalty applies to, in one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PenaltyToken {
    pub token: u32,
    /// Occurrences in the output (presence and frequency penalties).
    pub output_count: u32,
    /// Seen in the prompt or the output (repetition penalty).
    pub seen: bool,
}

/// How every logits row of a step is turned into a token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepSampling {
    pub rows: Vec<RowSampling>,
    /// Penalty entries of all rows; each row names its range, and a token at most once.
    pub penalty_tokens: Vec<PenaltyToken>,
}

impl StepSampling {
    /// Whether every row is greedy with no penalties and no mask: an argmax is all it takes.
    pub fn is_plain_greedy(&self) -> bool {
        let plain = |r: &RowSampling| r.is_greedy() && r.mask.is_none();
        self.penalty_tokens.is_empty() && self.rows.iter().all(plain)
    }

    /// Picks every row's token from `logits` (`rows × width`, used as scratch), rows in
    /// parallel over rayon's threads.
    pub fn sample(&self, logits: &mut [f32], width: usize) -> Vec<u32> {
        self.rows
            .par_iter()
            .zip(logits.par_chunks_exact_mut(width))
            .with_min_len(4)
            .map(|(row, l)| {
                let (b, e) = row.penalties;
                sample_row(l, row, &self.penalty_tokens[b as usize..e as usize])
            })
            .collect()
    }
}

/// Picks the token of one row (see the module docs): tokens outside the row's mask are set to
/// -inf first, so that the rules below apply to the allowed tokens alone; `logits` gets the
/// mask and the penalties applied.
pub fn sample_row(logits: &mut [f32], row: &RowSampling, penalties: &[PenaltyToken]) -> u32 {
    if let Some(mask) = &row.mask {
        apply_token_mask(logits, mask);
    }
    apply_penalties(logits, row, penalties);
    let arg = super::argmax(logits);
    if row.is_greedy() {
        return arg;
    }
    let m = logits[arg as usize];
    let inv_t = 1.0 / row.temperature;
    let floor = order_key(keep_floor(logits, row, m, inv_t));
    let mut best: Option<(f32, u32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() || order_key(v) < floor {
            continue;
        }
        let race = (v - m) * inv_t - (-uniform(row.key, i as u32).ln()).ln();
        // As on the device: a NaN race never wins, equal races go to the lowest index.
        if best.is_none_or(|(b, _)| race > b) && !race.is_nan() {
            best = Some((race, i as u32));
        }
    }
    best.map_or(arg, |(_, i)| i)
}

/// The device's order of floats for thresholds: a monotone map to `u32` under which -0.0 ranks
/// just below +0.0 (a token at -0.0 is below a +0.0 threshold). NaN is never compared.
fn order_key(f: f32) -> u32 {
    let u = f.to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

/// Repetition (seen tokens), then frequency and presence (output tokens), as vLLM.
fn apply_penalties(logits: &mut [f32], row: &RowSampling, penalties: &[PenaltyToken]) {
    for p in penalties {
        let l = &mut logits[p.token as usize];
        if p.seen {
            *l = if *l > 0.0 {
                *l / row.repetition_penalty
            } else {
                *l * row.repetition_penalty
            };
        }
        if p.output_count > 0 {
            *l -= row.frequency_penalty * p.output_count as f32 + row.presence_penalty;
        }
    }
}

/// The smallest logit a token may have to stay a candidate: the top-k threshold, the min-p
/// floor and the top-p threshold, whichever is highest (ties with a threshold are kept).
fn keep_floor(logits: &[f32], row: &RowSampling, m: f32, inv_t: f32) -> f32 {
    let mut floor = f32::NEG_INFINITY;
    if row.min_p > 0.0 {
        floor = m + row.min_p.ln() * row.temperature;
    }
    let k = row.top_k;
    let top_k = k > 0 && (k as usize) < logits.len();
    if !top_k && row.top_p >= 1.0 {
        return floor;
    }
    let desc = |a: &f32, b: &f32| b.total_cmp(a);
    let mut vals: Vec<f32> = logits.iter().copied().filter(|v| !v.is_nan()).collect();
    if top_k && !vals.is_empty() {
        let k = (k as usize).min(vals.len());
        vals.select_nth_unstable_by(k - 1, desc);
        floor = floor.max(vals[k - 1]);
    }
    if row.top_p < 1.0 {
        // What top-k and min-p keep, from the largest logit down.
        vals.retain(|&v| v >= floor);
        vals.sort_unstable_by(desc);
        let mass = |v: f32| f64::from(((v - m) * inv_t).exp());
        let target = f64::from(row.top_p) * vals.iter().map(|&v| mass(v)).sum::<f64>();
        let mut acc = 0.0;
        for &v in &vals {
            acc += mass(v);
            if acc >= target {
                floor = floor.max(v);
                break;
            }
        }
    }
    floor
}

/// splitmix64's output number `i + 1` from state `key`, as an f32 uniform in (0, 1): the
/// random number of token `i` in a row with this key.
fn uniform(key: u64, i: u32) -> f32 {
    let mut z = key.wrapping_add(u64::from(i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 41) as f32 + 0.5) * (1.0 / (1u64 << 23) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(f: impl FnOnce(&mut RowSampling)) -> RowSampling {
        let mut r = RowSampling {
            temperature: 1.0,
            ..RowSampling::GREEDY
        };
        f(&mut r);
        r
    }

    fn draws(r: &RowSampling, logits: &[f32], n: u64) -> Vec<u32> {
        (0..n)
            .map(|key| {
                let r = RowSampling { key, ..r.clone() };
                sample_row(&mut logits.to_vec(), &r, &[])
            })
            .collect()
    }

    #[test]
    fn uniform_is_inside_the_open_interval_and_spread() {
        let u: Vec<f32> = (0..100_000).map(|i| uniform(7, i)).collect();
        assert!(u.iter().all(|&x| x > 0.0 && x < 1.0));
        let mean = u.iter().map(|&x| f64::from(x)).sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert_ne!(uniform(7, 0), uniform(8, 0));
        // The same numbers as the GPU tests' copy: (k + 0.5) / 2^23 for the hash's top 23 bits k.
        let at = |k: u32| (k as f32 + 0.5) / (1u32 << 23) as f32;
        let got = [uniform(7, 0), uniform(7, 1), uniform(7, 2)];
        assert_eq!(got, [at(3_270_128), at(140_830), at(7_556_128)]);
        assert_eq!(uniform((1 << 63) + 5, 100_000), at(5_021_872));
    }

    #[test]
    fn thresholds_keep_ties_and_compose_in_order() {
        let logits = [3.0, 2.0, 2.0, 1.0, 0.0];
        // top-k 2: the 2nd largest is 2.0; its tie is kept too.
        let r = row(|r| r.top_k = 2);
        assert_eq!(keep_floor(&logits, &r, 3.0, 1.0), 2.0);
        // min-p: floor at max + ln(0.3) ≈ 1.796.
        let r = row(|r| r.min_p = 0.3);
        assert!((keep_floor(&logits, &r, 3.0, 1.0) - (3.0 + 0.3f32.ln())).abs() < 1e-6);
        // top-p over e^0, e^-1, e^-1, e^-2, e^-3 (sum 1.92): token 0 alone reaches 0.5 of it.
        let r = row(|r| r.top_p = 0.5);
        assert_eq!(keep_floor(&logits, &r, 3.0, 1.0), 3.0);
        // 0.6 needs the next logit (2.0), with its tie.
        let r = row(|r| r.top_p = 0.6);
        assert_eq!(keep_floor(&logits, &r, 3.0, 1.0), 2.0);
        // top-p renormalizes over what top-k keeps: of 1, e^-1, e^-1 (sum 1.74), 0.6 needs 2.0.
        let r = row(|r| (r.top_k, r.top_p) = (3, 0.6));
        assert_eq!(keep_floor(&logits, &r, 3.0, 1.0), 2.0);
    }

    #[test]
    fn draws_follow_the_kept_distribution() {
        // p ∝ [1, 3, 0 (filtered by top-k 2)].
        let logits = [0.0, 3.0f32.ln(), -0.5];
        let r = row(|r| r.top_k = 2);
        let d = draws(&r, &logits, 40_000);
        assert!(d.iter().all(|&t| t < 2));
        let frac = d.iter().filter(|&&t| t == 1).count() as f64 / d.len() as f64;
        assert!((frac - 0.75).abs() < 0.01, "fraction {frac}");
        // Temperature 2 flattens it: p ∝ [1, √3].
        let r = row(|r| r.temperature = 2.0);
        let d = draws(&r, &logits[..2], 40_000);
        let frac = d.iter().filter(|&&t| t == 1).count() as f64 / d.len() as f64;
        let want = 3f64.sqrt() / (1.0 + 3f64.sqrt());
        assert!((frac - want).abs() < 0.01, "fraction {frac}, want {want}");
    }

    #[test]
    fn nan_is_never_drawn_and_an_empty_row_falls_back_to_the_argmax() {
        // p ∝ [e^0, e^0.1] over tokens 1 and 3 (NaN first, as the kernel's argmax allows).
        let logits = [f32::NAN, 0.0, f32::NAN, 0.1];
        let d = draws(&row(|_| ()), &logits, 4000);
        assert!(d.iter().all(|&t| t == 1 || t == 3));
        let frac = d.iter().filter(|&&t| t == 3).count() as f64 / d.len() as f64;
        let want = 0.1f64.exp() / (1.0 + 0.1f64.exp());
        assert!((frac - want).abs() < 0.03, "fraction {frac}, want {want}");
        assert_eq!(crate::sampling::argmax(&logits), 3);
        let all_inf = [f32::NEG_INFINITY; 4];
        assert_eq!(draws(&row(|_| ()), &all_inf, 3), vec![0, 0, 0]);
    }

    #[test]
    fn tiny_temperatures_are_greedy() {
        let p = SamplingParams {
            temperature: 1e-30,
            ..SamplingParams::default()
        };
        assert!(p.is_greedy());
        assert_eq!(RowSampling::new(&p).temperature, 0.0);
        assert!(RowSampling::new(&p).is_greedy());
    }

    #[test]
    fn negative_zero_ranks_below_a_positive_zero_threshold() {
        assert!(order_key(-0.0) < order_key(0.0));
        assert!(order_key(-1.0) < order_key(-0.5) && order_key(0.5) < order_key(1.0));
        // top-k 2 of [1, +0, -0]: the threshold is +0, and -0 is not tied with it.
        let r = row(|r| r.top_k = 2);
        assert!(draws(&r, &[1.0, 0.0, -0.0], 300).iter().all(|&t| t < 2));
    }

    #[test]
    fn penalties_change_logits_as_vllm_does() {
        let r = row(|r| {
            r.repetition_penalty = 2.0;
            r.presence_penalty = 0.5;
            r.frequency_penalty = 0.25;
        });
        let pens = [
            PenaltyToken {
                token: 0,
                output_count: 0,
                seen: true,
            },
            PenaltyToken {
                token: 1,
                output_count: 2,
                seen: true,
            },
        ];
        let mut logits = vec![4.0, -4.0, 1.0];
        apply_penalties(&mut logits, &r, &pens);
        assert_eq!(logits, vec![2.0, -8.0 - 0.5 - 0.5, 1.0]);
    }

    #[test]
    fn step_sampling_uses_each_rows_penalty_range() {
        let mut greedy_penalized = RowSampling::GREEDY;
        greedy_penalized.repetition_penalty = 10.0;
        greedy_penalized.penalties = (0, 1);
        let step = StepSampling {
            rows: vec![greedy_penalized, RowSampling::GREEDY],
            penalty_tokens: vec![PenaltyToken {
                token: 0,
                output_count: 0,
                seen: true,
            }],
        };
        assert!(!step.is_plain_greedy());
        let mut logits = vec![2.0, 1.0, 2.0, 1.0];
        assert_eq!(step.sample(&mut logits, 2), vec![1, 0]);
    }
}
