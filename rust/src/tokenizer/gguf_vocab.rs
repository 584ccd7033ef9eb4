//! Building a `tokenizers::Tokenizer` from the tokenizer a GGUF file describes in its metadata
//! (llama.cpp's `tokenizer.ggml.*` keys), the way transformers builds it when it loads the same
//! file (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`), so that both produce the
//! same ids:
//!
//! - `gpt2`: byte-level BPE. Tokens are looked up in the GPT-2 byte alphabet (a token spelled
//!   outside it is respelled from its UTF-8 bytes), merges come from `tokenizer.ggml.merges`,
//!   text is split by the GPT-2 regex or, for the `tokenizer.ggml.pre` types transformers knows,
//!   by that model's regex.
//! - `llama`: SentencePiece-style BPE with byte fallback (`<0x0A>`), `▁` for spaces, merges from
//!   the file or recovered from the scores. A space is prepended to the text unless
//!   `tokenizer.ggml.add_space_prefix` is false (llama.cpp's reading; transformers 5 always
//!   prepends it).
//!
//! Tokens of type CONTROL become special added tokens and USER_DEFINED ones plain added tokens,
//! so that `<|im_start|>` written in the text maps to its id. BOS is added by encoding when
//! `tokenizer.ggml.add_bos_token` says so (default: true for `llama`, false for `gpt2`).

use std::collections::BTreeMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::byte_alphabet::{is_byte_level_spelling, respell_byte_level};
use super::gguf_merges::{merges_from_scores, parse_merges};
use super::special_tokens::{NamedToken, SpecialTokens};
use crate::error::{Error, Result};
use crate::weights::gguf_value::GgufValue;

/// `tokenizer.ggml.token_type` of a token that must never be split (e.g. `<|im_start|>`).
const TOKEN_TYPE_CONTROL: i64 = 3;
/// `tokenizer.ggml.token_type` of a token added by the model's authors (e.g. `<think>`).
const TOKEN_TYPE_USER_DEFINED: i64 = 4;
/// The character SentencePiece writes for a space.
const SPM_SPACE: char = '\u{2581}';

/// Architectures whose SentencePiece vocabulary transformers rebuilds differently from the plain
/// `llama` recipe here (Gemma's respelled spaces and merge order, Phi-3's normalizer).
const UNSUPPORTED_SPM_ARCHITECTURES: [&str; 4] = ["gemma", "gemma2", "gemma3", "phi3"];

/// Pre-tokenizer regexes for the `tokenizer.ggml.pre` types transformers maps to their model's
/// split (`GGUF_PRE_TOKENIZER_SPLITS`); other types keep the GPT-2 regex of `ByteLevel`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `tokenizer.ggml.pre` type, if it has its own.
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// A tokenizer built from GGUF metadata, with what the metadata says about its use.
pub(crate) struct GgufTokenizer {
    /// The tokenizer, with its added tokens and BOS/EOS post-processor in place.
    pub tokenizer: tokenizers::Tokenizer,
    /// The named special tokens and the add-BOS/EOS flags.
    pub special: SpecialTokens,
    /// `tokenizer.chat_template`, if the file has one.
    pub chat_template: Option<String>,
}

/// The two vocabulary kinds of `tokenizer.ggml.model` this module builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VocabKind {
    /// `gpt2`: byte-level BPE.
    ByteLevel,
    /// `llama`: SentencePiece-style BPE with byte fallback.
    SentencePiece,
}

