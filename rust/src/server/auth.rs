//! Bearer-token authentication of the `/v1` routes when the server has an API key.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;
use super::traffic::{Caller, Class};
use super::AppState;

/// Lets a request through when no key is set or it carries `Authorization: Bearer <key>` of
/// an accepted key, and tells the handlers who called ([`Caller`]: the key's class, and whether
/// it is a full key, which the admin API needs).
pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let keys = &state.config.api_keys;
    let caller = if keys.is_empty() {
        Caller {
            class: Class::Interactive,
            admin: true,
        }
    } else {
        let given = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let matched = given.and_then(|g| {
            keys.iter()
                .find(|k| constant_time_eq(g.as_bytes(), k.key.as_bytes()))
        });
        let Some(key) = matched else {
            return ApiError::unauthorized().into_response();
        };
        Caller {
            class: key.class.unwrap_or_default(),
            admin: key.class.is_none(),
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Compares without an early exit, so timing does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_whole_keys() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
