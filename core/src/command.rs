//! Console commands: parsing text into typed commands, shared by the interactive console, the
//! control socket and the simulator. Parsing never panics; bad input gets a message that says
//! what was expected.

use crate::hydfs::{FileName, NameError};
use crate::id::NodeAddr;
use std::fmt;

/// A command a user can give a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `list_mem`: the membership list as this node sees it.
    ListMem,
    /// `list_self`: this node's id.
    ListSelf,
    /// `join`: join (or rejoin) the group through the introducer.
    Join,
    /// `leave`: leave the group voluntarily.
    Leave,
    /// `enable_sus` / `disable_sus`: switch suspicion on or off for the whole cluster.
    SetSuspicion(bool),
    /// `status_sus`: whether suspicion is on.
    StatusSus,
    /// `list_suspected`: members this node currently suspects.
    ListSuspected,
    /// `stats`: counters.
    Stats,
    /// `reload_keys`: re-read the cluster keys from the node's config file (a key rollover
    /// without a restart; run by the node's driver, which owns the file).
    ReloadKeys,
    /// `help`
    Help,
    /// A HyDFS file command (run by the node's driver, which owns local files).
    File(FileCommand),
    /// A RainStorm command (run by the node's driver: it uploads operator programs and streams
    /// results).
    Job(JobCommand),
}

/// RainStorm commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobCommand {
    /// `RainStorm <op1> <op2> <hydfs_src> <hydfs_dest> <num_tasks> [--rate <lines/s>]`: runs a
    /// job led by this node and streams its results. Each operator is one word (quote it if it
    /// has spaces): a built-in spec (`grep:Stop`), a local executable with its arguments
    /// (`"./app1 Stop"`), or a program already in HyDFS (`"hydfs:ops/app1 Stop"`). With a rate,
    /// the sources read at most that many input lines per second in all, as a live stream
    /// would arrive.
    Run { op1: String, op2: String, src: FileName, dest: FileName, tasks: u32, rate: Option<u64> },
    /// `jobs`: the jobs this node has led, with their state and counts, and every other job of
    /// the group as its leader last announced it (naming the leader).
    List,
    /// `job <id>`: one job's stages, task placement, restarts and counts.
    Show { id: String },
    /// `follow <id>`: prints a job's outputs, from its first, as they reach its destination
    /// file, until the job ends; on any node, through any change of leader.
    Follow { id: String },
}

/// HyDFS commands. Local paths are files on the machine of the node given the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileCommand {
    /// `create <local> <hydfs>`: store a local file as a new HyDFS file.
    Create { local: String, name: FileName },
    /// `get <hydfs> <local>`: fetch a HyDFS file into a local file.
    Get { name: FileName, local: String },
    /// `append <local> <hydfs>`: append a local file's bytes to a HyDFS file.
    Append { local: String, name: FileName },
    /// `merge <hydfs>`: order the pending appends the same way on every replica.
    Merge { name: FileName },
    /// `ls <hydfs>`: the file's ring id and the replicas holding it.
    Ls { name: FileName },
    /// `store`: the files this node holds, with this node's ring id.
    Store,
    /// `getfromreplica <node> <hydfs> <local>`: one replica's copy, as it is there.
    GetFromReplica { node: NodeAddr, name: FileName, local: String },
    /// `list_mem_ids`: the members with their ring ids, in ring order.
    ListMemIds,
    /// `multiappend <hydfs> <node>... <local>...`: each node appends one local file at once.
    MultiAppend { name: FileName, nodes: Vec<NodeAddr>, locals: Vec<String> },
    /// `delete <hydfs>`: delete the file on every replica (a later create is a new file).
    Delete { name: FileName },
}

