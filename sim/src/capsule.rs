//! Capsules: scenarios saved as JSON files, and the one command that replays any scenario.
//!
//! A capsule is a [`Scenario`] written as pretty JSON (what `sim <layer> --dump` prints); the
//! scenario is plain data, so loading it replays the run bit for bit (same trace hash). The
//! file says which layer it exercises by what it holds: a `rainstorm` job (RainStorm), else a
//! `hydfs` workload (HyDFS), else neither (membership). Invariants: a loaded capsule has been
//! checked to fit its cluster (every slot it names exists), so replaying it never panics on an
//! index; a saved capsule's `name` is its file's stem.

use crate::scenario::{fault_fits, Scenario, Slot};
use std::path::{Path, PathBuf};

/// The layer a scenario exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Membership,
    Hydfs,
    Rainstorm,
}

impl Layer {
    /// The layer of `scenario`, from what it runs.
    pub fn of(scenario: &Scenario) -> Layer {
        match (&scenario.rainstorm, &scenario.hydfs) {
            (Some(_), _) => Layer::Rainstorm,
            (None, Some(_)) => Layer::Hydfs,
            (None, None) => Layer::Membership,
        }
    }

    /// The name `sim <layer>` takes.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Membership => "membership",
            Layer::Hydfs => "hydfs",
            Layer::Rainstorm => "rainstorm",
        }
    }

    /// The swarm scenario of `seed` in this layer's sweep.
    pub fn swarm(self, seed: u64) -> Scenario {
        match self {
            Layer::Membership => Scenario::swarm(seed),
            Layer::Hydfs => Scenario::hydfs_swarm(seed),
            Layer::Rainstorm => Scenario::rainstorm_swarm(seed),
        }
    }

    /// This layer's named scenarios, with `seed`.
    pub fn named(self, seed: u64) -> Vec<Scenario> {
        match self {
            Layer::Membership => crate::named::all(seed),
            Layer::Hydfs => crate::named::hydfs_all(seed),
            Layer::Rainstorm => crate::named::rainstorm_all(seed),
        }
    }

    /// The fewest nodes this layer's swarm draws (and so the fewest a shrink goes down to).
    pub fn min_nodes(self) -> usize {
        match self {
            Layer::Membership => 3,
            Layer::Hydfs => 4,
            Layer::Rainstorm => 5,
        }
    }
}

/// The planted bugs `scenario` switches on, by name (empty without the `planted-bugs` feature
/// for membership; HyDFS and RainStorm settings carry theirs in every build, inert without it).
pub fn plants(scenario: &Scenario) -> Vec<&'static str> {
    let mut out = Vec::new();
    #[cfg(feature = "planted-bugs")]
    if let Some(b) = scenario.config.planted {
        out.push(b.name());
    }
    if let Some(b) = scenario.hydfs.as_ref().and_then(|w| w.config.planted) {
        out.push(b.name());
    }
    if let Some(b) = scenario.rainstorm.as_ref().and_then(|w| w.config.planted) {
        out.push(b.name());
    }
    out
}

/// `scenario` with every planted bug switched off.
fn without_plants(scenario: &Scenario) -> Scenario {
    let mut s = scenario.clone();
    #[cfg(feature = "planted-bugs")]
    {
        s.config.planted = None;
    }
    if let Some(w) = s.hydfs.as_mut() {
        w.config.planted = None;
    }
    if let Some(w) = s.rainstorm.as_mut() {
        w.config.planted = None;
    }
    s
}

/// Where a scenario can be rebuilt from, for replaying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The swarm scenario of its seed in its layer's sweep.
    Swarm,
    /// The named scenario of its name, with its seed.
    Named,
    /// A capsule file.
    File(PathBuf),
    /// Only the scenario itself (generated or shrunk): it must be saved to be replayed.
    Unsaved,
}

