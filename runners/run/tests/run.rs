//! maelstrom-run as a user runs it: the built binary, a JSON stream on stdin, real containers.
//! Each case has its own project directory (holding the probe) and its own cache unless it
//! tests sharing one.

#![expect(clippy::tests_outside_test_module, reason = "integration tests sit at the top of their file")]

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn binary() -> PathBuf {
    std::env::var_os("MAELSTROM_RUN_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_maelstrom-run")), PathBuf::from)
}

struct Project {
    dir: tempfile::TempDir,
    cache: PathBuf,
}

impl Project {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("maelstrom-run-test-").tempdir().unwrap();
        std::fs::copy(maelstrom_testbins::probe(), dir.path().join("probe")).unwrap();
        let cache = dir.path().join(".cache");
        Self { dir, cache }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command
            .env_clear()
            .env("HOME", self.path())
            .env("PATH", "/usr/bin:/bin")
            .current_dir(self.path())
            .arg("--cache-root")
            .arg(&self.cache)
            .args(args);
        command
    }

    fn run_with(&self, command: Command, stdin: &str) -> Output {
        start(command, stdin).wait_with_output().unwrap()
    }

    fn run(&self, args: &[&str], jobs: &[Value]) -> Output {
        let stream: String = jobs.iter().map(|j| j.to_string() + "\n").collect();
        self.run_with(self.command(&["-c", "-"].iter().chain(args).copied().collect::<Vec<_>>()), &stream)
    }
}

/// Starts `command` with its output piped, and writes `stdin` to it.
fn start(mut command: Command, stdin: &str) -> std::process::Child {
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // maelstrom-run may exit before reading (a configuration error): a broken pipe is fine.
    let written = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    assert!(written.is_ok() || written.is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe));
    child
}

/// The probe at /bin/probe, with the mount points every case uses.
fn probe_layers() -> Value {
    json!([
        {"paths": ["probe"], "prepend_prefix": "/bin"},
        {"stubs": ["/{proc,sys,tmp,data,mq,work}/", "/dev/{null,zero,full,random,urandom,tty,fuse}", "/dev/{pts,shm}/"]}
    ])
}

