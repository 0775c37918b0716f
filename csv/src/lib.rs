//! Lenient RFC 4180 records on one physical line.
//!
//! Its own crate, with no dependency but `memchr`, so that operator programs (`rainstorm-operator`)
//! split rows exactly as the built-in operators of `rainstorm-core` do (which re-exports it as
//! `rainstorm_core::rainstorm::csv`) without building the core.
//!
//! The stream layer works on physical lines, so a quoted field containing a newline arrives
//! split over several lines. [`split_record`] therefore never fails: an unterminated quoted
//! field runs to the end of the input, a quote inside an unquoted field is literal, and text
//! after a closing quote is appended to the field. [`join_record`] quotes exactly the fields
//! that need it, and `split_record(&join_record(f)) == f` for every non-empty `f`.
//! The caller strips line terminators; `split_record` treats CR and LF as ordinary characters.
//!
//! [`split_record`] is the definition; the hot paths (the built-in operators, the demo programs)
//! use [`fields`] and [`field`], which give the same fields without allocating: each field is
//! borrowed from the line unless it must be rebuilt (a doubled quote to unescape, or text after
//! its closing quote). Invariant: `fields(line)` yields exactly `split_record(line)`, and
//! `field(line, i)` is its `i`-th item (proptested below); only ASCII bytes (`,` and `"`) are
//! searched for, so every slice boundary is a character boundary.

use std::borrow::Cow;

use memchr::memchr;

/// Splits one record into fields. Quoting is recognised only at the start of a field; inside
/// quotes `""` is a literal quote. Always returns at least one field (`""` gives `[""]`).
pub fn split_record(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut at_start = true;
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match (in_quotes, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => in_quotes = false,
            (true, c) => field.push(c),
            (false, '"') if at_start => {
                in_quotes = true;
                at_start = false;
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
            }
            (false, c) => {
                field.push(c);
                at_start = false;
            }
        }
    }
    fields.push(field);
    fields
}

/// The fields of one record, as [`split_record`] splits it, borrowed from `line` where possible.
pub fn fields(line: &str) -> Fields<'_> {
    Fields { rest: Some(line) }
}

/// Field `index` (0-based) of the record on `line`, as `split_record(line).get(index)` gives it,
/// without allocating unless that field must be unescaped. Fields before it are skipped
/// without being built.
pub fn field(line: &str, index: usize) -> Option<Cow<'_, str>> {
    fields(line).nth(index)
}

/// The iterator of [`fields`]. Always yields at least one field (`""` gives `[""]`).
#[derive(Clone, Debug)]
pub struct Fields<'a> {
    /// What is left of the line, from the start of the next field; `None` once the last field
    /// was given.
    rest: Option<&'a str>,
}

impl<'a> Fields<'a> {
    /// Skips the next field without building it; `false` if there was none.
    fn skip(&mut self) -> bool {
        let Some(rest) = self.rest else { return false };
        let bytes = rest.as_bytes();
        let from = if bytes.first() == Some(&b'"') {
            match closing_quote(bytes) {
                Some(close) => close + 1,
                None => {
                    // Unterminated: the field runs to the end of the line.
                    self.rest = None;
                    return true;
                }
            }
        } else {
            0
        };
        self.rest = memchr(b',', &bytes[from..]).map(|comma| &rest[from + comma + 1..]);
        true
    }
}

