//! # rainstorm-apps
//!
//! The two demo applications written as **operator programs** (see `docs/OPERATORS.md`), and
//! the generator of larger inputs shaped like the Champaign traffic-sign dataset.
//!
//! * binaries `app1-filter <pattern>`, `app1-project`, `app2-filter <sign_post_value>`,
//!   `app2-count`: each a small `main` over [`rainstorm_operator::serve`]. Their output values
//!   equal those of the built-ins `grep:<pattern>`, `project:OBJECTID,Sign_Type`,
//!   `column:Sign_Post=<value>` and `count:Category` (see each binary for the one difference:
//!   `app2-filter` puts the category in the tuple key, because programs are partitioned by
//!   tuple key);
//! * `python/traffic_signs.py`: the same four operators in one Python 3 script (stdlib only),
//!   byte-identical in output (`tests/programs.rs` checks all three against each other);
//! * [`gen_signs`]: `rainstorm gen-signs`, a seeded, streaming generator of inputs.
//!
//! This module itself holds what the binaries share: argument handling.

use std::process::ExitCode;

pub mod gen_signs;

/// The program's `N` arguments (after its name), or a usage message on stderr and exit code 2
/// when there are not exactly `N` or one is not UTF-8 (arguments are external input: no panic).
pub fn arguments<const N: usize>(program: &str, usage: &str) -> Result<[String; N], ExitCode> {
    let fail = |why: &str| {
        eprintln!("{program}: {why}\nusage: {program} {usage}");
        ExitCode::from(2)
    };
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string().map_err(|_| fail("an argument is not valid UTF-8")))
        .collect::<Result<_, _>>()?;
    let found = args.len();
    args.try_into().map_err(|_| fail(&format!("expected {N} argument(s), got {found}")))
}
