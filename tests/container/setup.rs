//! The setup plan from the outside: mounts and layers as specified, and every failure before
//! exec reported as data (step, errno, path) in one clear line.

use std::path::Path;

use maelstrom_container::{Device, Mount, NetworkMode, SpawnError, Spec};

use crate::{Case, Ctx, Layer, open_to_all, probe, report, run};

pub const CASES: &[(&str, Case)] = &[
    ("setup::missing_program_is_an_exec_error", missing_program_is_an_exec_error),
    ("setup::program_without_a_slash_is_found_on_path", program_without_a_slash_is_found_on_path),
    ("setup::missing_mount_point_is_a_clear_error", missing_mount_point_is_a_clear_error),
    ("setup::missing_working_directory_is_a_clear_error", missing_working_directory_is_a_clear_error),
    ("setup::bind_mounts_honour_read_only", bind_mounts_honour_read_only),
    ("setup::layers_stack_bottom_first", layers_stack_bottom_first),
    ("setup::writable_overlay_changes_vanish_with_the_job", writable_overlay_changes_vanish_with_the_job),
    ("setup::a_kept_tree_shows_through_a_fresh_tmp", a_kept_tree_shows_through_a_fresh_tmp),
    (
        "setup::mounts_below_a_fresh_tmp_get_their_mount_points",
        mounts_below_a_fresh_tmp_get_their_mount_points,
    ),
    ("setup::sys_shows_the_jobs_own_network", sys_shows_the_jobs_own_network),
    ("setup::devpts_mqueue_and_shm_are_fresh", devpts_mqueue_and_shm_are_fresh),
    ("setup::oversized_request_is_refused_before_sending", oversized_request_is_refused_before_sending),
    ("setup::a_layer_made_anew_is_seen_by_the_next_job", a_layer_made_anew_is_seen_by_the_next_job),
    ("setup::jobs_running_at_once_share_no_file_locks", jobs_running_at_once_share_no_file_locks),
];

fn stdout(ctx: &Ctx, spec: &Spec) -> anyhow::Result<String> {
    let done = run(ctx, spec)?;
    Ok(String::from_utf8_lossy(&done.stdout.bytes).trim_end().to_owned())
}

fn setup_error(ctx: &Ctx, spec: &Spec) -> anyhow::Result<String> {
    match run(ctx, spec) {
        Ok(done) => anyhow::bail!("expected a setup error, the job ran: {:?}", done.outcome),
        Err(e) => match e.downcast_ref::<SpawnError>() {
            Some(error @ SpawnError::Setup { .. }) => Ok(error.to_string()),
            _ => anyhow::bail!("expected a setup error, got {e:#}"),
        },
    }
}

fn missing_program_is_an_exec_error(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let spec = Spec::new(vec![layer.path()], "/bin/nope");
    let error = setup_error(ctx, &spec)?;
    anyhow::ensure!(
        error == "execute the program: /bin/nope: No such file or directory (os error 2)",
        "{error}"
    );
    let spec = Spec::new(vec![layer.path()], "nope");
    let error = setup_error(ctx, &spec)?;
    anyhow::ensure!(error == "execute the program: nope: No such file or directory (os error 2)", "{error}");
    Ok(())
}

fn program_without_a_slash_is_found_on_path(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let mut spec = Spec::new(vec![layer.path()], "probe");
    spec.arguments = vec!["exit".into(), "7".into()];
    spec.environment = vec![("PATH".into(), "/nowhere:/data:/bin".into())];
    let done = run(ctx, &spec)?;
    anyhow::ensure!(done.outcome == maelstrom_container::Ended::Exited(7), "{:?}", done.outcome);
    Ok(())
}

fn missing_mount_point_is_a_clear_error(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    std::fs::remove_file(layer.path().join("dev/zero"))?;
    let mut spec = probe(&layer, &["exit", "0"]);
    spec.mounts = vec![Mount::Devices(vec![Device::Null, Device::Zero])];
    let error = setup_error(ctx, &spec)?;
    anyhow::ensure!(
        error
            == "build the container template: bind /dev/zero at /dev/zero: No such file or directory (os error 2)",
        "{error}"
    );
    spec.writable_root = true;
    let error = setup_error(ctx, &spec)?;
    anyhow::ensure!(
        error == "set up the container: bind /dev/zero at /dev/zero: No such file or directory (os error 2)",
        "{error}"
    );
    Ok(())
}

