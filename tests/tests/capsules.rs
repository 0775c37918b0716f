//! The saved scenarios (capsules) under `tests/scenarios/`, of every layer: each replays and
//! passes every checker. A failing one prints the command that replays it from its file. Save
//! one with `cargo run --release -- sim <layer> --seed N --shrink --save tests/scenarios/NAME.json`.

#[test]
fn every_saved_scenario_replays_and_passes() {
    let replayed = rainstorm_tests::replay_capsules();
    assert!(replayed > 0, "no saved scenarios under {}", rainstorm_tests::capsule_dir().display());
}
