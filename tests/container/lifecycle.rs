//! How jobs end: exit codes, signals, timeouts, kills, bounded output, and no survivors.

use std::os::fd::AsFd;
use std::time::Duration;

use maelstrom_container::{Ended, ExitStatus, Limits};

use crate::{Case, Ctx, Layer, probe, run, run_with};

pub const CASES: &[(&str, Case)] = &[
    ("lifecycle::a_fork_bomb_stops_at_its_own_process_limit", a_fork_bomb_stops_at_its_own_process_limit),
    ("lifecycle::exit_codes_pass_through", exit_codes_pass_through),
    ("lifecycle::timeout_kills_the_job", timeout_kills_the_job),
    ("lifecycle::orphans_die_with_the_job", orphans_die_with_the_job),
    ("lifecycle::output_past_the_cap_is_counted_not_kept", output_past_the_cap_is_counted_not_kept),
    ("lifecycle::stderr_is_captured_apart", stderr_is_captured_apart),
    ("lifecycle::stdin_is_empty", stdin_is_empty),
    ("lifecycle::kill_goes_through_the_pidfd", kill_goes_through_the_pidfd),
    ("lifecycle::many_jobs_run_at_once", many_jobs_run_at_once),
    ("lifecycle::usage_counts_every_process", usage_counts_every_process),
];

/// A job's usage is its processes' together: here a child's, which the job reaped, holding
/// 48 MiB and spinning until it used 300 ms of CPU while the job itself waits.
fn usage_counts_every_process(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let done = run(ctx, &probe(&layer, &["child-hog", "48", "300"]))?;
    anyhow::ensure!(done.outcome == Ended::Exited(0), "{:?}", done.outcome);
    let usage = done.usage;
    anyhow::ensure!(usage.cpu() >= Duration::from_millis(300), "{usage:?}");
    anyhow::ensure!(usage.cpu() <= done.duration, "{usage:?} in {:?}", done.duration);
    anyhow::ensure!(usage.peak_rss_bytes >= 48 << 20, "{usage:?}");
    anyhow::ensure!(usage.peak_rss_bytes < 256 << 20, "{usage:?}");
    // A job that does little uses little.
    let done = run(ctx, &probe(&layer, &["exit", "0"]))?;
    anyhow::ensure!(done.usage.peak_rss_bytes < 32 << 20, "{:?}", done.usage);
    anyhow::ensure!(done.usage.cpu() < Duration::from_millis(200), "{:?}", done.usage);
    Ok(())
}

fn exit_codes_pass_through(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    for code in [0, 3, 255] {
        let done = run(ctx, &probe(&layer, &["exit", &code.to_string()]))?;
        anyhow::ensure!(done.outcome == Ended::Exited(code), "exit {code}: got {:?}", done.outcome);
    }
    Ok(())
}

fn timeout_kills_the_job(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let limits = Limits { timeout: Some(Duration::from_millis(200)), ..Limits::default() };
    let done = run_with(ctx, &probe(&layer, &["hang"]), &limits)?;
    anyhow::ensure!(done.outcome == Ended::TimedOut, "{:?}", done.outcome);
    Ok(())
}

/// Probes running `<command>`.
fn probes_running(command: &str) -> Vec<u32> {
    maelstrom_testbins::processes_with_args(&["/bin/probe", command])
}

fn orphans_die_with_the_job(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let done = run(ctx, &probe(&layer, &["orphan"]))?;
    anyhow::ensure!(done.outcome == Ended::Exited(0), "{:?}", done.outcome);
    anyhow::ensure!(String::from_utf8_lossy(&done.stdout.bytes).contains("left a child behind"));
    let survivors = probes_running("orphan");
    anyhow::ensure!(survivors.is_empty(), "processes outlived their job: {survivors:?}");
    Ok(())
}

