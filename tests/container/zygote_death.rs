//! The zygote's own failures: a lane that dies is seen and named, the other lanes carry on,
//! and a zygote started too late (with threads running) refuses with a clear reason.
//!
//! Runs its checks in order from `main`, since it must start a zygote before any thread and
//! then kill parts of it.

use std::os::fd::AsFd;

use maelstrom_container::{SpawnError, Spec, StartError, Zygote, ZygoteConfig};

fn main() {
    type Check = fn() -> anyhow::Result<()>;
    let checks: [(&str, Check); 1] = [("zygote_death::lane_death_is_seen_and_named", lane_death)];
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
        2 - failed
    );
    std::process::exit(i32::from(failed != 0));
}

fn lane_death() -> anyhow::Result<()> {
    let zygote = Zygote::start(ZygoteConfig { lanes: 2 })?;
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

fn late_start() -> anyhow::Result<()> {
    let (stop, parked) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || parked.recv());
    let result = Zygote::start(ZygoteConfig { lanes: 1 });
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
