//! What a job can see from inside its container, checked by the probe.

use maelstrom_container::{Allowance, Device, Ended, Mount, Spec};

use crate::{Case, Ctx, Layer, expect_fact, job_host_uid, open_to_all, probe, report, run};

pub const CASES: &[(&str, Case)] = &[
    ("isolation::job_is_pid_1_with_its_own_hostname_and_ids", job_is_pid_1_with_its_own_hostname_and_ids),
    ("isolation::only_the_layers_files_are_visible", only_the_layers_files_are_visible),
    ("isolation::root_is_read_only_unless_asked", root_is_read_only_unless_asked),
    ("isolation::tmp_is_private_to_each_job", tmp_is_private_to_each_job),
    ("isolation::a_full_tmpfs_is_named_when_its_job_fails", a_full_tmpfs_is_named_when_its_job_fails),
    ("isolation::environment_is_exactly_the_given_one", environment_is_exactly_the_given_one),
    ("isolation::only_stdio_fds_are_open", only_stdio_fds_are_open),
    ("isolation::denied_syscall_fails_with_eperm", denied_syscall_fails_with_eperm),
    (
        "isolation::the_default_sandbox_refuses_what_tests_do_not_need",
        the_default_sandbox_refuses_what_tests_do_not_need,
    ),
    ("isolation::a_spec_allows_by_name_and_gets_only_that", a_spec_allows_by_name_and_gets_only_that),
    ("isolation::no_process_outside_can_be_signalled", no_process_outside_can_be_signalled),
    ("isolation::proc_shows_only_the_job", proc_shows_only_the_job),
    ("isolation::core_dumps_are_off", core_dumps_are_off),
    ("isolation::jobs_never_hold_host_root", jobs_never_hold_host_root),
];

fn job_is_pid_1_with_its_own_hostname_and_ids(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let mut spec = probe(&layer, &["report"]);
    spec.hostname = "box-7".into();
    spec.user = 1000;
    spec.group = 1001;
    spec.working_directory = "/work".into();
    let facts = report(ctx, &spec)?;
    expect_fact(&facts, "pid", "1")?;
    expect_fact(&facts, "ppid", "0")?;
    expect_fact(&facts, "hostname", "box-7")?;
    expect_fact(&facts, "uid", "1000")?;
    expect_fact(&facts, "gid", "1001")?;
    expect_fact(&facts, "cwd", "/work")
}

fn only_the_layers_files_are_visible(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let facts = report(ctx, &probe(&layer, &["report"]))?;
    expect_fact(&facts, "root", "bin,data,dev,mq,proc,sys,tmp,work")?;
    let done = run(ctx, &probe(&layer, &["ls", "/dev"]))?;
    anyhow::ensure!(
        String::from_utf8_lossy(&done.stdout.bytes).trim()
            == "full,fuse,null,ptmx,pts,random,shm,tty,urandom,zero"
    );
    Ok(())
}

fn root_is_read_only_unless_asked(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let facts = report(ctx, &probe(&layer, &["report"]))?;
    expect_fact(&facts, "root_writable", &format!("no:{}", libc::EROFS))?;

    let mut spec = probe(&layer, &["report"]);
    spec.writable_root = true;
    open_to_all(&layer.path());
    open_to_all(&layer.path().join("data"));
    let facts = report(ctx, &spec)?;
    expect_fact(&facts, "root_writable", "yes")?;
    let done = run(ctx, &Spec { arguments: vec!["write".into(), "/data/new".into(), "x".into()], ..spec })?;
    anyhow::ensure!(String::from_utf8_lossy(&done.stdout.bytes).trim() == "ok");
    anyhow::ensure!(!layer.path().join("data/new").exists(), "a write to a writable root reached the layer");
    anyhow::ensure!(
        !layer.path().join("tmp/left-by-probe").exists(),
        "a write to a writable root reached the layer"
    );
    Ok(())
}

fn tmp_is_private_to_each_job(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let mut spec = probe(&layer, &["report"]);
    spec.mounts = vec![Mount::Tmp { target: "/tmp".into() }];
    for _ in 0..3 {
        let facts = report(ctx, &spec)?;
        expect_fact(&facts, "tmp", "")?;
        expect_fact(&facts, "tmp_writable", "yes")?;
    }
    anyhow::ensure!(
        std::fs::read_dir(layer.path().join("tmp"))?.next().is_none(),
        "a job's /tmp reached the layer"
    );
    Ok(())
}

