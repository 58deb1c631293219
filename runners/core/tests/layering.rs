//! The crates' layering: runners reach containers and the cluster only through the client,
//! and the broker stands without the worker.
#![expect(clippy::tests_outside_test_module, reason = "an integration test file is its own test module")]

use std::path::Path;

/// The names in a manifest's `[dependencies]` table.
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    table
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map_or_else(Vec::new, |d| d.keys().cloned().collect())
}

#[test]
fn runners_depend_on_the_client_alone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let runners = std::fs::read_dir(root.join("runners")).unwrap();
    let mut checked = 0;
    for runner in runners {
        let manifest = runner.unwrap().path().join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let deps = dependencies(&manifest);
        for below in ["maelstrom-container", "maelstrom-worker", "maelstrom-broker"] {
            assert!(!deps.iter().any(|d| d == below), "{} depends on {below}", manifest.display());
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} runner manifests found");
    let broker = dependencies(&root.join("runtime/broker/Cargo.toml"));
    assert!(!broker.iter().any(|d| d == "maelstrom-worker"), "the broker depends on the worker");
}
