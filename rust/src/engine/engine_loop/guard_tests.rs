//! A panic inside the engine loop: the request in flight and every later one end with an error
//! (none hangs), the failure is published, what the engine held is dropped after the requests
//! have their error (and a drop that panics in turn is caught), and shutdown still works. The
//! loop body here takes one request and panics, as a bug in a step would; the server-level
//! tests (`tests/test_server_limits.py`, `tests/test_node_failure.py`) drive a real engine
//! into a real panic and measure the memory it gives back.

use std::sync::mpsc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::*;
use crate::sampling::SamplingParams;

fn add(request_id: u64) -> (Command, UnboundedReceiver<RequestEvent>) {
    let (events, rx) = unbounded_channel();
    let cmd = Command::Add {
        request_id,
        prompt: vec![1],
        params: Box::new(SamplingParams::default()),
        priority: 0,
        events,
    };
    (cmd, rx)
}

/// The next event of `rx`, failing the test after 10 s instead of hanging.
fn next_event(rx: &mut UnboundedReceiver<RequestEvent>) -> Option<RequestEvent> {
    for _ in 0..1000 {
        match rx.try_recv() {
            Ok(e) => return Some(e),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return None,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                std::thread::sleep(Duration::from_millis(10))
            }
        }
    }
    panic!("no event within 10 s: the request hangs");
}

/// Records its drop on `dropped`; with `panics`, panics in its drop as a destructor that
/// meets a broken invariant would.
struct Held {
    dropped: Arc<AtomicBool>,
    panics: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
        if self.panics {
            panic!("a destructor met the broken state");
        }
    }
}

/// A loop thread as `serve_loop::run` makes it, whose body takes one request and panics, and
/// whose engine is `held`.
fn failing_loop(
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    held: Held,
) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let failed = guarded(&shared, |routes| {
            let Ok(Command::Add {
                request_id, events, ..
            }) = commands.recv()
            else {
                return;
            };
            routes.insert(request_id, Route { events, open: 1 });
            panic!("index out of range in a step");
        });
        let Some(message) = failed else { return false };
        release(&shared, || drop(held));
        refuse_until_shutdown(&commands, &message);
        true
    })
}

#[test]
fn a_panic_fails_every_request_frees_the_engine_and_is_published() {
    let (tx, commands) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let dropped = Arc::new(AtomicBool::new(false));
    let held = Held {
        dropped: dropped.clone(),
        panics: false,
    };
    let thread = failing_loop(commands, shared.clone(), held);
    let (cmd, mut in_flight) = add(7);
    tx.send(cmd).unwrap();
    match next_event(&mut in_flight) {
        Some(RequestEvent::Failed(Error::Engine(m))) => {
            assert!(m.contains("index out of range in a step"), "{m}")
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(
        shared.failure.lock().unwrap().as_deref(),
        Some("index out of range in a step")
    );
    // A later request is refused once the engine is gone: the release came first.
    let (cmd, mut later) = add(8);
    tx.send(cmd).unwrap();
    assert!(matches!(
        next_event(&mut later),
        Some(RequestEvent::Failed(Error::Engine(_)))
    ));
    assert!(
        dropped.load(Ordering::SeqCst),
        "the failed engine was dropped"
    );
    assert_eq!(
        shared.release.load(Ordering::SeqCst),
        FailedMemory::Freed as u8
    );
    tx.send(Command::Abort(8)).unwrap();
    tx.send(Command::Shutdown).unwrap();
    assert!(thread.join().unwrap(), "guarded reports the panic");
}

#[test]
fn a_drop_that_panics_in_turn_is_caught_and_said() {
    let (tx, commands) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let dropped = Arc::new(AtomicBool::new(false));
    let held = Held {
        dropped: dropped.clone(),
        panics: true,
    };
    let thread = failing_loop(commands, shared.clone(), held);
    let (cmd, mut in_flight) = add(1);
    tx.send(cmd).unwrap();
    assert!(matches!(
        next_event(&mut in_flight),
        Some(RequestEvent::Failed(_))
    ));
    // The loop outlives the second panic and still answers, then shuts down.
    let (cmd, mut later) = add(2);
    tx.send(cmd).unwrap();
    assert!(matches!(
        next_event(&mut later),
        Some(RequestEvent::Failed(_))
    ));
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(
        shared.release.load(Ordering::SeqCst),
        FailedMemory::Kept as u8
    );
    tx.send(Command::Shutdown).unwrap();
    assert!(thread.join().unwrap());
}

#[test]
fn panic_messages_of_both_payload_kinds() {
    assert_eq!(panic_message(&"static"), "static");
    assert_eq!(panic_message(&String::from("owned")), "owned");
    assert_eq!(panic_message(&3u8), "a panic without a message");
}
