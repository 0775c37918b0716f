//! `app1-project`: App 1's second stage as an operator program.
//!
//! Stateless. For each tuple, one output: the same key, and as value the row's `OBJECTID` and
//! `Sign_Type` columns joined as CSV (quoted where needed). A row too short for a column gives
//! an empty string for it. Same outputs as the built-in `project:OBJECTID,Sign_Type`. The
//! columns are looked up in the input's header at the handshake: without them it refuses to
//! start. Fields are read from the row without copying it, and the value is written straight
//! into the reply.

use std::process::ExitCode;

use rainstorm_apps::arguments;
use rainstorm_operator::csv::{field, join_into};
use rainstorm_operator::{exit_code, serve_tuples, KeyState, Outputs, TupleRef};

const NAME: &str = "app1-project";

fn main() -> ExitCode {
    if let Err(code) = arguments::<0>(NAME, "") {
        return code;
    }
    let result = serve_tuples(false, |ctx| {
        let columns = [ctx.column("OBJECTID")?, ctx.column("Sign_Type")?];
        Ok(move |t: TupleRef, _: &mut KeyState, out: &mut Outputs| {
            let [id, kind] = columns.map(|i| field(t.value, i).unwrap_or_default());
            out.with_value_from(|value| join_into(value, [id.as_ref(), kind.as_ref()]));
            Ok(())
        })
    });
    exit_code(NAME, result)
}
