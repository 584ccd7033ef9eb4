//! BPE merges of a GGUF vocabulary: read from `tokenizer.ggml.merges` ("left right" strings), or,
//! for SentencePiece files that carry only scores, recovered from the vocabulary the way
//! transformers does (`generate_merges`): every split of a token into two tokens of the
//! vocabulary is a merge, ranked by the score of the merged token, best first.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Parses `"left right"` merge strings. A merge without exactly one space is an error.
pub(crate) fn parse_merges(merges: &[&str]) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .enumerate()
        .map(|(index, merge)| match merge.split_once(' ') {
            Some((left, right)) if !right.contains(' ') => {
                Ok((left.to_string(), right.to_string()))
            }
            _ => Err(Error::Tokenizer(format!(
                "GGUF merge {index} ({merge:?}) is not two tokens separated by one space"
            ))),
        })
        .collect()
}

/// Recovers merges from a scored vocabulary (transformers' `generate_merges(vocab, scores)`).
///
/// For each distinct token, in order of first appearance, every split into a left and a right
/// part that are both tokens gives a merge carrying the token's score; within one token the
/// splits are ordered by (left id, right id). All merges are then stably sorted by descending
/// (score, left length, right length), lengths in characters. Where a token appears twice, the
/// later id and the later score win. Missing scores (a shorter score array) count as 0.
pub(crate) fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Vec<(String, String)> {
    let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
    let mut score_of: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (id, &token) in tokens.iter().enumerate() {
        vocab.insert(token, id as u32);
        if score_of
            .insert(token, scores.get(id).copied().unwrap_or(0.0))
            .is_none()
        {
            order.push(token);
        }
    }

    struct Candidate<'t> {
        left: &'t str,
        right: &'t str,
        score: f64,
        left_chars: usize,
        right_chars: usize,
    }
    let mut candidates: Vec<Candidate> = Vec::new();
    for token in order {
        let score = score_of[token];
        let mut local: Vec<(u32, u32, Candidate)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (left, right) = token.split_at(at);
                let (&left_id, &right_id) = (vocab.get(left)?, vocab.get(right)?);
                let candidate = Candidate {
                    left,
                    right,
                    score,
                    left_chars: left.chars().count(),
                    right_chars: right.chars().count(),
                };
                Some((left_id, right_id, candidate))
            })
            .collect();
        local.sort_by_key(|&(left_id, right_id, _)| (left_id, right_id));
        candidates.extend(local.into_iter().map(|(_, _, candidate)| candidate));
    }
    // A stable sort on the reversed key keeps equal merges in their original order, as Python's
    // `sorted(..., reverse=True)` does.
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    candidates
        .into_iter()
        .map(|c| (c.left.to_string(), c.right.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(merges: &[(String, String)]) -> Vec<(&str, &str)> {
        merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect()
    }

    #[test]
    fn merge_strings_split_at_their_single_space() {
        let merges = parse_merges(&["Ġ t", "h e"]).expect("valid merges");
        assert_eq!(pairs(&merges), vec![("Ġ", "t"), ("h", "e")]);
        assert!(parse_merges(&["abc"]).is_err());
        assert!(parse_merges(&["a b c"]).is_err());
    }

    #[test]
    fn recovered_merges_follow_scores_then_lengths() {
        // "▁the" (best score) splits three ways, longest left part first; checked against
        // transformers' `generate_merges` on the same input.
        let tokens = ["▁", "t", "h", "e", "he", "▁t", "▁th", "the", "▁the"];
        let scores = [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -0.5];
        let merges = merges_from_scores(&tokens, &scores);
        assert_eq!(
            pairs(&merges),
            vec![
                ("▁th", "e"),
                ("▁t", "he"),
                ("▁", "the"),
                ("h", "e"),
                ("▁", "t"),
                ("▁t", "h"),
                ("t", "he"),
            ]
        );
    }
}
