//! Async scheduling against the synchronous engine on the CPU backend, driven in the engine
//! loop's order (collect, intake, launch, emit), with adds and aborts at both intake points.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::backend::cpu::CpuBackend;
use crate::loader::open_model;

/// The tiny random Llama of `tests/make_tiny_models.py` (CPU backend: every row computed alone,
/// so async and synchronous scheduling must give the same outputs exactly).
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_models/llama_tied_mha")
}

fn engine(async_scheduling: bool) -> Engine<CpuBackend> {
    let files = open_model(&fixture()).unwrap();
    let config = EngineConfig {
        async_scheduling: Some(async_scheduling),
        kv_cache_tokens: Some(4096),
        ..Default::default()
    };
    Engine::new(
        CpuBackend::for_model(&files.config, config.block_size),
        files,
        config,
    )
    .unwrap()
}

#[derive(Default, Debug, Clone, PartialEq)]
struct Out {
    tokens: Vec<u32>,
    text: String,
    finals: usize,
    finish: Option<FinishReason>,
    plp: Option<Vec<Vec<(u32, f32)>>>,
}

fn fold(outs: &mut HashMap<(u64, usize), Out>, deltas: Vec<SeqDelta>) {
    for d in deltas {
        let o = outs.entry((d.request_id, d.index)).or_default();
        assert_eq!(o.finals, 0, "delta after the final one: {d:?}");
        o.tokens.extend(&d.token_ids);
        o.text.push_str(&d.text);
        if d.prompt_logprobs.is_some() {
            o.plp = d.prompt_logprobs.clone();
        }
        if d.finish_reason.is_some() {
            o.finals += 1;
            o.finish = d.finish_reason;
        }
    }
}

/// Equal tokens, text, final deltas and finish reasons per sequence; prompt log-probabilities
/// with equal ids and values within 1e-4 (they differ in the last bits with the batch's size).
fn assert_same_outputs(got: &HashMap<(u64, usize), Out>, want: &HashMap<(u64, usize), Out>) {
    assert_eq!(got.len(), want.len());
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(
            (&g.tokens, &g.text, g.finals, g.finish),
            (&w.tokens, &w.text, w.finals, w.finish),
            "{k:?}"
        );
        let (gp, wp) = (
            g.plp.clone().unwrap_or_default(),
            w.plp.clone().unwrap_or_default(),
        );
        assert_eq!(gp.len(), wp.len());
        for (a, b) in gp.iter().zip(&wp) {
            for ((ta, la), (tb, lb)) in a.iter().zip(b) {
                assert_eq!(ta, tb);
                assert!((la - lb).abs() < 1e-4);
            }
        }
    }
}

fn prompt(e: &Engine<CpuBackend>, s: &str) -> Vec<u32> {
    e.tokenizer().encode(s, true).unwrap()
}

/// The engine loop's order: collect, dispatch, intake, launch_next, emit, dispatch.
/// `between_collect_and_launch` runs where the loop's second `intake` does.
fn loop_step(
    e: &mut Engine<CpuBackend>,
    outs: &mut HashMap<(u64, usize), Out>,
    between_collect_and_launch: impl FnOnce(&mut Engine<CpuBackend>, &mut HashMap<(u64, usize), Out>),
) {
    let (d, errs) = e.collect_step();
    assert!(errs.is_empty());
    fold(outs, d);
    between_collect_and_launch(e, outs);
    e.launch_next();
    let (d, errs) = e.emit();
    assert!(errs.is_empty());
    fold(outs, d);
}

/// An abort taken in by the engine loop right after `collect_step` (before `emit`) ends the
/// request with the synchronous engine's final delta: with async scheduling the token the
/// collect pushed has no text until `emit`, so `abort` makes it first. Same abort point, sync
/// vs async.
#[test]
fn abort_between_collect_and_emit_keeps_the_last_tokens_text() {
    let run = |async_on: bool, steps: usize| {
        let mut e = engine(async_on);
        let params = SamplingParams {
            max_tokens: Some(40),
            temperature: 1.0,
            seed: Some(5),
            ignore_eos: true,
            ..Default::default()
        };
        let p = prompt(&e, "hello world");
        e.add_request(7, p, params, 0).unwrap();
        let mut outs = HashMap::new();
        for _ in 0..steps {
            loop_step(&mut e, &mut outs, |_, _| {});
        }
        loop_step(&mut e, &mut outs, |e, outs| {
            let d = e.abort(7);
            fold(outs, d);
        });
        while e.has_work() {
            loop_step(&mut e, &mut outs, |_, _| {});
        }
        assert_eq!(e.kv.num_free_blocks(), e.kv.num_blocks());
        outs[&(7, 0)].clone()
    };
    let mut bad = Vec::new();
    for steps in 1..12 {
        let (want, got) = (run(false, steps), run(true, steps));
        assert_eq!(got.tokens, want.tokens);
        assert_eq!((got.finals, got.finish), (1, Some(FinishReason::Abort)));
        if got.text != want.text {
            bad.push((steps, want.tokens.len(), want.text, got.text));
        }
    }
    assert!(
        bad.is_empty(),
        "sync vs async final text after an abort: {bad:#?}"
    );
}

