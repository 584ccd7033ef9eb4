//! A sequence's sampling state: its seeded random stream and the token history penalties
//! need. Each step it hands the backend a [`RowSampling`] (a fresh random key and its penalty
//! entries); the rules that turn a row of logits into a token are in [`super::filter`]. A
//! seeded request gives the same tokens whatever else shares its batch.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::filter::{sample_row, PenaltyToken, RowSampling};
use super::SamplingParams;
use crate::error::Result;
use crate::structured::GrammarState;

/// A sampled token and, when asked for, log-probabilities of the raw model output.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// `(token, logprob)` of the top tokens and the sampled one (if not among them),
    /// computed from the unprocessed logits as vLLM does by default.
    pub logprobs: Option<Vec<(u32, f32)>>,
}

/// Sampling state of one sequence: its random stream and the token history penalties need.
#[derive(Debug)]
pub struct Sampler {
    rng: StdRng,
    /// One entry per token a penalty applies to (seen in the prompt or the output), kept up
    /// to date as tokens come, so that a step copies them as they are.
    penalties: Vec<PenaltyToken>,
    /// Where each token's entry is in `penalties`.
    index: HashMap<u32, usize>,
}

impl Sampler {
    /// A sampler for a sequence whose prompt is `prompt`; `seed` starts its random stream
    /// (the engine derives it from the request's seed and the sequence's index).
    pub fn new(params: &SamplingParams, prompt: &[u32], seed: u64) -> Self {
        let mut s = Sampler {
            rng: StdRng::seed_from_u64(seed),
            penalties: Vec::new(),
            index: HashMap::new(),
        };
        if params.repetition_penalty != 1.0 {
            for &token in prompt {
                s.entry(token).seen = true;
            }
        }
        s
    }

    /// The penalty entry of `token`, added (with nothing counted yet) if it has none.
    fn entry(&mut self, token: u32) -> &mut PenaltyToken {
        let penalties = &mut self.penalties;
        let i = *self.index.entry(token).or_insert_with(|| {
            penalties.push(PenaltyToken {
                token,
                output_count: 0,
                seen: false,
            });
            penalties.len() - 1
        });
        &mut self.penalties[i]
    }

    /// Records a generated token (for penalties).
    pub fn observe(&mut self, params: &SamplingParams, token: u32) {
        let counts = params.presence_penalty != 0.0 || params.frequency_penalty != 0.0;
        let repetition = params.repetition_penalty != 1.0;
        if counts || repetition {
            let e = self.entry(token);
            e.output_count += u32::from(counts);
            e.seen |= repetition;
        }
    }

    /// This step's sampling of the sequence's row: its parameters, a fresh key from the
    /// sequence's random stream, and its penalty entries appended to `penalty_tokens` (one
    /// per token seen in the prompt or output, when a penalty is on).
    pub fn row(
        &mut self,
        params: &SamplingParams,
        penalty_tokens: &mut Vec<PenaltyToken>,
    ) -> RowSampling {
        let begin = penalty_tokens.len() as u32;
        penalty_tokens.extend_from_slice(&self.penalties);
        RowSampling {
            key: self.rng.random(),
            penalties: (begin, penalty_tokens.len() as u32),
            ..RowSampling::new(params)
        }
    }

    /// Picks the next token from one row of logits on the host (see [`sample_row`]), never
    /// one of `banned` (`min_tokens`), with log-probabilities when asked for. `logits` is used
    /// as scratch space.
    pub fn sample(
        &mut self,
        params: &SamplingParams,
        logits: &mut [f32],
        banned: &[u32],
    ) -> Sampled {
        self.sample_constrained(params, logits, banned, None)
            .expect("an unconstrained pick cannot fail")
    }

    /// [`sample`](Self::sample) among the tokens `grammar` allows next: its mask is applied
    /// before the penalties and the sampling rules, so that temperature, top-k/p, min-p and
    /// the seed keep their meaning on the allowed tokens. Log-probabilities stay those of the
    /// raw model output, as vLLM reports them. Fails only where the grammar's matcher does.
    pub fn sample_constrained(
        &mut self,
        params: &SamplingParams,
        logits: &mut [f32],
        banned: &[u32],
        grammar: Option<&mut GrammarState>,
    ) -> Result<Sampled> {
        // Log-probabilities describe the raw model output, so keep it before penalties.
        let raw = params.logprobs.map(|k| (k, logits.to_vec()));
        if let Some(g) = grammar {
            g.mask_logits(logits)?;
        }
        for &t in banned {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let mut penalties = Vec::new();
        let row = self.row(params, &mut penalties);
        let token = sample_row(logits, &row, &penalties);
        let logprobs = raw.map(|(k, raw)| {
            let (mut top, lse) = log_softmax_top(&raw, k);
            if !top.iter().any(|&(t, _)| t == token) {
                top.push((token, raw[token as usize] - lse));
            }
            top
        });
        Ok(Sampled { token, logprobs })
    }
}

/// Index of the largest value (the lowest index among equals); NaN ranks below every number,
/// -inf included, as in the device's argmax (`kernels/cuda/sampling.cu`).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        let b = values[best];
        if (b.is_nan() && !v.is_nan()) || v > b {
            best = i;
        }
    }
    best as u32
}