fn missing_working_directory_is_a_clear_error(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let mut spec = probe(&layer, &["exit", "0"]);
    spec.working_directory = "/nowhere".into();
    let error = setup_error(ctx, &spec)?;
    anyhow::ensure!(
        error == "change to the working directory: /nowhere: No such file or directory (os error 2)",
        "{error}"
    );
    Ok(())
}

fn bind_mounts_honour_read_only(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let host = tempfile::tempdir()?;
    open_to_all(host.path());
    std::fs::write(host.path().join("in.txt"), "hello")?;
    let bind = |read_only| Mount::Bind { source: host.path().to_owned(), target: "/data".into(), read_only };

    let mut spec = probe(&layer, &["cat", "/data/in.txt"]);
    spec.mounts = vec![bind(true)];
    anyhow::ensure!(stdout(ctx, &spec)? == "hello");
    spec.arguments = vec!["write".into(), "/data/out.txt".into(), "from the job".into()];
    anyhow::ensure!(stdout(ctx, &spec)? == format!("error:{}", libc::EROFS));

    spec.mounts = vec![bind(false)];
    anyhow::ensure!(stdout(ctx, &spec)? == "ok");
    anyhow::ensure!(std::fs::read_to_string(host.path().join("out.txt"))? == "from the job");
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().expect("a parent"))?;
    Ok(std::fs::write(path, text)?)
}

fn layers_stack_bottom_first(ctx: &Ctx) -> anyhow::Result<()> {
    let bottom = Layer::new();
    let top = tempfile::tempdir()?;
    write(&bottom.path().join("data/a"), "1")?;
    write(&bottom.path().join("data/x"), "bottom")?;
    write(&top.path().join("data/b"), "2")?;
    write(&top.path().join("data/x"), "top")?;
    let mut spec = probe(&bottom, &["ls", "/data"]);
    spec.layers.push(top.path().to_owned());
    anyhow::ensure!(stdout(ctx, &spec)? == "a,b,x");
    spec.arguments = vec!["cat".into(), "/data/x".into()];
    anyhow::ensure!(stdout(ctx, &spec)? == "top");
    Ok(())
}

/// What a layer cache does when it evicts a tree and later builds it again at the same path:
/// the lanes' templates of the old tree must not be used for the new one.
fn a_layer_made_anew_is_seen_by_the_next_job(ctx: &Ctx) -> anyhow::Result<()> {
    let base = Layer::new();
    let single = Layer::new();
    let cache = tempfile::tempdir()?;
    let tree = cache.path().join("tree");
    write(&tree.join("data/v"), "old")?;
    write(&single.path().join("data/v"), "old")?;
    // Two layers, and one (on its own, an overlay over an empty layer).
    let mut stacked = probe(&base, &["cat", "/data/v"]);
    stacked.layers.push(tree.clone());
    let alone = probe(&single, &["cat", "/data/v"]);
    // Enough runs that every lane holds a template of each.
    for _ in 0..6 {
        anyhow::ensure!(stdout(ctx, &stacked)? == "old" && stdout(ctx, &alone)? == "old");
    }
    for (i, dir) in [tree, single.path()].iter().enumerate() {
        let evicted = cache.path().join(format!("evicted-{i}"));
        std::fs::rename(dir, &evicted)?;
        anyhow::ensure!(
            std::process::Command::new("cp").arg("-a").arg(&evicted).arg(dir).status()?.success()
        );
        write(&dir.join("data/v"), "new")?;
    }
    for _ in 0..6 {
        let (a, b) = (stdout(ctx, &stacked)?, stdout(ctx, &alone)?);
        anyhow::ensure!(
            (a.as_str(), b.as_str()) == ("new", "new"),
            "a job saw the evicted layer: {a:?}, {b:?}"
        );
    }
    Ok(())
}