impl FileCommand {
    /// The local paths the command reads or writes.
    pub fn locals_mut(&mut self) -> Vec<&mut String> {
        match self {
            FileCommand::Create { local, .. }
            | FileCommand::Get { local, .. }
            | FileCommand::Append { local, .. }
            | FileCommand::GetFromReplica { local, .. } => vec![local],
            FileCommand::MultiAppend { locals, .. } => locals.iter_mut().collect(),
            FileCommand::Merge { .. }
            | FileCommand::Delete { .. }
            | FileCommand::Ls { .. }
            | FileCommand::Store
            | FileCommand::ListMemIds => Vec::new(),
        }
    }
}

/// Every command with a one-line description, in the order `help` prints them.
pub const COMMAND_HELP: &[(&str, &str)] = &[
    ("list_mem", "list the members this node knows, with incarnation and status"),
    ("list_self", "print this node's member id (address#join_time)"),
    ("join", "join the group through the introducer (after a leave or a failed join)"),
    ("leave", "leave the group; other members report it as a leave, not a failure"),
    ("enable_sus", "switch the whole cluster to PingAck+S (suspicion before failure)"),
    ("disable_sus", "switch the whole cluster to PingAck (a missed ack means failure)"),
    ("status_sus", "print whether suspicion is on"),
    ("list_suspected", "list the members this node currently suspects"),
    ("stats", "print protocol counters"),
    ("reload_keys", "re-read cluster_key and accepted_keys from the config file (key rollover)"),
    ("create <local> <hydfs>", "store a local file in HyDFS as a new file (created once)"),
    (
        "get <hydfs> <local>",
        "fetch a HyDFS file, with every append acknowledged to this node, into a local file",
    ),
    ("append <local> <hydfs>", "append a local file's bytes to a HyDFS file"),
    ("merge <hydfs>", "order the file's pending appends identically on every replica"),
    ("delete <hydfs>", "delete a HyDFS file on every replica (a later create of the name is a new file)"),
    ("ls <hydfs>", "print the file's ring id and the replicas that hold it"),
    ("store", "list the files this node holds, and its ring id"),
    (
        "getfromreplica <node> <hydfs> <local>",
        "fetch one replica's copy (node: address, e.g. 127.0.0.1:7003)",
    ),
    ("list_mem_ids", "list the members with their ring ids, in ring order"),
    (
        "multiappend <hydfs> <node>... <local>...",
        "each listed node appends one local file at the same moment",
    ),
    (
        "RainStorm <op1> <op2> <hydfs_src> <hydfs_dest> <num_tasks> [--rate <lines/s>]",
        "run a stream job and print its results; an op is a built-in (grep:<text>, regex:<re>, \
         column:<col>=<value>, project:<col>,..., split, count:<col|value>), a local program \
         (\"./app1 Stop\") or one in HyDFS (\"hydfs:ops/app1 Stop\")",
    ),
    ("jobs", "list the jobs of the group: state, counts, and the node that leads each"),
    ("job <id>", "show one job: stages, task placement, restarts, counts and rate"),
    (
        "follow <id>",
        "print a job's outputs from its first as they reach its destination, until it ends \
         (on any node, whichever node leads it)",
    ),
    ("help", "print this list"),
];

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty command; type `help` for the list")]
    Empty,
    #[error("unknown command `{0}`; type `help` for the list")]
    Unknown(String),
    #[error("`{command}` takes no arguments (got `{extra}`)")]
    UnexpectedArguments { command: String, extra: String },
    #[error("usage: {usage}")]
    Usage { usage: &'static str },
    #[error("invalid HyDFS file name `{name}`: {error}")]
    BadName { name: String, error: NameError },
    #[error("`{0}` is not a node address (expected host:port, e.g. 127.0.0.1:7003, or a member id)")]
    BadNode(String),
    #[error("unbalanced quotes in the command line")]
    Quotes,
    #[error("num_tasks `{0}` is not a whole number")]
    BadTaskCount(String),
    #[error("--rate `{0}` is not a whole number of input lines per second, at least 1")]
    BadRate(String),
    #[error("the command line holds a NUL byte, which no file name, path or argument can")]
    Nul,
}

