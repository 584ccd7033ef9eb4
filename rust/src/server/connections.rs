//! The accept loop: each connection served by hyper's HTTP/1 with the server's limits, and the
//! drain after a shutdown signal.
//!
//! Limits (see [`super::ServerConfig`]): at most `max_connections` connections are served at once (one
//! more is answered a canned 503 and closed, so a flood of idle sockets cannot take the last
//! descriptor); a request head must arrive within `header_timeout` of the connection becoming
//! ready for one, which also closes idle keep-alive connections; bodies are timed by
//! [`super::admission`]. A client gone while its request runs is seen at once: hyper reads the
//! connection while the answer is pending, and the end of its input closes the connection and
//! drops the handler, whose `Generation` then aborts the request (streamed or not, as vLLM's
//! `with_cancellation` does). TCP cannot tell a client that shut down only its sending side from
//! one that left, so a half-closed request is aborted too, as in vLLM.
//!
//! Drain: on the signal, connections with no request in flight close, the listener keeps
//! accepting so that new clients get 503 with `Retry-After` (not a refused connection), and the
//! loop returns once no request is in flight or `shutdown_grace` has passed. At that deadline
//! every open stream is cut with an SSE error event ([`AppState::cut`]) before the loop returns.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::errors::RETRY_AFTER_SECS;
use super::AppState;

/// How often the drain looks at the number of requests in flight.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// How long cut streams get to send their error event after the grace period.
const CUT_FLUSH: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `stop` turns true and the drain ends (module docs).
pub(super) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) {
    let config = &state.config;
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .half_close(false)
        .keep_alive(true);
    // Connections watch their own receivers; `stop` is the loop's.
    let conn_stop = stop.clone();
    let mut draining = false;
    // Armed when the drain starts.
    let mut deadline = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    // Stream chunks are small writes: without TCP_NODELAY, Nagle's algorithm
                    // holds each one back until the previous is acknowledged.
                    let _ = tcp.set_nodelay(true);
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            let conn = http.serve_connection(
                                TokioIo::new(tcp),
                                TowerToHyperService::new(app.clone()),
                            );
                            let stop = conn_stop.clone();
                            tokio::spawn(async move {
                                serve_one(conn, stop, draining).await;
                                drop(slot);
                            });
                        }
                        Err(_) => {
                            tokio::spawn(refuse_full(tcp, config.max_connections));
                        }
                    }
                }
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
            _ = stop.wait_for(|s| *s), if !draining => {
                draining = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + config.shutdown_grace);
            }
            () = tokio::time::sleep(DRAIN_POLL), if draining => {
                if state.busy.load(Ordering::SeqCst) == 0 {
                    return;
                }
            }
            () = &mut deadline, if draining => {
                eprintln!(
                    "infire: shutdown deadline of {:?} passed; cutting {} requests",
                    config.shutdown_grace,
                    state.busy.load(Ordering::SeqCst)
                );
                state.cut.send_replace(true);
                let flushed = async {
                    while state.busy.load(Ordering::SeqCst) > 0 {
                        tokio::time::sleep(DRAIN_POLL).await;
                    }
                };
                let _ = tokio::time::timeout(CUT_FLUSH, flushed).await;
                return;
            }
        }
    }
}

/// Serves one connection. Connections open when the drain starts finish the request in flight
/// and close; those accepted during the drain (`accepted_draining`) are answered (503) and
/// closed by the response itself.
async fn serve_one(
    conn: http1::Connection<TokioIo<TcpStream>, TowerToHyperService<Router>>,
    mut stop: watch::Receiver<bool>,
    accepted_draining: bool,
) {
    let mut conn = std::pin::pin!(conn);
    if accepted_draining {
        let _ = conn.await;
        return;
    }
    let stopped = tokio::select! {
        _ = conn.as_mut() => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    if stopped {
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// Answers a connection over the limit with a 503 and closes it.
async fn refuse_full(mut tcp: TcpStream, limit: usize) {
    let body = format!(
        "{{\"error\":{{\"message\":\"the server has {limit} connections open, its limit; retry \
         later\",\"type\":\"server_error\",\"param\":null,\"code\":null}}}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}
