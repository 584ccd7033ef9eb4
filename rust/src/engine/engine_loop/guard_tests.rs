//! A panic inside the engine loop: the request in flight and every later one end with an error
//! (none hangs), the failure is published, and shutdown still works. The loop body here is a
//! stand-in that takes one request and panics, as a bug in a step would; the server-level test
//! (`tests/test_server_limits.py`) drives a real engine into a real panic.

use std::sync::mpsc;
use std::time::Duration;

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

#[test]
fn a_panic_fails_every_request_and_is_published() {
    let (tx, commands) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let loop_shared = shared.clone();
    let thread = std::thread::spawn(move || {
        guarded(&commands, &loop_shared, |routes| {
            let Ok(Command::Add {
                request_id, events, ..
            }) = commands.recv()
            else {
                return;
            };
            routes.insert(request_id, Route { events, open: 1 });
            panic!("index out of range in a step");
        })
    });
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
    let (cmd, mut later) = add(8);
    tx.send(cmd).unwrap();
    assert!(matches!(
        next_event(&mut later),
        Some(RequestEvent::Failed(Error::Engine(_)))
    ));
    tx.send(Command::Abort(8)).unwrap();
    tx.send(Command::Shutdown).unwrap();
    assert!(thread.join().unwrap(), "guarded reports the panic");
}

#[test]
fn panic_messages_of_both_payload_kinds() {
    assert_eq!(panic_message(&"static"), "static");
    assert_eq!(panic_message(&String::from("owned")), "owned");
    assert_eq!(panic_message(&3u8), "a panic without a message");
}
