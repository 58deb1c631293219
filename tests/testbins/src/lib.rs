//! Paths of the static programs built by this crate's build script.
//!
//! `MAELSTROM_TESTBINS_DIR`, when set, names a directory holding copies of them: the test script
//! uses it to run the suite as an unprivileged user who cannot reach the build directory.

use std::path::PathBuf;

const BUILT_DIR: &str = env!("OUT_DIR");

fn program(name: &str) -> PathBuf {
    let dir =
        std::env::var_os("MAELSTROM_TESTBINS_DIR").map_or_else(|| PathBuf::from(BUILT_DIR), PathBuf::from);
    dir.join(name)
}

/// The isolation probe: run inside a container, it reports what it can see (see
/// `src/programs/probe.rs` for its commands).
pub fn probe() -> PathBuf {
    program("probe")
}

/// A static `int main(void) { return 0; }`: the trivial job of the startup benches.
pub fn static_true() -> PathBuf {
    program("static-true")
}

/// Where the build script put the programs.
pub fn built_dir() -> PathBuf {
    PathBuf::from(BUILT_DIR)
}
