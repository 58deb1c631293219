//! The io_uring executor with real lanes and containers: ordering, slots, output, timeouts,
//! setup errors, cancellation, and that every job gets exactly one result.
//!
//! One executor serves every case (a zygote must fork before any thread); results are routed
//! to the waiting case by job id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use maelstrom_container::{Spec, Zygote, ZygoteConfig};
use maelstrom_wire::cluster::Ended;
use maelstrom_worker::{Executor, ExecutorConfig, JobRequest, JobResult, Output};

type Routes = Arc<Mutex<HashMap<u64, Sender<JobResult>>>>;

struct Ctx {
    executor: Executor,
    routes: Routes,
    next: AtomicU64,
    layer: tempfile::TempDir,
}

impl Ctx {
    fn probe(&self, args: &[&str]) -> Spec {
        let mut spec = Spec::new(vec![self.layer.path().to_owned()], "/probe");
        spec.arguments = args.iter().map(Into::into).collect();
        spec
    }

    /// Submits jobs and returns a receiver of their results.
    fn submit(
        &self,
        jobs: Vec<(Spec, i8, Option<Duration>)>,
    ) -> anyhow::Result<(Vec<u64>, Receiver<JobResult>)> {
        let (send, receive) = channel();
        let mut ids = Vec::new();
        for (spec, priority, timeout) in jobs {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            self.routes.lock().unwrap().insert(id, send.clone());
            let spawn = maelstrom_container::compile(&spec)?;
            self.executor.submit(JobRequest {
                id,
                spawn,
                priority,
                estimated: None,
                timeout,
                timeout_warning: None,
            });
            ids.push(id);
        }
        Ok((ids, receive))
    }

    fn run(&self, spec: Spec, timeout: Option<Duration>) -> anyhow::Result<JobResult> {
        let (_, results) = self.submit(vec![(spec, 0, timeout)])?;
        Ok(results.recv_timeout(Duration::from_secs(30))?)
    }
}

type Case = fn(&Ctx) -> anyhow::Result<()>;

