//! Makes every filter and method that can copy a value many times pay for its result before
//! building it. minijinja charges a template's fuel for the data it builds (one fuel per
//! [`BYTES_PER_FUEL`] bytes) but, in a few filters and `pycompat` methods, only once the result
//! exists: `"".join([s] * 100000)`, `("{0}" * n).format(s)`, `nested|string` (a list that holds
//! itself twice, 40 levels deep, is 80 list slots that print as 2^40 items) would allocate far
//! more than the budget before the charge. Here each such call first writes what it will copy
//! into a counter that pays as it counts and allocates nothing, so a call the budget cannot pay
//! for fails before it allocates; the built-in then runs as before.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use minijinja::value::{Kwargs, Rest, StringInput, Value, ValueKind, ValueOrKwargs};
use minijinja::{Environment, Error, State};

/// Bytes one fuel pays for: minijinja charges one fuel per instruction and per 64 bytes of data
/// (`Environment::set_fuel`), so a budget of `n` fuel bounds a render's data to `64 * n` bytes.
pub const BYTES_PER_FUEL: u64 = 64;

/// Memory a list slot stands for, in bytes (minijinja's estimate: a 24-byte value plus growth).
const SLOT_BYTES: u64 = 32;

/// What minijinja charges per byte of a container printed as text (it walks the container, a lot
/// slower than copying), in bytes of budget; strings cost one per byte.
pub(crate) const PRINTED_CONTAINER_BYTE: u64 = 16;

/// Replaces the built-in filters and the `pycompat` method callback with ones that pay first.
pub(crate) fn register(env: &mut Environment<'_>) {
    env.add_filter("join", join);
    env.add_filter("string", string);
    env.add_filter("pprint", pprint);
    env.add_filter("format", format);
    env.add_filter("split", split);
    env.add_filter("escape", escape);
    env.add_filter("e", escape);
    env.add_filter("sum", sum);
    env.set_unknown_method_callback(method);
}

/// Counts what is written to it and pays for it as it goes; fails the write once the budget is
/// spent (the render then fails with out-of-fuel).
pub(crate) struct PayingCounter<'a, 'env> {
    state: &'a State<'a, 'env>,
    /// Budget bytes each byte written costs.
    price: u64,
    written: u64,
    unpaid: u64,
    error: Option<Error>,
}

/// Pays in chunks: a call into the fuel tracker per write would cost more than the count.
const PAY_CHUNK: u64 = 4096;

impl PayingCounter<'_, '_> {
    fn pay(&mut self) -> fmt::Result {
        let fuel = self.unpaid / BYTES_PER_FUEL;
        self.unpaid %= BYTES_PER_FUEL;
        self.state.consume_fuel(fuel).map_err(|e| {
            self.error = Some(e);
            fmt::Error
        })
    }

    fn count(&mut self, bytes: usize) -> fmt::Result {
        self.written += bytes as u64;
        self.unpaid += bytes as u64 * self.price;
        if self.unpaid >= PAY_CHUNK {
            self.pay()?;
        }
        Ok(())
    }
}

impl fmt::Write for PayingCounter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.count(s.len())
    }
}

