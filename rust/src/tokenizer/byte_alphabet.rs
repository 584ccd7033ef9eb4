//! The GPT-2 byte alphabet (`bytes_to_unicode`): byte-level BPE vocabularies spell each byte as
//! one printable character, so that every token is a valid string. Printable Latin-1 bytes
//! (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68 bytes map, in byte order,
//! to U+0100..U+0143 (a space is `Ġ`, a newline `Ċ`).

/// Number of bytes that do not stand for themselves, mapped to U+0100 onwards.
const SHIFTED_BYTES: u32 = 68;

/// Whether byte `b` is spelled as the character of the same code point.
fn is_printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The character that spells byte `b` in the byte alphabet.
pub(crate) fn byte_to_char(b: u8) -> char {
    if is_printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !is_printable(x)).count() as u32;
    char::from_u32(0x100 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// Whether `c` is one of the 256 characters of the byte alphabet.
pub(crate) fn is_byte_char(c: char) -> bool {
    let code = c as u32;
    u8::try_from(code).is_ok_and(is_printable) || (0x100..0x100 + SHIFTED_BYTES).contains(&code)
}

/// Whether every character of `token` belongs to the byte alphabet (the empty token does).
pub(crate) fn is_byte_level_spelling(token: &str) -> bool {
    token.chars().all(is_byte_char)
}

/// `token` as a byte-level vocabulary spells it: unchanged if it already is in the byte
/// alphabet, otherwise its UTF-8 bytes spelled one character each (transformers'
/// `byte_level_tokenizer`).
pub(crate) fn respell_byte_level(token: &str) -> String {
    if is_byte_level_spelling(token) {
        token.to_string()
    } else {
        token.bytes().map(byte_to_char).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection_over_bytes() {
        let chars: Vec<char> = (0..=255u8).map(byte_to_char).collect();
        let mut sorted = chars.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
        assert!(chars.iter().all(|&c| is_byte_char(c)));
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert!(!is_byte_char('中') && !is_byte_char(' ') && !is_byte_char('\u{144}'));
    }

    #[test]
    fn tokens_outside_the_alphabet_are_respelled_from_their_bytes() {
        assert_eq!(respell_byte_level("Ġthe"), "Ġthe");
        assert_eq!(respell_byte_level(" 中"), "Ġä¸Ń");
        assert_eq!(respell_byte_level("é"), "é");
    }
}
