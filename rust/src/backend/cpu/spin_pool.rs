//! A small pool whose helpers stay awake between parallel regions: the decode step's matrix
//! products and attention.
//!
//! A decode step runs ~150 short parallel regions (20–1,200 µs each) separated by serial
//! stretches (norms, RoPE, the activations' quantization). Rayon's idle workers go to sleep
//! within tens of µs, so a region after a longer serial stretch pays a wake-up of 7–10 µs
//! before the second thread starts (`NOTES.md`, "The spin pool", for where that matters and
//! where it does not). Here each calling thread owns
//! `threads − 1` helpers that, after a region, spin for [`SPIN`] on the pool's state word
//! before they park, and the caller takes tasks itself, so nothing waits for a helper that has
//! not started.
//!
//! Protocol. A region publishes one word, `generation << 32 | tasks << 16 | next`. Anyone
//! (caller or helper) claims task `next` by a compare-and-swap of that word; because the
//! generation is part of it, a helper that read an old region's word can never claim a task
//! of a newer one. The job (the closure) is read only after a successful claim, and a region
//! returns only when every task is done, so the closure outlives every use.
//!
//! On a busy machine a helper may be off its core: tasks are claimed dynamically, so the caller
//! runs whatever the helper has not claimed, and waits only for tasks already started. Spinning
//! yields the core after its first 2 µs ([`PURE_SPIN`]), and parks after [`SPIN`], so a
//! descheduled partner never makes the other spin for long. With one thread there are no
//! helpers and nothing spins.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle helper looks for a new region before it parks: longer than a decode
/// step's serial stretches (a few µs to tens of µs), short enough that an engine between steps
/// hands its cores back at once. `INFIRE_CPU_SPIN_US` overrides it; 0 turns the pool off
/// (rayon runs every region, as before the pool), for A/B measurements.
const SPIN: Duration = Duration::from_micros(100);

/// How long a waiting thread spins with `pause` alone before it also yields its core at each
/// check (a partner off its core may need it).
const PURE_SPIN: Duration = Duration::from_micros(2);

/// Most tasks in one region (the state word holds the count in 16 bits).
pub const MAX_TASKS: usize = u16::MAX as usize;

/// The spin time in force (see [`SPIN`]).
fn spin_time() -> Duration {
    static SPIN_TIME: OnceLock<Duration> = OnceLock::new();
    *SPIN_TIME.get_or_init(|| {
        crate::tuning::Tuning::from_env()
            .cpu_spin_us
            .map_or(SPIN, Duration::from_micros)
    })
}

/// Set by [`use_rayon`].
static RAYON_ONLY: AtomicBool = AtomicBool::new(false);

/// Whether [`run`] uses the pool (rather than rayon): `INFIRE_CPU_SPIN_US` is not 0 and
/// [`use_rayon`] has not turned it off.
pub fn enabled() -> bool {
    !spin_time().is_zero() && !RAYON_ONLY.load(Ordering::Relaxed)
}

/// Sends every later region of this process to rayon (`true`) or back to the pool: for a
/// benchmark that alternates the two in one process.
pub fn use_rayon(yes: bool) {
    RAYON_ONLY.store(yes, Ordering::Relaxed);
}

/// The closure of the region in flight, on the caller's stack.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
}

/// What the caller and its helpers share.
struct Shared {
    /// `generation << 32 | tasks << 16 | next` of the latest region.
    state: AtomicU64,
    /// The latest region's [`Job`]; read only by whoever claimed one of its tasks.
    job: AtomicPtr<Job<'static>>,
    /// Tasks of the latest region finished (claimed and returned or panicked).
    done: AtomicUsize,
    /// The first panic of a task of the latest region.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Helpers parked or about to park: the caller unparks them only when this is not 0.
    sleepers: AtomicUsize,
    /// Set when the owning thread's pool is dropped: the helpers return.
    exit: AtomicBool,
    spin: Duration,
}

const fn pack(generation: u64, tasks: usize, next: usize) -> u64 {
    (generation << 32) | ((tasks as u64) << 16) | next as u64
}

const fn unpack(s: u64) -> (u64, usize, usize) {
    (
        s >> 32,
        ((s >> 16) & 0xffff) as usize,
        (s & 0xffff) as usize,
    )
}

