//! Server-sent events: a producer task writes JSON chunks into a channel that the response
//! body reads; the stream ends with `data: [DONE]`. When the client goes away the channel
//! closes, [`Emitter::closed`] fires, and the producer returns, dropping (and so aborting) its
//! requests.

use std::convert::Infallible;
use std::future::Future;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

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

/// Spawns `produce` on the runtime and answers with the SSE stream of what it emits.
pub fn spawn_sse<F, Fut>(produce: F) -> Response
where
    F: FnOnce(Emitter) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = unbounded_channel();
    tokio::spawn(produce(Emitter { tx }));
    let chunks = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    let done = stream::once(async { Ok(Event::default().data("[DONE]")) });
    Sse::new(chunks.chain(done)).into_response()
}
