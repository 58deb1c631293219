//! Paths of the static programs built by this crate's build script.
//!
//! `MAELSTROM_TESTBINS_DIR`, when set, names a directory holding copies of them: the test script
//! uses it to run the suite as an unprivileged user who cannot reach the build directory.

use std::path::PathBuf;

pub mod runners;

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

/// Pids of the processes whose command line starts with `args` (each a whole argument), for
/// tests that check what is still running.
pub fn processes_with_args(args: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(&wanted)))
        .collect()
}
