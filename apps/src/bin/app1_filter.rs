//! `app1-filter <pattern>`: App 1's first stage as an operator program.
//!
//! Stateless. Keeps each tuple whose value contains `pattern` (a plain, case-sensitive
//! substring; not empty), unchanged; drops the others. Same outputs as the built-in
//! `grep:<pattern>`. A kept tuple goes back as a flag ("the input, unchanged"), not as bytes.

use std::process::ExitCode;

use memchr::memmem;
use rainstorm_apps::arguments;
use rainstorm_operator::{exit_code, serve_tuples, KeyState, Outputs, TupleRef};

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
    let finder = memmem::Finder::new(pattern.as_bytes()).into_owned();
    let result = serve_tuples(false, |_| {
        Ok(move |t: TupleRef, _: &mut KeyState, out: &mut Outputs| {
            if finder.find(t.value.as_bytes()).is_some() {
                out.keep();
            }
            Ok(())
        })
    });
    exit_code(NAME, result)
}