const RUN_USAGE: &str = "RainStorm <op1> <op2> <hydfs_src> <hydfs_dest> <num_tasks> [--rate <lines/s>] \
                         (quote an op that has spaces)";

/// Parses a RainStorm command; `None` if `word` is not one.
fn parse_job(word: &str, line: &str) -> Result<Option<JobCommand>, ParseError> {
    let cmd = match word {
        "RainStorm" | "rainstorm" => {
            let words = shlex::split(line).ok_or(ParseError::Quotes)?;
            let (args, rate) = match &words[1..] {
                [args @ .., flag, rate] if flag == "--rate" => (args, Some(rate.as_str())),
                [args @ .., flag] if flag.starts_with("--rate=") => (args, flag.strip_prefix("--rate=")),
                args => (args, None),
            };
            let rate = match rate {
                None => None,
                Some(r) => match r.parse::<u64>() {
                    Ok(n) if n > 0 => Some(n),
                    _ => return Err(ParseError::BadRate(shorten(r))),
                },
            };
            match args {
                [op1, op2, src, dest, tasks] => JobCommand::Run {
                    op1: op1.clone(),
                    op2: op2.clone(),
                    src: file_name(src)?,
                    dest: file_name(dest)?,
                    tasks: tasks.parse().map_err(|_| ParseError::BadTaskCount(shorten(tasks)))?,
                    rate,
                },
                _ => return Err(ParseError::Usage { usage: RUN_USAGE }),
            }
        }
        "jobs" => match line.split_whitespace().count() {
            1 => JobCommand::List,
            _ => return Err(ParseError::Usage { usage: "jobs" }),
        },
        "job" => match line.split_whitespace().collect::<Vec<_>>()[..] {
            [_, id] => JobCommand::Show { id: id.to_owned() },
            _ => return Err(ParseError::Usage { usage: "job <id> (as `jobs` lists it, e.g. 1-a1f09c)" }),
        },
        "follow" => match line.split_whitespace().collect::<Vec<_>>()[..] {
            [_, id] => JobCommand::Follow { id: id.to_owned() },
            _ => return Err(ParseError::Usage { usage: "follow <id> (as `jobs` lists it, e.g. 1-a1f09c)" }),
        },
        _ => return Ok(None),
    };
    Ok(Some(cmd))
}

fn file_name(word: &str) -> Result<FileName, ParseError> {
    FileName::new(word).map_err(|error| ParseError::BadName { name: shorten(word), error })
}

fn node(word: &str) -> Result<NodeAddr, ParseError> {
    // A member id (`addr#join_time`) names its address.
    let addr = word.split_once('#').map_or(word, |(a, _)| a);
    addr.parse().map_err(|_| ParseError::BadNode(shorten(word)))
}

fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Parses the arguments of a file command (`word` is the command, `args` what follows it).
fn parse_file(word: &str, args: &[&str]) -> Result<Option<FileCommand>, ParseError> {
    let usage = |usage| ParseError::Usage { usage };
    let cmd = match (word, args) {
        ("create", [local, name]) => FileCommand::Create { local: local.to_string(), name: file_name(name)? },
        ("create", _) => return Err(usage("create <local file> <hydfs file>")),
        ("get", [name, local]) => FileCommand::Get { name: file_name(name)?, local: local.to_string() },
        ("get", _) => return Err(usage("get <hydfs file> <local file>")),
        ("append", [local, name]) => FileCommand::Append { local: local.to_string(), name: file_name(name)? },
        ("append", _) => return Err(usage("append <local file> <hydfs file>")),
        ("merge", [name]) => FileCommand::Merge { name: file_name(name)? },
        ("merge", _) => return Err(usage("merge <hydfs file>")),
        ("delete", [name]) => FileCommand::Delete { name: file_name(name)? },
        ("delete", _) => return Err(usage("delete <hydfs file>")),
        ("ls", [name]) => FileCommand::Ls { name: file_name(name)? },
        ("ls", _) => return Err(usage("ls <hydfs file>")),
        ("store", []) => FileCommand::Store,
        ("store", _) => return Err(usage("store")),
        ("list_mem_ids", []) => FileCommand::ListMemIds,
        ("list_mem_ids", _) => return Err(usage("list_mem_ids")),
        ("getfromreplica", [n, name, local]) => {
            FileCommand::GetFromReplica { node: node(n)?, name: file_name(name)?, local: local.to_string() }
        }
        ("getfromreplica", _) => return Err(usage("getfromreplica <node> <hydfs file> <local file>")),
        ("multiappend", [name, rest @ ..]) if !rest.is_empty() && rest.len() % 2 == 0 => {
            let (nodes, locals) = rest.split_at(rest.len() / 2);
            FileCommand::MultiAppend {
                name: file_name(name)?,
                nodes: nodes.iter().map(|n| node(n)).collect::<Result<_, _>>()?,
                locals: locals.iter().map(|l| l.to_string()).collect(),
            }
        }
        ("multiappend", _) => {
            return Err(usage("multiappend <hydfs file> <node>... <local file>... (one local file per node)"))
        }
        _ => return Ok(None),
    };
    Ok(Some(cmd))
}

