//! Server-sent events: a producer task writes JSON chunks into a channel that the response
//! body reads; the stream ends with `data: [DONE]`. When the client goes away the channel
//! closes, [`Emitter::closed`] fires, and the producer returns, dropping (and so aborting) its
//! requests. When the server's grace period after a shutdown signal ends (`cut` turns true),
//! the stream ends at once with an error event instead of `[DONE]`.

use std::convert::Infallible;
use std::future::Future;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;

use super::ApiError;

/// Where a producer writes its chunks.
pub struct Emitter {
    tx: UnboundedSender<Event>,
}

impl Emitter {
    /// Queues one `data:` event; false once the client has gone away.
    pub fn send(&self, chunk: &Value) -> bool {
        self.tx
            .send(Event::default().data(chunk.to_string()))
            .is_ok()
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// Where the SSE body is: relaying the producer's events, or finished.
enum Relay {
    Open(UnboundedReceiver<Event>, watch::Receiver<bool>),
    Done,
}

/// Spawns `produce` on the runtime and answers with the SSE stream of what it emits; `cut`
/// ends the stream early with an error event (see the module docs).
pub fn spawn_sse<F, Fut>(cut: watch::Receiver<bool>, produce: F) -> Response
where
    F: FnOnce(Emitter) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = unbounded_channel();
    tokio::spawn(produce(Emitter { tx }));
    let events = stream::unfold(Relay::Open(rx, cut), |relay| async move {
        let Relay::Open(mut rx, mut cut) = relay else {
            return None;
        };
        let next = tokio::select! {
            biased;
            event = rx.recv() => event,
            _ = cut.wait_for(|c| *c) => {
                let error = ApiError::shutting_down().body();
                return Some((Event::default().data(error.to_string()), Relay::Done));
            }
        };
        Some(match next {
            Some(e) => (e, Relay::Open(rx, cut)),
            None => (Event::default().data("[DONE]"), Relay::Done),
        })
    });
    Sse::new(events.map(Ok::<_, Infallible>)).into_response()
}