fn main() {
    let mut args = Arguments::from_args();
    // The cases share the executor's slots, and some fill them on purpose.
    args.test_threads = Some(1);
    let zygote = Zygote::start(ZygoteConfig { lanes: 2, cgroups: None }).unwrap_or_else(|e| {
        eprintln!("cannot start the zygote: {e}");
        std::process::exit(1)
    });
    let routes: Routes = Arc::default();
    let sink_routes = Arc::clone(&routes);
    let sink = Box::new(move |result: JobResult| {
        if let Some(route) = sink_routes.lock().unwrap().remove(&result.id) {
            let _ = route.send(result);
        }
    });
    let config = ExecutorConfig::new(4, 1 << 20);
    let executor = Executor::start(zygote, config, sink).unwrap_or_else(|e| {
        eprintln!("cannot start the executor: {e}");
        std::process::exit(1)
    });
    let layer = tempfile::tempdir().expect("layer dir");
    std::fs::copy(maelstrom_testbins::probe(), layer.path().join("probe")).expect("copy the probe");
    let ctx = Arc::new(Ctx { executor, routes, next: AtomicU64::new(1), layer });
    let cases: &[(&str, Case)] = &[
        ("executor::outcomes_and_output", outcomes_and_output),
        ("executor::timeout_kills", timeout_kills),
        ("executor::setup_errors_are_execution_errors", setup_errors_are_execution_errors),
        ("executor::every_job_gets_exactly_one_result", every_job_gets_exactly_one_result),
        ("executor::priority_orders_waiting_jobs", priority_orders_waiting_jobs),
        ("executor::cancel_kills_a_running_job", cancel_kills_a_running_job),
    ];
    let trials = cases
        .iter()
        .map(|&(name, case)| {
            let ctx = Arc::clone(&ctx);
            Trial::test(name, move || case(&ctx).map_err(|e| Failed::from(format!("{e:#}"))))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    drop(ctx);
    conclusion.exit();
}

/// A job that ran, as its result tells it.
struct Done {
    outcome: Ended,
    stdout: Output,
    stderr: Output,
}

fn completed(result: JobResult) -> anyhow::Result<Done> {
    let ran = result.outcome.ran().map_err(|e| anyhow::anyhow!("job {} failed: {e}", result.id))?;
    Ok(Done { outcome: ran.ended, stdout: ran.stdout.clone(), stderr: ran.stderr.clone() })
}

fn outcomes_and_output(ctx: &Ctx) -> anyhow::Result<()> {
    let done = completed(ctx.run(ctx.probe(&["exit", "3"]), None)?)?;
    anyhow::ensure!(done.outcome == Ended::Exited(3), "{:?}", done.outcome);
    let done = completed(ctx.run(ctx.probe(&["segfault"]), None)?)?;
    anyhow::ensure!(done.outcome == Ended::Signaled(libc::SIGSEGV), "{:?}", done.outcome);
    let done = completed(ctx.run(ctx.probe(&["spew", &(3 << 20).to_string()]), None)?)?;
    anyhow::ensure!(
        done.stdout.bytes.len() == 1 << 20 && done.stdout.cut == 2 << 20,
        "{} {}",
        done.stdout.bytes.len(),
        done.stdout.cut
    );
    let done = completed(ctx.run(ctx.probe(&["stderr", "to stderr"]), None)?)?;
    anyhow::ensure!(done.stderr.bytes == b"to stderr" && done.stdout.bytes.is_empty());
    let done = completed(ctx.run(ctx.probe(&["orphan"]), None)?)?;
    anyhow::ensure!(done.outcome == Ended::Exited(0));
    Ok(())
}

fn timeout_kills(ctx: &Ctx) -> anyhow::Result<()> {
    let done = completed(ctx.run(ctx.probe(&["hang"]), Some(Duration::from_millis(200)))?)?;
    anyhow::ensure!(done.outcome == Ended::TimedOut, "{:?}", done.outcome);
    Ok(())
}

fn setup_errors_are_execution_errors(ctx: &Ctx) -> anyhow::Result<()> {
    let spec = Spec::new(vec![ctx.layer.path().to_owned()], "/nope");
    match ctx.run(spec, None)?.outcome {
        maelstrom_worker::Outcome::ExecutionError(message) => {
            anyhow::ensure!(
                message == "execute the program: /nope: No such file or directory (os error 2)",
                "{message}"
            );
            Ok(())
        }
        other => anyhow::bail!("expected an execution error, got {other:?}"),
    }
}

fn every_job_gets_exactly_one_result(ctx: &Ctx) -> anyhow::Result<()> {
    let jobs = (0..200).map(|i| (ctx.probe(&["exit", &(i % 7).to_string()]), 0, None)).collect();
    let (ids, results) = ctx.submit(jobs)?;
    let mut seen = HashMap::new();
    for _ in 0..ids.len() {
        let result = results.recv_timeout(Duration::from_secs(60))?;
        *seen.entry(result.id).or_insert(0) += 1;
        let done = completed(result)?;
        anyhow::ensure!(matches!(done.outcome, Ended::Exited(code) if (0..7).contains(&code)));
    }
    anyhow::ensure!(seen.len() == ids.len() && seen.values().all(|&n| n == 1));
    anyhow::ensure!(results.recv_timeout(Duration::from_millis(100)).is_err(), "a job was reported twice");
    Ok(())
}

fn priority_orders_waiting_jobs(ctx: &Ctx) -> anyhow::Result<()> {
    // Fill every slot with hanging jobs, queue low then high priority, free the slots: the
    // high-priority job must finish first.
    let blockers: Vec<_> = (0..4).map(|_| (ctx.probe(&["hang"]), 0, None)).collect();
    let (blocker_ids, blocker_results) = ctx.submit(blockers)?;
    std::thread::sleep(Duration::from_millis(200));
    let (low, results) = ctx.submit(vec![(ctx.probe(&["exit", "0"]), -5, None)])?;
    let (high, high_results) = ctx.submit(vec![(ctx.probe(&["exit", "0"]), 5, None)])?;
    for id in &blocker_ids {
        ctx.executor.cancel(*id);
    }
    for _ in &blocker_ids {
        let done = completed(blocker_results.recv_timeout(Duration::from_secs(30))?)?;
        anyhow::ensure!(done.outcome == Ended::Signaled(libc::SIGKILL), "{:?}", done.outcome);
    }
    let high_done = high_results.recv_timeout(Duration::from_secs(30))?;
    let low_done = results.recv_timeout(Duration::from_secs(30))?;
    anyhow::ensure!(high_done.id == high[0] && low_done.id == low[0]);
    Ok(())
}

fn cancel_kills_a_running_job(ctx: &Ctx) -> anyhow::Result<()> {
    let (ids, results) = ctx.submit(vec![(ctx.probe(&["hang"]), 0, None)])?;
    std::thread::sleep(Duration::from_millis(100));
    ctx.executor.cancel(ids[0]);
    let done = completed(results.recv_timeout(Duration::from_secs(30))?)?;
    anyhow::ensure!(done.outcome == Ended::Signaled(libc::SIGKILL), "{:?}", done.outcome);
    Ok(())
}