impl Command {
    /// Parses one console line.
    pub fn parse(line: &str) -> Result<Command, ParseError> {
        // Nothing a command names can hold a NUL, and a command holding one would not print back
        // to itself (quoting cannot carry it).
        if line.contains('\0') {
            return Err(ParseError::Nul);
        }
        let mut words = line.split_whitespace();
        let Some(word) = words.next() else { return Err(ParseError::Empty) };
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        if let Some(file) = parse_file(word, &args)? {
            return Ok(Command::File(file));
        }
        if let Some(job) = parse_job(word, line)? {
            return Ok(Command::Job(job));
        }
        let command = match word {
            "list_mem" => Command::ListMem,
            "list_self" => Command::ListSelf,
            "join" => Command::Join,
            "leave" => Command::Leave,
            "enable_sus" => Command::SetSuspicion(true),
            "disable_sus" => Command::SetSuspicion(false),
            "status_sus" => Command::StatusSus,
            "list_suspected" => Command::ListSuspected,
            "stats" => Command::Stats,
            "reload_keys" => Command::ReloadKeys,
            "help" => Command::Help,
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(ParseError::Unknown(shown));
            }
        };
        let rest: Vec<&str> = words.collect();
        if !rest.is_empty() {
            let extra: String = rest.join(" ").chars().take(64).collect();
            return Err(ParseError::UnexpectedArguments { command: word.to_string(), extra });
        }
        Ok(command)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Command::ListMem => "list_mem",
            Command::ListSelf => "list_self",
            Command::Join => "join",
            Command::Leave => "leave",
            Command::SetSuspicion(true) => "enable_sus",
            Command::SetSuspicion(false) => "disable_sus",
            Command::StatusSus => "status_sus",
            Command::ListSuspected => "list_suspected",
            Command::Stats => "stats",
            Command::ReloadKeys => "reload_keys",
            Command::Help => "help",
            Command::File(c) => return c.fmt(f),
            Command::Job(c) => return c.fmt(f),
        };
        f.write_str(s)
    }
}

impl fmt::Display for JobCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobCommand::Run { op1, op2, src, dest, tasks, rate } => {
                let quote = |w: &str| {
                    shlex::try_quote(w).map(|q| q.into_owned()).unwrap_or_else(|_| format!("{w:?}"))
                };
                // HyDFS names may hold spaces (quoted on the command line): quote them too.
                let (src, dest) = (quote(src.as_str()), quote(dest.as_str()));
                write!(f, "RainStorm {} {} {src} {dest} {tasks}", quote(op1), quote(op2))?;
                if let Some(rate) = rate {
                    write!(f, " --rate {rate}")?;
                }
                Ok(())
            }
            JobCommand::List => f.write_str("jobs"),
            JobCommand::Show { id } => write!(f, "job {id}"),
            JobCommand::Follow { id } => write!(f, "follow {id}"),
        }
    }
}

