//! A Go module's tests two ways, on a warm build, in alternating rounds of the same run:
//! `maelstrom-go-test` (every test in its own container) and `go test -count=1` (each package's
//! tests in one process). Medians are reported, with what failed under each.
//!
//! Ends with exactly one line:
//! `go-suite: tests=<n> maelstrom_s=<s> go_test_s=<s> ratio=<r>`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

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

fn maelstrom_go_test(args: &Args) -> PathBuf {
    if let Some(binary) = &args.binary {
        return std::path::absolute(binary).expect("the binary's absolute path");
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        let status = Command::new(cargo)
            .args(["build", "--release", "--quiet", "-p", "maelstrom-go-test"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of maelstrom-go-test failed");
    }
    std::env::current_exe().expect("our own path").with_file_name("maelstrom-go-test")
}

/// Runs a command in the module; its wall time, exit code and stdout.
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
    let dir = std::fs::canonicalize(&args.dir).unwrap_or_else(|e| panic!("{}: {e}", args.dir.display()));
    let binary = maelstrom_go_test(&args);
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
    timed(go_test(), &dir);
    let (_, _, first) = timed(maelstrom(), &dir);
    let failed: Vec<&str> = first.lines().filter(|l| l.contains(". FAIL ") || l.contains(". ERR ")).collect();
    if !failed.is_empty() {
        eprintln!("not passing under maelstrom-go-test:\n  {}", failed.join("\n  "));
    }
    let (mut m, mut g) = (Vec::new(), Vec::new());
    let mut tests = 0;
    for round in 0..args.rounds.max(1) {
        let (ours, theirs) = if round % 2 == 0 {
            let ours = timed(maelstrom(), &dir);
            (ours, timed(go_test(), &dir))
        } else {
            let theirs = timed(go_test(), &dir);
            (timed(maelstrom(), &dir), theirs)
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
