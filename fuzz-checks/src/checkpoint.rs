//! `checkpoint_decode`: a RainStorm checkpoint log as read back from HyDFS ([`decode_all`]), and
//! its fold ([`LogState`]).
//!
//! Checked: no panic; decoded records re-encode ([`encode`]) to a log that decodes to the same
//! records; a record that does not fit the history is refused without effect; folding record by
//! record is folding at once; a full record of any prefix followed by the rest of the log folds
//! to the same state as the whole log (the invariant a new log generation relies on).

use rainstorm_core::rainstorm::checkpoint::{decode_all, encode, LogState};

/// Split points at which the full-record invariant is checked, at most (keeps executions cheap).
const MAX_SPLITS: usize = 4;

/// `checkpoint_decode`.
pub fn checkpoint_decode(data: &[u8]) {
    let records = match decode_all(data) {
        Ok(records) => records,
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    let mut again = Vec::new();
    for record in &records {
        again.extend(encode(record).expect("a decoded record re-encodes"));
    }
    assert_eq!(decode_all(&again).as_ref(), Ok(&records), "re-encoded records decode differently");

    // Record by record; an error leaves the state as it was.
    let mut stepwise = LogState::default();
    let mut prefixes = vec![stepwise.clone()];
    let mut failed_at = None;
    for (i, record) in records.iter().enumerate() {
        let before = stepwise.clone();
        if let Err(e) = stepwise.apply(record) {
            assert_eq!(stepwise, before, "a refused record changed the state: {e}");
            failed_at = Some(i);
            break;
        }
        prefixes.push(stepwise.clone());
    }
    let whole = LogState::fold(&records);
    match failed_at {
        Some(_) => assert!(whole.is_err(), "the fold accepted what apply refused"),
        None => assert_eq!(whole.as_ref(), Ok(&stepwise)),
    }
    if failed_at.is_some() {
        return;
    }

    // A full record of a prefix + the rest == the whole log, at a few split points.
    let accepted = prefixes.len() - 1;
    let step = (accepted / MAX_SPLITS).max(1);
    for k in (1..=accepted).step_by(step).take(MAX_SPLITS + 1) {
        if prefixes[k].last {
            continue;
        }
        let Some(full) = prefixes[k].full() else { continue };
        let frame = encode(&full).expect("a full record encodes");
        assert_eq!(decode_all(&frame), Ok(vec![full.clone()]));
        let mut rebuilt = LogState::default();
        rebuilt.apply(&full).expect("a full record is accepted first");
        for record in &records[k..] {
            rebuilt.apply(record).expect("after a full record, the rest of an accepted log is accepted");
        }
        let normal = |s: &LogState| LogState { records: 0, attempt: 0, ..s.clone() };
        assert_eq!(
            normal(&rebuilt),
            normal(&stepwise),
            "full record at {k} of {accepted} and the rest differ"
        );
    }
}
