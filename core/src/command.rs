//! Console commands: parsing text into typed commands, shared by the interactive console, the
//! control socket and the simulator. Parsing never panics; bad input gets a message that says
//! what was expected.

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
    /// `help`
    Help,
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
}

impl Command {
    /// Parses one console line.
    pub fn parse(line: &str) -> Result<Command, ParseError> {
        let mut words = line.split_whitespace();
        let Some(word) = words.next() else { return Err(ParseError::Empty) };
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
            Command::Help => "help",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_listed_command_parses_and_prints_back() {
        for (name, _) in COMMAND_HELP {
            let c = Command::parse(name).unwrap();
            assert_eq!(c.to_string(), *name);
        }
        assert_eq!(Command::parse("  list_mem  "), Ok(Command::ListMem));
    }

    #[test]
    fn bad_input_gets_clear_errors() {
        assert_eq!(Command::parse(""), Err(ParseError::Empty));
        assert!(matches!(Command::parse("lst_mem"), Err(ParseError::Unknown(_))));
        assert!(matches!(Command::parse("join now"), Err(ParseError::UnexpectedArguments { .. })));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC*") {
            let _ = Command::parse(&s);
        }
    }
}
