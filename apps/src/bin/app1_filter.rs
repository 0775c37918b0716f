//! `app1-filter <pattern>`: App 1's first stage as an operator program.
//!
//! Stateless. Keeps each tuple whose value contains `pattern` (a plain, case-sensitive
//! substring; not empty), unchanged; drops the others. Same outputs as the built-in
//! `grep:<pattern>`.

use std::process::ExitCode;

use rainstorm_apps::arguments;
use rainstorm_operator::{exit_code, serve, State, WireTuple};

const NAME: &str = "app1-filter";

fn main() -> ExitCode {
    let [pattern] = match arguments(NAME, "<pattern>") {
        Ok(args) => args,
        Err(code) => return code,
    };
    if pattern.is_empty() {
        eprintln!("{NAME}: the pattern must not be empty");
        return ExitCode::from(2);
    }
    let result = serve(false, |_| {
        Ok(move |tuples: &[WireTuple], _: &mut State| {
            let keep = |t: &WireTuple| if t.value.contains(&pattern) { vec![t.clone()] } else { vec![] };
            Ok(tuples.iter().map(keep).collect())
        })
    });
    exit_code(NAME, result)
}