/// Builds the tokenizer a GGUF file's metadata describes.
///
/// Errors: [`Error::Unsupported`] for a `tokenizer.ggml.model` other than `gpt2` / `llama` (or
/// a SentencePiece architecture built differently, like Gemma); [`Error::Tokenizer`] for missing
/// or malformed keys, a merge naming a token that is not in the vocabulary, or a BOS/EOS id out
/// of range. UNK/PAD ids out of range are ignored, as llama.cpp does.
pub(crate) fn build(meta: &BTreeMap<String, GgufValue>) -> Result<GgufTokenizer> {
    let meta = Meta(meta);
    let model = meta
        .str("tokenizer.ggml.model")?
        .ok_or_else(|| missing("tokenizer.ggml.model"))?;
    let architecture = meta.str("general.architecture")?.unwrap_or_default();
    let kind = match model {
        "gpt2" => VocabKind::ByteLevel,
        "llama" if UNSUPPORTED_SPM_ARCHITECTURES.contains(&architecture) => {
            return Err(Error::Unsupported(format!(
                "GGUF SentencePiece tokenizer of architecture {architecture:?}"
            )))
        }
        "llama" => VocabKind::SentencePiece,
        other => {
            return Err(Error::Unsupported(format!(
                "GGUF tokenizer model {other:?}"
            )))
        }
    };
    let tokens = meta
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
    if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
        return Err(bad(
            "tokenizer.ggml.tokens",
            "between 1 and 2^32 - 1 tokens",
        ));
    }
    let token_types = meta.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
    let merges = match meta.strings("tokenizer.ggml.merges")? {
        Some(merges) => parse_merges(&merges)?,
        None => {
            let scores = meta.floats("tokenizer.ggml.scores")?.ok_or_else(|| {
                Error::Tokenizer("GGUF tokenizer has neither merges nor scores".into())
            })?;
            merges_from_scores(&tokens, &scores)
        }
    };

    let mut tokenizer = match kind {
        VocabKind::ByteLevel => byte_level_tokenizer(&tokens, merges)?,
        VocabKind::SentencePiece => {
            let add_space_prefix = meta
                .bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true);
            sentencepiece_tokenizer(&tokens, merges, add_space_prefix)?
        }
    };
    if let Some(regex) = meta.str("tokenizer.ggml.pre")?.and_then(split_regex) {
        tokenizer.with_pre_tokenizer(Some(split_then_byte_level(regex)?));
    }
    add_typed_tokens(&mut tokenizer, &tokens, &token_types, kind);

    let named = |key: &str, required: bool| -> Result<Option<NamedToken>> {
        match meta.token_id(key, tokens.len())? {
            TokenId::Absent => Ok(None),
            TokenId::OutOfRange(_) if !required => Ok(None),
            TokenId::OutOfRange(id) => Err(Error::Tokenizer(format!(
                "GGUF metadata {key} = {id} is not below the vocabulary size {}",
                tokens.len()
            ))),
            TokenId::Valid(id) => Ok(Some(NamedToken {
                content: tokens[id as usize].to_string(),
                id,
            })),
        }
    };
    let mut special = SpecialTokens {
        bos: named("tokenizer.ggml.bos_token_id", true)?,
        eos: named("tokenizer.ggml.eos_token_id", true)?,
        unk: named("tokenizer.ggml.unknown_token_id", false)?,
        pad: named("tokenizer.ggml.padding_token_id", false)?,
        extra_eos_ids: Vec::new(),
        add_bos: meta
            .bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(kind == VocabKind::SentencePiece),
        add_eos: meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
    };
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(token) = named(key, false)? {
            if special.eos.as_ref().map(|t| t.id) != Some(token.id) {
                special.extra_eos_ids.push(token.id);
            }
        }
    }
    special.normalize_flags();
    special.register_as_added_tokens(&mut tokenizer);
    tokenizer.with_post_processor(Some(special.post_processor()?));

    let chat_template = meta.str("tokenizer.chat_template")?.map(str::to_string);
    Ok(GgufTokenizer {
        tokenizer,
        special,
        chat_template,
    })
}

