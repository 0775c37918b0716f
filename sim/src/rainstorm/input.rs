//! Deterministic inputs and operator pairs for simulated RainStorm jobs.
//!
//! This module owns the job inputs (a window of the embedded Champaign traffic-sign dataset, or a
//! small generated CSV of the same shape) and the choice of a job's two built-in operators.
//! Invariants: every choice is drawn from the caller's [`ChaCha8Rng`], so a seed gives the same
//! bytes and specs on every run; inputs start with a header line and end with `\n`; every spec
//! pair returned by [`pick_ops`] parses with `OperatorSpec::parse` and builds against
//! `header_of(content)` (names it cannot resolve fall back to column index 1, valid for any input).

use std::collections::BTreeSet;

use rainstorm_core::rainstorm::csv::{join_record, split_record};
use rainstorm_core::rainstorm::reference::header_of;
use rainstorm_core::rainstorm::source_lines;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The City of Champaign traffic-sign inventory (see `data/README.md`).
pub const TRAFFIC_SIGNS: &[u8] = include_bytes!("../../../data/Traffic_Signs.csv");

const SIGN_TYPES: [&str; 8] = [
    "Stop",
    "No Parking",
    "Streetname",
    "Stop, All Way",
    "Speed Limit, 25 MPH",
    "One Way Right",
    "Yield",
    "Pedestrian Crossing",
];
const SIGN_POSTS: [&str; 5] =
    ["Punched Telespar", "Streetlight", "Unpunched Telespar", "U-Channel", "Traffic Signal Mast Arm"];
const CATEGORIES: [&str; 8] =
    ["Regulatory", "Parking", "Streetname", "Warning", "School", "Guide", "Custom", "Object Marker"];
const NOTE_WORDS: [&str; 8] = ["back", "to", "push", "button", "folded", "sign", "Mattis", "painted"];

