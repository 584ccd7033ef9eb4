//! The flat batch of one step, built from the scheduler's plan.

use super::scheduler::{self, Scheduled};
use super::sequence::Sequence;
use crate::backend::{ForwardBatch, SeqSlice};

/// Pads a decode-only batch to `rows` rows with rows that touch nothing: position and slot
/// `u32::MAX` (no attention, no KV write), an empty block table, and a logits row each, which
/// the caller ignores (it reads only as many results as it scheduled).
pub(super) fn pad_decode_batch(b: &mut ForwardBatch, rows: usize) {
    for r in b.num_tokens()..rows {
        b.token_ids.push(0);
        b.positions.push(u32::MAX);
        b.slot_mapping.push(u32::MAX);
        b.logits_rows.push(r as u32);
        b.seqs.push(SeqSlice {
            query_start: r,
            query_len: 1,
            context_len: 0,
            block_table: Vec::new(),
        });
    }
}

/// The step's rows, in plan order.
pub(super) fn build_batch(
    running: &[Sequence],
    plan: &[Scheduled],
    block_size: usize,
) -> ForwardBatch {
    let bs = block_size as u32;
    let mut b = ForwardBatch::default();
    for s in plan {
        let seq = &running[s.seq];
        let start = b.token_ids.len();
        for pos in seq.num_computed..seq.num_computed + s.num_tokens {
            b.token_ids.push(seq.tokens[pos]);
            b.positions.push(pos as u32);
            b.slot_mapping
                .push(seq.block_table[pos / block_size] * bs + pos as u32 % bs);
        }
        // Prompt-logprob rows first, then the row that samples the next token.
        if seq.params.prompt_logprobs.is_some() {
            let n = scheduler::prompt_logprob_rows(seq, s.num_tokens);
            b.logits_rows.extend((start..start + n).map(|r| r as u32));
        }
        if seq.num_computed + s.num_tokens == seq.num_tokens() {
            b.logits_rows.push((start + s.num_tokens - 1) as u32);
        }
        b.seqs.push(SeqSlice {
            query_start: start,
            query_len: s.num_tokens,
            context_len: seq.num_computed + s.num_tokens,
            block_table: seq.block_table.clone(),
        });
    }
    b
}
