//! Every setting of `plugind serve` is documented in `.env.example`, and the
//! defaults written there are the ones the daemon uses.

use std::collections::BTreeMap;

use clap::{CommandFactory, Parser};
use plugind::settings::Settings;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
}

/// `NAME=value` lines of .env.example, commented out or not.
fn example_lines() -> BTreeMap<String, (bool, String)> {
    let text = include_str!("../.env.example");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (active, rest) = match line.strip_prefix("# ") {
            Some(rest) => (false, rest),
            None => (true, line),
        };
        if let Some((name, value)) = rest.split_once('=') {
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                out.insert(name.to_owned(), (active, value.to_owned()));
            }
        }
    }
    out
}

#[test]
fn every_setting_is_in_env_example() {
    let lines = example_lines();
    let mut missing = Vec::new();
    for arg in Cli::command().get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let name = env.to_string_lossy().into_owned();
        if !lines.contains_key(&name) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), ".env.example lacks: {missing:?}");
}

#[test]
fn env_example_defaults_match_the_daemon() {
    let lines = example_lines();
    for arg in Cli::command().get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let name = env.to_string_lossy().into_owned();
        let defaults: Vec<_> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let Some((active, value)) = lines.get(&name) else {
            continue;
        };
        if *active && !defaults.is_empty() {
            assert_eq!(
                value,
                &defaults.join(","),
                "{name}: .env.example says {value}, the daemon defaults to {defaults:?}"
            );
        }
    }
}

#[test]
fn env_example_names_no_unknown_setting() {
    let known: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for name in example_lines().keys() {
        assert!(
            known.contains(name),
            ".env.example names {name}, which plugind does not read"
        );
    }
}
