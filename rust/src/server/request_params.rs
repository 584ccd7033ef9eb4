//! Request fields → [`SamplingParams`]: the model's defaults (`generation_config.json`) for what
//! a request leaves out, then the engine's validation, which names the field at fault.

use super::errors::ApiError;
use super::openai_types::SamplingFields;
use super::AppState;
use crate::sampling::SamplingParams;

/// A non-negative integer field, or a 400 naming it.
fn count(name: &str, v: i64) -> Result<usize, ApiError> {
    usize::try_from(v)
        .map_err(|_| ApiError::bad_request(format!("{name} must be >= 0, got {v}"), Some(name)))
}

/// Compiles the request's structured outputs (a 400 with llguidance's message if it refuses
/// them), off the async runtime's hot path: a large schema takes milliseconds.
pub fn compile_structured(state: &AppState, params: &mut SamplingParams) -> Result<(), ApiError> {
    if params.structured_outputs.is_none() {
        return Ok(());
    }
    tokio::task::block_in_place(|| state.handle.grammars().prepare(params))?;
    Ok(())
}

/// Builds and validates the sampling parameters of one request.
///
/// `max_tokens: None` lets a sequence run to the context length; `logprobs` is the number of
/// top log-probabilities per token, `None` for none.
pub fn sampling_params(
    f: SamplingFields,
    max_tokens: Option<i64>,
    logprobs: Option<i64>,
    defaults: &SamplingParams,
) -> Result<SamplingParams, ApiError> {
    if f.logit_bias
        .as_ref()
        .is_some_and(|b| !b.is_null() && b != &serde_json::json!({}))
    {
        return Err(ApiError::bad_request(
            "logit_bias is not supported by this server",
            Some("logit_bias"),
        ));
    }
    let structured = super::structured_request::requested(&f)?.map(|(spec, _)| spec);
    let params = SamplingParams {
        n: count("n", f.n.unwrap_or(1))?,
        max_tokens: max_tokens.map(|m| count("max_tokens", m)).transpose()?,
        temperature: f.temperature.unwrap_or(defaults.temperature),
        top_p: f.top_p.unwrap_or(defaults.top_p),
        top_k: f.top_k.unwrap_or(defaults.top_k),
        min_p: f.min_p.unwrap_or(defaults.min_p),
        seed: f.seed.map(|s| s as u64),
        stop: f.stop.map(|s| s.into_vec()).unwrap_or_default(),
        include_stop_str_in_output: f.include_stop_str_in_output,
        min_tokens: f
            .min_tokens
            .map(|m| count("min_tokens", m))
            .transpose()?
            .unwrap_or(0),
        skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
        stop_token_ids: f.stop_token_ids.unwrap_or_default(),
        ignore_eos: f.ignore_eos,
        repetition_penalty: f.repetition_penalty.unwrap_or(defaults.repetition_penalty),
        presence_penalty: f.presence_penalty.unwrap_or(0.0),
        frequency_penalty: f.frequency_penalty.unwrap_or(0.0),
        logprobs: logprobs.map(|k| count("logprobs", k)).transpose()?,
        prompt_logprobs: None,
        structured_outputs: structured,
        grammar: None,
    };
    params.validate()?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::openai_types::StopArg;

    #[test]
    fn omitted_fields_take_the_model_defaults() {
        let defaults = SamplingParams {
            temperature: 0.6,
            top_p: 0.9,
            ..Default::default()
        };
        let p = sampling_params(SamplingFields::default(), None, None, &defaults).unwrap();
        assert_eq!(
            (p.temperature, p.top_p, p.n, p.max_tokens),
            (0.6, 0.9, 1, None)
        );
        let f = SamplingFields {
            temperature: Some(0.0),
            stop: Some(StopArg::One("\n".into())),
            ..Default::default()
        };
        let p = sampling_params(f, Some(5), Some(2), &defaults).unwrap();
        assert_eq!(p.temperature, 0.0);
        assert_eq!(p.stop, vec!["\n".to_string()]);
        assert_eq!((p.max_tokens, p.logprobs), (Some(5), Some(2)));
    }

    #[test]
    fn bad_values_name_their_field() {
        let d = SamplingParams::default();
        let cases: Vec<(SamplingFields, Option<i64>, &str)> = vec![
            (
                SamplingFields {
                    n: Some(-1),
                    ..Default::default()
                },
                None,
                "n",
            ),
            (SamplingFields::default(), Some(-3), "max_tokens"),
            (
                SamplingFields {
                    top_p: Some(2.0),
                    ..Default::default()
                },
                None,
                "top_p",
            ),
            (
                SamplingFields {
                    temperature: Some(-1.0),
                    ..Default::default()
                },
                None,
                "temperature",
            ),
        ];
        for (f, max_tokens, field) in cases {
            let e = sampling_params(f, max_tokens, None, &d).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert_eq!(e.param.as_deref(), Some(field), "{}", e.message);
        }
        let bias = SamplingFields {
            logit_bias: Some(serde_json::json!({"1": 5})),
            ..Default::default()
        };
        let e = sampling_params(bias, None, None, &d).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logit_bias"));
    }
}
