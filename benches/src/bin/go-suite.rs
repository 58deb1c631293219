//! A Go module's tests two ways, on a warm build, in alternating rounds of the same run:
//! `maelstrom-go-test` (every test in its own container) and `go test -count=1` (each package's
//! tests in one process). Medians are reported, with what failed under each.
//!
//! Ends with exactly one line:
//! `go-suite: tests=<n> maelstrom_s=<s> go_test_s=<s> ratio=<r>`

use std::path::PathBuf;
use std::process::Command;

use clap::Parser;
use maelstrom_benches::{median, timed_in, workspace_binary};

#[derive(Parser, Debug)]
#[command(about = "Time a Go module's tests under maelstrom-go-test and go test -count=1")]
struct Args {
    /// The module's directory (for the standard library: $(go env GOROOT)/src).
    dir: PathBuf,
    /// Packages, as go test takes them [default: ./...].
    packages: Vec<String>,
    /// Alternating rounds; medians are reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The maelstrom-go-test binary [default: beside this one, built first if cargo is at hand].
    #[arg(long)]
    binary: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let dir = std::fs::canonicalize(&args.dir).unwrap_or_else(|e| panic!("{}: {e}", args.dir.display()));
    let binary = workspace_binary(args.binary.as_deref(), "maelstrom-go-test", "maelstrom-go-test");
    let packages = if args.packages.is_empty() { vec!["./...".to_owned()] } else { args.packages.clone() };
    let maelstrom = || {
        let mut command = Command::new(&binary);
        command.args(["--ui", "simple"]).args(&packages);
        command
    };
    let go_test = || {
        let mut command = Command::new("go");
        command.args(["test", "-count=1"]).args(&packages);
        command
    };
    // Warm: go's build cache, the test binaries, the layer cache, the listings.
    timed_in(go_test(), &dir);
    let (_, _, first) = timed_in(maelstrom(), &dir);
    let failed: Vec<&str> = first.lines().filter(|l| l.contains(". FAIL ") || l.contains(". ERR ")).collect();
    if !failed.is_empty() {
        eprintln!("not passing under maelstrom-go-test:\n  {}", failed.join("\n  "));
    }
    let (mut m, mut g) = (Vec::new(), Vec::new());
    let mut tests = 0;
    for round in 0..args.rounds.max(1) {
        let (ours, theirs) = if round % 2 == 0 {
            let ours = timed_in(maelstrom(), &dir);
            (ours, timed_in(go_test(), &dir))
        } else {
            let theirs = timed_in(go_test(), &dir);
            (timed_in(maelstrom(), &dir), theirs)
        };
        tests = ours
            .2
            .lines()
            .filter(|l| [". OK ", ". FAIL ", ". IGNORED", ". TIMEOUT "].iter().any(|s| l.contains(s)))
            .count();
        eprintln!(
            "round {round}: maelstrom-go-test {:.3}s (exit {:?}), go test {:.3}s (exit {:?})",
            ours.0.as_secs_f64(),
            ours.1,
            theirs.0.as_secs_f64(),
            theirs.1
        );
        m.push(ours.0.as_secs_f64());
        g.push(theirs.0.as_secs_f64());
    }
    let (m, g) = (median(m), median(g));
    println!("go-suite: tests={tests} maelstrom_s={m:.3} go_test_s={g:.3} ratio={:.2}", m / g);
}