/// Where `scenario` can be rebuilt from (`file`: the capsule it was loaded from, if any).
pub fn origin(scenario: &Scenario, file: Option<&Path>) -> Origin {
    if let Some(path) = file {
        return Origin::File(path.to_path_buf());
    }
    if plants(scenario).len() > 1 {
        return Origin::Unsaved;
    }
    let layer = Layer::of(scenario);
    let plain = without_plants(scenario);
    if layer.swarm(scenario.seed) == plain {
        Origin::Swarm
    } else if layer.named(scenario.seed).contains(&plain) {
        Origin::Named
    } else {
        Origin::Unsaved
    }
}

/// The command that replays `scenario` with its readable trace (`file`: the capsule it was
/// loaded from, if any). An unsaved scenario gets the command for the file it should be saved
/// as, under `tests/scenarios/`.
pub fn replay_command(scenario: &Scenario, file: Option<&Path>) -> String {
    let layer = Layer::of(scenario).name();
    let plants = plants(scenario);
    let features = if plants.is_empty() { "" } else { " --features planted-bugs" };
    let plant = plants.first().map_or(String::new(), |b| format!(" --plant {b}"));
    match origin(scenario, file) {
        Origin::Swarm => crate::replay_command(layer, scenario.seed, plants.first().copied()),
        Origin::Named => format!(
            "cargo run --release{features} -- sim {layer} --named {} --named-seed {}{plant} --trace",
            scenario.name, scenario.seed
        ),
        Origin::File(path) => {
            format!("cargo run --release{features} -- sim {layer} --scenario {} --trace", path.display())
        }
        Origin::Unsaved => format!(
            "cargo run --release{features} -- sim {layer} --scenario {} --trace",
            suggested_path(scenario).display()
        ),
    }
}

/// The command that shrinks `scenario` (rebuilt as [`replay_command`] does) and saves the
/// smallest failing scenario found under `tests/scenarios/`.
pub fn shrink_command(scenario: &Scenario, file: Option<&Path>) -> String {
    let replay = replay_command(scenario, file);
    let mut shrunk = scenario.clone();
    shrunk.name = match file.and_then(|f| f.file_stem()).and_then(|s| s.to_str()) {
        Some(stem) => format!("{stem}-shrunk"),
        None => format!("{}-shrunk", scenario.name),
    };
    format!(
        "{} --shrink --save {}",
        replay.strip_suffix(" --trace").unwrap_or(&replay),
        suggested_path(&shrunk).display()
    )
}

/// Where an unsaved scenario would be saved: `tests/scenarios/<name>.json`.
pub fn suggested_path(scenario: &Scenario) -> PathBuf {
    let stem: String = scenario
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    let stem = if stem.is_empty() { format!("seed-{}", scenario.seed) } else { stem };
    PathBuf::from("tests/scenarios").join(format!("{stem}.json"))
}

/// Checks that `scenario` fits its cluster: every slot a fault, client, leader or reader names
/// exists, and the membership settings hang together.
pub fn check(scenario: &Scenario) -> Result<(), String> {
    let nodes = scenario.nodes;
    if nodes == 0 {
        return Err("a scenario needs at least one node".into());
    }
    scenario.config.validate()?;
    let fits = |slot: &Slot| *slot < nodes;
    for f in &scenario.faults {
        let ok = fault_fits(&f.fault, nodes);
        if !ok {
            return Err(format!(
                "the fault at {} ms names a slot past the {nodes} nodes: {:?}",
                f.at_ms, f.fault
            ));
        }
    }
    if let Some(w) = &scenario.hydfs {
        if let Some(c) = w.clients.iter().find(|c| !fits(c)) {
            return Err(format!("HyDFS client slot {c} is past the {nodes} nodes"));
        }
    }
    if let Some(job) = &scenario.rainstorm {
        if scenario.hydfs.is_none() {
            return Err("a RainStorm job needs the `hydfs` settings".into());
        }
        if !fits(&job.leader) || !fits(&job.reader) {
            return Err(format!(
                "the job's leader {} or reader {} is past the {nodes} nodes",
                job.leader, job.reader
            ));
        }
    }
    Ok(())
}

