use super::*;
use std::sync::atomic::AtomicUsize;

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// The helpers parked in this thread's pool, `None` when it has none.
fn sleepers() -> Option<usize> {
    POOL.with(|p| {
        let p = p.borrow();
        p.as_ref()
            .map(|(_, pool)| pool.shared.sleepers.load(Ordering::SeqCst))
    })
}

#[test]
fn every_task_runs_once_in_many_regions_back_to_back() {
    for threads in [2, 3, 4] {
        in_pool(threads, || {
            for tasks in [2, 3, 7, 64, 1000] {
                let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..200 {
                    run(tasks, |i| {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
                for (i, c) in counts.iter().enumerate() {
                    assert_eq!(c.load(Ordering::Relaxed), 200, "task {i} of {tasks}");
                }
            }
        });
    }
}

#[test]
fn results_are_visible_when_a_region_returns() {
    in_pool(2, || {
        let mut out = vec![0u64; 8];
        for round in 0..500u64 {
            let pieces: Vec<Mutex<&mut [u64]>> = out.chunks_mut(1).map(Mutex::new).collect();
            run(pieces.len(), |i| {
                pieces[i].lock().unwrap()[0] = round * 10 + i as u64
            });
            drop(pieces);
            assert_eq!(out, (0..8).map(|i| round * 10 + i).collect::<Vec<_>>());
        }
    });
}

#[test]
fn idle_helpers_park_and_wake_for_the_next_region() {
    if !enabled() {
        return;
    }
    in_pool(3, || {
        let sum = AtomicUsize::new(0);
        run(4, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        // Far longer than the spin time: both helpers must be parked by then.
        let parked = spin_until(Duration::from_secs(5), || sleepers() == Some(2));
        assert!(parked, "helpers still spinning: {:?} parked", sleepers());
        run(4, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 12);
    });
}

#[test]
fn one_thread_makes_no_helpers() {
    in_pool(1, || {
        let sum = AtomicUsize::new(0);
        run(5, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 10);
        assert_eq!(sleepers(), None, "a one-thread pool made helpers");
    });
}

#[test]
fn a_panicking_task_panics_the_caller_after_the_others_finish() {
    in_pool(2, || {
        let done = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            run(16, |i| {
                if i == 5 {
                    panic!("task 5");
                }
                thread::sleep(Duration::from_millis(1));
                done.fetch_add(1, Ordering::Relaxed);
            })
        }));
        let msg = r.expect_err("the panic was lost");
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"task 5"));
        assert_eq!(done.load(Ordering::Relaxed), 15);
        // The pool still works.
        let sum = AtomicUsize::new(0);
        run(4, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 6);
    });
}

#[test]
fn each_panic_is_reported_by_its_own_region() {
    // A helper's panic must be on record before its task counts as done: else the caller may
    // return normally and the panic surface in a later, clean region. (`resume_unwind` skips
    // the panic hook, so the loop prints nothing.)
    in_pool(2, || {
        for round in 0..300usize {
            let r = catch_unwind(AssertUnwindSafe(|| {
                run(2, |i| {
                    if i == round % 2 {
                        resume_unwind(Box::new(round));
                    }
                })
            }));
            let payload = r.expect_err("a region's panic was lost");
            assert_eq!(payload.downcast_ref::<usize>(), Some(&round));
            let clean = catch_unwind(AssertUnwindSafe(|| run(2, |_| {})));
            assert!(clean.is_ok(), "round {round}: a clean region panicked");
        }
    });
}

#[test]
fn a_region_inside_a_task_runs_serially() {
    in_pool(2, || {
        let sum = AtomicUsize::new(0);
        run(4, |i| {
            run(3, |j| {
                sum.fetch_add(i * 3 + j, Ordering::Relaxed);
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), (0..12).sum::<usize>());
    });
}

#[test]
fn a_stalled_task_does_not_hold_up_the_others() {
    // Task 0 stalls (as on a helper taken off its core): the other thread runs the rest, where
    // a static split would leave half of them behind the stalled one.
    in_pool(2, || {
        let ran_on: Vec<Mutex<Option<thread::ThreadId>>> =
            (0..40).map(|_| Mutex::new(None)).collect();
        run(40, |i| {
            thread::sleep(Duration::from_millis(if i == 0 { 300 } else { 10 }));
            *ran_on[i].lock().unwrap() = Some(thread::current().id());
        });
        let ids: Vec<_> = ran_on.iter().map(|m| m.lock().unwrap().unwrap()).collect();
        let with_stalled = ids[1..].iter().filter(|&&t| t == ids[0]).count();
        assert!(
            with_stalled <= 15,
            "{with_stalled} of 39 ran behind the stalled task"
        );
    });
}

#[test]
fn the_state_word_round_trips() {
    for (g, n, i) in [(0, 0, 0), (1, 2, 1), (0xffff_ffff, MAX_TASKS, MAX_TASKS)] {
        assert_eq!(unpack(pack(g, n, i)), (g, n, i));
    }
}