/// The position in `bytes` (which opens with a quote) of the quote closing that quoted section,
/// stepping over doubled quotes; `None` if it is never closed.
fn closing_quote(bytes: &[u8]) -> Option<usize> {
    debug_assert_eq!(bytes.first(), Some(&b'"'));
    let mut pos = 1;
    loop {
        let quote = pos + memchr(b'"', &bytes[pos..])?;
        if bytes.get(quote + 1) == Some(&b'"') {
            pos = quote + 2;
        } else {
            return Some(quote);
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Cow<'a, str>;

    fn next(&mut self) -> Option<Cow<'a, str>> {
        let rest = self.rest?;
        let bytes = rest.as_bytes();
        if bytes.first() != Some(&b'"') {
            // Unquoted: up to the next comma, quotes included literally.
            return Some(Cow::Borrowed(match memchr(b',', bytes) {
                Some(comma) => {
                    self.rest = Some(&rest[comma + 1..]);
                    &rest[..comma]
                }
                None => {
                    self.rest = None;
                    rest
                }
            }));
        }
        // Quoted: unescape doubled quotes up to the closing quote (or the end of the line).
        let mut owned: Option<String> = None;
        let mut start = 1;
        let close = loop {
            match memchr(b'"', &bytes[start..]) {
                None => {
                    self.rest = None;
                    return Some(finish(owned, &rest[start..], ""));
                }
                Some(at) if bytes.get(start + at + 1) == Some(&b'"') => {
                    let text = &rest[start..=start + at];
                    owned.get_or_insert_with(|| String::with_capacity(rest.len())).push_str(text);
                    start += at + 2;
                }
                Some(at) => break start + at,
            }
        };
        // After the closing quote, text up to the next comma is appended as it is.
        let after = &rest[close + 1..];
        let tail = match memchr(b',', after.as_bytes()) {
            Some(comma) => {
                self.rest = Some(&after[comma + 1..]);
                &after[..comma]
            }
            None => {
                self.rest = None;
                after
            }
        };
        Some(finish(owned, &rest[start..close], tail))
    }

    fn nth(&mut self, n: usize) -> Option<Cow<'a, str>> {
        for _ in 0..n {
            if !self.skip() {
                return None;
            }
        }
        self.next()
    }
}

impl std::iter::FusedIterator for Fields<'_> {}

/// A quoted field from what was unescaped so far (`owned`), its last run of quoted text and the
/// text after its closing quote: borrowed when it is one contiguous slice of the line.
fn finish<'a>(owned: Option<String>, quoted: &'a str, tail: &'a str) -> Cow<'a, str> {
    match owned {
        None if tail.is_empty() => Cow::Borrowed(quoted),
        owned => {
            let mut field = owned.unwrap_or_default();
            field.push_str(quoted);
            field.push_str(tail);
            Cow::Owned(field)
        }
    }
}

/// Whether a field must be quoted to survive [`split_record`].
fn needs_quotes(field: &str) -> bool {
    field.contains([',', '"', '\r', '\n'])
}

/// Joins fields into one record, quoting a field (and doubling its quotes) when it contains a
/// comma, quote, CR or LF. `join_record(&[])` is `""`, which splits back to `[""]`.
pub fn join_record(fields: &[&str]) -> String {
    let mut out = String::with_capacity(fields.iter().map(|f| f.len() + 1).sum());
    join_into(&mut out, fields.iter().copied());
    out
}

