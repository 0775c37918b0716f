//! `app1-project`: App 1's second stage as an operator program.
//!
//! Stateless. For each tuple, one output: the same key, and as value the row's `OBJECTID` and
//! `Sign_Type` columns joined as CSV (quoted where needed). A row too short for a column gives
//! an empty string for it. Same outputs as the built-in `project:OBJECTID,Sign_Type`. The
//! columns are looked up in the input's header at the handshake: without them it refuses to start.

use std::process::ExitCode;

use rainstorm_apps::arguments;
use rainstorm_operator::csv::{join_record, split_record};
use rainstorm_operator::{exit_code, serve, State, WireTuple};

const NAME: &str = "app1-project";

fn main() -> ExitCode {
    if let Err(code) = arguments::<0>(NAME, "") {
        return code;
    }
    let result = serve(false, |ctx| {
        let columns = [ctx.column("OBJECTID")?, ctx.column("Sign_Type")?];
        Ok(move |tuples: &[WireTuple], _: &mut State| {
            let project = |t: &WireTuple| {
                let fields = split_record(&t.value);
                let picked = columns.map(|i| fields.get(i).map_or("", String::as_str));
                vec![WireTuple::new(&t.key, join_record(&picked))]
            };
            Ok(tuples.iter().map(project).collect())
        })
    });
    exit_code(NAME, result)
}
