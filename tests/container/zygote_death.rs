//! The zygote's own failures: a lane that dies is seen and named, the other lanes carry on,
//! jobs die with a worker killed outright, and a zygote started too late (with threads
//! running) refuses with a clear reason.
//!
//! Runs its checks in order from `main`, since it must start a zygote before any thread and
//! then kill parts of it.

use std::os::fd::AsFd;

use maelstrom_container::{SpawnError, Spec, StartError, Zygote, ZygoteConfig};

/// Set in the environment of this binary run as a doomed worker.
const WORKER_ROLE: &str = "MAELSTROM_ZYGOTE_DEATH_WORKER";

fn main() {
    if let Ok(marker) = std::env::var(WORKER_ROLE) {
        doomed_worker(&marker);
    }
    type Check = fn() -> anyhow::Result<()>;
    let checks: [(&str, Check); 2] = [
        ("zygote_death::lane_death_is_seen_and_named", lane_death),
        ("zygote_death::jobs_die_with_a_killed_worker", jobs_die_with_the_worker),
    ];
    let mut failed = 0;
    for (name, check) in checks {
        match check() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n{e:#}");
            }
        }
    }
    // Last, now that threads have run: a second start must refuse.
    let late = late_start();
    match &late {
        Ok(()) => println!("test zygote_death::late_start_refuses ... ok"),
        Err(e) => {
            failed += 1;
            println!("test zygote_death::late_start_refuses ... FAILED\n{e:#}");
        }
    }
    println!(
        "\ntest result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        3 - failed
    );
    std::process::exit(i32::from(failed != 0));
}

fn lane_death() -> anyhow::Result<()> {
    let zygote = Zygote::start(ZygoteConfig { lanes: 2, cgroups: None })?;
    let layer = tempfile::tempdir()?;
    std::fs::copy(maelstrom_testbins::static_true(), layer.path().join("true"))?;
    let request = maelstrom_container::compile(&Spec::new(vec![layer.path().to_owned()], "/true"))?;
    let devnull = std::fs::File::options().write(true).open("/dev/null")?;
    let run = || zygote.spawn(&request, devnull.as_fd(), devnull.as_fd()).map(|mut job| job.wait());
    run()?.map_err(anyhow::Error::from)?;

    let victim = zygote.lane_pids()[0];
    std::process::Command::new("kill").args(["-9", &victim.to_string()]).status()?;
    let mut seen = None;
    for _ in 0..4 {
        match run() {
            Ok(_) => {}
            Err(e @ SpawnError::LaneDied { .. }) => seen = Some(e.to_string()),
            Err(e) => anyhow::bail!("unexpected error: {e}"),
        }
    }
    let seen = seen.ok_or_else(|| anyhow::anyhow!("no spawn noticed that lane 0 died"))?;
    anyhow::ensure!(seen == "zygote lane 0 died (killed by signal 9)", "{seen}");
    for _ in 0..4 {
        run().map_err(|e| anyhow::anyhow!("the surviving lane failed: {e}"))??;
    }
    Ok(())
}

/// As a worker: starts a job that hangs, says so, and waits to be killed.
#[expect(clippy::exit, reason = "this process only ever runs as the doomed worker")]
fn doomed_worker(marker: &str) -> ! {
    let run = || -> anyhow::Result<()> {
        let zygote = Zygote::start(ZygoteConfig { lanes: 1, cgroups: None })?;
        let layer = tempfile::tempdir()?;
        std::fs::create_dir(layer.path().join("bin"))?;
        std::fs::copy(maelstrom_testbins::probe(), layer.path().join("bin/probe"))?;
        let mut spec = Spec::new(vec![layer.path().to_owned()], "/bin/probe");
        spec.arguments = vec!["hang".into(), marker.into()];
        let request = maelstrom_container::compile(&spec)?;
        let devnull = std::fs::File::options().write(true).open("/dev/null")?;
        let _job = zygote.spawn(&request, devnull.as_fd(), devnull.as_fd())?;
        // One that clears its parent-death signal and leaves a child: it must die all the same.
        spec.arguments = vec!["undying".into(), marker.into()];
        let request = maelstrom_container::compile(&spec)?;
        let _undying = zygote.spawn(&request, devnull.as_fd(), devnull.as_fd())?;
        println!("started");
        std::thread::sleep(std::time::Duration::from_secs(600));
        Ok(())
    };
    if let Err(e) = run() {
        println!("failed: {e:#}");
    }
    std::process::exit(1)
}

/// Pids of probes running `hang <marker>`.
fn hanging(marker: &str) -> Vec<u32> {
    maelstrom_testbins::processes_with_args(&["/bin/probe", "hang", marker])
}

/// A worker killed with SIGKILL cannot clean up: its jobs must die all the same (for a root
/// worker too, whose jobs change uid, which clears a parent-death signal set before; and a job
/// that clears its own parent-death signal, with the child it started).
fn jobs_die_with_the_worker() -> anyhow::Result<()> {
    use std::io::BufRead;
    let marker = format!("doomed-{}", std::process::id());
    let mut worker = std::process::Command::new(std::env::current_exe()?)
        .env(WORKER_ROLE, &marker)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(worker.stdout.take().expect("piped")).read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "started", "the worker said {line:?}");
    // The plain job, the one that cleared its death signal, and that one's child.
    for _ in 0..100 {
        if hanging(&marker).len() >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    anyhow::ensure!(hanging(&marker).len() == 3, "not all jobs run: {:?}", hanging(&marker));
    worker.kill()?;
    worker.wait()?;
    for _ in 0..100 {
        if hanging(&marker).is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    anyhow::bail!("jobs outlived their killed worker: {:?}", hanging(&marker))
}

fn late_start() -> anyhow::Result<()> {
    let (stop, parked) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || parked.recv());
    let result = Zygote::start(ZygoteConfig { lanes: 1, cgroups: None });
    drop(stop);
    let _ = thread.join();
    match result {
        Err(e @ StartError::Threaded { .. }) => {
            anyhow::ensure!(e.to_string().contains("call Zygote::start first thing in main"), "{e}");
            Ok(())
        }
        Err(e) => anyhow::bail!("expected a refusal for threads, got {e}"),
        Ok(_) => anyhow::bail!("a zygote started beside another thread"),
    }
}
