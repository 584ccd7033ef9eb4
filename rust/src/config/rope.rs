//! RoPE: the frequency scalings a config may name, their checks, and the inverse frequencies
//! the forward pass rotates by.

use super::ModelConfig;
use crate::error::Result;

/// RoPE frequency scaling. `None` in [`ModelConfig::rope_scaling`] means plain RoPE.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1 / 3.2 "llama3" scaling: long wavelengths divided by `factor`, short ones kept,
    /// a smooth blend in between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f32 },
}

impl RopeScaling {
    /// Checks that every factor is finite and positive (a zero or NaN factor would make every
    /// rotation NaN or infinite, and the model would emit garbage), and that llama3's
    /// `high_freq_factor` exceeds its `low_freq_factor` (their difference divides).
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "rope scaling {name} ({v}) must be finite and positive"
                ))
            }
        };
        match *self {
            RopeScaling::Linear { factor } => positive("factor", factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("factor", factor)?;
                positive("low_freq_factor", low_freq_factor)?;
                positive("high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "rope scaling high_freq_factor ({high_freq_factor}) must exceed \
                         low_freq_factor ({low_freq_factor})"
                    ));
                }
                if original_max_position_embeddings == 0 {
                    return Err("rope scaling original_max_position_embeddings is 0".into());
                }
                Ok(())
            }
        }
    }
}

impl ModelConfig {
    /// Inverse frequencies of RoPE, one per pair of dimensions (`head_dim / 2` values),
    /// with the model's scaling applied, computed as transformers does.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let base: Vec<f32> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f32 / self.head_dim as f32))
            .collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}
