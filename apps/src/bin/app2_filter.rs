//! `app2-filter <sign_post_value>`: App 2's first stage as an operator program.
//!
//! Stateless. Keeps the rows whose `Sign_Post` column equals the argument exactly (after CSV
//! unquoting; it may be empty); rows too short to have the column never match. Each kept row
//! is output with **key = its `Category` column** (empty if the row is too short for it) and
//! the row as value (sent back as a flag, not as bytes). The built-in `column:Sign_Post=<value>`
//! keeps the same values but leaves the key alone (`file:line`); this program moves the
//! category into the key because the next stage, `app2-count`, is a stateful program and
//! programs are partitioned by tuple key.

use std::process::ExitCode;

use rainstorm_apps::arguments;
use rainstorm_operator::csv::field;
use rainstorm_operator::{exit_code, serve_tuples, KeyState, Outputs, TupleRef};

const NAME: &str = "app2-filter";

fn main() -> ExitCode {
    let [wanted] = match arguments(NAME, "<sign_post_value>") {
        Ok(args) => args,
        Err(code) => return code,
    };
    let result = serve_tuples(false, |ctx| {
        let (post, category) = (ctx.column("Sign_Post")?, ctx.column("Category")?);
        Ok(move |t: TupleRef, _: &mut KeyState, out: &mut Outputs| {
            if field(t.value, post).is_some_and(|f| f == wanted.as_str()) {
                out.with_key(&field(t.value, category).unwrap_or_default());
            }
            Ok(())
        })
    });
    exit_code(NAME, result)
}
