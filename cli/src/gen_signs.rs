//! `rainstorm gen-signs`: writes a larger input shaped like `data/Traffic_Signs.csv`.
//!
//! The sampling model lives in `rainstorm_apps::gen_signs`; this module owns the command line:
//! it prints the seed first, streams the records to the output file through a buffer (memory
//! stays flat whatever `--lines` is) and reports what it wrote.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use rainstorm_apps::gen_signs::{generate, Pools};

#[derive(Args)]
pub struct GenSignsArgs {
    /// Number of data records after the header. A record whose Notes or Size_ holds a quoted
    /// newline (about 3 in 10,000, as in the real file) spans two physical lines.
    #[arg(long)]
    lines: u64,
    /// Seed of the ChaCha8 RNG: the same seed and --lines always give the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The file to write (replaced if it exists).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: GenSignsArgs) -> Result<ExitCode> {
    eprintln!("gen-signs: seed {} lines {} out {}", args.seed, args.lines, args.out.display());
    let started = Instant::now();
    let pools = Pools::traffic_signs();
    let file = File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let written = generate(&pools, args.lines, args.seed, &mut out)
        .and_then(|w| out.flush().map(|()| w))
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "gen-signs: wrote {} records ({} physical lines, {} bytes) to {} in {:.2} s",
        written.records,
        written.lines,
        written.bytes,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
