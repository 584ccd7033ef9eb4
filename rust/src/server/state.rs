//! The state handlers share: the node's ([`AppState::new`]), and a request's model's
//! ([`AppState::route`]).

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use super::node::{InFlight, ModelSlot, Node};
use super::traffic::{Caller, Class};
use super::{ApiError, Metrics, ServerConfig};
use crate::engine::engine_loop::EngineHandle;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

/// What every handler shares. The router's state is the node's; a handler that has read a
/// request's `model` calls [`AppState::route`], which returns the state of that model's engine
/// (the same fields, plus those of [`Routed`], which it dereferences to).
pub struct AppState {
    pub config: ServerConfig,
    /// The server's metrics in the node's state; the model's in a routed one.
    pub metrics: Arc<Metrics>,
    pub node: Arc<Node>,
    /// Set once a shutdown signal arrived: health says 503 and new requests are refused.
    pub shutting_down: Arc<AtomicBool>,
    /// Requests in flight (their responses not yet fully sent); the drain waits for zero.
    pub busy: Arc<AtomicUsize>,
    /// Turns true when the grace period after a shutdown signal is over: open streams end
    /// with an error event.
    pub cut: Arc<tokio::sync::watch::Sender<bool>>,
    /// The engines' progress as `/health/ready` sees it.
    pub(crate) progress: Arc<super::info::Progress>,
    routed: Option<Routed>,
}

/// A request's model: its engine, and the request's class and priority there.
pub struct Routed {
    pub handle: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// The model's sampling defaults, for fields a request leaves out.
    pub defaults: SamplingParams,
    /// The model's content fingerprint: OpenAI's `system_fingerprint` of every response.
    pub fingerprint: String,
    pub class: Class,
    /// The engine priority (the body's `priority` offset by the class).
    pub priority: i32,
    pub slot: Arc<ModelSlot>,
    /// Holds the model awake while the request runs.
    _in_flight: InFlight,
}

impl Deref for AppState {
    type Target = Routed;

    /// The routed model's fields. Only the states that [`AppState::route`] returns have them:
    /// reading them from the node's state is a bug in a handler, caught by its first test.
    fn deref(&self) -> &Routed {
        self.routed
            .as_ref()
            .expect("a handler reads model fields only from the state that route() returns")
    }
}

impl AppState {
    /// The state of a server of `node` with `config`, before any request.
    pub fn new(node: Arc<Node>, config: ServerConfig) -> Self {
        AppState {
            config,
            metrics: Arc::new(Metrics::default()),
            node,
            shutting_down: Arc::new(AtomicBool::new(false)),
            busy: Arc::new(AtomicUsize::new(0)),
            cut: Arc::new(tokio::sync::watch::channel(false).0),
            progress: Arc::default(),
            routed: None,
        }
    }

    /// The state of the engine of `model` for a request of `caller` with body `priority`:
    /// 404 for a model the node does not serve, 400 for a priority out of range, 503 when the
    /// model cannot be made ready within the wake timeout (it waits for a sleeping one).
    pub async fn route(
        &self,
        model: &str,
        priority: Option<i64>,
        caller: &Caller,
    ) -> Result<Arc<AppState>, ApiError> {
        let slot = self
            .node
            .find(model)
            .ok_or_else(|| ApiError::unknown_model(model, &self.node.names()))?
            .clone();
        let engine_priority = caller.class.engine_priority(priority)?;
        let (loaded, in_flight) = self.node.ready(&slot, self.config.wake_timeout).await?;
        if let Some(reason) = loaded.handle.failure() {
            return Err(ApiError::engine_failed(&reason));
        }
        Ok(Arc::new(AppState {
            config: ServerConfig {
                served_model_name: slot.spec.name.clone(),
                ..self.config.clone()
            },
            metrics: slot.metrics.clone(),
            node: self.node.clone(),
            shutting_down: self.shutting_down.clone(),
            busy: self.busy.clone(),
            cut: self.cut.clone(),
            progress: self.progress.clone(),
            routed: Some(Routed {
                handle: loaded.handle,
                tokenizer: loaded.tokenizer,
                defaults: loaded.defaults,
                fingerprint: loaded.fingerprint,
                class: caller.class,
                priority: engine_priority,
                slot,
                _in_flight: in_flight,
            }),
        }))
    }
}
