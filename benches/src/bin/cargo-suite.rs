//! A crate's test suite three ways, on a warm build, in alternating rounds of the same run:
//! `cargo maelstrom` (every test in its own container), `cargo nextest run` (every test in its
//! own process, when installed) and `cargo test --tests` (tests as threads of one process per
//! binary). The crate is copied under /tmp first (where each test's own /tmp is mounted), unless
//! `--in-place`. Medians are reported.
//!
//! Ends with exactly one line:
//! `cargo-suite: tests=<n> maelstrom_s=<s> nextest_s=<s|n/a> cargo_test_s=<s> ratio_vs_nextest=<r|n/a>
//! ratio_vs_cargo_test=<r>`

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use maelstrom_benches::{median, timed_in, workspace_binary};
use maelstrom_testbins::runners::copy_tree;

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
    /// Run in the crate's own directory instead of a copy under /tmp.
    #[arg(long)]
    in_place: bool,
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.env_remove("CARGO_TARGET_DIR");
    command
}

fn main() {
    let args = Args::parse();
    let source = std::fs::canonicalize(&args.path).unwrap_or_else(|e| panic!("{}: {e}", args.path.display()));
    let binary = workspace_binary(args.binary.as_deref(), "cargo-maelstrom", "cargo-maelstrom");
    let has_nextest = cargo().args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    if !has_nextest {
        eprintln!("cargo-nextest is not installed (cargo install cargo-nextest --locked): not measured");
    }
    let copy = tempfile::Builder::new().prefix("cargo-suite-").tempdir_in("/tmp").expect("a dir under /tmp");
    let dir = if args.in_place {
        source
    } else {
        copy_tree(&source, copy.path());
        copy.path().to_owned()
    };
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
    timed_in(cargo_test(), &dir);
    if has_nextest {
        timed_in(nextest(), &dir);
    }
    timed_in(maelstrom(), &dir);
    let (mut m, mut n, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let mut tests = 0;
    for round in 0..args.rounds {
        let (took, code, stdout) = timed_in(maelstrom(), &dir);
        tests = stdout.lines().filter(|l| l.contains(". OK ") || l.contains(". FAIL ")).count();
        m.push(took.as_secs_f64());
        let (nextest_took, nextest_code, _) =
            if has_nextest { timed_in(nextest(), &dir) } else { (Duration::ZERO, None, String::new()) };
        n.push(nextest_took.as_secs_f64());
        let (cargo_took, cargo_code, _) = timed_in(cargo_test(), &dir);
        c.push(cargo_took.as_secs_f64());
        eprintln!(
            "round {round}: maelstrom {:.3}s (exit {code:?}), nextest {:.3}s (exit {nextest_code:?}), cargo test {:.3}s (exit {cargo_code:?})",
            took.as_secs_f64(),
            nextest_took.as_secs_f64(),
            cargo_took.as_secs_f64()
        );
    }
    let (m, n, c) = (median(m), median(n), median(c));
    let (nextest_s, ratio_vs_nextest) =
        if has_nextest { (format!("{n:.3}"), format!("{:.2}", m / n)) } else { ("n/a".into(), "n/a".into()) };
    println!(
        "cargo-suite: tests={tests} maelstrom_s={m:.3} nextest_s={nextest_s} cargo_test_s={c:.3} \
         ratio_vs_nextest={ratio_vs_nextest} ratio_vs_cargo_test={:.2}",
        m / c
    );
}
