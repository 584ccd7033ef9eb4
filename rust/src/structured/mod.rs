//! Structured outputs: a request's output held to a JSON Schema, a regex, a choice list or a
//! Lark grammar by llguidance. A [`StructuredOutputs`] is compiled once per text
//! ([`GrammarCompiler`], on the caller's side of the engine); each constrained sequence keeps
//! a [`GrammarState`] whose mask is applied to its logits before the sampling rules, and
//! which advances with every token the sequence takes.

mod compiler;
mod spec;
mod state;
mod tok_env;

pub use compiler::{CompiledGrammar, GrammarCompiler};
pub use spec::{json_layout, StructuredOutputs};
pub use state::{pack_token_mask, GrammarState};

#[cfg(test)]
mod tests;
