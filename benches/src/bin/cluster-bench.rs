//! The cluster's throughput, two ways:
//!
//! - dispatch: the broker's core driven in this process on one core, with simulated workers
//!   that finish each job the moment they get it: submit, schedule, start, result, report;
//! - end to end: trivial jobs through a real broker and 2 local workers, with security off and
//!   on (TLS, credentials from `maelstrom-admin credentials`), beside standalone mode
//!   (`maelstrom-run` with its embedded worker) in the same run, in alternating rounds after a
//!   warm-up; medians are reported, with the broker's CPU time per job (from /proc) for each
//!   cluster. Every process has its default slots (the CPU count), as a user would run them;
//!   `--worker-slots` sets the workers' (and standalone gets their sum). Every job prints its
//!   number, so a lost (or doubled) job is seen.
//!
//! Ends with exactly one line:
//! `cluster: dispatch_per_s=<n> e2e_jobs_per_s=<n> e2e_secure_jobs_per_s=<n> standalone_jobs_per_s=<n>
//! broker_cpu_us_per_job=<n> broker_cpu_us_per_job_secure=<n> secure_ratio=<r> secure_cpu_ratio=<r>
//! lost=<n>`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use maelstrom_benches::median;
use maelstrom_broker::core::{Broker, Effect, Event};
use maelstrom_wire::cluster::{
    ArchivedJobSpec, Control, LayerKind, Outcome, Output, encode_job, typical_job,
};

#[derive(Parser, Debug)]
#[command(about = "Measure the broker's dispatch rate, and the cluster against standalone mode")]
struct Args {
    /// Jobs through the simulated cluster.
    #[arg(long, default_value_t = 500_000)]
    dispatch_jobs: u64,
    /// Simulated workers, and slots each.
    #[arg(long, default_value_t = 32)]
    simulated_workers: u64,
    #[arg(long, default_value_t = 8)]
    simulated_slots: u32,
    /// Jobs per end-to-end run.
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// Slots of each worker [default: the CPU count, as for standalone].
    #[arg(long)]
    worker_slots: Option<usize>,
    /// Alternating end-to-end rounds of cluster and standalone.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where maelstrom-run, maelstrom-broker, maelstrom-worker and maelstrom-admin are
    /// [default: beside this binary, built first if cargo is at hand].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let dispatch = dispatch_rate(&args);
    eprintln!("dispatch: {dispatch:.0} jobs/s");
    let e = end_to_end(&args);
    println!(
        "cluster: dispatch_per_s={dispatch:.0} e2e_jobs_per_s={:.0} e2e_secure_jobs_per_s={:.0} \
         standalone_jobs_per_s={:.0} broker_cpu_us_per_job={:.1} broker_cpu_us_per_job_secure={:.1} \
         secure_ratio={:.2} secure_cpu_ratio={:.2} lost={}",
        e.plain.jobs_per_s,
        e.secure.jobs_per_s,
        e.standalone,
        e.plain.broker_cpu_us,
        e.secure.broker_cpu_us,
        e.secure.jobs_per_s / e.plain.jobs_per_s,
        e.secure_cpu_ratio,
        e.lost
    );
}

/// Jobs per second through the broker's core, on this thread.
fn dispatch_rate(args: &Args) -> f64 {
    let job = typical_job();
    let bytes = encode_job(&job);
    let spec = rkyv::access::<ArchivedJobSpec, rkyv::rancor::Error>(&bytes).expect("a valid job");
    let mut broker = Broker::new(u64::MAX);
    for layer in &job.layers {
        let files = (layer.kind == LayerKind::Manifest).then(Vec::new);
        broker.preload(layer.digest, 1, files);
    }
    let mut effects = Vec::new();
    broker.handle(Event::ClientConnected(1), &mut effects);
    for worker in 0..args.simulated_workers {
        broker.handle(
            Event::WorkerConnected { peer: 100 + worker, slots: args.simulated_slots, grants: 0 },
            &mut effects,
        );
    }
    effects.clear();
    let exited = || Outcome::Exited {
        code: 0,
        stdout: Output::default(),
        stderr: Output::default(),
        duration_us: 1,
        met: Vec::new(),
        usage: Default::default(),
    };
    let mut started = Vec::new();
    let mut reported = 0u64;
    let begin = Instant::now();
    for id in 0..args.dispatch_jobs {
        broker.handle(Event::Submit { peer: 1, id, spec, bytes: &bytes }, &mut effects);
        // Workers finish every job they were given, at once.
        loop {
            for effect in effects.drain(..) {
                match effect {
                    Effect::Start { worker, id, .. } => started.push((worker, id)),
                    Effect::Send { message: Control::Done { .. }, .. } => reported += 1,
                    _ => {}
                }
            }
            if started.is_empty() {
                break;
            }
            for (peer, id) in started.drain(..) {
                broker.handle(Event::Done { peer, id, outcome: exited() }, &mut effects);
            }
        }
    }
    let elapsed = begin.elapsed();
    assert_eq!(reported, args.dispatch_jobs, "the simulated cluster lost jobs");
    args.dispatch_jobs as f64 / elapsed.as_secs_f64()
}

fn bin_dir(args: &Args) -> PathBuf {
    if let Some(dir) = &args.bin_dir {
        return dir.clone();
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = Command::new(cargo);
        build.args(["build", "--release", "--quiet"]);
        for package in ["maelstrom-run", "maelstrom-broker", "maelstrom-worker", "maelstrom-admin"] {
            build.args(["-p", package]);
        }
        assert!(build.status().expect("run cargo build").success(), "cargo build of the cluster failed");
    }
    std::env::current_exe().expect("our own path").parent().expect("a directory").to_owned()
}

