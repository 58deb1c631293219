//! A real crate from the registry, tried as a new user would: every test that passes under
//! `cargo test` passes under `cargo maelstrom`, with the default spec and no spec file.
//!
//! It fetches `semver` (its unit and integration tests) through cargo, so it needs the crate
//! registry or a cargo cache that holds the crate; without cargo (the test script's
//! unprivileged pass), it says so and passes without checking anything.
#![expect(clippy::tests_outside_test_module, reason = "an integration test file is its own test module")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

use common::CARGO;
use maelstrom_testbins::runners::copy_tree;
const CRATE: &str = "semver";
const VERSION: &str = "1.0.28";

fn cargo() -> Command {
    let mut command = Command::new(CARGO);
    command.env_remove("CARGO_TARGET_DIR").env_remove("RUSTFLAGS");
    command
}

/// The crate's source, fetched through a throwaway project that depends on it.
fn fetch(work: &Path) -> PathBuf {
    let project = work.join("fetcher");
    std::fs::create_dir_all(project.join("src")).expect("mkdir");
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"fetcher\"\nversion = \"0.0.0\"\nedition = \"2021\"\n[workspace]\n\
             [dependencies]\n{CRATE} = \"={VERSION}\"\n"
        ),
    )
    .expect("write");
    std::fs::write(project.join("src/lib.rs"), "").expect("write");
    let out = cargo()
        .args(["metadata", "--format-version=1"])
        .current_dir(&project)
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo could not fetch {CRATE} {VERSION}: is the crate registry reachable?"
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata");
    let manifest = metadata["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == CRATE))
        .and_then(|p| p["manifest_path"].as_str())
        .expect("the crate in the metadata");
    Path::new(manifest).parent().expect("a directory").to_owned()
}

/// Case names that `cargo test` reports as passing, with how many binaries have each.
fn cargo_test_passes(dir: &Path) -> BTreeMap<String, usize> {
    let out = cargo()
        .args(["test", "--no-fail-fast", "--tests", "--color=never"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .expect("run cargo test");
    let mut passed = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... ok")) {
            *passed.entry(name.to_owned()).or_default() += 1;
        }
    }
    passed
}

#[test]
fn every_test_that_passes_under_cargo_test_passes_under_cargo_maelstrom() {
    if !common::cargo_usable() {
        return;
    }
    let work = tempfile::Builder::new().prefix("real-crate-").tempdir_in("/var/tmp").expect("a temp dir");
    let source = fetch(work.path());
    let dir = work.path().join(CRATE);
    copy_tree(&source, &dir);
    let passed = cargo_test_passes(&dir);
    assert!(passed.len() > 20, "cargo test ran too few tests of {CRATE}: {passed:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-maelstrom"))
        .args(["maelstrom", "--config-file", "-", "--ui", "simple"])
        .current_dir(&dir)
        .env("CARGO", CARGO)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run cargo maelstrom");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok: Vec<&str> = stdout.lines().filter(|l| l.contains(". OK ")).collect();
    let missing: Vec<&String> = passed
        .iter()
        .filter(|(name, count)| ok.iter().filter(|l| l.contains(&format!(" {name}."))).count() < **count)
        .map(|(name, _)| name)
        .collect();
    assert!(missing.is_empty(), "passed under cargo test, not under cargo maelstrom: {missing:?}\n{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.join("cargo-maelstrom.toml").exists(), "no spec file was needed, or written");
}