/// Aborting, while a step is in flight, a request whose prefill chunk holds prompt-logprob
/// rows (and the sampled row) must not shift the rows the other sequences of that step read.
#[test]
fn abort_in_flight_keeps_the_rows_of_the_others() {
    let mk = |plp: bool| SamplingParams {
        max_tokens: Some(12),
        temperature: if plp { 1.0 } else { 0.7 },
        seed: Some(11),
        logprobs: Some(2),
        prompt_logprobs: plp.then_some(3),
        ignore_eos: true,
        ..Default::default()
    };
    let run = |with_victim: bool, async_on: bool| {
        let mut e = engine(async_on);
        let pa = prompt(&e, "the quick brown fox jumps");
        let pb = prompt(&e, "over the lazy dog");
        let pc = prompt(&e, "lorem ipsum dolor sit amet");
        e.add_request(2, pb, mk(false), 0).unwrap();
        e.add_request(3, pc.clone(), mk(true), 0).unwrap();
        let mut outs = HashMap::new();
        loop_step(&mut e, &mut outs, |_, _| {});
        // The victim's whole prefill (prompt-logprob rows and its sampled row) goes into the
        // step launched next, between the decode rows of 2 and 3 (plan order: 2, 3, 1).
        loop_step(&mut e, &mut outs, |e, _| {
            if with_victim {
                e.add_request(1, pa, mk(true), 0).unwrap();
            }
        });
        if with_victim {
            let l = e.in_flight.as_ref().unwrap();
            assert_eq!(l.plan.len(), 3);
            assert!(l.plan[2].num_tokens > 1);
            assert!(!async_on || e.in_flight.is_some());
            let d = e.abort(1);
            fold(&mut outs, d);
        }
        let mut guard = 0;
        while e.has_work() {
            loop_step(&mut e, &mut outs, |_, _| {});
            guard += 1;
            assert!(guard < 200);
        }
        assert_eq!(e.kv.num_free_blocks(), e.kv.num_blocks());
        outs.remove(&(1, 0));
        outs
    };
    let want = run(false, false);
    let got = run(true, true);
    assert_same_outputs(&got, &want);
}

/// A sequence aborted while a step is in flight gets exactly one final delta and its blocks
/// come back once the step is collected; other requests go on.
#[test]
fn abort_in_flight_one_final_and_blocks_back() {
    let mut e = engine(true);
    let params = SamplingParams {
        max_tokens: Some(30),
        temperature: 0.0,
        ignore_eos: true,
        n: 3,
        ..Default::default()
    };
    let p = prompt(&e, "count with me");
    e.add_request(1, p.clone(), params.clone(), 0).unwrap();
    e.add_request(2, p, SamplingParams { n: 1, ..params }, 0)
        .unwrap();
    let mut outs = HashMap::new();
    for _ in 0..4 {
        loop_step(&mut e, &mut outs, |_, _| {});
    }
    assert!(e.in_flight.is_some());
    fold(&mut outs, e.abort(1));
    fold(&mut outs, e.abort(1));
    while e.has_work() {
        loop_step(&mut e, &mut outs, |_, _| {});
    }
    for i in 0..3 {
        assert_eq!(outs[&(1, i)].finals, 1);
        assert_eq!(outs[&(1, i)].finish, Some(FinishReason::Abort));
    }
    assert_eq!(outs[&(2, 0)].tokens.len(), 30);
    assert_eq!(e.kv.num_free_blocks(), e.kv.num_blocks());
}