/// The probe's layers and `/scratch`, an ordinary directory (0755) holding `old`.
fn scratch_layers(p: &Project) -> Value {
    let scratch = p.path().join("scratch");
    if !scratch.exists() {
        std::fs::create_dir(&scratch).unwrap();
        std::fs::set_permissions(&scratch, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(scratch.join("old"), "old").unwrap();
    }
    let mut layers = probe_layers().as_array().unwrap().clone();
    layers.push(json!({"paths": ["scratch", "scratch/old"]}));
    Value::Array(layers)
}

fn probe_job(args: &[&str]) -> Value {
    json!({"program": "/bin/probe", "arguments": args, "layers": probe_layers()})
}

fn with(mut job: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        job[k] = v.clone();
    }
    job
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn facts(out: &Output) -> std::collections::BTreeMap<String, String> {
    stdout(out).lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect()
}

#[test]
fn the_readme_example_runs() {
    let p = Project::new();
    let out = p.run(
        &[],
        &[json!({
            "program": "/bin/echo", "arguments": ["hello", "world"],
            "layers": [{"paths": ["/bin/echo"]}, {"shared_library_dependencies": ["/bin/echo"]}]
        })],
    );
    assert_eq!(stdout(&out), "hello world\n", "{}", stderr(&out));
    assert!(out.status.success());
}

#[test]
fn exit_code_is_the_first_failing_jobs_and_failures_are_annotated() {
    let p = Project::new();
    let out = p.run(
        &["--slots", "1"],
        &[probe_job(&["exit", "0"]), probe_job(&["exit", "3"]), probe_job(&["exit", "5"])],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("job 2: exited with code 3\n") && err.contains("job 3: exited with code 5\n"),
        "{err}"
    );
    assert!(!err.contains("job 1:"), "a successful job is not annotated: {err}");
}

#[test]
fn signals_timeouts_setup_errors_and_truncation_are_reported() {
    let p = Project::new();
    let out = p.run(
        &["--inline-limit", "1000"],
        &[
            probe_job(&["segfault"]),
            with(probe_job(&["hang"]), json!({"timeout": 1})),
            with(probe_job(&[]), json!({"program": "/nope"})),
            probe_job(&["spew", "5000"]),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for expected in [
        "job 1: killed by signal 11\n",
        "job 2: timed out\n",
        "job 3: execution error: execute the program: /nope: No such file or directory (os error 2)\n",
        "job 4: stdout truncated, 4000 bytes lost\n",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from {err}");
    }
    assert_eq!(stdout(&out), "x".repeat(1000));
}

#[test]
fn one_exits_the_way_the_job_did() {
    let p = Project::new();
    let out = p.run(&["--one"], &[probe_job(&["exit", "42"]), probe_job(&["exit", "0"])]);
    assert_eq!(out.status.code(), Some(42));
    let out = p.run(&["--one"], &[probe_job(&["segfault"])]);
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{out:?}");
    let out = p.run(&["--one", "/bin/probe", "exit", "7"], &[probe_job(&["exit", "0"])]);
    assert_eq!(out.status.code(), Some(7), "positional program and arguments replace the spec's");
    let out = p.run(&["/bin/probe"], &[probe_job(&["exit", "0"])]);
    assert!(stderr(&out).contains("need --one"), "{}", stderr(&out));
}

#[test]
fn file_option_reads_specs_from_a_file() {
    let p = Project::new();
    std::fs::write(p.path().join("jobs.json"), probe_job(&["stderr", "from a file"]).to_string()).unwrap();
    let out = p.run_with(p.command(&["-c", "-", "--file", "jobs.json"]), "");
    assert_eq!(stderr(&out), "from a file");
    assert!(out.status.success());
}

#[test]
fn environment_forms_and_substitution() {
    let p = Project::new();
    let mut command = p.command(&["-c", "-"]);
    command.env("FROM_CLIENT", "client-value");
    let job = with(
        probe_job(&["report"]),
        json!({"environment": [
            {"vars": {"A": "1", "C": "$env{FROM_CLIENT}", "D": "$env{UNSET:-fallback}", "E": "$$5"}, "extend": false},
            {"vars": {"A": "$prev{A}-2", "B": "$prev{C}"}, "extend": true}
        ]}),
    );
    let out = p.run_with(command, &job.to_string());
    assert_eq!(
        facts(&out)["env"],
        "A=1-2\u{1f}B=client-value\u{1f}C=client-value\u{1f}D=fallback\u{1f}E=$5",
        "{}",
        stderr(&out)
    );
    let out = p.run(&[], &[with(probe_job(&["report"]), json!({"environment": {"ONLY": "map"}}))]);
    assert_eq!(facts(&out)["env"], "ONLY=map");
    let out = p.run(&[], &[with(probe_job(&["report"]), json!({"environment": {"X": "$env{NOPE}"}}))]);
    assert!(
        stderr(&out).contains("job 1: error: environment variable X: unknown variable `$env{NOPE}`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn every_layer_kind_and_prefix_option() {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("assets/deep")).unwrap();
    std::fs::write(p.path().join("assets/a.txt"), "glob-a").unwrap();
    std::fs::write(p.path().join("assets/deep/b.txt"), "glob-b").unwrap();
    std::fs::write(p.path().join("assets/skip.bin"), "no").unwrap();
    std::os::unix::fs::symlink("a.txt", p.path().join("assets/link")).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(7);
    header.set_mode(0o644);
    tar.append_data(&mut header, "from/tar.txt", &b"tar-ok\n"[..]).unwrap();
    std::fs::write(p.path().join("layer.tar"), tar.into_inner().unwrap()).unwrap();

    let layers = |extra: Value| {
        let mut all = probe_layers().as_array().unwrap().clone();
        all.push(extra);
        all
    };
    let cases = [
        (json!({"tar": "layer.tar"}), vec!["cat", "/from/tar.txt"], "tar-ok\n"),
        (
            json!({"glob": "assets/**/*.txt", "strip_prefix": "assets/", "prepend_prefix": "/g"}),
            vec!["ls", "/g"],
            "a.txt,deep\n",
        ),
        (json!({"paths": ["assets/link"]}), vec!["ls", "/assets"], "link\n"),
        (json!({"paths": ["assets/link"], "follow_symlinks": true}), vec!["cat", "/assets/link"], "glob-a"),
        (json!({"paths": ["assets"]}), vec!["ls", "/assets"], "\n"),
        (json!({"stubs": ["/s/{one,two}", "/s/dir/"]}), vec!["ls", "/s"], "dir,one,two\n"),
        (json!({"symlinks": [{"link": "/work/to-a", "target": "/data/a"}]}), vec!["ls", "/work"], "to-a\n"),
    ];
    for (layer, args, expected) in cases {
        let job = json!({"program": "/bin/probe", "arguments": args, "layers": layers(layer.clone())});
        let out = p.run(&[], &[job]);
        assert_eq!(stdout(&out), expected, "layer {layer}: {}", stderr(&out));
    }
    let canonical = std::fs::canonicalize(p.path().join("assets/a.txt")).unwrap();
    let job = json!({"program": "/bin/probe", "arguments": ["cat", canonical.to_str().unwrap()],
        "layers": layers(json!({"paths": ["assets/a.txt"], "canonicalize": true}))});
    assert_eq!(stdout(&p.run(&[], &[job])), "glob-a");
    let out = p.run(&[], &[json!({"program": "/bin/sh", "arguments": ["-c", "echo dynamic"],
        "layers": [{"paths": ["/bin/sh"], "follow_symlinks": true}, {"shared_library_dependencies": ["/bin/sh"]}]})]);
    assert_eq!(stdout(&out), "dynamic\n", "{}", stderr(&out));
    let out = p.run(&[], &[with(probe_job(&[]), json!({"layers": [{"command": "make"}]}))]);
    assert!(stderr(&out).contains("command layers are not supported yet"), "{}", stderr(&out));
}

#[test]
fn every_mount_kind() {
    let p = Project::new();
    std::fs::create_dir(p.path().join("shared")).unwrap();
    std::fs::write(p.path().join("shared/in"), "bound").unwrap();
    let mounts = |m: Value| json!({"mounts": m});
    let cases = [
        (
            mounts(
                json!([{"type": "bind", "mount_point": "/data", "local_path": "shared", "read_only": true}]),
            ),
            vec!["cat", "/data/in"],
            "bound".to_string(),
        ),
        (
            mounts(
                json!([{"type": "bind", "mount_point": "/data", "local_path": "shared", "read_only": true}]),
            ),
            vec!["write", "/data/out", "x"],
            format!("error:{}\n", libc::EROFS),
        ),
        (
            mounts(json!([{"type": "devices", "devices": ["null", "zero", "shm"]}])),
            vec!["write", "/dev/shm/f", "x"],
            "ok\n".into(),
        ),
        (
            mounts(json!([{"type": "devpts", "mount_point": "/dev/pts"}])),
            vec!["ls", "/dev/pts"],
            "ptmx\n".into(),
        ),
        (mounts(json!([{"type": "mqueue", "mount_point": "/mq"}])), vec!["ls", "/mq"], "\n".into()),
        (
            mounts(json!([{"type": "sys", "mount_point": "/sys"}])),
            vec!["ls", "/sys/class/net"],
            "lo\n".into(),
        ),
        (
            mounts(json!([{"type": "tmp", "mount_point": "/tmp"}])),
            vec!["write", "/tmp/f", "x"],
            "ok\n".into(),
        ),
    ];
    for (extra, args, expected) in cases {
        let out = p.run(&[], &[with(probe_job(&args), extra.clone())]);
        assert_eq!(stdout(&out), expected, "{extra}: {}", stderr(&out));
    }
    let out = p
        .run(&[], &[with(probe_job(&["report"]), mounts(json!([{"type": "proc", "mount_point": "/proc"}])))]);
    assert_eq!(facts(&out)["proc_pids"], "1");
    let rw = mounts(json!([{"type": "bind", "mount_point": "/data", "local_path": "shared"}]));
    std::fs::set_permissions(p.path().join("shared"), std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .unwrap();
    assert_eq!(stdout(&p.run(&[], &[with(probe_job(&["write", "/data/out", "rw"]), rw)])), "ok\n");
    assert_eq!(std::fs::read_to_string(p.path().join("shared/out")).unwrap(), "rw");
}

#[test]
fn network_user_group_workdir_and_writable_root() {
    let p = Project::new();
    let report = |extra: Value| facts(&p.run(&[], &[with(probe_job(&["report"]), extra)]));
    assert_eq!(report(json!({}))["lo"], format!("down:{}", libc::ENETUNREACH));
    assert_eq!(report(json!({"network": "disabled"}))["lo"], format!("down:{}", libc::ENETUNREACH));
    assert_eq!(report(json!({"network": "loopback"}))["lo"], "up");
    assert_eq!(report(json!({"network": "local"}))["lo"], "up");
    let f = report(json!({"user": 1234, "group": 4321, "working_directory": "/work"}));
    assert_eq!((f["uid"].as_str(), f["gid"].as_str(), f["cwd"].as_str()), ("1234", "4321", "/work"));
    assert_eq!(report(json!({}))["root_writable"], format!("no:{}", libc::EROFS));
    let write = json!({
        "program": "/bin/probe",
        "arguments": ["write", "/scratch/new", "x"],
        "layers": scratch_layers(&p),
    });
    assert_eq!(stdout(&p.run(&[], std::slice::from_ref(&write))), format!("error:{}\n", libc::EROFS));
    // A writable root is the job's to change, whoever runs the worker (a root worker's jobs run
    // as the host's nobody, and the layers are theirs all the same): a new file in a layer's
    // directory, an existing file replaced, a new directory at the top.
    let writable = |args: &[&str]| {
        let job = with(write.clone(), json!({"arguments": args, "enable_writable_file_system": true}));
        let out = p.run(&[], &[job]);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(writable(&["write", "/scratch/new", "x"]), "ok\n");
    assert_eq!(writable(&["write", "/scratch/old", "new"]), "ok\n");
    assert_eq!(writable(&["mkdir", "/made"]), "ok\n");
    // The layers' files are the job's root's, as they are its own worker's.
    let owner = p.run(&[], &[with(write.clone(), json!({"arguments": ["owner", "/scratch/old"]}))]);
    assert_eq!(stdout(&owner), "0\n", "{}", stderr(&owner));
    assert_eq!(
        std::fs::read_to_string(p.path().join("scratch/old")).unwrap(),
        "old",
        "the host's file changed"
    );
    assert!(!p.path().join("scratch/new").exists(), "a write reached the host");
}

#[test]
fn higher_priority_waiting_jobs_start_first() {
    let p = Project::new();
    // The first job holds the only slot, so the other two wait, and the higher goes first.
    let out = p.run(
        &["--slots", "1"],
        &[
            with(probe_job(&["hang"]), json!({"timeout": 1})),
            with(probe_job(&["stderr", "low\n"]), json!({"priority": -1})),
            with(probe_job(&["stderr", "high\n"]), json!({"priority": 5})),
        ],
    );
    let err = stderr(&out);
    assert!(err.find("high").unwrap() < err.find("low").unwrap(), "{err}");
}

#[test]
fn named_containers_and_inheritance() {
    let p = Project::new();
    let containers = json!({"containers": {
        "base": {"layers": probe_layers(), "environment": {"A": "1"}, "network": "loopback", "user": 5},
        "mid": {"parent": {"name": "base", "use": ["layers", "environment"]}, "added_environment": {"B": "2"}}
    }});
    let job = json!({"program": "/bin/probe", "arguments": ["report"], "parent": "mid", "added_environment": {"C": "3"}});
    let out = p.run(&[], &[containers.clone(), job]);
    let f = facts(&out);
    assert_eq!(f["env"], "A=1\u{1f}B=2\u{1f}C=3", "{}", stderr(&out));
    assert_eq!(f["lo"], format!("down:{}", libc::ENETUNREACH), "mid does not use network");
    assert_eq!(f["uid"], "0", "mid does not use user");
    let job = json!({"program": "/bin/probe", "arguments": ["report"], "parent": "base"});
    let f = facts(&p.run(&[], &[containers.clone(), job]));
    assert_eq!((f["lo"].as_str(), f["uid"].as_str()), ("up", "5"), "an implicit use inherits everything");
    let bad = json!({"program": "/bin/probe", "parent": {"name": "base", "use": ["layers"]}, "layers": []});
    let out = p.run(&[], &[containers, bad]);
    assert!(stderr(&out).contains("(try `added_layers` instead)"), "{}", stderr(&out));
    let out = p.run(&[], &[with(probe_job(&[]), json!({"image": "docker://alpine"}))]);
    assert!(
        stderr(&out).contains("container images (`image = \"docker://alpine\"`) are not supported yet"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mistakes_in_the_stream_get_one_clear_line() {
    let p = Project::new();
    let out = p.run_with(p.command(&["-c", "-"]), "{\"program\": \"/bin/probe\",\n \"bogus\": 1}");
    let err = stderr(&out);
    assert!(err.starts_with("maelstrom-run: stdin:2:9: unknown field `bogus`, expected one of"), "{err}");
    assert_eq!(out.status.code(), Some(1));
    let out = p.run_with(p.command(&["-c", "-"]), "{\"program\": \"x\" \"layers\": []}");
    assert_eq!(stderr(&out), "maelstrom-run: stdin:1:17: expected `,` or `}`\n");
    let out = p.run(&[], &[json!({"program": "/bin/true", "layers": [{"paths": ["no/such/file"]}]})]);
    assert!(stderr(&out).contains("job 1: error: paths layer: "), "{}", stderr(&out));
    assert!(stderr(&out).contains("no/such/file: No such file or directory"), "{}", stderr(&out));
    let out = p.run(&[], &[with(probe_job(&[]), json!({"program": "missing-program"}))]);
    assert!(
        stderr(&out).contains(
            "job 1: execution error: execute the program: missing-program: No such file or directory"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn configuration_layers_and_options() {
    let p = Project::new();
    let job = probe_job(&["spew", "300"]).to_string();
    let mut env = p.command(&["-c", "-"]);
    env.env("MAELSTROM_RUN_INLINE_LIMIT", "100");
    assert_eq!(stdout(&p.run_with(env, &job)).len(), 100, "program-specific environment");
    let mut generic = p.command(&["-c", "-"]);
    generic.env("MAELSTROM_INLINE_LIMIT", "50");
    assert_eq!(stdout(&p.run_with(generic, &job)).len(), 50, "generic environment");
    let mut cli = p.command(&["-c", "-", "--inline-limit", "20"]);
    cli.env("MAELSTROM_RUN_INLINE_LIMIT", "100");
    assert_eq!(stdout(&p.run_with(cli, &job)).len(), 20, "the command line wins");
    let file = p.path().join("config.toml");
    std::fs::write(&file, "inline-limit = 10\nslots = 2\n").unwrap();
    let out = p.run_with(p.command(&["-c", file.to_str().unwrap()]), &job);
    assert_eq!(stdout(&out).len(), 10, "a config file: {}", stderr(&out));
    let xdg = p.path().join("xdg");
    std::fs::create_dir_all(xdg.join("maelstrom/run")).unwrap();
    std::fs::write(xdg.join("maelstrom/run/config.toml"), "inline-limit = \"30 B\"\n").unwrap();
    let mut searched = p.command(&[]);
    searched.env("XDG_CONFIG_HOME", &xdg);
    assert_eq!(stdout(&p.run_with(searched, &job)).len(), 30, "the XDG config file");
    let printed =
        p.run_with(p.command(&["-c", file.to_str().unwrap(), "-P", "-L", "debug", "--slots", "3"]), "");
    let text = stdout(&printed);
    assert!(
        text.contains("Debug")
            && text.contains("slots: (\n        3,")
            && text.contains("Size(\n            10,"),
        "{text}"
    );
    std::fs::write(&file, "inline-limit = 10\nbogus = 1\n").unwrap();
    let out = p.run_with(p.command(&["-c", file.to_str().unwrap()]), &job);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("config.toml: unknown key `bogus`"), "{}", stderr(&out));
    let out = p.run_with(p.command(&["-c", "-", "--slots", "0"]), &job);
    assert!(stderr(&out).contains("slots from command line: must be between 1 and 1000"), "{}", stderr(&out));
    let out = p.run_with(p.command(&["-c", "-", "--cache-size", "lots"]), &job);
    assert!(stderr(&out).contains("--cache-size: bad size \"lots\""), "{}", stderr(&out));
}

#[test]
fn missing_kernel_features_are_explained() {
    let p = Project::new();
    let job = probe_job(&["exit", "0"]).to_string();
    for (what, expected) in [
        (
            "userns",
            "unprivileged user namespaces look disabled: set the sysctls kernel.unprivileged_userns_clone=1",
        ),
        ("io_uring", "io_uring is unavailable (check the sysctl kernel.io_uring_disabled"),
    ] {
        let mut command = Command::new(maelstrom_testbins::probe());
        command
            .args(["deny", what, "--"])
            .arg(binary())
            .args(["-c", "-", "--cache-root"])
            .arg(&p.cache)
            .env_clear()
            .current_dir(p.path());
        let out = p.run_with(command, &job);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{what}: {}", stderr(&out));
    }
}

fn trees(cache: &Path) -> Vec<(String, std::time::SystemTime)> {
    let mut trees: Vec<_> = std::fs::read_dir(cache.join("local-worker/v1/trees"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().modified().unwrap())
        })
        .collect();
    trees.sort();
    trees
}

#[test]
fn the_cache_survives_a_restart_and_serves_concurrent_runs() {
    let p = Project::new();
    let job = probe_job(&["exit", "0"]);
    assert!(p.run(&[], std::slice::from_ref(&job)).status.success());
    let first = trees(&p.cache);
    assert_eq!(first.len(), 2, "one tree per layer");
    assert!(p.run(&[], std::slice::from_ref(&job)).status.success());
    assert_eq!(trees(&p.cache), first, "a second run reuses the trees untouched");

    let stream: String = (0..40).map(|i| probe_job(&["exit", &(i % 2).to_string()]).to_string()).collect();
    let runs: Vec<_> = (0..2).map(|_| start(p.command(&["-c", "-"]), &stream)).collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(stderr(&out).matches("exited with code 1").count(), 20);
    }
    assert_eq!(trees(&p.cache), first);
}

#[test]
fn the_cache_stays_within_its_bound() {
    let p = Project::new();
    for i in 0..3 {
        std::fs::write(p.path().join(format!("payload{i}")), vec![b'x'; 100_000]).unwrap();
        let job = with(
            probe_job(&["exit", "0"]),
            json!({"layers": [
                probe_layers()[0].clone(), {"paths": [format!("payload{i}")]}
            ]}),
        );
        assert!(p.run(&["--cache-size", "150 kB"], &[job]).status.success());
    }
    let left = trees(&p.cache).len();
    assert!(left <= 3, "old trees were not evicted: {left} left");
}

/// Every job gets its share of the machine's processes (counted per job), so a fork bomb stops
/// at its share; fewer slots, a bigger share. Open files stay bounded too.
#[test]
fn jobs_get_their_share_of_processes_and_open_files() {
    let project = Project::new();
    let limits = |slots: &str| {
        let out = project.run(&["--slots", slots], &[probe_job(&["report"])]);
        assert!(out.status.success(), "{}", stderr(&out));
        let facts = facts(&out);
        let pair = |key: &str| -> (u64, u64) {
            let (soft, hard) = facts[key].split_once(',').unwrap();
            (soft.parse().unwrap(), hard.parse().unwrap())
        };
        (pair("rlimit_nproc"), pair("rlimit_nofile"))
    };
    let (one, _) = limits("1");
    let (four, files) = limits("4");
    assert_eq!(one.0, one.1, "{one:?}");
    // One more where a job cgroup holds the limit: the rlimit is its backstop.
    assert!((64..=16_385).contains(&one.1), "processes with one slot: {one:?}");
    assert!((64..=one.1).contains(&four.1), "processes with four slots: {four:?}, one: {one:?}");
    assert!(files.1 <= 65_536 && files.0 <= files.1, "open files: {files:?}");
}

/// The default sandbox refuses io_uring, ptrace and new user namespaces; a job's `allow` opens
/// what it names and nothing else, whatever the jobs around it ask; a name we do not know is
/// one clear line.
#[test]
fn a_job_is_allowed_only_what_its_spec_names() {
    let project = Project::new();
    let tries = ["try", "io_uring", "ptrace", "userns"];
    let jobs = [
        probe_job(&tries),
        with(probe_job(&tries), json!({"allow": ["io_uring", "ptrace"]})),
        probe_job(&tries),
        with(probe_job(&tries), json!({"allow": ["user_namespaces"]})),
    ];
    let out = project.run(&["--slots", "2"], &jobs);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut seen: Vec<String> = stdout(&out)
        .split("caps=")
        .filter(|chunk| chunk.contains("io_uring="))
        .map(|chunk| {
            let mut lines: Vec<&str> = chunk.lines().filter(|l| l.contains('=')).collect();
            lines.sort_unstable();
            lines.join(" ")
        })
        .collect();
    seen.sort_unstable();
    let eperm = libc::EPERM;
    let mut expected = [
        format!("io_uring={eperm} ptrace={eperm} userns=ok"),
        format!("io_uring={eperm} ptrace={eperm} userns={eperm}"),
        format!("io_uring={eperm} ptrace={eperm} userns={eperm}"),
        format!("io_uring=ok ptrace=ok userns={eperm}"),
    ];
    expected.sort_unstable();
    assert_eq!(seen, expected, "{}", stdout(&out));

    let out = project.run(&[], &[with(probe_job(&tries), json!({"allow": ["iouring"]}))]);
    let err = stderr(&out);
    assert!(err.starts_with("maelstrom-run: stdin:1:") && err.contains("unknown variant `iouring`"), "{err}");
    assert_eq!(out.status.code(), Some(1));
}

/// Whether this machine gives a worker run by this user job cgroups (cgroup v1 memory and pids,
/// writable by root).
fn job_cgroups_here() -> bool {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    root && Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
}

/// Each bomb ends at a limit its spec sets small (the leash: every probe also stops on its own
/// at a cap), and where the worker has job cgroups the outcome names it; an honest job beside
/// them passes.
#[test]
fn bombs_end_at_their_limits_while_an_honest_job_passes() {
    let project = Project::new();
    let tmp = json!([{"type": "tmp", "mount_point": "/tmp"}]);
    let jobs = [
        probe_job(&["say", "0", "honest"]),
        with(probe_job(&["hog", "512"]), json!({"limits": {"memory": "48 MiB"}})),
        with(probe_job(&["forkbomb", "5000", "retry"]), json!({"limits": {"processes": 40}})),
        with(probe_job(&["fill", "/tmp/filler", "64"]), json!({"limits": {"tmpfs": "8 MiB"}, "mounts": tmp})),
        with(probe_job(&["fds", "100000"]), json!({"limits": {"open_files": 64}})),
        probe_job(&["spew", "50000000"]),
        with(probe_job(&["spin", "20"]), json!({"limits": {"cpu_time": 1}})),
        json!({
            "program": "/bin/probe",
            "arguments": ["fill", "/scratch/filler", "64"],
            "layers": scratch_layers(&project),
            "limits": {"tmpfs": "4 MiB"},
            "enable_writable_file_system": true,
        }),
        probe_job(&["say", "0", "honest"]),
    ];
    let out = project.run(&["--slots", "2", "--inline-limit", "4096"], &jobs);
    let (out_text, err) = (stdout(&out), stderr(&out));
    // maelstrom-run numbers jobs from 1.
    let said = |job: usize, what: &str| {
        err.lines().any(|l| l.starts_with(&format!("job {}: ", job + 1)) && l.contains(what))
    };
    assert_eq!(out_text.matches("honest").count(), 2, "{out_text}\n{err}");
    assert!(!err.lines().any(|l| l.starts_with("job 1:") || l.starts_with("job 9:")), "{err}");
    if job_cgroups_here() {
        assert!(said(1, "killed: memory limit 48 MiB reached"), "{err}");
        assert!(said(2, "killed: fork limit 40 reached"), "{err}");
    } else {
        // Memory is not limited without cgroups: the probe stops at its own cap.
        assert!(out_text.contains("hogged=512"), "{out_text}");
        assert!(out_text.contains("errno=11"), "the fork bomb stops at its rlimit: {out_text}");
    }
    let fact = |key: &str| -> u64 {
        let line = out_text
            .lines()
            .find(|l| l.starts_with(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} in {out_text}"));
        line[key.len() + 1..].parse().unwrap()
    };
    assert!(fact("filled") <= 8, "the 8 MiB /tmp held: {out_text}");
    assert!(out_text.contains("errno=28"), "ENOSPC: {out_text}");
    assert!(said(3, "exited with code 1") && said(3, "/tmp full (8 MiB)"), "{err}");
    assert!(said(7, "/ full (4 MiB)"), "a writable root's changes are bounded too: {err}");
    assert!(fact("opened") <= 64, "64 open files at most: {out_text}");
    assert!(out_text.contains("errno=24"), "EMFILE: {out_text}");
    assert!(said(4, "open files limit 64 reached (it said \"Too many open files\")"), "{err}");
    assert!(said(5, "stdout truncated"), "{err}");
    assert!(said(6, "killed: CPU time limit 1 s reached"), "{err}");
}

/// An operator's defaults for jobs whose specs say nothing: a timeout, a maximum for the
/// timeouts specs ask, and memory.
#[test]
fn job_timeouts_and_memory_come_from_the_configuration() {
    let p = Project::new();
    let file = p.path().join("config.toml");
    std::fs::write(&file, "job-timeout = 1\njob-timeout-max = \"2s\"\njob-memory = \"48 MiB\"\n").unwrap();
    let jobs = [
        probe_job(&["hang"]),
        with(probe_job(&["hang"]), json!({"timeout": 3600})),
        // Past the memory limit, yet quick to hog where nothing limits it (within the 1 s
        // timeout on a busy machine too).
        probe_job(&["hog", "96"]),
    ];
    let stream: String = jobs.iter().map(|j| j.to_string() + "\n").collect();
    let child = start(p.command(&["-c", file.to_str().unwrap(), "--slots", "3"]), &stream);
    // Without the configuration the hangs would last an hour: give up long before.
    let pid = child.id();
    let (finished, watched) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if watched.recv_timeout(std::time::Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let out = child.wait_with_output().unwrap();
    drop(finished);
    watchdog.join().unwrap();
    let err = stderr(&out);
    assert!(err.contains("job 1: timed out\n") && err.contains("job 2: timed out\n"), "{err}");
    if job_cgroups_here() {
        assert!(err.contains("job 3: killed: memory limit 48 MiB reached"), "{err}");
    } else {
        assert!(stdout(&out).contains("hogged=96"), "{}\n{err}", stdout(&out));
    }
    let mut command = p.command(&["-c", "-"]);
    command.env("MAELSTROM_RUN_JOB_TIMEOUT", "7h");
    let out = p.run_with(command, "");
    assert!(
        stderr(&out)
            .contains("job-timeout from $MAELSTROM_RUN_JOB_TIMEOUT: must be between 1 s and job-timeout-max"),
        "{}",
        stderr(&out)
    );
}

/// Job cgroups a worker killed with SIGKILL left behind are removed, with whatever still runs
/// in them, when the next worker starts.
#[test]
fn stale_job_cgroups_are_cleaned_up_at_start() {
    if !job_cgroups_here() {
        eprintln!("skipped: no job cgroups for this user on this machine");
        return;
    }
    let project = Project::new();
    let mut command = project.command(&["-c", "-"]);
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", probe_job(&["hang"])).unwrap();
    let mine = Path::new("/sys/fs/cgroup/pids").join(format!("maelstrom-{}", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !mine.join("job-0/cgroup.procs").exists()
        || std::fs::read_to_string(mine.join("job-0/cgroup.procs")).unwrap().trim().is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "no job in {}", mine.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let out = project.run(&[], &[probe_job(&["say", "0", "next"])]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!mine.exists(), "{} is still there", mine.display());
}
