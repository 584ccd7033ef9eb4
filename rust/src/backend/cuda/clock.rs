//! The step clock: when a step started, the wait for its end (a nap through most of it, then
//! a spin), and, when asked for, its device time measured with events.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream};

use super::device_mem::cuda_err;
use crate::backend::StepTiming;
use crate::error::Result;

/// What the last step of a kind took from its start ([`StepClock::begin`]) to the end of its
/// wait, and its rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct StepSpan {
    took: Duration,
    rows: usize,
}

/// How long the host sleeps before spinning on a step of `rows` rows that started `since` ago,
/// when the last step of its kind spanned `last`: three quarters of that span, scaled down by
/// the rows (a short prompt step after full ones would otherwise sleep past its end), less the
/// time already gone (a launch that took most of the step itself).
fn nap(last: StepSpan, rows: usize, since: Duration) -> Duration {
    if last.rows == 0 {
        return Duration::ZERO;
    }
    let scale = (rows as f64 / last.rows as f64).min(1.0);
    last.took.mul_f64(0.75 * scale).saturating_sub(since)
}

/// The kind of step a wait ends, for the nap: decode-only steps and steps with prompt rows
/// take very different times.
#[derive(Debug, Clone, Copy)]
pub struct StepShape {
    pub rows: usize,
    pub has_prompt_rows: bool,
}

/// Starts and ends steps on the stream (see [`StepClock::wait`]).
pub struct StepClock {
    /// Recorded after a step's work; the host waits on it.
    step_done: CudaEvent,
    /// The last decode-only step ([0]) and step with prompt rows ([1]).
    last_span: [Cell<StepSpan>; 2],
    /// When the step being enqueued started.
    started: Cell<Option<Instant>>,
    /// Device timing of each step (`Backend::time_steps`); off by default.
    timer: Option<StepTimer>,
}

impl StepClock {
    pub fn new(ctx: &Arc<CudaContext>) -> Result<StepClock> {
        Ok(StepClock {
            step_done: ctx.new_event(None).map_err(cuda_err)?,
            last_span: [
                Cell::new(StepSpan::default()),
                Cell::new(StepSpan::default()),
            ],
            started: Cell::new(None),
            timer: None,
        })
    }

    /// Turns device timing on (a diagnostic: without its events the clock runs on untimed).
    pub fn time_steps(&mut self, ctx: &Arc<CudaContext>) {
        if self.timer.is_none() {
            self.timer = StepTimer::new(ctx).ok();
        }
    }

    /// The device time of the last step waited for, when timing is on.
    pub fn timing(&self) -> Option<StepTiming> {
        self.timer.as_ref().and_then(|t| t.last.get())
    }

    /// A step starts (before its batch's upload, and before any graph capture: an event
    /// recorded during a capture would belong to the graph).
    pub fn begin(&self, stream: &CudaStream) -> Result<()> {
        self.started.set(Some(Instant::now()));
        match &self.timer {
            Some(t) => t.begin(stream),
            None => Ok(()),
        }
    }

    /// Waits until the stream has done everything enqueued so far.
    ///
    /// Spinning keeps a core busy for the whole step, a blocking wait adds the wake-up latency
    /// of the thread to every step. So the host sleeps through most of what the last step of
    /// the same kind took from its start ([`nap`]; decode steps of a running batch take about
    /// the same time) and spins on the event for the rest. A wait outside a step spins.
    pub fn wait(&self, stream: &CudaStream, shape: StepShape) -> Result<()> {
        self.step_done.record(stream).map_err(cuda_err)?;
        let timed = match &self.timer {
            Some(t) => t.end(stream)?,
            None => false,
        };
        let started = self.started.take();
        let last = &self.last_span[usize::from(shape.has_prompt_rows)];
        let nap = match started {
            Some(t) => nap(last.get(), shape.rows, t.elapsed()),
            None => Duration::ZERO,
        };
        if nap > Duration::from_micros(100) {
            std::thread::sleep(nap);
        }
        while !self.step_done.try_is_complete().map_err(cuda_err)? {
            std::hint::spin_loop();
        }
        if let Some(t) = started {
            last.set(StepSpan {
                took: t.elapsed(),
                rows: shape.rows,
            });
        }
        if timed {
            self.timer.as_ref().expect("timed").read()?;
        }
        Ok(())
    }
}

/// Times steps on the device with events: one recorded when a step's batch is uploaded, one
/// when the host waits for its end; the end events alternate so that the idle time before a
/// step reads the previous step's end.
struct StepTimer {
    begin: CudaEvent,
    end: [CudaEvent; 2],
    /// Which `end` event the next wait records.
    next: Cell<usize>,
    /// Whether `begin` was recorded since the last wait (waits outside steps are not timed).
    begun: Cell<bool>,
    /// Whether the other `end` event holds the previous step's end.
    has_prev: Cell<bool>,
    last: Cell<Option<StepTiming>>,
}

impl StepTimer {
    fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        // Events without CU_EVENT_DISABLE_TIMING.
        let event = || {
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda_err)
        };
        Ok(StepTimer {
            begin: event()?,
            end: [event()?, event()?],
            next: Cell::new(0),
            begun: Cell::new(false),
            has_prev: Cell::new(false),
            last: Cell::new(None),
        })
    }

    fn begin(&self, stream: &CudaStream) -> Result<()> {
        self.begin.record(stream).map_err(cuda_err)?;
        self.begun.set(true);
        Ok(())
    }

    /// Records the end of a begun step; [`read`](Self::read) once the stream has passed it.
    fn end(&self, stream: &CudaStream) -> Result<bool> {
        if !self.begun.get() {
            return Ok(false);
        }
        self.end[self.next.get()].record(stream).map_err(cuda_err)?;
        Ok(true)
    }

    fn read(&self) -> Result<()> {
        let (n, begin) = (self.next.get(), &self.begin);
        let device_ms = begin.elapsed_ms(&self.end[n]).map_err(cuda_err)?;
        let prev = &self.end[1 - n];
        let idle_before_ms = match self.has_prev.get() {
            true => Some(prev.elapsed_ms(begin).map_err(cuda_err)?),
            false => None,
        };
        self.last.set(Some(StepTiming {
            device_ms,
            idle_before_ms,
        }));
        self.next.set(1 - n);
        self.begun.set(false);
        self.has_prev.set(true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{nap, StepSpan};
    use std::time::Duration;

    #[test]
    fn the_nap_follows_the_last_span_the_rows_and_the_time_gone() {
        let ms = Duration::from_millis;
        let decode = StepSpan {
            took: ms(14),
            rows: 256,
        };
        // A decode step like the last: 3/4 of its span from the step's start.
        assert_eq!(nap(decode, 256, ms(1)), ms(14).mul_f64(0.75) - ms(1));
        // Fewer rows: shorter; more rows: no longer than the last span allows.
        assert_eq!(nap(decode, 128, Duration::ZERO), ms(14).mul_f64(0.375));
        assert_eq!(nap(decode, 512, Duration::ZERO), ms(14).mul_f64(0.75));
        // A 679-token prompt step after 8,192-token ones of 190 ms: ~12 ms, not 142.
        let prompt = StepSpan {
            took: ms(190),
            rows: 8192,
        };
        assert!(nap(prompt, 679, Duration::ZERO) < ms(12));
        // A launch that took the step's time: no nap at all.
        assert_eq!(nap(prompt, 8192, ms(198)), Duration::ZERO);
        // No step of the kind yet: spin.
        assert_eq!(
            nap(StepSpan::default(), 8192, Duration::ZERO),
            Duration::ZERO
        );
    }
}