/// transformers' `GPT2Tokenizer`: byte-level BPE with the GPT-2 regex and no prefix space.
fn byte_level_tokenizer(
    tokens: &[&str],
    merges: Vec<(String, String)>,
) -> Result<tokenizers::Tokenizer> {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        // Later duplicates win, as in transformers' dict comprehension.
        vocab.insert(respell_byte_level(token), id as u32);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| Error::Tokenizer(format!("GGUF byte-level vocabulary: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

/// transformers' `LlamaTokenizer` (legacy = false): BPE with byte fallback, `Metaspace` that
/// prepends `▁` to the first section of text only, and a decoder that undoes both.
fn sentencepiece_tokenizer(
    tokens: &[&str],
    merges: Vec<(String, String)>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(token.to_string(), id as u32);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| Error::Tokenizer(format!("GGUF SentencePiece vocabulary: {e}")))?;
    let prepend = if add_space_prefix {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    let space = Replace::new(SPM_SPACE.to_string(), " ")
        .map_err(|e| Error::Tokenizer(format!("SentencePiece decoder: {e}")))?;
    let mut decoders: Vec<DecoderWrapper> =
        vec![space.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new(SPM_SPACE, prepend, false)));
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// The pre-tokenizer transformers sets for a known `tokenizer.ggml.pre`: the model's regex
/// (matches kept as pieces), then byte-level spelling without a regex of its own.
fn split_then_byte_level(regex: &str) -> Result<PreTokenizerSequence> {
    let split = Split::new(
        SplitPattern::Regex(regex.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
    let steps: Vec<PreTokenizerWrapper> =
        vec![split.into(), ByteLevel::new(false, true, false).into()];
    Ok(PreTokenizerSequence::new(steps))
}

/// Adds CONTROL tokens as special tokens and USER_DEFINED tokens as plain added tokens, both
/// matched verbatim in the text. In a byte-level vocabulary, a CONTROL token spelled outside
/// the byte alphabet is a llama.cpp mislabel and stays an ordinary token (as in transformers).
fn add_typed_tokens(
    tokenizer: &mut tokenizers::Tokenizer,
    tokens: &[&str],
    token_types: &[i64],
    kind: VocabKind,
) {
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(token_types)
        .filter(|&(token, &kind_of)| {
            kind_of == TOKEN_TYPE_CONTROL
                && (kind == VocabKind::SentencePiece || is_byte_level_spelling(token))
        })
        .map(|(token, _)| AddedToken::from(token.to_string(), true).normalized(false))
        .collect();
    if !control.is_empty() {
        tokenizer.add_special_tokens(&control);
    }
    let user_defined: Vec<AddedToken> = tokens
        .iter()
        .zip(token_types)
        .filter(|&(token, &kind_of)| {
            kind_of == TOKEN_TYPE_USER_DEFINED && tokenizer.token_to_id(token).is_some()
        })
        .map(|(token, _)| AddedToken::from(token.to_string(), false).normalized(false))
        .collect();
    if !user_defined.is_empty() {
        tokenizer.add_tokens(&user_defined);
    }
}

/// A token id read from the metadata.
enum TokenId {
    Absent,
    OutOfRange(u64),
    Valid(u32),
}

/// Typed access to the metadata map; a key that is present with the wrong type is an error.
struct Meta<'a>(&'a BTreeMap<String, GgufValue>);

impl<'a> Meta<'a> {
    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        self.0
            .get(key)
            .map(|v| v.as_str().ok_or_else(|| bad(key, "a string")))
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        let read = |v: &GgufValue| v.as_bool().or_else(|| v.as_i64().map(|i| i != 0));
        self.0
            .get(key)
            .map(|v| read(v).ok_or_else(|| bad(key, "a boolean")))
            .transpose()
    }

    fn array(&self, key: &str) -> Result<Option<&'a [GgufValue]>> {
        self.0
            .get(key)
            .map(|v| v.as_array().ok_or_else(|| bad(key, "an array")))
            .transpose()
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let read = |items: &'a [GgufValue]| {
            items
                .iter()
                .map(|v| v.as_str().ok_or_else(|| bad(key, "an array of strings")))
                .collect()
        };
        self.array(key)?.map(read).transpose()
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let read = |items: &[GgufValue]| {
            items
                .iter()
                .map(|v| v.as_i64().ok_or_else(|| bad(key, "an array of integers")))
                .collect()
        };
        self.array(key)?.map(read).transpose()
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let read = |items: &[GgufValue]| {
            items
                .iter()
                .map(|v| v.as_f64().ok_or_else(|| bad(key, "an array of numbers")))
                .collect()
        };
        self.array(key)?.map(read).transpose()
    }

    fn token_id(&self, key: &str, vocab_size: usize) -> Result<TokenId> {
        let Some(value) = self.0.get(key) else {
            return Ok(TokenId::Absent);
        };
        // Some writers store "none" as -1.
        if value.as_i64().is_some_and(|v| v < 0) {
            return Ok(TokenId::Absent);
        }
        let id = value.as_u64().ok_or_else(|| bad(key, "a token id"))?;
        Ok(match u32::try_from(id) {
            Ok(id) if (id as usize) < vocab_size => TokenId::Valid(id),
            _ => TokenId::OutOfRange(id),
        })
    }
}

fn bad(key: &str, expected: &str) -> Error {
    Error::Tokenizer(format!("GGUF metadata {key}: expected {expected}"))
}

fn missing(key: &str) -> Error {
    Error::Tokenizer(format!("GGUF metadata has no {key}"))
}

#[cfg(test)]
#[path = "gguf_vocab_tests.rs"]
mod tests;