impl fmt::Display for FileCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileCommand::Create { local, name } => write!(f, "create {local} {name}"),
            FileCommand::Get { name, local } => write!(f, "get {name} {local}"),
            FileCommand::Append { local, name } => write!(f, "append {local} {name}"),
            FileCommand::Merge { name } => write!(f, "merge {name}"),
            FileCommand::Delete { name } => write!(f, "delete {name}"),
            FileCommand::Ls { name } => write!(f, "ls {name}"),
            FileCommand::Store => f.write_str("store"),
            FileCommand::GetFromReplica { node, name, local } => {
                write!(f, "getfromreplica {node} {name} {local}")
            }
            FileCommand::ListMemIds => f.write_str("list_mem_ids"),
            FileCommand::MultiAppend { name, nodes, locals } => {
                write!(f, "multiappend {name}")?;
                for n in nodes {
                    write!(f, " {n}")?;
                }
                for l in locals {
                    write!(f, " {l}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_listed_command_parses_and_prints_back() {
        for (name, _) in COMMAND_HELP.iter().filter(|(n, _)| !n.contains('<')) {
            let c = Command::parse(name).unwrap();
            assert_eq!(c.to_string(), *name);
        }
        for line in [
            "create /tmp/a.txt logs/a",
            "get logs/a /tmp/b",
            "append ./x logs/a",
            "merge logs/a",
            "delete logs/a",
            "ls logs/a",
            "getfromreplica 127.0.0.1:7003 logs/a out",
            "multiappend logs/a 127.0.0.1:7001 127.0.0.1:7002 one two",
        ] {
            let c = Command::parse(line).unwrap();
            assert!(matches!(c, Command::File(_)), "{line}");
            assert_eq!(c.to_string(), line);
        }
        let by_id = Command::parse("getfromreplica 127.0.0.1:7003#1234 f out").unwrap();
        assert_eq!(by_id.to_string(), "getfromreplica 127.0.0.1:7003 f out");
        assert_eq!(Command::parse("  list_mem  "), Ok(Command::ListMem));
    }

    #[test]
    fn rainstorm_commands_parse_quoted_operators_and_print_back() {
        let line = r#"RainStorm "./app1-filter 'Stop, All Way'" grep:a in/signs.csv out/x 3"#;
        let c = Command::parse(line).expect("parses");
        let Command::Job(JobCommand::Run { op1, op2, src, dest, tasks, .. }) = &c else { panic!("{c:?}") };
        assert_eq!(
            (op1.as_str(), op2.as_str(), src.as_str(), dest.as_str(), *tasks),
            ("./app1-filter 'Stop, All Way'", "grep:a", "in/signs.csv", "out/x", 3)
        );
        assert_eq!(Command::parse(&c.to_string()), Ok(c.clone()), "{c}");
        assert_eq!(Command::parse("jobs"), Ok(Command::Job(JobCommand::List)));
        assert_eq!(
            Command::parse("job 1-a1f09c"),
            Ok(Command::Job(JobCommand::Show { id: "1-a1f09c".into() }))
        );
        assert_eq!(
            Command::parse("follow 1-a1f09c"),
            Ok(Command::Job(JobCommand::Follow { id: "1-a1f09c".into() }))
        );
        assert_eq!(Command::parse("follow 1-a1f09c").expect("parses").to_string(), "follow 1-a1f09c");
        assert!(matches!(Command::parse("follow"), Err(ParseError::Usage { .. })));
        assert!(matches!(Command::parse("follow a b"), Err(ParseError::Usage { .. })));
        assert!(matches!(Command::parse("RainStorm a b c d"), Err(ParseError::Usage { .. })));
        assert!(matches!(Command::parse("RainStorm a b c d x"), Err(ParseError::BadTaskCount(_))));
        for bad in
            ["RainStorm a b c d 3 --rate 0", "RainStorm a b c d 3 --rate x", "RainStorm a b c d 3 --rate=-1"]
        {
            assert!(matches!(Command::parse(bad), Err(ParseError::BadRate(_))), "{bad}");
        }
        let paced = Command::parse("RainStorm a b c d 3 --rate 100000").expect("parses");
        assert!(matches!(&paced, Command::Job(JobCommand::Run { rate: Some(100_000), .. })), "{paced:?}");
        assert_eq!(paced.to_string(), "RainStorm a b c d 3 --rate 100000");
        assert_eq!(
            Command::parse("RainStorm a b c d 3 --rate=7").expect("parses").to_string(),
            "RainStorm a b c d 3 --rate 7"
        );
        assert_eq!(Command::parse("RainStorm 'a b c d 1"), Err(ParseError::Quotes));
        assert!(matches!(Command::parse("job"), Err(ParseError::Usage { .. })));
        assert!(matches!(Command::parse("jobs now"), Err(ParseError::Usage { .. })));
    }

    #[test]
    fn bad_input_gets_clear_errors() {
        assert_eq!(Command::parse(""), Err(ParseError::Empty));
        assert!(matches!(Command::parse("lst_mem"), Err(ParseError::Unknown(_))));
        assert!(matches!(Command::parse("join now"), Err(ParseError::UnexpectedArguments { .. })));
        assert!(matches!(Command::parse("create onlyone"), Err(ParseError::Usage { .. })));
        assert!(matches!(Command::parse("get /abs local"), Err(ParseError::BadName { .. })));
        assert!(matches!(Command::parse("getfromreplica vm3 f out"), Err(ParseError::BadNode(_))));
        assert!(matches!(Command::parse("multiappend f 127.0.0.1:1 a b"), Err(ParseError::Usage { .. })));
        assert!(matches!(Command::parse("store now"), Err(ParseError::Usage { .. })));
        assert!(matches!(Command::parse("delete"), Err(ParseError::Usage { .. })));
        assert!(matches!(Command::parse("delete a b"), Err(ParseError::Usage { .. })));
        assert!(matches!(Command::parse("delete /abs"), Err(ParseError::BadName { .. })));
        assert_eq!(Command::parse("create a\0b f"), Err(ParseError::Nul));
    }

    /// Found by fuzzing (`command_parse`): an operator word holding a NUL printed as a Rust
    /// string literal, which parsed back to another command.
    #[test]
    fn a_line_with_a_nul_is_refused_rather_than_printed_back_as_another_command() {
        let line = "RainStorm \"hydfs:ops/app1\0Stop\" count:Sign_Type in.csv out 2";
        assert_eq!(Command::parse(line), Err(ParseError::Nul));
        assert_eq!(Command::parse("\0"), Err(ParseError::Nul));
    }

    /// Found by fuzzing (`command_parse`): a quoted HyDFS name with spaces printed unquoted, so
    /// the printed command did not parse back.
    #[test]
    fn quoted_file_names_of_a_job_print_back_quoted() {
        let line = "RainStorm grep:a split 'in put.csv' \"out dir/x\" 2";
        let c = Command::parse(line).expect("parses");
        let Command::Job(JobCommand::Run { src, dest, .. }) = &c else { panic!("{c:?}") };
        assert_eq!((src.as_str(), dest.as_str()), ("in put.csv", "out dir/x"));
        assert_eq!(c.to_string(), "RainStorm grep:a split 'in put.csv' 'out dir/x' 2");
        assert_eq!(Command::parse(&c.to_string()), Ok(c));
    }

    proptest! {
        #[test]
        fn what_parses_prints_back_to_itself(s in "\\PC*|RainStorm \\PC{0,8} \"\\PC{0,8}\" a b [0-9]{1,3}") {
            if let Ok(c) = Command::parse(&s) {
                prop_assert_eq!(Command::parse(&c.to_string()), Ok(c));
            }
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC*") {
            let _ = Command::parse(&s);
        }
    }
}