/// The header line of `TRAFFIC_SIGNS` plus a random contiguous window of `min(max_lines, all)` of
/// the physical lines after it, bytes unchanged (a record may be cut at a quoted newline).
pub fn traffic_signs_slice(rng: &mut ChaCha8Rng, max_lines: usize) -> Vec<u8> {
    let body = TRAFFIC_SIGNS.strip_suffix(b"\n").unwrap_or(TRAFFIC_SIGNS);
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    let (header, rest) = lines.split_first().map_or((&b""[..], &[][..]), |(h, r)| (*h, r));
    let take = max_lines.min(rest.len());
    let start = rng.gen_range(0..=rest.len() - take);
    let mut out = Vec::with_capacity(header.len() + 1 + take * 200);
    for line in std::iter::once(header).chain(rest[start..start + take].iter().copied()) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// Index into `weights` drawn with probability proportional to its weight.
fn weighted(rng: &mut ChaCha8Rng, weights: &[u32]) -> usize {
    let mut draw = rng.gen_range(0..weights.iter().sum::<u32>().max(1));
    for (i, w) in weights.iter().enumerate() {
        if draw < *w {
            return i;
        }
        draw -= w;
    }
    0
}

/// A small CSV shaped like the dataset: header `OBJECTID,Sign_Type,Sign_Post,Category,Notes` and
/// `lines` records. Sign types may contain commas (quoted), categories are Zipf-skewed, and
/// about 2% of notes hold a newline (that record spans two physical lines) or `""` quotes.
pub fn generated_csv(rng: &mut ChaCha8Rng, lines: usize) -> Vec<u8> {
    let mut out = String::from("OBJECTID,Sign_Type,Sign_Post,Category,Notes\n");
    for row in 1..=lines {
        let sign = SIGN_TYPES[rng.gen_range(0..SIGN_TYPES.len())];
        let post = SIGN_POSTS[weighted(rng, &[8, 3, 2, 1, 1])];
        let category = CATEGORIES[weighted(rng, &[840, 420, 280, 210, 168, 140, 120, 105])];
        let word = |rng: &mut ChaCha8Rng| NOTE_WORDS[rng.gen_range(0..NOTE_WORDS.len())];
        let notes = match rng.gen_range(0..100) {
            0..=69 => String::new(),
            70..=95 => (0..rng.gen_range(1..4)).map(|_| word(rng)).collect::<Vec<_>>().join(" "),
            96..=97 => format!("{}\n{} {}", word(rng), word(rng), word(rng)),
            _ => format!("{} 16\" X 42\"", word(rng)),
        };
        out.push_str(&join_record(&[&row.to_string(), sign, post, category, &notes]));
        out.push('\n');
    }
    out.into_bytes()
}

/// `name` if the header has that column (ignoring a BOM and spaces), else index `1`.
fn column(header: &[String], name: &str) -> String {
    let found = header.iter().any(|h| h.trim_start_matches('\u{feff}').trim() == name);
    if found { name } else { "1" }.to_owned()
}

/// A substring found in some but not all data lines: half the time a random row's Sign_Type or a
/// word of it, otherwise a word of any of its fields (a street-name fragment, a post type, ...);
/// after 16 failed draws, the first such word in line order, else the first data line, else `Stop`.
/// Words are runs of 3 or more letters.
fn grep_needle(rng: &mut ChaCha8Rng, data: &[String], sign_type: Option<usize>) -> String {
    for _ in 0..16 {
        let Some(line) = data.get(rng.gen_range(0..data.len().max(1))) else { break };
        let fields = split_record(line);
        let typed = sign_type.filter(|i| *i < fields.len() && rng.gen_bool(0.5));
        let field = &fields[typed.unwrap_or_else(|| rng.gen_range(0..fields.len()))];
        let words: Vec<&str> = field.split(|c: char| !c.is_alphabetic()).filter(|w| w.len() >= 3).collect();
        let needle = match (typed, words.len()) {
            (Some(_), n) if n == 0 || rng.gen_bool(0.3) => field.trim(),
            (_, 0) => "",
            (_, n) => words[rng.gen_range(0..n)],
        };
        let hits = data.iter().filter(|l| l.contains(needle)).count();
        if !needle.is_empty() && hits > 0 && hits < data.len() {
            return needle.to_owned();
        }
    }
    let words = data.iter().flat_map(|l| l.split(|c: char| !c.is_alphabetic()).filter(|w| w.len() >= 3));
    let mut tried = BTreeSet::new();
    let some_not_all = |w: &&str| {
        let hits = data.iter().filter(|l| l.contains(*w)).count();
        hits > 0 && hits < data.len()
    };
    let found = words.filter(|w| tried.insert(*w)).take(64).find(some_not_all);
    let first_line = data.first().map(|l| l.trim()).filter(|l| !l.is_empty());
    found.or(first_line).unwrap_or("Stop").to_owned()
}

/// A value of `column` (0-based) in a data line: a non-blank one from a random line if 16 draws
/// find one, else the first line's that has the column, else `Punched Telespar`.
fn column_value(rng: &mut ChaCha8Rng, data: &[String], column: usize) -> String {
    let value = |line: &String| split_record(line).into_iter().nth(column);
    for _ in 0..16 {
        match data.get(rng.gen_range(0..data.len().max(1))).and_then(value) {
            Some(value) if !value.trim().is_empty() => return value,
            _ => {}
        }
    }
    data.iter().find_map(value).unwrap_or_else(|| "Punched Telespar".to_owned())
}

/// A job's two operator specs for `content`, weighted: app 1 (`grep` then `project`) 40%, app 2
/// (`column` then `count:Category`) 35%, `split` then `count:value` 12%, `regex` then
/// `project:Category` 13%. Patterns and values are drawn from the content's data lines.
pub fn pick_ops(rng: &mut ChaCha8Rng, content: &[u8]) -> (String, String) {
    let header = header_of(content).unwrap_or_default();
    let data: Vec<String> = source_lines(content).skip(1).map(|(_, line)| line).collect();
    let position = |name: &str| header.iter().position(|h| h.trim_start_matches('\u{feff}').trim() == name);
    match weighted(rng, &[40, 35, 12, 13]) {
        0 => {
            let needle = grep_needle(rng, &data, position("Sign_Type"));
            let project = format!("project:{},{}", column(&header, "OBJECTID"), column(&header, "Sign_Type"));
            (format!("grep:{needle}"), project)
        }
        1 => {
            let (post, category) = (column(&header, "Sign_Post"), column(&header, "Category"));
            let value = column_value(rng, &data, position("Sign_Post").unwrap_or(0));
            (format!("column:{post}={value}"), format!("count:{category}"))
        }
        2 => ("split".to_owned(), "count:value".to_owned()),
        _ => {
            let words: Vec<&str> = CATEGORIES.iter().chain(&SIGN_POSTS).flat_map(|w| w.split(' ')).collect();
            let pick = |rng: &mut ChaCha8Rng| words[rng.gen_range(0..words.len())];
            let pattern = match rng.gen_range(0..4) {
                0 => format!("{}|{}", pick(rng), pick(rng)),
                1 => format!("(?i)^[^,]*,{}", pick(rng).to_lowercase()),
                2 => r"\d{4}".to_owned(),
                _ => format!(r"\b{}\b", pick(rng)),
            };
            (format!("regex:{pattern}"), format!("project:{}", column(&header, "Category")))
        }
    }
}

#[cfg(test)]
mod tests {
    use rainstorm_core::rainstorm::reference::run;
    use rainstorm_core::rainstorm::OperatorSpec;
    use rand::SeedableRng;

    use super::*;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    #[test]
    fn the_dataset_is_embedded_whole() {
        assert!(TRAFFIC_SIGNS.starts_with("\u{feff}X,Y,OBJECTID,Sign_Type".as_bytes()));
        assert_eq!(TRAFFIC_SIGNS.iter().filter(|b| **b == b'\n').count(), 15_570);
        assert_eq!(header_of(TRAFFIC_SIGNS).map(|h| h.len()), Some(20));
    }

    #[test]
    fn slices_are_header_plus_a_contiguous_window() {
        let all: Vec<&[u8]> = TRAFFIC_SIGNS.split(|b| *b == b'\n').collect();
        for seed in 0..30 {
            let slice = traffic_signs_slice(&mut rng(seed), seed as usize * 7);
            assert_eq!(slice, traffic_signs_slice(&mut rng(seed), seed as usize * 7), "deterministic");
            let lines: Vec<&[u8]> =
                slice.strip_suffix(b"\n").expect("ends with a newline").split(|b| *b == b'\n').collect();
            assert_eq!(lines.len(), 1 + seed as usize * 7);
            assert!(TRAFFIC_SIGNS.starts_with(lines[0]) && TRAFFIC_SIGNS[lines[0].len()] == b'\n');
            let found = lines.len() == 1 || all.windows(lines.len() - 1).any(|w| w == &lines[1..]);
            assert!(found, "seed {seed}");
        }
        let all = traffic_signs_slice(&mut rng(1), usize::MAX);
        assert_eq!(all, TRAFFIC_SIGNS);
    }

    #[test]
    fn generated_csv_has_the_dataset_shape() {
        let csv = generated_csv(&mut rng(7), 2000);
        assert_eq!(csv, generated_csv(&mut rng(7), 2000), "deterministic");
        assert_ne!(csv, generated_csv(&mut rng(8), 2000));
        let text = String::from_utf8(csv).expect("utf-8");
        assert!(text.starts_with("OBJECTID,Sign_Type,Sign_Post,Category,Notes\n") && text.ends_with('\n'));
        let physical = text.lines().count();
        assert!(physical > 2001 && physical < 2001 + 100, "about 2% of records span two lines: {physical}");
        assert!(text.contains(",\"Stop, All Way\",") && text.contains(",Punched Telespar,"));
        assert!(text.contains("\"\"") && text.lines().filter(|l| l.ends_with(",Regulatory,")).count() > 300);
        assert!(text.lines().filter(|l| l.contains(",Object Marker,")).count() < 150, "skewed categories");
        assert_eq!(generated_csv(&mut rng(7), 0), b"OBJECTID,Sign_Type,Sign_Post,Category,Notes\n");
    }

    #[test]
    fn picked_ops_build_and_run_for_both_input_kinds() {
        let mut firsts = BTreeSet::new();
        for seed in 0..200 {
            let mut rng = rng(seed);
            let content =
                if seed % 2 == 0 { traffic_signs_slice(&mut rng, 300) } else { generated_csv(&mut rng, 300) };
            let (op1, op2) = pick_ops(&mut rng, &content);
            let header = header_of(&content);
            let specs = [&op1, &op2].map(|s| OperatorSpec::parse(s).expect("parses"));
            for spec in &specs {
                assert!(spec.build(header.as_deref()).is_ok(), "seed {seed}: {spec}");
            }
            let out = run("in", &content, &specs[0], &specs[1]).expect("reference runs");
            if op1.starts_with("grep:") {
                let data = source_lines(&content).skip(1).filter(|(_, l)| l.contains(&op1[5..])).count();
                assert!(data > 0 && data < source_lines(&content).count() - 1, "seed {seed}: {op1}");
            }
            if op1.starts_with("column:") {
                assert!(!out.is_empty(), "seed {seed}: {op1} selects something");
            }
            firsts.insert(op1.split(':').next().unwrap_or_default().to_owned());
        }
        assert_eq!(firsts.into_iter().collect::<Vec<_>>(), ["column", "grep", "regex", "split"]);
    }

    #[test]
    fn picked_ops_survive_odd_inputs() {
        for content in [&b""[..], b"\n", b"a\n", b"x,y\n1,2\n", b"\xff\xfe,\"\n\"\n"] {
            for seed in 0..40 {
                let (op1, op2) = pick_ops(&mut rng(seed), content);
                let specs = [&op1, &op2].map(|s| OperatorSpec::parse(s).expect("parses"));
                assert!(run("in", content, &specs[0], &specs[1]).is_ok(), "{content:?} {op1} {op2}");
            }
        }
    }
}