/// Random adds and aborts at both intake points of the loop, a small KV cache (preemption),
/// n > 1, stop strings, logprobs and prompt logprobs: every sequence gets one final delta, no
/// delta follows it, every block comes back, and requests never aborted give the same tokens
/// and text as in the synchronous engine.
#[test]
fn random_ops_async_vs_sync() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    for seed in 0..30u64 {
        let run = |async_on: bool| {
            let mut rng = StdRng::seed_from_u64(seed);
            let files = open_model(&fixture()).unwrap();
            let config = EngineConfig {
                async_scheduling: Some(async_on),
                kv_cache_tokens: Some(16 * 12),
                max_num_batched_tokens: 48,
                max_num_seqs: 6,
                ..Default::default()
            };
            let mut e = Engine::new(
                CpuBackend::for_model(&files.config, config.block_size),
                files,
                config,
            )
            .unwrap();
            let texts = [
                "hello world",
                "the quick brown fox",
                "a b c d e f g h i j k",
                "zzz",
                "lorem ipsum dolor sit amet consectetur",
            ];
            let mut outs: HashMap<(u64, usize), Out> = HashMap::new();
            let mut aborted = std::collections::HashSet::new();
            let mut ns: HashMap<u64, usize> = HashMap::new();
            let mut next_id = 0u64;
            let op = |e: &mut Engine<CpuBackend>,
                      outs: &mut HashMap<(u64, usize), Out>,
                      rng: &mut StdRng,
                      aborted: &mut std::collections::HashSet<u64>,
                      ns: &mut HashMap<u64, usize>,
                      next_id: &mut u64| {
                let r: f32 = rng.random();
                if r < 0.25 && *next_id < 24 {
                    let t = texts[rng.random_range(0..texts.len())];
                    let p = e.tokenizer().encode(t, true).unwrap();
                    let n = if rng.random::<f32>() < 0.2 { 2 } else { 1 };
                    let params = SamplingParams {
                        n,
                        max_tokens: Some(rng.random_range(1..20)),
                        temperature: if rng.random::<f32>() < 0.5 { 0.0 } else { 1.0 },
                        seed: Some(rng.random_range(0..100)),
                        stop: if rng.random::<f32>() < 0.3 {
                            vec!["e".into()]
                        } else {
                            vec![]
                        },
                        logprobs: (rng.random::<f32>() < 0.2).then_some(1),
                        prompt_logprobs: (rng.random::<f32>() < 0.2).then_some(1),
                        ..Default::default()
                    };
                    e.add_request(*next_id, p, params, rng.random_range(0..2))
                        .unwrap();
                    ns.insert(*next_id, n);
                    *next_id += 1;
                } else if r < 0.32 && *next_id > 0 {
                    let id = rng.random_range(0..*next_id);
                    let d = e.abort(id);
                    if !d.is_empty() {
                        aborted.insert(id);
                    }
                    fold(outs, d);
                }
            };
            let mut guard = 0;
            loop {
                guard += 1;
                assert!(guard < 3000, "livelock");
                op(
                    &mut e,
                    &mut outs,
                    &mut rng,
                    &mut aborted,
                    &mut ns,
                    &mut next_id,
                );
                if !e.has_work() {
                    if next_id >= 24 {
                        break;
                    }
                    continue;
                }
                let (d, errs) = e.collect_step();
                assert!(errs.is_empty());
                fold(&mut outs, d);
                op(
                    &mut e,
                    &mut outs,
                    &mut rng,
                    &mut aborted,
                    &mut ns,
                    &mut next_id,
                );
                e.launch_next();
                let (d, errs) = e.emit();
                assert!(errs.is_empty());
                fold(&mut outs, d);
            }
            assert_eq!(e.kv.num_free_blocks(), e.kv.num_blocks(), "seed {seed}");
            for (id, n) in &ns {
                for i in 0..*n {
                    let o = outs.get(&(*id, i)).cloned().unwrap_or_default();
                    assert_eq!(
                        o.finals, 1,
                        "seed {seed} async {async_on} req {id}/{i}: {o:?}"
                    );
                }
            }
            (outs, aborted)
        };
        let (a, aa) = run(true);
        let (s, sa) = run(false);
        for ((id, i), o) in &a {
            if aa.contains(id) || sa.contains(id) {
                continue;
            }
            let w = &s[&(*id, *i)];
            assert_eq!(
                (&o.tokens, &o.text, o.finish),
                (&w.tokens, &w.text, w.finish),
                "seed {seed} req {id}/{i}"
            );
        }
    }
}

/// As above, with the victim's prompt-logprob rows *before* the others' rows in the plan.
#[test]
fn abort_in_flight_victim_rows_first() {
    let mk = |plp: bool| SamplingParams {
        max_tokens: Some(10),
        temperature: 1.0,
        seed: Some(11),
        logprobs: Some(2),
        prompt_logprobs: plp.then_some(3),
        ignore_eos: true,
        ..Default::default()
    };
    let run = |with_victim: bool| {
        let files = open_model(&fixture()).unwrap();
        let config = EngineConfig {
            async_scheduling: Some(with_victim),
            kv_cache_tokens: Some(4096),
            max_num_batched_tokens: 24,
            ..Default::default()
        };
        let mut e = Engine::new(
            CpuBackend::for_model(&files.config, config.block_size),
            files,
            config,
        )
        .unwrap();
        let pa = prompt(
            &e,
            "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
        );
        let pb = prompt(&e, "over the lazy dog");
        let pc = prompt(&e, "lorem ipsum");
        if with_victim {
            e.add_request(1, pa, mk(true), 0).unwrap();
        }
        e.add_request(2, pb, mk(true), 0).unwrap();
        e.add_request(3, pc, mk(false), 0).unwrap();
        let mut outs = HashMap::new();
        let mut aborted = !with_victim;
        let mut guard = 0;
        while e.has_work() {
            loop_step(&mut e, &mut outs, |_, _| {});
            if !aborted {
                let l = e.in_flight.as_ref().unwrap();
                let first = &e.scheduler.running[l.plan[0].seq];
                if first.request_id == 1 && l.plan.len() > 1 && l.plan[0].num_tokens > 1 {
                    fold(&mut outs, e.abort(1));
                    aborted = true;
                }
            }
            guard += 1;
            assert!(guard < 200);
        }
        assert!(aborted);
        assert_eq!(e.kv.num_free_blocks(), e.kv.num_blocks());
        outs.remove(&(1, 0));
        outs
    };
    let want = run(false);
    let got = run(true);
    assert_same_outputs(&got, &want);
}
