//! Lenient RFC 4180 records on one physical line.
//!
//! The stream layer works on physical lines, so a quoted field containing a newline arrives
//! split over several lines. [`split_record`] therefore never fails: an unterminated quoted
//! field runs to the end of the input, a quote inside an unquoted field is literal, and text
//! after a closing quote is appended to the field. [`join_record`] quotes exactly the fields
//! that need it, and `split_record(&join_record(f)) == f` for every non-empty `f`.
//! The caller strips line terminators; `split_record` treats CR and LF as ordinary characters.

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

/// Whether a field must be quoted to survive [`split_record`].
fn needs_quotes(field: &str) -> bool {
    field.contains([',', '"', '\r', '\n'])
}

/// Joins fields into one record, quoting a field (and doubling its quotes) when it contains a
/// comma, quote, CR or LF. `join_record(&[])` is `""`, which splits back to `[""]`.
pub fn join_record(fields: &[&str]) -> String {
    let mut out = String::new();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if needs_quotes(field) {
            out.push('"');
            out.push_str(&field.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(field);
        }
    }
    out
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

    proptest! {
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