/// The `k` highest log-probabilities of `log_softmax(logits)`, highest first, and the
/// log-sum-exp of the row.
pub fn log_softmax_top(logits: &[f32], k: usize) -> (Vec<(u32, f32)>, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k > 0 && k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    idx.truncate(k);
    idx.sort_unstable_by(cmp);
    (
        idx.into_iter()
            .map(|i| (i, logits[i as usize] - lse))
            .collect(),
        lse,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    fn draws(p: &SamplingParams, logits: &[f32], n: usize, seed: u64) -> Vec<u32> {
        let mut s = Sampler::new(p, &[], p.seed.unwrap_or(seed));
        (0..n)
            .map(|_| s.sample(p, &mut logits.to_vec(), &[]).token)
            .collect()
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let p = params(|p| p.temperature = 0.0);
        assert_eq!(draws(&p, &[0.1, 2.0, -1.0, 1.9], 3, 0), vec![1, 1, 1]);
        let p = params(|p| p.top_k = 1);
        assert_eq!(draws(&p, &[0.1, 2.0, -1.0, 1.9], 3, 7), vec![1, 1, 1]);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seeds_differ() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = params(|p| p.seed = Some(42));
        assert_eq!(draws(&p, &logits, 50, 1), draws(&p, &logits, 50, 2));
        let q = params(|p| p.seed = Some(43));
        assert_ne!(draws(&p, &logits, 50, 1), draws(&q, &logits, 50, 1));
    }

    #[test]
    fn filters_keep_only_allowed_tokens() {
        let logits = [3.0, 2.9, 2.8, 0.0, -5.0];
        let k2 = params(|p| p.top_k = 2);
        assert!(draws(&k2, &logits, 200, 3).iter().all(|&t| t < 2));
        // Probabilities ≈ [0.36, 0.33, 0.30, 0.02, 0.0001]: top_p 0.5 keeps two tokens.
        let p05 = params(|p| p.top_p = 0.5);
        assert!(draws(&p05, &logits, 200, 4).iter().all(|&t| t < 2));
        let minp = params(|p| p.min_p = 0.5);
        assert!(draws(&minp, &logits, 200, 5).iter().all(|&t| t < 3));
        // Unfiltered sampling does reach the low-probability token 3 now and then.
        assert!(draws(&SamplingParams::default(), &logits, 2000, 6).contains(&3));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let n = 20_000;
        let ones = draws(&SamplingParams::default(), &logits, n, 9)
            .iter()
            .filter(|&&t| t == 1)
            .count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.015, "fraction {frac}");
    }

    #[test]
    fn rows_carry_penalty_entries_of_prompt_and_output() {
        let p = params(|p| {
            p.repetition_penalty = 2.0;
            p.frequency_penalty = 0.25;
        });
        let mut s = Sampler::new(&p, &[0, 5], 0);
        s.observe(&p, 1);
        s.observe(&p, 1);
        s.observe(&p, 5);
        let mut pens = vec![PenaltyToken {
            token: 9,
            output_count: 0,
            seen: true,
        }];
        let row = s.row(&p, &mut pens);
        assert_eq!(row.penalties, (1, 4));
        let mut mine = pens[1..].to_vec();
        mine.sort_by_key(|t| t.token);
        let entry = |token, output_count, seen| PenaltyToken {
            token,
            output_count,
            seen,
        };
        assert_eq!(
            mine,
            [entry(0, 0, true), entry(1, 2, true), entry(5, 1, true)]
        );
        // Without penalties a row has no entries; each row gets a new key.
        let q = SamplingParams::default();
        let mut s = Sampler::new(&q, &[0], 0);
        s.observe(&q, 1);
        let (a, b) = (s.row(&q, &mut pens), s.row(&q, &mut pens));
        assert_eq!((a.penalties.0, a.penalties.1), (4, 4));
        assert_ne!(a.key, b.key);
    }

    #[test]
    fn logprobs_are_raw_and_include_the_sampled_token() {
        let p = params(|p| {
            p.temperature = 0.0;
            p.logprobs = Some(1);
            p.repetition_penalty = 100.0;
        });
        // Token 0 is the raw argmax, but the prompt holds it, so the penalty flips the choice.
        let mut s = Sampler::new(&p, &[0], 0);
        let out = s.sample(&p, &mut [2.0, 1.0], &[]);
        assert_eq!(out.token, 1);
        let lp = out.logprobs.unwrap();
        let lse = (2.0f32.exp() + 1.0f32.exp()).ln();
        assert_eq!(lp.len(), 2);
        assert_eq!(lp[0].0, 0);
        assert!((lp[0].1 - (2.0 - lse)).abs() < 1e-6);
        assert!((lp[1].1 - (1.0 - lse)).abs() < 1e-6);
    }
}