/// Median jobs/s of the cluster and of standalone mode, and the jobs lost in all runs.
/// One cluster's medians.
struct Measured {
    jobs_per_s: f64,
    /// The broker's CPU time (user and system) per job.
    broker_cpu_us: f64,
}

struct EndToEnd {
    plain: Measured,
    secure: Measured,
    standalone: f64,
    /// The median of each round's secure over plain broker CPU per job: paired by round, so
    /// that a noisy stretch of the machine weighs on both sides of one ratio.
    secure_cpu_ratio: f64,
    lost: usize,
}

/// A single-threaded process's CPU time so far, in nanoseconds (`/proc/<pid>/schedstat`).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
    Duration::from_nanos(stat.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0))
}

fn end_to_end(args: &Args) -> EndToEnd {
    let bins = bin_dir(args);
    let dir = tempfile::Builder::new().prefix("cluster-bench-").tempdir().expect("a temp dir");
    std::fs::copy(maelstrom_testbins::probe(), dir.path().join("probe")).expect("copy the probe");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_worker = args.worker_slots.unwrap_or(cores);
    let standalone_slots = if args.worker_slots.is_some() { per_worker * 2 } else { cores };

    let plain = maelstrom_testbins::runners::Cluster::start_configured(&bins, 2, per_worker, false);
    let secure = maelstrom_testbins::runners::Cluster::start_configured(&bins, 2, per_worker, true);
    wait_for_workers(&bins, &plain, 2);
    wait_for_workers(&bins, &secure, 2);

    let run = |cluster: Option<&maelstrom_testbins::runners::Cluster>, jobs: usize| -> (Duration, usize) {
        let mut command = Command::new(bins.join("maelstrom-run"));
        command
            .current_dir(dir.path())
            .args(["--config-file", "-", "--cache-root"])
            .arg(dir.path().join("client"));
        command.args(["--slots", &standalone_slots.to_string()]);
        if let Some(cluster) = cluster {
            command.args(["--broker", &cluster.address]);
            if let Some(credentials) = &cluster.credentials {
                command.arg("--credentials").arg(credentials.join("client"));
            }
        }
        let text: String = (0..jobs)
            .map(|i| {
                format!(
                    "{{\"program\": \"/bin/probe\", \"arguments\": [\"say\", \"0\", \"{i}\"], \
                     \"layers\": [{{\"paths\": [\"probe\"], \"prepend_prefix\": \"/bin\"}}]}}\n"
                )
            })
            .collect();
        let begin = Instant::now();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start maelstrom-run");
        let mut stdin = child.stdin.take().expect("piped");
        let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        let out = child.wait_with_output().expect("wait for maelstrom-run");
        let elapsed = begin.elapsed();
        writer.join().expect("the writer").expect("write the jobs");
        let mut seen = vec![false; jobs];
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(slot) = line.parse::<usize>().ok().and_then(|n| seen.get_mut(n)) {
                *slot = true;
            }
        }
        let lost = seen.iter().filter(|s| !**s).count();
        if !out.status.success() {
            eprintln!("maelstrom-run: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        (elapsed, lost)
    };
    // Warm-up: digests, the broker's store, the workers' trees, the local cache.
    run(Some(&plain), 100);
    run(Some(&secure), 100);
    run(None, 100);
    let (mut rates, mut cpus) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let mut standalone = Vec::new();
    let mut lost = 0;
    for round in 0..args.rounds {
        // Each goes first in turn.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for (i, cluster) in order.into_iter().map(|i| (i, [&plain, &secure][i])) {
            let cpu = cpu_time(cluster.broker_pid);
            let (took, missing) = run(Some(cluster), args.jobs);
            rates[i].push(args.jobs as f64 / took.as_secs_f64());
            cpus[i].push((cpu_time(cluster.broker_pid) - cpu).as_secs_f64() * 1e6 / args.jobs as f64);
            lost += missing;
        }
        let (took_alone, missing_alone) = run(None, args.jobs);
        standalone.push(args.jobs as f64 / took_alone.as_secs_f64());
        lost += missing_alone;
        eprintln!(
            "round {round}: cluster {:.0} jobs/s ({:.1} µs broker CPU/job), secure {:.0} jobs/s ({:.1} µs), \
             standalone {:.0} jobs/s",
            rates[0][round], cpus[0][round], rates[1][round], cpus[1][round], standalone[round]
        );
    }
    let [plain_rates, secure_rates] = rates;
    let [plain_cpus, secure_cpus] = cpus;
    let secure_cpu_ratio = median(secure_cpus.iter().zip(&plain_cpus).map(|(s, p)| s / p).collect());
    EndToEnd {
        plain: Measured { jobs_per_s: median(plain_rates), broker_cpu_us: median(plain_cpus) },
        secure: Measured { jobs_per_s: median(secure_rates), broker_cpu_us: median(secure_cpus) },
        standalone: median(standalone),
        secure_cpu_ratio,
        lost,
    }
}

fn wait_for_workers(bins: &Path, cluster: &maelstrom_testbins::runners::Cluster, count: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = format!("Number of workers: {count}");
    loop {
        let mut admin = Command::new(bins.join("maelstrom-admin"));
        if let Some(credentials) = &cluster.credentials {
            admin.arg("--credentials").arg(credentials.join("admin"));
        }
        let out = admin
            .args(["--config-file", "-", "--broker", &cluster.address, "status"])
            .output()
            .expect("run maelstrom-admin");
        if String::from_utf8_lossy(&out.stdout).contains(&wanted) {
            return;
        }
        assert!(Instant::now() < deadline, "the workers did not connect in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}