/// Reads the capsule at `path` and checks it fits its cluster.
pub fn load(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let scenario: Scenario =
        serde_json::from_str(&text).map_err(|e| format!("{} is not a scenario: {e}", path.display()))?;
    check(&scenario).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(scenario)
}

/// Saves `scenario` at `path` (creating its folder), named after the file's stem; returns the
/// scenario as saved.
pub fn save(path: &Path, scenario: &Scenario) -> Result<Scenario, String> {
    let mut saved = scenario.clone();
    if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
        saved.name = stem.to_owned();
    }
    let mut text = serde_json::to_string_pretty(&saved).map_err(|e| e.to_string())?;
    text.push('\n');
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(saved)
}

/// Every capsule (`*.json`) in `dir`, in file-name order.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, Scenario)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths.into_iter().map(|p| load(&p).map(|s| (p, s))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_comes_from_what_the_scenario_runs() {
        assert_eq!(Layer::of(&Scenario::swarm(1)), Layer::Membership);
        assert_eq!(Layer::of(&Scenario::hydfs_swarm(1)), Layer::Hydfs);
        assert_eq!(Layer::of(&Scenario::rainstorm_swarm(1)), Layer::Rainstorm);
    }

    #[test]
    fn replay_commands_name_the_seed_the_story_or_the_file() {
        let swarm = Scenario::hydfs_swarm(9);
        assert_eq!(replay_command(&swarm, None), "cargo run --release -- sim hydfs --seed 9 --trace");
        assert_eq!(
            shrink_command(&swarm, None),
            "cargo run --release -- sim hydfs --seed 9 --shrink --save tests/scenarios/hydfs-9-shrunk.json"
        );
        let named = crate::named::workers_crash_mid_job(3);
        assert_eq!(
            replay_command(&named, None),
            "cargo run --release -- sim rainstorm --named workers_crash_mid_job --named-seed 3 --trace"
        );
        let file = Path::new("tests/scenarios/paused-member-joins-after-resume.json");
        assert_eq!(
            replay_command(&Scenario::swarm(511), Some(file)),
            "cargo run --release -- sim membership --scenario tests/scenarios/paused-member-joins-after-resume.json --trace"
        );
        let mut changed = Scenario::rainstorm_swarm(4);
        changed.faults.pop();
        changed.name = "a job that lost: its output".into();
        assert_eq!(
            replay_command(&changed, None),
            "cargo run --release -- sim rainstorm --scenario tests/scenarios/a-job-that-lost--its-output.json --trace"
        );
        let mut planted = Scenario::hydfs_swarm(9);
        if let Some(w) = planted.hydfs.as_mut() {
            w.config.planted = Some(rainstorm_core::hydfs::PlantedBug::AckBeforeSync);
        }
        assert_eq!(
            replay_command(&planted, None),
            "cargo run --release --features planted-bugs -- sim hydfs --seed 9 --plant ack-before-sync --trace"
        );
    }

    #[test]
    fn a_saved_capsule_loads_as_the_same_scenario_named_after_its_file() {
        let dir = std::env::temp_dir().join(format!("rainstorm-capsules-{}", std::process::id()));
        let path = dir.join("a-job.json");
        let saved = save(&path, &Scenario::rainstorm_swarm(2)).unwrap();
        assert_eq!(saved.name, "a-job");
        assert_eq!(load(&path).unwrap(), saved);
        let all = load_dir(&dir).unwrap();
        assert_eq!(all, vec![(path, saved)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_capsule_naming_a_missing_slot_is_refused() {
        let mut s = Scenario::hydfs_swarm(3);
        s.nodes = 1;
        assert!(check(&s).is_err());
        assert!(check(&Scenario::hydfs_swarm(3)).is_ok());
    }
}