/// A root is a filesystem of the job's own, so a lock one job holds on a file of its root is
/// not seen by another job running at the same time, nor by the host.
fn jobs_running_at_once_share_no_file_locks(ctx: &Ctx) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    let base = Layer::new();
    let top = tempfile::tempdir()?;
    write(&base.path().join("data/f"), "base")?;
    write(&top.path().join("data/g"), "top")?;
    let mut stacked = probe(&base, &["lock", "/data/f", "0"]);
    stacked.layers.push(top.path().to_owned());
    let devnull = std::fs::File::options().write(true).open("/dev/null")?;
    for spec in [probe(&base, &["lock", "/data/f", "0"]), stacked] {
        let shared = tempfile::tempdir()?;
        open_to_all(shared.path());
        let marker = shared.path().join("locked");
        let mut holder = spec.clone();
        holder.mounts =
            vec![Mount::Bind { source: shared.path().to_owned(), target: "/work".into(), read_only: false }];
        holder.arguments = ["lock", "/data/f", "60000", "/work/locked"].iter().map(Into::into).collect();
        let request = maelstrom_container::compile(&holder)?;
        let mut job = ctx.zygote.spawn(&request, devnull.as_fd(), devnull.as_fd())?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !marker.exists() {
            if std::time::Instant::now() > deadline || job.try_wait()?.is_some() {
                let _ = job.kill();
                anyhow::bail!("the first job never took its lock");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The same mounts as the holder's, so that the two could share a template; twice, as
        // lanes take spawns in turn and one of the two is the holder's lane.
        let mut beside = holder.clone();
        beside.arguments = spec.arguments.clone();
        let other = stdout(ctx, &beside).and_then(|a| Ok(a + &stdout(ctx, &beside)?));
        let host_free = std::process::Command::new("flock")
            .args(["--nonblock", "--exclusive"])
            .arg(base.path().join("data/f"))
            .arg("true")
            .status()?
            .success();
        job.kill()?;
        job.wait()?;
        let other = other?;
        anyhow::ensure!(
            other == "lock=oklock=ok",
            "a job beside the holder could not lock its own root's file: {other}"
        );
        anyhow::ensure!(host_free, "the host saw the job's lock");
    }
    Ok(())
}

fn writable_overlay_changes_vanish_with_the_job(ctx: &Ctx) -> anyhow::Result<()> {
    let bottom = Layer::new();
    let top = tempfile::tempdir()?;
    write(&top.path().join("data/x"), "top")?;
    open_to_all(&top.path().join("data/x"));
    let mut spec = probe(&bottom, &["write", "/data/x", "changed"]);
    spec.layers.push(top.path().to_owned());
    spec.writable_root = true;
    anyhow::ensure!(stdout(ctx, &spec)? == "ok");
    anyhow::ensure!(std::fs::read_to_string(top.path().join("data/x"))? == "top");
    spec.arguments = vec!["cat".into(), "/data/x".into()];
    anyhow::ensure!(stdout(ctx, &spec)? == "top", "a change outlived its job");
    Ok(())
}

/// A project checked out under `/tmp` stays visible at its own path while the job's `/tmp` is a
/// fresh tmpfs (template and self-built plans alike), and the job's writes stay in the tmpfs.
fn a_kept_tree_shows_through_a_fresh_tmp(ctx: &Ctx) -> anyhow::Result<()> {
    let bottom = Layer::new();
    let top = tempfile::tempdir()?;
    write(&top.path().join("tmp/work/project/data"), "mine")?;
    open_to_all(&top.path().join("tmp/work/project/data"));
    for writable in [false, true] {
        let mut spec = probe(&bottom, &["cat", "/tmp/work/project/data"]);
        spec.layers.push(top.path().to_owned());
        spec.writable_root = writable;
        spec.mounts = vec![Mount::Tmp { target: "/tmp".into() }];
        let hidden = stdout(ctx, &spec)?;
        anyhow::ensure!(hidden == "error:2", "without keeping, the tmpfs hides it: {hidden}");
        spec.keep_visible = vec!["/tmp/work/project".into()];
        anyhow::ensure!(stdout(ctx, &spec)? == "mine", "writable {writable}");
        spec.working_directory = "/tmp/work/project".into();
        spec.arguments = vec!["cat".into(), "data".into()];
        anyhow::ensure!(stdout(ctx, &spec)? == "mine", "as the working directory, writable {writable}");
        spec.arguments = vec!["write".into(), "/tmp/mine".into(), "x".into()];
        anyhow::ensure!(stdout(ctx, &spec)? == "ok", "the job's /tmp is writable");
        spec.arguments = vec!["ls".into(), "/tmp".into()];
        anyhow::ensure!(stdout(ctx, &spec)? == "work", "the tmpfs holds only the way to the project");
    }
    Ok(())
}

/// Mounts below a fresh `/tmp` (a tmpfs, a bind) work though the tmpfs covers where the layers
/// had their mount points (`CARGO_TARGET_TMPDIR` of a target directory under /tmp).
fn mounts_below_a_fresh_tmp_get_their_mount_points(ctx: &Ctx) -> anyhow::Result<()> {
    let bottom = Layer::new();
    let top = tempfile::tempdir()?;
    std::fs::create_dir_all(top.path().join("tmp/target/tmp"))?;
    std::fs::create_dir_all(top.path().join("tmp/in"))?;
    let host = tempfile::tempdir()?;
    open_to_all(host.path());
    write(&host.path().join("in.txt"), "from the host")?;
    open_to_all(&host.path().join("in.txt"));
    for writable in [false, true] {
        let mut spec = probe(&bottom, &["write", "/tmp/target/tmp/x", "y"]);
        spec.layers.push(top.path().to_owned());
        spec.writable_root = writable;
        spec.mounts = vec![
            Mount::Tmp { target: "/tmp".into() },
            Mount::Tmp { target: "/tmp/target/tmp".into() },
            Mount::Bind { source: host.path().to_owned(), target: "/tmp/in".into(), read_only: true },
        ];
        anyhow::ensure!(stdout(ctx, &spec)? == "ok", "writable {writable}");
        spec.arguments = vec!["cat".into(), "/tmp/in/in.txt".into()];
        anyhow::ensure!(stdout(ctx, &spec)? == "from the host", "writable {writable}");
    }
    Ok(())
}

fn sys_shows_the_jobs_own_network(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    for network in [NetworkMode::Disabled, NetworkMode::Loopback] {
        let mut spec = probe(&layer, &["ls", "/sys/class/net"]);
        spec.network = network;
        spec.mounts = vec![Mount::Sys { target: "/sys".into() }];
        anyhow::ensure!(stdout(ctx, &spec)? == "lo", "network {network:?}");
    }
    Ok(())
}

fn devpts_mqueue_and_shm_are_fresh(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let mut spec = probe(&layer, &["ls", "/dev/pts"]);
    spec.mounts = vec![
        Mount::Devpts { target: "/dev/pts".into() },
        Mount::Mqueue { target: "/mq".into() },
        Mount::Devices(vec![Device::Shm, Device::Null]),
    ];
    anyhow::ensure!(stdout(ctx, &spec)? == "ptmx");
    spec.arguments = vec!["ls".into(), "/mq".into()];
    anyhow::ensure!(stdout(ctx, &spec)?.is_empty());
    spec.arguments = vec!["write".into(), "/dev/shm/left".into(), "x".into()];
    anyhow::ensure!(stdout(ctx, &spec)? == "ok");
    spec.arguments = vec!["ls".into(), "/dev/shm".into()];
    anyhow::ensure!(stdout(ctx, &spec)?.is_empty(), "/dev/shm kept a file from another job");
    let facts = report(ctx, &Spec { arguments: vec!["report".into()], ..spec })?;
    crate::expect_fact(&facts, "root", "bin,data,dev,mq,proc,sys,tmp,work")
}

fn oversized_request_is_refused_before_sending(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let mut spec = probe(&layer, &["exit", "0"]);
    spec.arguments = vec!["x".repeat(64 << 10).into(); 32];
    match run(ctx, &spec) {
        Err(e) if matches!(e.downcast_ref::<SpawnError>(), Some(SpawnError::TooLarge { .. })) => Ok(()),
        other => anyhow::bail!("expected TooLarge, got {other:?}"),
    }
}
