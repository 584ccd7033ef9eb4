//! Sampling: parameters of a request, the CPU sampler, and stop conditions.

mod params;
mod sampler;
mod stop;

pub use params::SamplingParams;
pub use sampler::{argmax, log_softmax_top, Sampled, Sampler};
pub use stop::StopChecker;
