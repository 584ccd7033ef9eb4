//! Sampling: parameters of a request, each sequence's sampler state, the rules that turn a row
//! of logits into a token (shared by every backend), and stop conditions.

mod filter;
mod params;
mod sampler;
mod stop;

pub use filter::{sample_row, PenaltyToken, RowSampling, StepSampling};
pub use params::SamplingParams;
pub use sampler::{argmax, log_softmax_top, Sampled, Sampler};
pub use stop::{StopChecker, StopMatch, StopReason};
