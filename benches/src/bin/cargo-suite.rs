//! A crate's test suite three ways, on a warm build, in alternating rounds of the same run:
//! `cargo maelstrom` (every test in its own container), `cargo nextest run` (every test in its
//! own process) and `cargo test --tests` (tests as threads of one process per binary).
//! Medians are reported.
//!
//! Ends with exactly one line:
//! `cargo-suite: tests=<n> maelstrom_s=<s> nextest_s=<s> cargo_test_s=<s> ratio_vs_nextest=<r>`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Time a crate's tests under cargo maelstrom, cargo nextest and cargo test")]
struct Args {
    /// The crate (or workspace) directory.
    path: PathBuf,
    /// Alternating rounds; medians are reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The cargo-maelstrom binary [default: beside this one, built first if cargo is at hand].
    #[arg(long)]
    binary: Option<PathBuf>,
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.env_remove("CARGO_TARGET_DIR");
    command
}

fn cargo_maelstrom(args: &Args) -> PathBuf {
    if let Some(binary) = &args.binary {
        return binary.clone();
    }
    if std::env::var_os("CARGO").is_some() {
        let status = cargo()
            .args(["build", "--release", "--quiet", "-p", "cargo-maelstrom"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of cargo-maelstrom failed");
    }
    std::env::current_exe().expect("our own path").with_file_name("cargo-maelstrom")
}

/// Runs a command in the crate; its wall time, exit code and stdout.
fn timed(mut command: Command, dir: &Path) -> (Duration, Option<i32>, String) {
    let start = Instant::now();
    let out = command.current_dir(dir).stdin(Stdio::null()).stderr(Stdio::null()).output().expect("run");
    (start.elapsed(), out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args = Args::parse();
    let dir = std::fs::canonicalize(&args.path).unwrap_or_else(|e| panic!("{}: {e}", args.path.display()));
    let binary = cargo_maelstrom(&args);
    let nextest = cargo().args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    assert!(nextest, "cargo-nextest is not installed: cargo install cargo-nextest --locked");
    let maelstrom = || {
        let mut command = Command::new(&binary);
        command.args(["maelstrom", "--ui", "simple"]);
        command
    };
    let nextest = || {
        let mut command = cargo();
        command.args(["nextest", "run", "--no-fail-fast"]);
        command
    };
    let cargo_test = || {
        let mut command = cargo();
        command.args(["test", "--tests", "--no-fail-fast"]);
        command
    };
    // Warm: the build, and each runner's own caches.
    for command in [cargo_test(), nextest(), maelstrom()] {
        timed(command, &dir);
    }
    let (mut m, mut n, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let mut tests = 0;
    for round in 0..args.rounds {
        let (took, code, stdout) = timed(maelstrom(), &dir);
        tests = stdout.lines().filter(|l| l.contains(". OK ") || l.contains(". FAIL ")).count();
        m.push(took.as_secs_f64());
        let (nextest_took, nextest_code, _) = timed(nextest(), &dir);
        n.push(nextest_took.as_secs_f64());
        let (cargo_took, cargo_code, _) = timed(cargo_test(), &dir);
        c.push(cargo_took.as_secs_f64());
        eprintln!(
            "round {round}: maelstrom {:.3}s (exit {code:?}), nextest {:.3}s (exit {nextest_code:?}), cargo test {:.3}s (exit {cargo_code:?})",
            took.as_secs_f64(),
            nextest_took.as_secs_f64(),
            cargo_took.as_secs_f64()
        );
    }
    let (m, n, c) = (median(m), median(n), median(c));
    println!(
        "cargo-suite: tests={tests} maelstrom_s={m:.3} nextest_s={n:.3} cargo_test_s={c:.3} ratio_vs_nextest={:.2}",
        m / n
    );
}
