//! Whole-process throughput of `maelstrom-run`, as a user drives it: 1,000 jobs of `/bin/true`
//! (with its shared-library layer) through one invocation, beside two floors measured in the
//! same run (the same 1,000 executions without isolation: `xargs -P <cores>`, and two shells
//! each looping `/bin/true` half the times), in alternating rounds; then `--one` on a warm
//! cache, 50 times.
//!
//! Ends with exactly one line:
//! `run-throughput: jobs=1000 seconds=<s> jobs_per_s=<n> floor_seconds=<s> ratio=<r> shells_seconds=<s>
//! ratio_vs_shells=<r> one_p50_ms=<n> one_p99_ms=<n>`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use maelstrom_benches::median;

#[derive(Parser, Debug)]
#[command(about = "Measure maelstrom-run against the same executions without isolation")]
struct Args {
    /// Jobs per run.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Alternating rounds of maelstrom-run and the floor; medians are reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Runs of `--one`.
    #[arg(long, default_value_t = 50)]
    one_runs: usize,
    /// The maelstrom-run binary [default: beside this one, built first if cargo is at hand].
    #[arg(long)]
    binary: Option<PathBuf>,
}

const JOB: &str = r#"{"program": "/bin/true", "layers": [{"paths": ["/bin/true"]}, {"shared_library_dependencies": ["/bin/true"]}]}"#;

fn maelstrom_run(args: &Args) -> PathBuf {
    if let Some(binary) = &args.binary {
        return binary.clone();
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        let status = Command::new(cargo)
            .args(["build", "--release", "--quiet", "-p", "maelstrom-run"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of maelstrom-run failed");
    }
    let here = std::env::current_exe().expect("our own path");
    here.with_file_name("maelstrom-run")
}

fn timed(mut command: Command, stdin: Option<&[u8]>) -> Duration {
    let start = Instant::now();
    let mut child = command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    if let Some(bytes) = stdin {
        child.stdin.take().expect("piped").write_all(bytes).expect("feed stdin");
    }
    let out = child.wait_with_output().expect("wait for the command");
    let elapsed = start.elapsed();
    assert!(out.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    elapsed
}

fn run_command(binary: &Path, cache: &Path, file: &Path, one: bool) -> Command {
    let mut command = Command::new(binary);
    command.args(["-c", "-", "--cache-root"]).arg(cache).arg("--file").arg(file);
    if one {
        command.arg("--one");
    }
    command
}

fn main() {
    let args = Args::parse();
    let binary = maelstrom_run(&args);
    let dir = tempfile::Builder::new().prefix("run-throughput-").tempdir().expect("a scratch dir");
    let jobs = dir.path().join("jobs.json");
    let one = dir.path().join("one.json");
    std::fs::write(&jobs, std::iter::repeat_n(JOB, args.jobs).collect::<Vec<_>>().join("\n"))
        .expect("write jobs");
    std::fs::write(&one, JOB).expect("write the job");
    let cache = dir.path().join("cache");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let numbers: Vec<u8> = (0..args.jobs).map(|i| format!("{i}\n")).collect::<String>().into_bytes();
    let floor = || {
        let mut command = Command::new("xargs");
        command.args(["-P", &cores.to_string(), "-n", "1", "/bin/true"]);
        command
    };

    // Two shells at once, each running `/bin/true` half the times: plain fork+exec.
    let shells = || {
        let start = Instant::now();
        let half = args.jobs / 2;
        let shell = |n: usize| {
            Command::new("sh")
                .args(["-c", &format!("i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done")])
                .spawn()
                .expect("start sh")
        };
        let children = [shell(half), shell(args.jobs - half)];
        for mut child in children {
            assert!(child.wait().expect("wait for sh").success(), "a shell loop failed");
        }
        start.elapsed().as_secs_f64()
    };

    // Warm up: the first run builds the layer cache; every path faults in its binaries.
    timed(run_command(&binary, &cache, &jobs, false), None);
    timed(floor(), Some(&numbers));
    shells();

    let (mut ours, mut theirs, mut loops) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        let mut measure_ours =
            || ours.push(timed(run_command(&binary, &cache, &jobs, false), None).as_secs_f64());
        if round % 2 == 0 {
            measure_ours();
            theirs.push(timed(floor(), Some(&numbers)).as_secs_f64());
            loops.push(shells());
        } else {
            loops.push(shells());
            theirs.push(timed(floor(), Some(&numbers)).as_secs_f64());
            measure_ours();
        }
    }
    let mut one_latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for _ in 0..args.one_runs {
        let elapsed = timed(run_command(&binary, &cache, &one, true), None);
        one_latency.saturating_record(elapsed.as_micros() as u64);
    }

    let seconds = median(ours.clone());
    let floor_seconds = median(theirs.clone());
    let shells_seconds = median(loops.clone());
    eprintln!("maelstrom-run rounds (s): {ours:.3?}");
    eprintln!("xargs -P {cores} rounds (s): {theirs:.3?}");
    eprintln!("two shell loops rounds (s): {loops:.3?}");
    eprintln!(
        "--one: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} runs",
        one_latency.value_at_quantile(0.5) as f64 / 1000.0,
        one_latency.value_at_quantile(0.99) as f64 / 1000.0,
        one_latency.max() as f64 / 1000.0,
        one_latency.len()
    );
    println!(
        "run-throughput: jobs={} seconds={seconds:.3} jobs_per_s={:.0} floor_seconds={floor_seconds:.3} ratio={:.2} \
         shells_seconds={shells_seconds:.3} ratio_vs_shells={:.2} one_p50_ms={:.2} one_p99_ms={:.2}",
        args.jobs,
        args.jobs as f64 / seconds,
        seconds / floor_seconds,
        seconds / shells_seconds,
        one_latency.value_at_quantile(0.5) as f64 / 1000.0,
        one_latency.value_at_quantile(0.99) as f64 / 1000.0,
    );
}
