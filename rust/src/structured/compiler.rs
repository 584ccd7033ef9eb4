//! Compiling [`StructuredOutputs`] into a [`CompiledGrammar`], once per text: the compiler
//! builds the vocabulary's trie on first use and keeps recent grammars by their text.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use llguidance::{Matcher, ParserFactory};

use super::tok_env::ModelTokEnv;
use super::StructuredOutputs;
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

/// Compiled grammars kept; past this the cache starts over (requests with fresh schemas each
/// time would otherwise grow it without bound).
const CACHE_CAPACITY: usize = 512;

/// A grammar ready to constrain sequences: its start state, which each sequence copies with
/// its lexer caches (llguidance's deep clone: a shallow clone shares the lexer behind one
/// mutex, which would serialize the masks the engine computes in parallel over sequences).
/// Cheap to clone (one `Arc`), so that sampling parameters stay small.
#[derive(Clone)]
pub struct CompiledGrammar(Arc<Compiled>);

struct Compiled {
    key: String,
    start: Matcher,
    /// Ids that end a sequence: allowed exactly when the grammar accepts.
    eos_token_ids: Arc<[u32]>,
}

impl CompiledGrammar {
    /// A fresh matcher at the grammar's start, for one sequence.
    pub fn start(&self) -> (Matcher, Arc<[u32]>) {
        (self.0.start.deep_clone(), self.0.eos_token_ids.clone())
    }
}

impl fmt::Debug for CompiledGrammar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledGrammar")
            .field("key", &self.0.key)
            .finish()
    }
}

impl PartialEq for CompiledGrammar {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

/// Compiles grammars for one model's vocabulary, caching them by text.
pub struct GrammarCompiler {
    tokenizer: Tokenizer,
    eos_token_ids: Arc<[u32]>,
    /// Built on first use: engines that never see a constrained request never pay for it.
    factory: OnceLock<std::result::Result<ParserFactory, String>>,
    cache: Mutex<HashMap<String, CompiledGrammar>>,
}

impl GrammarCompiler {
    pub fn new(tokenizer: Tokenizer, eos_token_ids: &[u32]) -> Self {
        GrammarCompiler {
            tokenizer,
            eos_token_ids: eos_token_ids.into(),
            factory: OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn factory(&self) -> Result<&ParserFactory> {
        let built = self.factory.get_or_init(|| {
            let eos = self.eos_token_ids.first().copied().unwrap_or(0);
            let env = ModelTokEnv::build(&self.tokenizer, eos).map_err(|e| e.to_string())?;
            let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
            // Warnings and errors reach the caller as results, not on stderr.
            factory.quiet();
            Ok(factory)
        });
        built
            .as_ref()
            .map_err(|e| Error::Engine(format!("grammar support failed to start: {e}")))
    }

    /// The compiled grammar of `spec`, from the cache or compiled now. What llguidance refuses
    /// (a bad schema, regex or grammar) is an [`Error::InvalidRequest`] with its message.
    pub fn compile(&self, spec: &StructuredOutputs) -> Result<CompiledGrammar> {
        let key = spec.cache_key();
        if let Some(g) = self.lock().get(&key) {
            return Ok(g.clone());
        }
        let grammar = spec.to_grammar()?;
        let parser = self.factory()?.create_parser(grammar);
        let start = Matcher::new(parser);
        let invalid = |e: &str| {
            Error::InvalidRequest(format!(
                "invalid {} for structured outputs: {}",
                spec.kind(),
                first_line(e)
            ))
        };
        if let Some(e) = start.get_error() {
            return Err(invalid(&e));
        }
        // The first mask, on a copy: a grammar that allows no first token (a regex no text
        // matches, such as `[^\s\S]`) fails here, as the request's 400, rather than at the
        // request's first step.
        if let Err(e) = start.deep_clone().compute_mask_or_eos() {
            return Err(invalid(&e.to_string()));
        }
        let compiled = CompiledGrammar(Arc::new(Compiled {
            key: key.clone(),
            start,
            eos_token_ids: self.eos_token_ids.clone(),
        }));
        let mut cache = self.lock();
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Compiles `params.structured_outputs` into `params.grammar` where that is not done yet.
    pub fn prepare(&self, params: &mut SamplingParams) -> Result<()> {
        if let (Some(spec), None) = (&params.structured_outputs, &params.grammar) {
            params.grammar = Some(self.compile(spec)?);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CompiledGrammar>> {
        // The map stays consistent whatever panicked while holding it.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// llguidance's errors can carry the whole grammar after the first line; the first says it.
fn first_line(e: &str) -> &str {
    e.lines().next().unwrap_or(e)
}
