//! A deterministic generator of inputs shaped like `data/Traffic_Signs.csv`, of any size.
//!
//! This module owns the sampling model behind `rainstorm gen-signs`. A [`Pools`] is built once
//! from a CSV with a header (by default the embedded dataset, [`TRAFFIC_SIGNS`]); [`generate`]
//! then streams the header line and `records` data records. Each generated record takes:
//! * its location columns (`X`, `Y`, `Replacement_Zone`, `Schools`, `Location_Adjusted`) from
//!   one random real record, so coordinates stay together;
//! * its sign columns (`Sign_Type`, `Size_`, `Supplement`, `Category`, `MUTCD`, `Sign_Text`,
//!   `Notes`) from another, so a stop sign keeps a stop sign's size and category;
//! * every other column from a record of its own, so each column follows the dataset's
//!   distribution of values;
//! * `OBJECTID` = its 1-based record number (fresh and unique), `GlobalID` a fresh GUID.
//!
//! Quoted commas (`"Stop, All Way"`), doubled quotes (`"16"" X 42"""`) and quoted newlines
//! (a few `Notes` and `Size_` values) occur as often as in the real file, so a record with a
//! quoted newline spans two physical lines there too. Invariants: the same pools, record count
//! and seed give the same bytes on every machine (one `ChaCha8Rng` seeded from the seed, no
//! other entropy); memory does not grow with the record count (records are written as drawn).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use rainstorm_csv::{join_record, split_record};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The City of Champaign traffic-sign inventory (see `data/README.md`), embedded so the
/// generator works from any directory.
pub const TRAFFIC_SIGNS: &[u8] = include_bytes!("../../data/Traffic_Signs.csv");

/// Columns drawn together from one real record.
const GROUPS: [&[&str]; 2] = [
    &["X", "Y", "Replacement_Zone", "Schools", "Location_Adjusted"],
    &["Sign_Type", "Size_", "Supplement", "Category", "MUTCD", "Sign_Text", "Notes"],
];

/// Where a generated column's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The record's number.
    RowNumber,
    /// A fresh GUID from the RNG.
    Guid,
    /// This column of the record drawn for group `usize` (groups past [`GROUPS`] are one column each).
    Group(usize),
}

/// One column's values: the distinct values, already CSV-encoded (quoted where needed, as
/// [`join_record`] does), and each sample record's value as an index into them. Few distinct
/// values and compact indices keep the working set in cache, so drawing is fast.
struct ColumnPool {
    source: Source,
    encoded: Vec<String>,
    by_record: Vec<u32>,
}

/// The real records to sample from, column by column, and how each column is drawn.
pub struct Pools {
    /// The header line as it is in the file (a byte-order mark included).
    header_line: String,
    columns: Vec<ColumnPool>,
    records: usize,
    groups: usize,
}

/// Why a sample file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the sample CSV has no data records after its header")]
    NoRecords,
    #[error("a column of the sample CSV has more than 2^32 distinct values")]
    TooManyValues,
}

/// The CSV records of `text`: physical lines joined while a quoted field is open (an odd
/// number of quotes so far), so a quoted newline stays inside its field.
fn records(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut lines = text.strip_suffix('\n').unwrap_or(text).split('\n');
    std::iter::from_fn(move || {
        let mut record = lines.next()?.to_owned();
        while record.matches('"').count() % 2 == 1 {
            let Some(next) = lines.next() else { break };
            record.push('\n');
            record.push_str(next);
        }
        Some(record)
    })
}

impl Pools {
    /// Pools over the embedded dataset.
    pub fn traffic_signs() -> Pools {
        Pools::from_csv(TRAFFIC_SIGNS).expect("the embedded dataset has records")
    }

