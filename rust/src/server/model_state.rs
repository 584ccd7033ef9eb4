//! Where a model of the node is in its life, and what `/v1/models` and the admin API say of it.

/// Where a model is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Ready,
    Loading,
    Sleeping,
    Unloaded,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "ready",
            ModelState::Loading => "loading",
            ModelState::Sleeping => "sleeping",
            ModelState::Unloaded => "unloaded",
        }
    }
}

/// What `/v1/models` and the admin API say of a model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelStatus {
    pub state: &'static str,
    pub in_flight: usize,
    pub budget_bytes: Option<usize>,
    pub share: f64,
    pub kv_cache_tokens: Option<usize>,
    pub last_load_s: Option<f64>,
    pub measured_bytes: Option<usize>,
    pub last_error: Option<String>,
}