/// Each tmpfs (and a writable root's changes) holds `tmpfs_bytes`; a job that fails having
/// filled one has it named, and one that passes, or fills none, has none named.
fn a_full_tmpfs_is_named_when_its_job_fails(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    open_to_all(&layer.path().join("data"));
    let mut spec = probe(&layer, &["fill", "/tmp/filler", "64"]);
    spec.mounts = vec![Mount::Tmp { target: "/tmp".into() }, Mount::Tmp { target: "/dev/shm".into() }];
    spec.tmpfs_bytes = 2 << 20;
    let done = run(ctx, &spec)?;
    let out = String::from_utf8_lossy(&done.stdout.bytes);
    anyhow::ensure!(
        done.outcome == Ended::Exited(1) && out.contains("errno=28"),
        "{:?}: {out}",
        done.outcome
    );
    let names: Vec<String> = done.met.iter().map(ToString::to_string).collect();
    anyhow::ensure!(names == ["/tmp full (2 MiB)"], "{names:?}");

    spec.arguments = vec!["fill".into(), "/tmp/filler".into(), "1".into()];
    let done = run(ctx, &spec)?;
    anyhow::ensure!(
        done.outcome == Ended::Exited(0) && done.met.is_empty(),
        "{:?} {:?}",
        done.outcome,
        done.met
    );

    // A job that fails for another reason, its tmpfs mounts not full.
    spec.arguments = vec!["exit".into(), "3".into()];
    let done = run(ctx, &spec)?;
    anyhow::ensure!(
        done.outcome == Ended::Exited(3) && done.met.is_empty(),
        "{:?} {:?}",
        done.outcome,
        done.met
    );

    // Past the first three, a job's tmpfs mounts are not watched; the job runs all the same.
    spec.mounts = ["/tmp", "/dev/shm", "/mq", "/work"].map(|t| Mount::Tmp { target: t.into() }).to_vec();
    for (file, named) in [("/work/filler", &[][..]), ("/mq/filler", &["/mq full (2 MiB)"][..])] {
        spec.arguments = vec!["fill".into(), file.into(), "64".into()];
        let done = run(ctx, &spec)?;
        let names: Vec<String> = done.met.iter().map(ToString::to_string).collect();
        anyhow::ensure!(done.outcome == Ended::Exited(1) && names == named, "{:?} {names:?}", done.outcome);
    }

    let mut writable = probe(&layer, &["fill", "/data/filler", "64"]);
    writable.writable_root = true;
    writable.mounts = vec![Mount::Tmp { target: "/tmp".into() }];
    writable.tmpfs_bytes = 1 << 20;
    let done = run(ctx, &writable)?;
    let names: Vec<String> = done.met.iter().map(ToString::to_string).collect();
    anyhow::ensure!(
        done.outcome == Ended::Exited(1) && names == ["/ full (1 MiB)"],
        "{:?} {names:?}",
        done.outcome
    );
    Ok(())
}

fn environment_is_exactly_the_given_one(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let mut spec = probe(&layer, &["report"]);
    spec.environment = vec![("A".into(), "1".into()), ("B".into(), "two words".into())];
    let facts = report(ctx, &spec)?;
    expect_fact(&facts, "env", "A=1\u{1f}B=two words")?;
    spec.environment.clear();
    expect_fact(&report(ctx, &spec)?, "env", "")
}

fn only_stdio_fds_are_open(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let facts = report(ctx, &probe(&layer, &["report"]))?;
    expect_fact(&facts, "fds", "0,1,2")
}

fn denied_syscall_fails_with_eperm(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let facts = report(ctx, &probe(&layer, &["report"]))?;
    expect_fact(&facts, "keyctl", &libc::EPERM.to_string())
}

const TRIES: &[&str] =
    &["try", "userns", "netns", "io_uring", "ptrace", "fsopen", "userfaultfd", "clone3", "statmount", "perf"];

fn the_default_sandbox_refuses_what_tests_do_not_need(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let facts = report(ctx, &probe(&layer, TRIES))?;
    let (eperm, enosys) = (libc::EPERM.to_string(), libc::ENOSYS.to_string());
    for what in ["userns", "netns", "io_uring", "ptrace", "fsopen", "userfaultfd", "perf"] {
        expect_fact(&facts, what, &eperm)?;
    }
    // clone3's flags are out of a filter's reach: it looks absent, and libc falls back to clone.
    expect_fact(&facts, "clone3", &enosys)?;
    // Not on the allowlist.
    expect_fact(&facts, "statmount", &enosys)?;
    expect_fact(&facts, "caps", "0000000000000000")
}

