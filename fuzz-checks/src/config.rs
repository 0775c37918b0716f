//! `config_parse`: the runtime's TOML config file, parsed ([`ConfigInput::from_toml`]) and
//! resolved for both roles, alone and under flags that set the addresses.
//!
//! Checked: no panic; every error is one line, and a field error names a known field; a config
//! that resolves passes the membership checks and starts a node that runs its first timers.

use rainstorm_core::hydfs::MemStorage;
use rainstorm_core::membership::Role;
use rainstorm_core::node::NodeConfig;
use rainstorm_core::{Millis, Node, Time};
use rainstorm_runtime::config::{ConfigError, ConfigInput, RuntimeConfig, FIELDS};
use std::path::Path;

/// `config_parse`.
pub fn config_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let input = match ConfigInput::from_toml(text, Path::new("node.toml")) {
        Ok(input) => input,
        Err(e) => return check_error(&e),
    };
    let flags = ConfigInput {
        bind: Some("127.0.0.1:7001".parse().expect("an address")),
        introducer: Some("127.0.0.1:7000".parse().expect("an address")),
        ..ConfigInput::default()
    };
    for input in [input.clone(), flags.or(input)] {
        for role in [Role::Introducer, Role::Member] {
            match input.clone().resolve(role) {
                Ok(cfg) => check_resolved(cfg),
                Err(e) => check_error(&e),
            }
        }
    }
}

fn check_error(e: &ConfigError) {
    let text = e.to_string();
    assert!(!text.contains('\n'), "an error is one line: {text:?}");
    match e {
        ConfigError::Field { field, message } => {
            assert!(FIELDS.contains(field), "unknown field `{field}` in {text:?}");
            assert!(!message.is_empty(), "{text:?} says nothing");
            assert!(text.contains(&format!("`{field}`")), "{text:?} does not name `{field}`");
        }
        ConfigError::Parse { message, .. } => assert!(!message.is_empty(), "{text:?} says nothing"),
        ConfigError::Read { .. } => panic!("parsing text read a file: {text}"),
    }
}

fn check_resolved(cfg: RuntimeConfig) {
    cfg.membership.validate().expect("a resolved config passes the membership checks");
    assert!((0.0..=1.0).contains(&cfg.drop_rate));
    assert_eq!(cfg.advertise.port(), cfg.bind.port());
    let codec = cfg.codec();
    let node_cfg = NodeConfig {
        role: cfg.role,
        addr: cfg.advertise,
        introducer: cfg.introducer,
        membership: cfg.membership.clone(),
        hydfs: cfg.hydfs.clone(),
        rainstorm: cfg.rainstorm.clone(),
        limits: cfg.limits.clone(),
        codec,
    };
    let start = Time(1_000_000);
    let mut node = Node::with_storage(node_cfg, start, 1, Box::new(MemStorage::default()))
        .expect("in-memory storage never fails");
    let later = start + Millis(cfg.membership.protocol_period.0.min(60_000));
    for now in [start, later] {
        node.handle_timeout(now);
        while node.poll_transmit().is_some() {}
        while node.poll_event().is_some() {}
    }
}