fn output_past_the_cap_is_counted_not_kept(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let limits = Limits { output_bytes_max: 1 << 20, ..Limits::default() };
    let done = run_with(ctx, &probe(&layer, &["spew", &(3 << 20).to_string()]), &limits)?;
    anyhow::ensure!(done.outcome == Ended::Exited(0), "{:?}", done.outcome);
    anyhow::ensure!(done.stdout.bytes.len() == 1 << 20, "kept {} bytes", done.stdout.bytes.len());
    anyhow::ensure!(done.stdout.cut == 2 << 20, "cut {} bytes", done.stdout.cut);
    anyhow::ensure!(done.stdout.bytes.iter().all(|&b| b == b'x'));
    Ok(())
}

fn stderr_is_captured_apart(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let done = run(ctx, &probe(&layer, &["stderr", "to the error stream"]))?;
    anyhow::ensure!(
        done.stderr.bytes == b"to the error stream",
        "{:?}",
        String::from_utf8_lossy(&done.stderr.bytes)
    );
    anyhow::ensure!(done.stdout.bytes.is_empty());
    Ok(())
}

fn stdin_is_empty(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let done = run(ctx, &probe(&layer, &["stdin"]))?;
    anyhow::ensure!(done.stdout.bytes == b"0\n", "{:?}", String::from_utf8_lossy(&done.stdout.bytes));
    Ok(())
}

fn kill_goes_through_the_pidfd(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let request = maelstrom_container::compile(&probe(&layer, &["hang"]))?;
    let devnull = std::fs::File::options().write(true).open("/dev/null")?;
    let mut job = ctx.zygote.spawn(&request, devnull.as_fd(), devnull.as_fd())?;
    anyhow::ensure!(job.try_wait()?.is_none(), "a hanging job already exited");
    job.kill()?;
    anyhow::ensure!(job.wait()? == ExitStatus::Signaled(libc::SIGKILL));
    job.kill()?;
    Ok(())
}

fn many_jobs_run_at_once(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let request = maelstrom_container::compile(&probe(&layer, &["hang"]))?;
    let devnull = std::fs::File::options().write(true).open("/dev/null")?;
    let mut jobs = (0..16)
        .map(|_| ctx.zygote.spawn(&request, devnull.as_fd(), devnull.as_fd()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut pids: Vec<_> = jobs.iter().map(|j| j.pid()).collect();
    pids.sort_unstable();
    pids.dedup();
    anyhow::ensure!(pids.len() == 16, "pids were reused while jobs ran: {pids:?}");
    for job in &jobs {
        job.kill()?;
    }
    for job in &mut jobs {
        anyhow::ensure!(job.wait()? == ExitStatus::Signaled(libc::SIGKILL));
    }
    Ok(())
}

/// Two fork bombs at once, each under a process limit of 40 that this test sets (so the bombs
/// are on a leash): each stops at its own limit, counted in its own user namespace rather
/// than shared, and a job beside them runs as if they were not there.
fn a_fork_bomb_stops_at_its_own_process_limit(ctx: &Ctx) -> anyhow::Result<()> {
    const LIMIT: u64 = 40;
    let layer = Layer::new();
    let mut bomb = probe(&layer, &["forkbomb", "1000"]);
    bomb.rlimits.push(maelstrom_container::Rlimit { resource: libc::RLIMIT_NPROC, soft: LIMIT, hard: LIMIT });
    let honest = probe(&layer, &["say", "0", "fine"]);
    let (bombs, honest) = std::thread::scope(|scope| {
        let bombs: Vec<_> = (0..2).map(|_| scope.spawn(|| run(ctx, &bomb))).collect();
        let honest = run(ctx, &honest);
        (bombs.into_iter().map(|b| b.join().expect("no panic")).collect::<Vec<_>>(), honest)
    });
    for done in bombs {
        let facts = crate::facts(&done?.stdout.bytes);
        let forked: u64 = facts.get("forked").and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
        anyhow::ensure!(
            (LIMIT - 4..LIMIT).contains(&forked),
            "a bomb forked {forked} times under a limit of {LIMIT}: {facts:?}"
        );
        crate::expect_fact(&facts, "errno", &libc::EAGAIN.to_string())?;
    }
    let honest = honest?;
    anyhow::ensure!(honest.outcome == Ended::Exited(0) && honest.stdout.bytes == b"fine\n", "{honest:?}");
    Ok(())
}
