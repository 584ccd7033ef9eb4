//! Stop strings, matched across token boundaries on the detokenized text.

/// What ended a sequence that stopped other than on an end-of-sequence token (vLLM's
/// `stop_reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// One of the request's `stop_token_ids`.
    Token(u32),
    /// One of the request's `stop` strings.
    Text(String),
}

/// Where a stop string was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopMatch<'a> {
    /// Byte offset of its first byte in the text.
    pub at: usize,
    /// The stop string.
    pub stop: &'a str,
}

/// Finds the first stop string in a growing text and says how much text is safe to stream.
#[derive(Debug, Clone)]
pub struct StopChecker {
    stops: Vec<String>,
    /// Longest stop string in bytes; text within this distance of the end may still become
    /// part of a match, so it is held back while streaming.
    max_len: usize,
}

impl StopChecker {
    pub fn new(stops: &[String]) -> Self {
        StopChecker {
            max_len: stops.iter().map(String::len).max().unwrap_or(0),
            stops: stops.to_vec(),
        }
    }

    /// The first stop string in `text`, looking only at matches that end after
    /// `checked_upto` (earlier text was checked before). Of matches at the same offset, the
    /// first stop string given wins.
    pub fn find(&self, text: &str, checked_upto: usize) -> Option<StopMatch<'_>> {
        let start = floor_char_boundary(text, checked_upto.saturating_sub(self.max_len));
        self.stops
            .iter()
            .filter_map(|s| {
                text[start..].find(s.as_str()).map(|i| StopMatch {
                    at: start + i,
                    stop: s.as_str(),
                })
            })
            .min_by_key(|m| m.at)
    }

    /// Length of the prefix of `text` that can be streamed now: no stop string can begin in
    /// it any more.
    pub fn safe_len(&self, text: &str) -> usize {
        if self.max_len == 0 {
            return text.len();
        }
        floor_char_boundary(text, text.len().saturating_sub(self.max_len - 1))
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_stops_across_chunks_and_holds_back_partial_matches() {
        let c = StopChecker::new(&["\n\n".into(), "END".into()]);
        assert_eq!(c.find("hello E", 0), None);
        assert_eq!(c.safe_len("hello E"), 5);
        assert_eq!(c.find("hello EN", 7), None);
        let at = |m: Option<StopMatch>| m.map(|m| (m.at, m.stop.to_string()));
        assert_eq!(at(c.find("hello END", 8)), Some((6, "END".into())));
        assert_eq!(at(c.find("a\n\nb END", 0)), Some((1, "\n\n".into())));
        assert_eq!(c.safe_len("héé"), 3);
        assert_eq!(StopChecker::new(&[]).safe_len("abc"), 3);
    }
}
