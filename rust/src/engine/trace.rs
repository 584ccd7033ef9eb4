//! The step trace: with `INFIRE_STEP_TRACE=PATH` in the environment (`crate::tuning`), the
//! engine appends one JSON line per collected step to `PATH`, and asks the backend to time
//! each step on the device.
//! `bench/step_trace.py` turns a trace into where the time of a run went (device time against
//! its floor per kind of step, and the device's idle time between steps). Off by default; on,
//! it costs two device events and one short line of buffered output per step.
//!
//! Fields (times in µs since the engine was created, durations in µs, device times in ms):
//! `step`, `tokens` (rows the model ran, padding included), `padding`, `seqs`, `decode_rows`
//! (sequences with one new token), `prefill_tokens` (the other rows), `kv_tokens` (context
//! length summed over the step's sequences), `t_launch` and `launch_us` (planning, the batch
//! upload and enqueueing the step), `t_collect` and `collect_us` (waiting for the device and
//! reading the tokens back), `apply_us` (applying the tokens, finishing sequences), `gpu_ms`
//! (device time from the step's first operation to its sampled tokens) and `idle_ms` (device
//! time between the previous step's end and this step's start: the device waited for the
//! host), both `null` where the backend does not time steps, and `last` (the engine had no
//! work left after the step: the end of a run).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

use crate::backend::{ForwardBatch, StepTiming};

/// The trace file of an engine.
pub(super) struct StepTrace {
    out: BufWriter<File>,
    start: Instant,
    step: u64,
}

/// What the trace keeps of a launched step until it is collected.
#[derive(Debug, Clone, Copy)]
pub(super) struct LaunchRecord {
    tokens: usize,
    padding: usize,
    seqs: usize,
    decode_rows: usize,
    kv_tokens: usize,
    t_launch: Instant,
    launch_us: u64,
}

impl LaunchRecord {
    /// The shape of `batch` (padded to its graph's size), launched from `t_launch` to now.
    /// `real_seqs` counts the scheduled sequences, without the padding rows.
    pub(super) fn new(batch: &ForwardBatch, real_seqs: usize, t_launch: Instant) -> Self {
        let real = &batch.seqs[..real_seqs];
        let decode_rows = real.iter().filter(|s| s.query_len == 1).count();
        let real_tokens: usize = real.iter().map(|s| s.query_len).sum();
        LaunchRecord {
            tokens: batch.num_tokens(),
            padding: batch.num_tokens() - real_tokens,
            seqs: real_seqs,
            decode_rows,
            kv_tokens: real.iter().map(|s| s.context_len).sum(),
            t_launch,
            launch_us: micros(t_launch.elapsed()),
        }
    }
}

fn micros(d: std::time::Duration) -> u64 {
    d.as_micros() as u64
}

fn ms(x: Option<f32>) -> String {
    x.map_or_else(|| "null".to_string(), |v| format!("{v:.4}"))
}

impl StepTrace {
    /// A trace written to `path`; a path that cannot be created is reported on stderr and
    /// leaves the trace off (a diagnostic must not stop the engine).
    pub(super) fn create(path: &std::path::Path) -> Option<Self> {
        match File::create(path) {
            Ok(f) => Some(StepTrace {
                out: BufWriter::new(f),
                start: Instant::now(),
                step: 0,
            }),
            Err(e) => {
                eprintln!("infire: step trace {}: {e}; no step trace", path.display());
                None
            }
        }
    }

    /// Writes the line of a collected step: `l` launched it, its collection started at
    /// `t_collect`, waited `collect` and applied its tokens in `apply`.
    pub(super) fn write(
        &mut self,
        l: &LaunchRecord,
        t_collect: Instant,
        collect: std::time::Duration,
        apply: std::time::Duration,
        timing: Option<StepTiming>,
        last: bool,
    ) {
        let since = |t: Instant| micros(t.saturating_duration_since(self.start));
        let line = format!(
            "{{\"step\":{},\"tokens\":{},\"padding\":{},\"seqs\":{},\"decode_rows\":{},\
             \"prefill_tokens\":{},\"kv_tokens\":{},\"t_launch\":{},\"launch_us\":{},\
             \"t_collect\":{},\"collect_us\":{},\"apply_us\":{},\"gpu_ms\":{},\"idle_ms\":{},\"last\":{}}}\n",
            self.step,
            l.tokens,
            l.padding,
            l.seqs,
            l.decode_rows,
            l.tokens - l.padding - l.decode_rows,
            l.kv_tokens,
            since(l.t_launch),
            l.launch_us,
            since(t_collect),
            micros(collect),
            micros(apply),
            ms(timing.map(|t| t.device_ms)),
            ms(timing.and_then(|t| t.idle_before_ms)),
            last,
        );
        self.step += 1;
        // Lines go out when the buffer fills, at the end of a run (so a reader finds the whole
        // run once its requests are done) and when the engine is dropped.
        if let Err(e) = self.out.write_all(line.as_bytes()) {
            eprintln!("infire: step trace: {e}");
        }
        if last {
            self.flush();
        }
    }

    /// Writes out the buffered lines.
    pub(super) fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            eprintln!("infire: step trace: {e}");
        }
    }
}

impl Drop for StepTrace {
    fn drop(&mut self) {
        self.flush();
    }
}