fn a_spec_allows_by_name_and_gets_only_that(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let mut spec = probe(&layer, TRIES);
    spec.allow = vec![Allowance::IoUring, Allowance::Ptrace];
    let facts = report(ctx, &spec)?;
    expect_fact(&facts, "io_uring", "ok")?;
    expect_fact(&facts, "ptrace", "ok")?;
    for what in ["userns", "userfaultfd", "perf"] {
        expect_fact(&facts, what, &libc::EPERM.to_string())?;
    }
    expect_fact(&facts, "caps", "0000000000000000")?;

    spec.allow = vec![
        Allowance::UserNamespaces,
        Allowance::Capabilities,
        Allowance::Userfaultfd,
        Allowance::PerfEvents,
    ];
    let facts = report(ctx, &spec)?;
    expect_fact(&facts, "userns", "ok")?;
    // With its capabilities, root in the job's user namespace may make namespaces it owns.
    expect_fact(&facts, "netns", "ok")?;
    expect_fact(&facts, "userfaultfd", "ok")?;
    // Past the filter, the kernel reads the (null) attributes.
    expect_fact(&facts, "perf", &libc::EFAULT.to_string())?;
    expect_fact(&facts, "clone3", &libc::EINVAL.to_string())?;
    expect_fact(&facts, "io_uring", &libc::EPERM.to_string())?;
    expect_fact(&facts, "statmount", &libc::ENOSYS.to_string())?;
    anyhow::ensure!(
        facts.get("caps").is_some_and(|c| c != "0000000000000000"),
        "capabilities kept: {facts:?}"
    );

    // A job with no allowances after those still gets the default sandbox.
    let facts = report(ctx, &probe(&layer, TRIES))?;
    expect_fact(&facts, "io_uring", &libc::EPERM.to_string())
}

fn no_process_outside_can_be_signalled(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let ours = std::process::id().to_string();
    let facts = report(ctx, &probe(&layer, &["report", "--outside-pid", &ours]))?;
    expect_fact(&facts, "kill_outside", &libc::ESRCH.to_string())?;
    let facts = report(ctx, &probe(&layer, &["report", "--outside-pid", "-1"]))?;
    expect_fact(&facts, "kill_outside", &libc::ESRCH.to_string())
}

fn proc_shows_only_the_job(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let mut spec = probe(&layer, &["report"]);
    spec.mounts = vec![Mount::Proc { target: "/proc".into() }, Mount::Devices(vec![Device::Null])];
    let facts = report(ctx, &spec)?;
    expect_fact(&facts, "proc_pids", "1")
}

fn core_dumps_are_off(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let facts = report(ctx, &probe(&layer, &["report"]))?;
    expect_fact(&facts, "rlimit_core", "0,0")?;
    let done = run(ctx, &probe(&layer, &["segfault"]))?;
    anyhow::ensure!(done.outcome == Ended::Signaled(libc::SIGSEGV), "{:?}", done.outcome);
    Ok(())
}

/// Whatever the worker runs as, a job's files on the host belong to an unprivileged uid (the
/// worker's own, or nobody for a root worker), and global sysctls stay out of its reach.
fn jobs_never_hold_host_root(ctx: &Ctx) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let layer = Layer::new();
    let host = tempfile::tempdir()?;
    open_to_all(host.path());
    let mut spec = probe(&layer, &["write", "/data/made-by-job", "x"]);
    spec.mounts =
        vec![Mount::Bind { source: host.path().to_owned(), target: "/data".into(), read_only: false }];
    let done = run(ctx, &spec)?;
    anyhow::ensure!(done.stdout.bytes == b"ok\n", "{:?}", String::from_utf8_lossy(&done.stdout.bytes));
    let owner = std::fs::metadata(host.path().join("made-by-job"))?.uid();
    anyhow::ensure!(owner == job_host_uid(), "the job's file belongs to uid {owner}, not {}", job_host_uid());

    let current = std::fs::read_to_string("/proc/sys/vm/stat_interval")?;
    let mut spec = probe(&layer, &["write", "/proc/sys/vm/stat_interval", current.trim()]);
    spec.mounts = vec![Mount::Proc { target: "/proc".into() }];
    let done = run(ctx, &spec)?;
    let said = String::from_utf8_lossy(&done.stdout.bytes).trim().to_owned();
    anyhow::ensure!(said == format!("error:{}", libc::EACCES), "a job wrote a global sysctl: {said}");
    Ok(())
}