impl Shared {
    /// Claims the next task of the region in `s` (which must be current), or `None` when all
    /// are claimed or the region has changed.
    fn claim(&self, mut s: u64) -> Option<usize> {
        loop {
            let (generation, tasks, next) = unpack(s);
            if next >= tasks {
                return None;
            }
            match self.state.compare_exchange_weak(
                s,
                pack(generation, tasks, next + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(next),
                Err(now) if unpack(now).0 == generation => s = now,
                Err(_) => return None,
            }
        }
    }

    /// Runs task `i` of the region whose task it claimed, counting it done even if it panics
    /// (the first panic is kept in `panic` before the count, so the caller finds it there).
    fn run_claimed(&self, i: usize) {
        // SAFETY: task `i` was claimed, so its region has not returned (it waits for `done` to
        // reach its task count), so the caller's `Job` is alive; `job` was stored before the
        // state word that announced the region (release/acquire through `state`).
        let job = unsafe { &*self.job.load(Ordering::Acquire) };
        let result = IN_TASK.with(|t| {
            t.set(true);
            let r = catch_unwind(AssertUnwindSafe(|| (job.f)(i)));
            t.set(false);
            r
        });
        if let Err(p) = result {
            let mut first = self.panic.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert(p);
        }
        self.done.fetch_add(1, Ordering::AcqRel);
    }
}

/// Waits, spinning then yielding, until `ready()` or `limit` has passed; whether it is ready.
fn spin_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..32 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        let waited = start.elapsed();
        if waited >= limit {
            return ready();
        }
        if waited >= PURE_SPIN {
            thread::yield_now();
        }
    }
}

/// A helper's life: claim tasks while there are any, spin for [`Shared::spin`], then park.
fn helper(shared: Arc<Shared>) {
    let claimable = |s: u64| unpack(s).2 < unpack(s).1;
    loop {
        let mut s = shared.state.load(Ordering::Acquire);
        let found = spin_until(shared.spin, || {
            s = shared.state.load(Ordering::Acquire);
            claimable(s) || shared.exit.load(Ordering::Relaxed)
        });
        if !found {
            // Announce the park before the last look, so a region published after that look
            // sees a sleeper and unparks (both sides sequentially consistent).
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            s = shared.state.load(Ordering::SeqCst);
            while !claimable(s) && !shared.exit.load(Ordering::SeqCst) {
                thread::park();
                s = shared.state.load(Ordering::SeqCst);
            }
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        if shared.exit.load(Ordering::Relaxed) {
            return;
        }
        while let Some(i) = shared.claim(s) {
            shared.run_claimed(i);
            s = shared.state.load(Ordering::Acquire);
        }
    }
}

/// One calling thread's helpers.
struct Pool {
    shared: Arc<Shared>,
    helpers: Vec<Thread>,
    generation: u64,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            exit: AtomicBool::new(false),
            spin: spin_time(),
        });
        let helpers = (1..threads)
            .filter_map(|i| {
                let shared = shared.clone();
                thread::Builder::new()
                    .name(format!("infire-spin-{i}"))
                    .spawn(move || helper(shared))
                    .ok()
            })
            .map(|h| h.thread().clone())
            .collect();
        Pool {
            shared,
            helpers,
            generation: 0,
        }
    }

    /// Runs `f(0..tasks)` with the helpers (`1 < tasks ≤ MAX_TASKS`).
    fn run(&mut self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let sh = &*self.shared;
        let job = Job { f };
        // SAFETY (lifetime): helpers dereference `job` only after claiming one of this
        // region's tasks, and this function returns only once all of them are done.
        let ptr = &job as *const Job<'_> as *mut Job<'static>;
        sh.job.store(ptr, Ordering::Relaxed);
        sh.done.store(0, Ordering::Relaxed);
        self.generation = (self.generation + 1) & 0xffff_ffff;
        sh.state
            .store(pack(self.generation, tasks, 0), Ordering::SeqCst);
        if sh.sleepers.load(Ordering::SeqCst) > 0 {
            self.helpers.iter().for_each(Thread::unpark);
        }
        while let Some(i) = sh.claim(sh.state.load(Ordering::Acquire)) {
            sh.run_claimed(i);
        }
        // Only tasks a helper has started are left; wait for them however long they take.
        while !spin_until(Duration::from_secs(1), || {
            sh.done.load(Ordering::Acquire) == tasks
        }) {}
        let panic = sh.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = panic {
            resume_unwind(p);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.exit.store(true, Ordering::SeqCst);
        self.helpers.iter().for_each(Thread::unpark);
    }
}

thread_local! {
    /// This thread's pool, sized to the rayon pool it runs in when it was made.
    static POOL: RefCell<Option<(usize, Pool)>> = const { RefCell::new(None) };
    /// Whether this thread is running a task of a region (a nested region runs serially).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f(i)` for every `i < tasks`, in parallel over as many threads as the current rayon
/// pool has (the caller's own thread among them), and returns when all have returned. A panic
/// in a task is resumed here once every task has finished.
///
/// The caller's pool of helpers is made on its first region (and again if it moves to a rayon
/// pool of another size). A region inside a task runs serially on that task's thread.
pub fn run(tasks: usize, f: impl Fn(usize) + Sync) {
    let threads = rayon::current_num_threads();
    if tasks <= 1 || threads <= 1 || IN_TASK.with(Cell::get) {
        return (0..tasks).for_each(f);
    }
    if !enabled() || tasks > MAX_TASKS {
        use rayon::prelude::*;
        return (0..tasks).into_par_iter().for_each(&f);
    }
    POOL.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(n, _)| *n != threads) {
            *slot = Some((threads, Pool::new(threads)));
        }
        let (_, pool) = slot.as_mut().expect("just made");
        pool.run(tasks, &f);
    });
}

#[cfg(test)]
mod tests;
