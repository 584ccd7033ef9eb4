//! Stop strings, matched across token boundaries on the detokenized text.

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

    /// The byte offset where the text must be cut if a stop string occurs in `text`, looking
    /// only at matches that end after `checked_upto` (earlier text was checked before).
    pub fn find(&self, text: &str, checked_upto: usize) -> Option<usize> {
        let start = floor_char_boundary(text, checked_upto.saturating_sub(self.max_len));
        self.stops
            .iter()
            .filter_map(|s| text[start..].find(s.as_str()).map(|i| start + i))
            .min()
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
        assert_eq!(c.find("hello END", 8), Some(6));
        assert_eq!(c.find("a\n\nb END", 0), Some(1));
        assert_eq!(c.safe_len("héé"), 3);
        assert_eq!(StopChecker::new(&[]).safe_len("abc"), 3);
    }
}
