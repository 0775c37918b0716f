//! `journal_decode`: a RainStorm task journal as read back from HyDFS ([`decode_all`]), and its
//! replay ([`Recovered`]).
//!
//! Checked: no panic; decoded records re-encode ([`encode`]) to a journal that decodes to the
//! same records; a record that does not fit the history is refused without effect; replaying
//! record by record is replaying at once; a snapshot of any prefix followed by the rest of the
//! journal replays to the same state as the whole journal (the compaction invariant).

use rainstorm_core::rainstorm::journal::{decode_all, encode, Record, Recovered};

/// Split points at which the snapshot invariant is checked, at most (keeps executions cheap).
const MAX_SPLITS: usize = 4;

/// `journal_decode`.
pub fn journal_decode(data: &[u8]) {
    let records = match decode_all(data) {
        Ok(records) => records,
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    let mut again = Vec::new();
    for record in &records {
        again.extend(encode(record).expect("a decoded record re-encodes"));
    }
    assert_eq!(decode_all(&again).as_ref(), Ok(&records), "re-encoded records decode differently");

    // Record by record, as a running task keeps its state; an error leaves the state as it was.
    let mut stepwise = Recovered::default();
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
    let whole = Recovered::replay(&records);
    match failed_at {
        Some(_) => assert!(whole.is_err(), "replay accepted what apply refused"),
        None => assert_eq!(whole.as_ref(), Ok(&stepwise)),
    }

    // Snapshot + tail == whole history, at a few split points of the accepted prefix.
    let accepted = prefixes.len() - 1;
    let step = (accepted / MAX_SPLITS).max(1);
    for k in (0..=accepted).step_by(step).take(MAX_SPLITS + 1) {
        if failed_at.is_some() && prefixes[k].continued.is_some() {
            // Refused for following `Continued`, which a snapshot does not carry.
            continue;
        }
        let snapshot = Record::Snapshot(prefixes[k].snapshot());
        let frame = encode(&snapshot).expect("a snapshot encodes");
        assert_eq!(decode_all(&frame), Ok(vec![snapshot.clone()]));
        let mut compacted = Recovered::default();
        compacted.apply(&snapshot).expect("a snapshot of an accepted history is accepted");
        let mut result = Ok(());
        for record in &records[k..] {
            result = compacted.apply(record);
            if result.is_err() {
                break;
            }
        }
        match failed_at {
            Some(_) => assert!(result.is_err(), "after a snapshot at {k}, a refused record was accepted"),
            None => {
                result.expect("after a snapshot, the rest of an accepted history is accepted");
                let mut full = stepwise.clone();
                compacted.records = full.records;
                if k == accepted {
                    // A snapshot does not carry `Continued`, which ends the history.
                    full.continued = compacted.continued;
                }
                assert_eq!(compacted, full, "snapshot at {k} of {accepted} and the rest differ");
            }
        }
    }
}