    /// Pools over any CSV whose first line is a header. Columns named as in the dataset are
    /// grouped as described in the module documentation; unknown ones are drawn alone. A
    /// record shorter than the header has empty strings in the columns it lacks.
    pub fn from_csv(content: &[u8]) -> Result<Pools, PoolError> {
        let text = String::from_utf8_lossy(content);
        let mut all = records(&text);
        let header_line = all.next().unwrap_or_default();
        let names: Vec<String> = split_record(&header_line)
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_owned())
            .collect();
        let mut groups = GROUPS.len();
        let mut columns: Vec<ColumnPool> = names
            .iter()
            .map(|name| {
                let source = match name.as_str() {
                    "OBJECTID" => Source::RowNumber,
                    "GlobalID" => Source::Guid,
                    name => {
                        Source::Group(GROUPS.iter().position(|g| g.contains(&name)).unwrap_or_else(|| {
                            groups += 1;
                            groups - 1
                        }))
                    }
                };
                ColumnPool { source, encoded: Vec::new(), by_record: Vec::new() }
            })
            .collect();
        let mut ids: Vec<BTreeMap<String, u32>> = vec![BTreeMap::new(); columns.len()];
        let mut count = 0usize;
        for record in all {
            let fields = split_record(&record);
            for (i, (column, ids)) in columns.iter_mut().zip(&mut ids).enumerate() {
                let value = fields.get(i).map_or("", String::as_str);
                let next = u32::try_from(column.encoded.len()).map_err(|_| PoolError::TooManyValues)?;
                let id = *ids.entry(value.to_owned()).or_insert_with(|| {
                    column.encoded.push(join_record(&[value]));
                    next
                });
                column.by_record.push(id);
            }
            count += 1;
        }
        if count == 0 {
            return Err(PoolError::NoRecords);
        }
        Ok(Pools { header_line, columns, records: count, groups })
    }

    pub fn columns(&self) -> usize {
        self.columns.len()
    }

    /// Data records in the sample.
    pub fn records(&self) -> usize {
        self.records
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Generated {
    /// Data records (the header excluded).
    pub records: u64,
    /// Physical lines, the header included (a quoted newline adds one).
    pub lines: u64,
    pub bytes: u64,
}

/// Appends a version-4 GUID in the dataset's form: `{XXXXXXXX-XXXX-4XXX-[89AB]XXX-XXXXXXXXXXXX}`.
fn push_guid(line: &mut String, rng: &mut ChaCha8Rng) {
    let (a, b, c, d, e): (u32, u16, u16, u16, u64) = rng.gen();
    let (c, d, e) = (0x4000 | (c & 0x0fff), 0x8000 | (d & 0x3fff), e & 0xffff_ffff_ffff);
    let _ = write!(line, "{{{a:08X}-{b:04X}-{c:04X}-{d:04X}-{e:012X}}}");
}

/// Writes the header line and `records` generated data records to `out`, each ended by `\n`.
pub fn generate<W: Write>(pools: &Pools, records: u64, seed: u64, out: &mut W) -> io::Result<Generated> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut written = Generated { records, ..Generated::default() };
    let mut line = String::with_capacity(1024);
    let mut emit = |line: &str, out: &mut W| -> io::Result<()> {
        out.write_all(line.as_bytes())?;
        written.lines += line.bytes().filter(|b| *b == b'\n').count() as u64;
        written.bytes += line.len() as u64;
        Ok(())
    };
    line.push_str(&pools.header_line);
    line.push('\n');
    emit(&line, out)?;
    let mut drawn = vec![0usize; pools.groups];
    for number in 1..=records {
        for d in drawn.iter_mut() {
            *d = rng.gen_range(0..pools.records);
        }
        line.clear();
        for (i, column) in pools.columns.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            match column.source {
                Source::RowNumber => {
                    let _ = write!(line, "{number}");
                }
                Source::Guid => push_guid(&mut line, &mut rng),
                Source::Group(g) => line.push_str(&column.encoded[column.by_record[drawn[g]] as usize]),
            }
        }
        line.push('\n');
        emit(&line, out)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn bytes(records: u64, seed: u64) -> (Vec<u8>, Generated) {
        let mut out = Vec::new();
        let stats = generate(&Pools::traffic_signs(), records, seed, &mut out).expect("writes to memory");
        (out, stats)
    }

    /// The generated records, each split into fields (quoted newlines rejoined).
    fn parsed(out: &[u8]) -> (String, Vec<Vec<String>>) {
        let text = std::str::from_utf8(out).expect("utf-8");
        let mut all = records(text);
        let header = all.next().expect("a header");
        (header, all.map(|r| split_record(&r)).collect())
    }

    #[test]
    fn the_embedded_dataset_parses_into_its_records() {
        let pools = Pools::traffic_signs();
        assert_eq!((pools.columns(), pools.records()), (20, 15_564), "see data/README.md");
        let text = std::str::from_utf8(TRAFFIC_SIGNS).expect("utf-8");
        let rows: Vec<Vec<String>> = records(text).skip(1).map(|r| split_record(&r)).collect();
        assert!(rows.iter().all(|r| r.len() == 20));
        assert_eq!(rows.iter().filter(|r| r.iter().any(|f| f.contains('\n'))).count(), 5);
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let (a, stats) = bytes(2_000, 7);
        assert_eq!(a, bytes(2_000, 7).0);
        assert_ne!(a, bytes(2_000, 8).0);
        assert_eq!(bytes(100, 7).0, a[..bytes(100, 7).0.len()], "a shorter run is a prefix");
        assert_eq!(stats.bytes, a.len() as u64);
        assert_eq!(stats.lines, a.iter().filter(|b| **b == b'\n').count() as u64);
        assert_eq!(stats.records, 2_000);
    }

    #[test]
    fn records_have_the_dataset_shape() {
        let (out, _) = bytes(20_000, 1);
        assert!(out.starts_with(
            &TRAFFIC_SIGNS[..TRAFFIC_SIGNS.iter().position(|b| *b == b'\n').expect("lines") + 1]
        ));
        let (_, rows) = parsed(&out);
        assert_eq!(rows.len(), 20_000);
        assert!(rows.iter().all(|r| r.len() == 20));
        let ids: Vec<String> = rows.iter().map(|r| r[2].clone()).collect();
        assert_eq!(ids, (1..=20_000).map(|n| n.to_string()).collect::<Vec<_>>(), "OBJECTID = row number");
        let guids: BTreeSet<&str> = rows.iter().map(|r| r[19].as_str()).collect();
        assert_eq!(guids.len(), 20_000);
        assert!(guids.iter().all(|g| g.len() == 38 && g.starts_with('{') && g.as_bytes()[15] == b'4'));
        assert!(rows.iter().any(|r| r[3].contains(',')), "quoted commas survive");
        assert!(out.windows(2).any(|w| w == b"\"\""), "doubled quotes survive");
        // Category follows the dataset's distribution: Regulatory (29%) and Parking (28%) lead.
        let mut categories = BTreeMap::<&str, u32>::new();
        for r in &rows {
            *categories.entry(r[8].as_str()).or_default() += 1;
        }
        let share = |c: &str| f64::from(categories[c]) / 20_000.0;
        assert!((0.26..0.32).contains(&share("Regulatory")) && (0.25..0.31).contains(&share("Parking")));
        assert!(categories.len() <= 12);
    }

    #[test]
    fn quoted_newlines_occur_and_span_two_lines() {
        let (out, stats) = bytes(100_000, 3);
        let (_, rows) = parsed(&out);
        let with_newline = rows.iter().filter(|r| r.iter().any(|f| f.contains('\n'))).count() as u64;
        assert!((5..200).contains(&with_newline), "{with_newline}");
        assert_eq!(stats.lines, 1 + 100_000 + with_newline);
    }

    #[test]
    fn other_samples_work_and_empty_ones_are_refused() {
        let pools = Pools::from_csv(b"OBJECTID,Category,Other\n9,\"a,b\",x\n").expect("one record");
        let mut out = Vec::new();
        generate(&pools, 2, 0, &mut out).expect("writes");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "OBJECTID,Category,Other\n1,\"a,b\",x\n2,\"a,b\",x\n"
        );
        assert!(matches!(Pools::from_csv(b"X,Y\n"), Err(PoolError::NoRecords)));
        assert!(matches!(Pools::from_csv(b""), Err(PoolError::NoRecords)));
    }
}
