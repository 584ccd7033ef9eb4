//! Python's `json.dumps` layout for `serde` values: `", "` / `": "` separators (or `","` with
//! an indent), optional indentation, `ensure_ascii` escapes, `sort_keys`, and Python's float
//! spelling. Chat templates print tool schemas and arguments with it, and the model saw that
//! exact text in training.

use serde::Serialize;

/// The `json.dumps` keyword arguments that shape the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonDumpsOptions {
    /// Spaces per nesting level; `Some` (even `Some(0)`) puts each item on its own line.
    pub indent: Option<usize>,
    /// Written between items: `", "` by default, `","` when indenting.
    pub item_separator: String,
    /// Written between a key and its value: `": "`.
    pub key_separator: String,
    /// Write non-ASCII characters as `\uXXXX` escapes.
    pub ensure_ascii: bool,
    /// Write object keys in sorted order instead of insertion order.
    pub sort_keys: bool,
}

impl JsonDumpsOptions {
    /// `json.dumps`'s defaults for the given `indent` (and `ensure_ascii=False`).
    pub fn new(indent: Option<usize>) -> Self {
        JsonDumpsOptions {
            indent,
            item_separator: if indent.is_some() { "," } else { ", " }.to_string(),
            key_separator: ": ".to_string(),
            ensure_ascii: false,
            sort_keys: false,
        }
    }
}

/// `value` as `json.dumps(value, **options)` writes it.
pub(crate) fn json_dumps(
    value: &impl Serialize,
    options: &JsonDumpsOptions,
) -> Result<String, serde_json::Error> {
    let mut out = Vec::new();
    json_dumps_to(value, options, &mut out)?;
    // The serializer writes UTF-8 only; a failure here would be a serde_json bug.
    String::from_utf8(out).map_err(|e| serde::ser::Error::custom(e.to_string()))
}

/// [`json_dumps`] into `writer`, without keeping the text.
pub(crate) fn json_dumps_to(
    value: &impl Serialize,
    options: &JsonDumpsOptions,
    writer: impl std::io::Write,
) -> Result<(), serde_json::Error> {
    let formatter = PythonJsonFormatter {
        options,
        level: 0,
        has_value: false,
    };
    let mut serializer = serde_json::Serializer::with_formatter(writer, formatter);
    if options.sort_keys {
        sorted(serde_json::to_value(value)?).serialize(&mut serializer)
    } else {
        value.serialize(&mut serializer)
    }
}

/// `value` with every object's keys in sorted order (whatever map serde_json was built with).
fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

/// A `serde_json` formatter that lays JSON out as Python's `json.dumps` does.
struct PythonJsonFormatter<'o> {
    /// Layout asked for.
    options: &'o JsonDumpsOptions,
    /// Current nesting depth.
    level: usize,
    /// Whether the innermost open array or object has an item yet.
    has_value: bool,
}

impl PythonJsonFormatter<'_> {
    fn newline<W: ?Sized + std::io::Write>(&self, writer: &mut W) -> std::io::Result<()> {
        if let Some(width) = self.options.indent {
            writer.write_all(b"\n")?;
            writer.write_all(" ".repeat(width * self.level).as_bytes())?;
        }
        Ok(())
    }

    fn open<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        bracket: &[u8],
    ) -> std::io::Result<()> {
        self.level += 1;
        self.has_value = false;
        writer.write_all(bracket)
    }

    fn close<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        bracket: &[u8],
    ) -> std::io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(writer)?;
        }
        writer.write_all(bracket)
    }

    fn item<W: ?Sized + std::io::Write>(&self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if !first {
            writer.write_all(self.options.item_separator.as_bytes())?;
        }
        self.newline(writer)
    }
}

impl serde_json::ser::Formatter for PythonJsonFormatter<'_> {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.open(writer, b"[")
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.close(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(writer, first)
    }

    fn end_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        _writer: &mut W,
    ) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.open(writer, b"{")
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.close(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(self.options.key_separator.as_bytes())
    }

    fn end_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        _writer: &mut W,
    ) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        writer.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f32,
    ) -> std::io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        if !self.options.ensure_ascii || fragment.is_ascii() {
            return writer.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional for decimal exponents
/// in -4..16 (always with a fractional part), scientific with a signed two-digit exponent
/// otherwise; `NaN` / `Infinity` as `json.dumps` writes them.
fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let scientific = format!("{value:e}"); // e.g. "-1.25e-7", shortest round-trip digits.
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..16).contains(&exponent) {
        let positional = format!("{value}");
        if positional.contains('.') {
            positional
        } else {
            format!("{positional}.0")
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_does() {
        assert_eq!(python_float_repr(1.0), "1.0");
        assert_eq!(python_float_repr(0.1), "0.1");
        assert_eq!(python_float_repr(-22.5), "-22.5");
        assert_eq!(python_float_repr(1e16), "1e+16");
        assert_eq!(python_float_repr(1.5e-7), "1.5e-07");
        assert_eq!(python_float_repr(0.0001), "0.0001");
        assert_eq!(python_float_repr(1e-5), "1e-05");
        assert_eq!(python_float_repr(123456789012345.0), "123456789012345.0");
    }

    #[test]
    fn layout_follows_json_dumps() {
        // Keys keep their order, as in a Python dict (serde_json's `preserve_order`, which
        // llguidance turns on for the whole build).
        let value = serde_json::json!({"b": [1, 2.5, "é"], "a": {}});
        assert_eq!(
            json_dumps(&value, &JsonDumpsOptions::new(None)).expect("dump"),
            r#"{"b": [1, 2.5, "é"], "a": {}}"#
        );
        let indented = JsonDumpsOptions {
            ensure_ascii: true,
            ..JsonDumpsOptions::new(Some(1))
        };
        assert_eq!(
            json_dumps(&value, &indented).expect("dump"),
            "{\n \"b\": [\n  1,\n  2.5,\n  \"\\u00e9\"\n ],\n \"a\": {}\n}"
        );
    }
}