impl std::io::Write for PayingCounter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.count(buf.len())
            .map_err(|_| std::io::Error::other("out of fuel"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Pays for what `write` writes, `price` budget bytes per byte, without keeping it; returns
/// its length in bytes.
pub(crate) fn pay_for<E>(
    state: &State,
    price: u64,
    write: impl FnOnce(&mut PayingCounter) -> Result<(), E>,
) -> Result<u64, Error> {
    let mut counter = PayingCounter {
        state,
        price,
        written: 0,
        unpaid: 0,
        error: None,
    };
    let result = match write(&mut counter) {
        Ok(()) => counter.pay(),
        Err(_) => Err(fmt::Error),
    };
    match (result, counter.error) {
        (_, Some(error)) => Err(error),
        // Failed for another reason: the call that follows reports it in its own words.
        (_, None) => Ok(counter.written),
    }
}

/// Pays for `value` as `{{ value }}` prints it, at minijinja's price; its length in bytes.
fn pay_for_display(state: &State, value: &Value) -> Result<u64, Error> {
    let price = match value.as_object() {
        Some(_) => PRINTED_CONTAINER_BYTE,
        None => 1,
    };
    pay_for(state, price, |w| write!(w, "{value}"))
}

/// Pays for `copies` more copies of `bytes` bytes (beyond the one already paid for).
fn pay_for_copies(state: &State, copies: u64, bytes: u64) -> Result<(), Error> {
    state.consume_fuel(copies.saturating_mul(bytes) / BYTES_PER_FUEL)
}

fn join(
    state: &mut State,
    value: &Value,
    joiner: Option<StringInput<'_>>,
    attribute: Option<&str>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    // The result holds at most what the sequence prints as (the joiner is checked by the
    // built-in as it grows).
    pay_for_display(state, value)?;
    minijinja::filters::join(state, value, joiner, attribute, kwargs)
}

fn string(state: &State, value: &Value) -> Result<Value, Error> {
    if value.kind() != ValueKind::String {
        pay_for_display(state, value)?;
    }
    minijinja::filters::string(state, value)
}

fn pprint(state: &State, value: &Value) -> Result<String, Error> {
    pay_for(state, PRINTED_CONTAINER_BYTE, |w| write!(w, "{value:#?}"))?;
    Ok(minijinja::filters::pprint(value))
}

/// Each conversion of `format_str` (one per `marker`) can copy the largest argument again.
fn pay_for_format(
    state: &State,
    format_str: &str,
    marker: char,
    args: &[Value],
) -> Result<(), Error> {
    let mut largest = 0;
    for arg in args {
        largest = largest.max(pay_for_display(state, arg)?);
    }
    let conversions = format_str.matches(marker).count() as u64;
    pay_for_copies(state, conversions, largest)
}

fn format(
    state: &mut State,
    format_str: &Value,
    args: Rest<ValueOrKwargs>,
) -> Result<Value, Error> {
    let values: Vec<Value> = args.0.iter().map(|a| Value::clone(a)).collect();
    pay_for_format(state, format_str.as_str().unwrap_or_default(), '%', &values)?;
    minijinja::filters::format(state, format_str, args)
}

/// Pays for the list slots splitting `text` at `separator` makes.
fn pay_for_split(state: &State, text: &str, separator: Option<&str>) -> Result<(), Error> {
    let pieces = match separator {
        Some(sep) if !sep.is_empty() => text.matches(sep).count() + 1,
        _ => text.split_whitespace().count(),
    };
    pay_for_copies(state, pieces as u64, SLOT_BYTES)
}

fn split(
    state: &State,
    value: &Value,
    separator: Option<Arc<str>>,
    maxsplits: Option<i64>,
) -> Result<Value, Error> {
    pay_for_split(
        state,
        value.as_str().unwrap_or_default(),
        separator.as_deref(),
    )?;
    minijinja::filters::split(value, separator, maxsplits)
}

fn escape(state: &mut State, value: &Value) -> Result<Value, Error> {
    // HTML escaping turns one byte into at most six (`"` into `&quot;`).
    if let Some(text) = value.as_str() {
        let special = text.bytes().filter(|b| b"<>&\"'/".contains(b)).count();
        pay_for_copies(state, special as u64, 5)?;
    }
    minijinja::filters::escape(state, value)
}

fn sum(
    state: &State,
    values: Value,
    attribute: Option<&str>,
    start: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let start_value = match &start {
        Some(start) => Some(start.clone()),
        None => kwargs.get::<Option<Value>>("start")?,
    };
    if start_value.is_some_and(|s| !s.is_number()) {
        // Adding strings or lists copies the running total at every item.
        let total = pay_for_display(state, &values)?;
        let items = values.len().map_or(total, |n| n as u64);
        pay_for_copies(state, items, total)?;
    }
    minijinja::filters::sum(state, values, attribute, start, kwargs)
}

/// `pycompat`'s Python string methods, paying first for those that copy their arguments.
fn method(state: &mut State, value: &Value, name: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(text) = value.as_str() {
        match name {
            "join" => {
                for arg in args {
                    pay_for_display(state, arg)?;
                }
            }
            "format" => pay_for_format(state, text, '{', args)?,
            "split" => pay_for_split(state, text, args.first().and_then(Value::as_str))?,
            "splitlines" => pay_for_copies(state, text.lines().count() as u64, SLOT_BYTES)?,
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, name, args)
}

#[cfg(test)]
#[path = "template_budget_tests.rs"]
mod tests;
