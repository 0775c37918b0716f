//! `app2-count`: App 2's second stage as an operator program.
//!
//! Stateful. The framework keeps, per tuple key (a category, put there by `app2-filter`), the
//! number of tuples seen so far, in decimal. For each tuple it outputs key = the category and
//! value = `<category>,<new count>` as CSV (the category quoted if it holds a comma or quote),
//! and stores the new count. Same outputs as the built-in `count:Category` after
//! `column:Sign_Post=<value>`. A stored state that is not a decimal count, or a count that
//! would overflow a `u64`, ends the program with an error (the task fails, as for the built-in).

use std::fmt::Write;
use std::process::ExitCode;

use rainstorm_apps::arguments;
use rainstorm_operator::csv::join_into;
use rainstorm_operator::{exit_code, serve_tuples, BoxError, KeyState, Outputs, TupleRef};

const NAME: &str = "app2-count";

/// A count state: non-empty ASCII decimal digits that fit in a `u64` (no sign, no spaces).
fn parse_count(state: &str) -> Option<u64> {
    (!state.is_empty() && state.bytes().all(|b| b.is_ascii_digit())).then(|| state.parse().ok()).flatten()
}

fn main() -> ExitCode {
    if let Err(code) = arguments::<0>(NAME, "") {
        return code;
    }
    let result = serve_tuples(true, |_| {
        let mut digits = String::new();
        Ok(move |t: TupleRef, state: &mut KeyState, out: &mut Outputs| -> Result<(), BoxError> {
            let previous = match state.get() {
                None => 0,
                Some(s) => parse_count(s)
                    .ok_or_else(|| format!("state {s:?} of key {:?} is not a decimal count", t.key))?,
            };
            let next =
                previous.checked_add(1).ok_or_else(|| format!("the count of key {:?} overflows", t.key))?;
            digits.clear();
            let _ = write!(digits, "{next}");
            state.set(&digits);
            out.with_value_from(|value| join_into(value, [t.key, digits.as_str()]));
            Ok(())
        })
    });
    exit_code(NAME, result)
}