/// [`join_record`], appended to `out` (which may already hold text: nothing is separated from it).
pub fn join_into<'f>(out: &mut String, fields: impl IntoIterator<Item = &'f str>) {
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if needs_quotes(field) {
            out.push('"');
            for (j, part) in field.split('"').enumerate() {
                if j > 0 {
                    out.push_str("\"\"");
                }
                out.push_str(part);
            }
            out.push('"');
        } else {
            out.push_str(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn splits_quoted_fields() {
        let line = r#"1,"16"" X 42""", ,"a,b",,x"y"#;
        assert_eq!(split_record(line), ["1", r#"16" X 42""#, " ", "a,b", "", r#"x"y"#]);
        assert_eq!(split_record(""), [""]);
        assert_eq!(split_record(","), ["", ""]);
    }

    #[test]
    fn unterminated_quote_runs_to_end_of_line() {
        assert_eq!(split_record(r#"a,Regulatory,""#), ["a", "Regulatory", ""]);
        assert_eq!(split_record(r#"a,"18"" X 60"#), ["a", r#"18" X 60"#]);
        assert_eq!(split_record(r#"a,"b,c"#), ["a", "b,c"]);
        assert_eq!(split_record(r#""ab"cd,e"#), ["abcd", "e"]);
    }

    #[test]
    fn joins_with_minimal_quoting() {
        assert_eq!(join_record(&["a", "b c", "x,y", "q\"", "l\nm"]), "a,b c,\"x,y\",\"q\"\"\",\"l\nm\"");
        assert_eq!(join_record(&[]), "");
    }

    fn borrowed(line: &str) -> Vec<bool> {
        fields(line).map(|f| matches!(f, Cow::Borrowed(_))).collect()
    }

    #[test]
    fn fields_are_borrowed_unless_rebuilt() {
        let line = r#"1,"16"" X 42""", ,"a,b",,x"y,"ab"cd,"open"#;
        let got: Vec<Cow<str>> = fields(line).collect();
        assert_eq!(got, ["1", r#"16" X 42""#, " ", "a,b", "", r#"x"y"#, "abcd", "open"]);
        assert_eq!(borrowed(line), [true, false, true, true, true, true, false, true]);
        assert_eq!(fields("").collect::<Vec<_>>(), [""]);
        assert_eq!(fields(",").collect::<Vec<_>>(), ["", ""]);
        assert_eq!(fields("\"").collect::<Vec<_>>(), [""]);
        assert_eq!(fields(r#""a"""#).collect::<Vec<_>>(), [r#"a""#], "a doubled quote, then unterminated");
        assert_eq!(borrowed(r#""a,b","",x"#), [true, true, true]);
    }

    #[test]
    fn field_by_index_skips_without_building() {
        let line = r#"a,"b"",c",,"d"e,f"#;
        assert_eq!(field(line, 0).as_deref(), Some("a"));
        assert_eq!(field(line, 1).as_deref(), Some("b\",c"));
        assert_eq!(field(line, 2).as_deref(), Some(""));
        assert_eq!(field(line, 3).as_deref(), Some("de"));
        assert_eq!(field(line, 4).as_deref(), Some("f"));
        assert_eq!(field(line, 5), None);
        assert_eq!(field(r#"x,"unterminated, still"#, 2), None);
        assert_eq!(field("", 0).as_deref(), Some(""));
        assert_eq!(field("", 1), None);
    }

    #[test]
    fn join_into_appends() {
        let mut out = String::from("k=");
        join_into(&mut out, ["a", "b\"c", "d,e"]);
        assert_eq!(out, r#"k=a,"b""c","d,e""#);
    }

    proptest! {
        #[test]
        fn fields_and_field_agree_with_split_record(line in "[a,\"\r\n ]{0,40}|[a-c,\"]{0,12}|\\PC{0,40}") {
            let expected = split_record(&line);
            let got: Vec<String> = fields(&line).map(Cow::into_owned).collect();
            prop_assert_eq!(&got, &expected);
            for i in 0..expected.len() + 2 {
                prop_assert_eq!(field(&line, i).map(Cow::into_owned), expected.get(i).cloned(), "field {}", i);
            }
            if !line.contains('"') {
                prop_assert!(borrowed(&line).into_iter().all(|b| b), "no quote: every field borrowed");
            }
            let mut skipping = fields(&line);
            prop_assert_eq!(skipping.nth(1).map(Cow::into_owned), expected.get(1).cloned());
            prop_assert_eq!(skipping.map(Cow::into_owned).collect::<Vec<_>>(), expected.iter().skip(2).cloned().collect::<Vec<_>>());
        }

        #[test]
        fn join_then_split_round_trips(
            fields in prop::collection::vec("[a-z\",\r\n ]{0,6}|\\PC{0,6}", 1..6),
        ) {
            let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
            prop_assert_eq!(split_record(&join_record(&refs)), fields);
        }

        #[test]
        fn split_never_panics(line in "[a\",\r\n]{0,40}|\\PC{0,40}") {
            let fields = split_record(&line);
            prop_assert!(!fields.is_empty());
        }
    }
}
