//! Traffic classes: `interactive` (the default) and `batch`, bound to API keys
//! (`--api-key KEY=batch`). A request's engine priority is its body's `priority` (vLLM's field:
//! lower is more urgent, default 0) within its class; a batch request's priority is offset by
//! [`BATCH_PRIORITY`], which the scheduler reads as the class: interactive work is admitted
//! first, batch sequences are preempted when interactive ones need blocks, and batch keeps a
//! minimum share of each step (`batch_min_share`). Each class has its own queue limit (429).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::ApiError;
use crate::engine::BATCH_PRIORITY;
use crate::error::{Error, Result};

/// Most a request's `priority` may be away from 0 (its class's offset stays unambiguous).
pub const MAX_PRIORITY: i64 = (BATCH_PRIORITY as i64) / 2 - 1;

/// A request's traffic class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Class {
    #[default]
    Interactive,
    Batch,
}

impl Class {
    pub const ALL: [Class; 2] = [Class::Interactive, Class::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Interactive => "interactive",
            Class::Batch => "batch",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    fn parse(s: &str) -> Result<Class> {
        match s {
            "interactive" => Ok(Class::Interactive),
            "batch" => Ok(Class::Batch),
            other => Err(Error::InvalidConfig(format!(
                "api_key class must be \"interactive\" or \"batch\", got {other:?}"
            ))),
        }
    }

    /// The engine priority of a request of this class with body `priority`; a 400 naming it
    /// when it is out of range.
    pub fn engine_priority(self, priority: Option<i64>) -> Result<i32, ApiError> {
        let p = priority.unwrap_or(0);
        if p.abs() > MAX_PRIORITY {
            return Err(ApiError::bad_request(
                format!("priority must be within ±{MAX_PRIORITY}, got {p}"),
                Some("priority"),
            ));
        }
        let offset = match self {
            Class::Interactive => 0,
            Class::Batch => BATCH_PRIORITY as i64,
        };
        Ok((p + offset) as i32)
    }
}

/// One accepted key: its secret, and the class it binds (`None`: a full key, which may also use
/// the admin API; its requests are interactive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key: String,
    pub class: Option<Class>,
}

/// Parses `--api-key` values: `KEY`, `KEY=interactive` or `KEY=batch`, several separated by
/// commas (a key may not hold a comma).
pub fn parse_keys(spec: &str) -> Result<Vec<ApiKey>> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match item.rsplit_once('=') {
            Some((key, class)) if matches!(class, "interactive" | "batch") => Ok(ApiKey {
                key: key.to_string(),
                class: Some(Class::parse(class)?),
            }),
            _ => Ok(ApiKey {
                key: item.to_string(),
                class: None,
            }),
        })
        .collect()
}

/// What the caller's key allows: its class, and whether it may use the admin API.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller {
    pub class: Class,
    pub admin: bool,
}

/// Requests of one class waiting for their first token, on one model, bounded by the class's
/// queue limit.
#[derive(Default)]
pub struct ClassQueues {
    waiting: [AtomicUsize; 2],
}

/// A request's place in its class's queue, given back on its first token (or when it ends).
pub struct QueuePlace {
    queues: Arc<ClassQueues>,
    class: Class,
    held: bool,
}

impl ClassQueues {
    /// Takes a place for `class`, or answers 429 when `limit` requests already wait.
    pub fn enter(self: &Arc<Self>, class: Class, limit: usize) -> Result<QueuePlace, ApiError> {
        let counter = &self.waiting[class.index()];
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|n| {
                let mut e = ApiError::overloaded(n, limit);
                e.message = format!(
                    "too many {} requests are waiting: {n} (limit {limit}); retry later",
                    class.as_str()
                );
                e
            })?;
        Ok(QueuePlace {
            queues: self.clone(),
            class,
            held: true,
        })
    }

    /// Requests of `class` waiting now.
    pub fn waiting(&self, class: Class) -> usize {
        self.waiting[class.index()].load(Ordering::SeqCst)
    }
}

impl QueuePlace {
    /// Leaves the queue (the request got its first token).
    pub fn leave(&mut self) {
        if std::mem::take(&mut self.held) {
            self.queues.waiting[self.class.index()].fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_bind_classes_and_priorities_stay_in_their_class() {
        let keys = parse_keys("root, b1=batch,i1=interactive,a=b=c").unwrap();
        assert_eq!(
            keys[0],
            ApiKey {
                key: "root".into(),
                class: None
            }
        );
        assert_eq!(keys[1].class, Some(Class::Batch));
        assert_eq!(keys[2].class, Some(Class::Interactive));
        assert_eq!(
            keys[3],
            ApiKey {
                key: "a=b=c".into(),
                class: None
            }
        );
        assert_eq!(Class::Interactive.engine_priority(Some(-5)).unwrap(), -5);
        let batch = Class::Batch.engine_priority(Some(-MAX_PRIORITY)).unwrap();
        assert!(batch >= BATCH_PRIORITY / 2);
        assert!(Class::Batch
            .engine_priority(Some(MAX_PRIORITY + 1))
            .is_err());
    }

    #[test]
    fn class_queues_refuse_past_their_limit_and_give_places_back() {
        let q = Arc::new(ClassQueues::default());
        let mut a = q.enter(Class::Batch, 2).unwrap();
        let _b = q.enter(Class::Batch, 2).unwrap();
        assert!(q.enter(Class::Batch, 2).is_err());
        assert!(q.enter(Class::Interactive, 2).is_ok());
        a.leave();
        a.leave();
        assert_eq!(q.waiting(Class::Batch), 1);
        drop(a);
        assert_eq!(q.waiting(Class::Batch), 1);
    }
}
