//! Sampling: parameters of a request, each sequence's sampler state, the rules that turn a row
//! of logits into a token (shared by every backend), a grammar's token mask, and stop
//! conditions.

mod filter;
mod mask;
mod params;
mod sampler;
mod stop;

pub use filter::{sample_row, PenaltyToken, RowSampling, StepSampling};
pub use mask::apply_token_mask;
pub use params::SamplingParams;
pub use sampler::{argmax, log_softmax_top, Sampled, Sampler};
pub use stop::{StopChecker, StopMatch, StopReason};
