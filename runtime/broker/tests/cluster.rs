//! The cluster with real processes on 127.0.0.1: a broker, workers, `maelstrom-run` clients and
//! `maelstrom-admin`, each test with its own broker, caches and project directory.
//!
//! Faults are real too: workers and brokers die of SIGKILL, clients vanish, and rogue peers send
//! garbage. Whatever happens, every job ends exactly once, as a result or as an error that says
//! why.
//!
//! The binaries come from `MAELSTROM_BIN_DIR` when set (the test script runs this suite as an
//! unprivileged user from a copy), else from this build's target directory, built first.
#![expect(clippy::tests_outside_test_module, reason = "an integration test file is its own test module")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Where the cluster's binaries are, fresh.
fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("MAELSTROM_BIN_DIR") {
            return PathBuf::from(dir);
        }
        // `cargo test` builds only this package's binary: build the others too, so none is stale.
        let mut build = Command::new(env!("CARGO"));
        build.args([
            "build",
            "--bins",
            "-p",
            "maelstrom-worker",
            "-p",
            "maelstrom-admin",
            "-p",
            "maelstrom-run",
        ]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the cluster's binaries failed");
        Path::new(env!("CARGO_BIN_EXE_maelstrom-broker")).parent().expect("a directory").to_owned()
    });
    dir.join(name)
}

/// Kills the child when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Broker {
    process: Process,
    port: u16,
    log: PathBuf,
}

impl Broker {
    /// With the `broker` credential of the cluster's `credentials`, if given.
    fn start(dir: &Path, port: u16, credentials: Option<&Path>) -> Self {
        Self::start_with(dir, port, credentials, &[])
    }

    /// With `extra` options too.
    fn start_with(dir: &Path, port: u16, credentials: Option<&Path>, extra: &[&str]) -> Self {
        let log = dir.join(format!("broker-{}.log", Instant::now().elapsed().as_nanos()));
        let mut command = Command::new(bin("maelstrom-broker"));
        command.args(extra);
        if let Some(credentials) = credentials {
            command.arg("--credentials").arg(credentials.join("broker"));
        }
        let mut child = command
            .args(["--config-file", "-", "--port", &port.to_string(), "--cache-root"])
            .arg(dir.join("broker-cache"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create the broker log"))
            .spawn()
            .expect("start maelstrom-broker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read the broker's address");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the broker said {line:?}, not its address"));
        Self { process: Process(child), port, log }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A broker, workers, and a project directory holding the probe; with security on, the
/// cluster's credentials, every peer given its own.
struct Cluster {
    dir: tempfile::TempDir,
    broker: Broker,
    workers: Vec<Process>,
    credentials: Option<PathBuf>,
}

impl Cluster {
    fn start(workers: usize, slots: u32) -> Self {
        Self::start_with(workers, slots, &[])
    }

    /// With security on: credentials made by `maelstrom-admin credentials`, TLS everywhere.
    fn secure(workers: usize, slots: u32) -> Self {
        Self::build(workers, slots, &[], true)
    }

    /// With `extra` options for every worker.
    fn start_with(workers: usize, slots: u32, extra: &[&str]) -> Self {
        Self::build(workers, slots, extra, false)
    }

    fn build(workers: usize, slots: u32, extra: &[&str], secure: bool) -> Self {
        let dir = tempfile::Builder::new().prefix("maelstrom-cluster-").tempdir().expect("create a temp dir");
        std::fs::copy(maelstrom_testbins::probe(), dir.path().join("probe")).expect("copy the probe");
        let credentials = secure.then(|| {
            let credentials = dir.path().join("credentials");
            let out = Command::new(bin("maelstrom-admin"))
                .arg("credentials")
                .arg(&credentials)
                .output()
                .expect("run maelstrom-admin credentials");
            assert!(out.status.success(), "{}", text(&out.stderr));
            credentials
        });
        let broker = Broker::start(dir.path(), 0, credentials.as_deref());
        let mut cluster = Self { dir, broker, workers: Vec::new(), credentials };
        for _ in 0..workers {
            cluster.add_worker(slots, extra);
        }
        cluster.wait_for_status("every worker connected", |s| s["workers"] == workers as u64);
        cluster
    }

    fn add_worker(&mut self, slots: u32, extra: &[&str]) {
        let n = self.workers.len();
        let mut command = Command::new(bin("maelstrom-worker"));
        self.credentials_of(&mut command, "worker");
        let child = command
            .args(["--broker", &self.broker.address(), "--slots", &slots.to_string(), "--cache-root"])
            .arg(self.dir.path().join(format!("worker-{n}")))
            .args(extra)
            .stderr(
                std::fs::File::create(self.dir.path().join(format!("worker-{n}.log"))).expect("create a log"),
            )
            .spawn()
            .expect("start maelstrom-worker");
        self.workers.push(Process(child));
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives `command` the credential for `role`, when security is on.
    fn credentials_of(&self, command: &mut Command, role: &str) {
        if let Some(credentials) = &self.credentials {
            command.arg("--credentials").arg(credentials.join(role));
        }
    }

    /// `maelstrom-admin status`, parsed.
    fn status(&self) -> BTreeMap<String, u64> {
        let mut command = Command::new(bin("maelstrom-admin"));
        self.credentials_of(&mut command, "admin");
        let out = command
            .args(["--broker", &self.broker.address(), "status"])
            .output()
            .expect("run maelstrom-admin");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut status = BTreeMap::new();
        for (label, key) in [
            ("Number of workers", "workers"),
            ("Number of slots", "slots"),
            ("Number of clients", "clients"),
            ("Queued jobs", "queued"),
            ("Running jobs", "running"),
            ("Completed jobs", "completed"),
        ] {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(label)?.strip_prefix(": ")?.split(' ').next()?.parse().ok());
            if let Some(value) = value {
                status.insert(key.to_owned(), value);
            }
        }
        status
    }

    fn wait_for_status(&self, what: &str, done: impl Fn(&BTreeMap<String, u64>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            if done(&status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited 30 s for {what}; status {status:?}\n{}",
                self.broker.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `maelstrom-run` in the project directory, against this broker (or standalone).
    fn client(&self, broker: bool, extra: &[&str]) -> Command {
        let mut command = Command::new(bin("maelstrom-run"));
        command
            .current_dir(self.path())
            .args(["--config-file", "-", "--cache-root"])
            .arg(self.path().join("client-cache"));
        if broker {
            command.args(["--broker", &self.broker.address()]);
            self.credentials_of(&mut command, "client");
        }
        command.args(extra).env_remove("MAELSTROM_RUN_BROKER").env_remove("MAELSTROM_BROKER");
        command
    }

    /// A cluster client with every stream piped.
    fn spawn_client(&self) -> Child {
        let mut command = self.client(true, &[]);
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.spawn().expect("start maelstrom-run")
    }

    fn run(&self, broker: bool, jobs: &[Value]) -> Output {
        let mut child = self
            .client(broker, &[])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start maelstrom-run");
        let mut stdin = child.stdin.take().expect("piped");
        let text: String = jobs.iter().map(|j| format!("{j}\n")).collect();
        let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        let out = wait_output(child, Duration::from_secs(120));
        writer.join().expect("writer").expect("write the jobs");
        out
    }
}

/// Waits for a child's output, killing it after `limit` (a hung test fails, it does not hang).
fn wait_output(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if finished.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let out = child.wait_with_output().expect("wait for maelstrom-run");
    let _ = done.send(());
    out
}

fn probe_job(args: &[&str]) -> Value {
    json!({
        "program": "/bin/probe",
        "arguments": args,
        "layers": [
            {"paths": ["probe"], "prepend_prefix": "/bin"},
            {"stubs": ["/{proc,sys,tmp,data,mq,work}/", "/dev/{null,zero,full,random,urandom,tty,fuse}", "/dev/{pts,shm}/"]}
        ]
    })
}

fn with(mut job: Value, extra: Value) -> Value {
    if let (Some(job), Some(extra)) = (job.as_object_mut(), extra.as_object()) {
        job.extend(extra.clone());
    }
    job
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `count` jobs that each print their number after `millis`.
fn numbered_jobs(count: usize, millis: u32) -> Vec<Value> {
    (0..count).map(|i| probe_job(&["say", &millis.to_string(), &i.to_string()])).collect()
}

/// Checks that the output holds each number below `count` exactly once.
fn assert_each_once(stdout: &str, count: usize) {
    let mut seen = vec![0u32; count];
    for line in stdout.lines() {
        let n: usize = line.parse().unwrap_or_else(|_| panic!("unexpected output line {line:?}"));
        seen[n] += 1;
    }
    let missing: Vec<usize> = (0..count).filter(|&n| seen[n] == 0).collect();
    let twice: Vec<usize> = (0..count).filter(|&n| seen[n] > 1).collect();
    assert!(missing.is_empty() && twice.is_empty(), "missing {missing:?}, reported more than once {twice:?}");
}

#[test]
fn three_workers_run_2000_jobs_exactly_once() {
    let cluster = Cluster::start(3, 2);
    let out = cluster.run(true, &numbered_jobs(2000, 0));
    assert!(out.status.success(), "{out:?}\n{}", text(&out.stderr));
    assert_each_once(&text(&out.stdout), 2000);
    let status = cluster.status();
    assert_eq!(status["completed"], 2000, "{status:?}");
    assert_eq!((status["running"], status["queued"]), (0, 0));
}

/// A worker grants what its operator names (`--allow`): jobs that ask for it run there, on the
/// cluster, with it; a job that asks for more than any worker grants runs on its client's
/// machine, as every such job did before.
#[test]
fn workers_grant_the_allowances_their_operators_name() {
    let mut cluster = Cluster::start(1, 1);
    cluster.add_worker(1, &["--allow", "io_uring,user_namespaces"]);
    cluster.wait_for_status("both workers connected", |s| s["workers"] == 2);
    let log = cluster.broker.log();
    assert!(log.contains("granting user_namespaces, io_uring"), "{log}");
    let tries = ["try", "io_uring", "ptrace"];
    let granted = with(probe_job(&tries), json!({"allow": ["io_uring"]}));
    let out = cluster.run(true, &vec![granted; 4]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let eperm = libc::EPERM;
    let tried = |out: &Output| -> String {
        text(&out.stdout).lines().filter(|l| !l.starts_with("caps=")).map(|l| format!("{l}\n")).collect()
    };
    assert_eq!(tried(&out), format!("io_uring=ok\nptrace={eperm}\n").repeat(4));
    // They ran on the cluster: the broker counts them.
    cluster.wait_for_status("the granted jobs done on the cluster", |s| s["completed"] == 4);
    let more = with(probe_job(&tries), json!({"allow": ["io_uring", "ptrace"]}));
    let plain = probe_job(&["exit", "0"]);
    let out = cluster.run(true, &[more, plain]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(tried(&out), "io_uring=ok\nptrace=ok\n");
    // The plain job went to the cluster, the other ran here.
    cluster.wait_for_status("the plain job done on the cluster", |s| s["completed"] == 5);
    assert_eq!(cluster.status()["completed"], 5, "{}", cluster.broker.log());
    // A worker told to grant what does not exist says so and does not start.
    let out = Command::new(bin("maelstrom-worker"))
        .args(["--broker", &cluster.broker.address(), "--allow", "io_uring,root"])
        .output()
        .expect("run maelstrom-worker");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains("allow from command line: no allowance is named \"root\""), "{said}");
}

#[test]
fn a_worker_killed_mid_run_loses_no_job() {
    worker_killed_mid_run(Cluster::start(3, 2));
}

#[test]
fn a_worker_killed_mid_run_loses_no_job_with_security_on() {
    worker_killed_mid_run(Cluster::secure(3, 2));
}

fn worker_killed_mid_run(mut cluster: Cluster) {
    let mut child = cluster.spawn_client();
    let mut stdin = child.stdin.take().expect("piped");
    let jobs: String = numbered_jobs(2000, 5).iter().map(|j| format!("{j}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(jobs.as_bytes()));
    // Kill a worker once results flow: every worker then has jobs in flight.
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut lines = String::new();
    for _ in 0..300 {
        assert!(stdout.read_line(&mut lines).expect("read results") > 0, "the client ended early");
    }
    let victim = cluster.workers.remove(0);
    drop(victim);
    stdout.read_to_string(&mut lines).expect("read the rest");
    let out = wait_output(child, Duration::from_secs(120));
    writer.join().expect("writer").expect("write the jobs");
    assert!(out.status.success(), "{:?}\n{}", out.status, text(&out.stderr));
    assert_each_once(&lines, 2000);
    assert!(cluster.broker.log().contains("closing worker"), "{}", cluster.broker.log());
    assert_eq!(cluster.status()["completed"], 2000);
}

#[test]
fn workers_and_new_clients_reconnect_after_a_broker_restart() {
    broker_restart(Cluster::start(2, 2));
}

#[test]
fn workers_and_new_clients_reconnect_after_a_broker_restart_with_security_on() {
    broker_restart(Cluster::secure(2, 2));
}

fn broker_restart(mut cluster: Cluster) {
    // A client with a job in flight when the broker dies: the job ends as an error that says so.
    let mut hanging = cluster.spawn_client();
    let mut stdin = hanging.stdin.take().expect("piped");
    stdin.write_all(format!("{}\n", probe_job(&["hang"])).as_bytes()).expect("write a job");
    cluster.wait_for_status("the job to run", |s| s["running"] == 1);

    let port = cluster.broker.port;
    cluster.broker.process.0.kill().expect("kill the broker");
    cluster.broker.process.0.wait().expect("reap the broker");
    drop(stdin);
    let out = wait_output(hanging, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("lost the broker"), "{}", text(&out.stderr));

    cluster.broker = Broker::start(cluster.path(), port, cluster.credentials.as_deref());
    cluster.wait_for_status("both workers to reconnect", |s| s["workers"] == 2);
    let out = cluster.run(true, &numbered_jobs(50, 0));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_each_once(&text(&out.stdout), 50);
}

#[test]
fn a_client_that_vanishes_has_its_jobs_cancelled() {
    let cluster = Cluster::start(1, 2);
    let marker = format!("vanish-{}", std::process::id());
    let mut child =
        cluster.client(true, &[]).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().expect("start");
    let mut stdin = child.stdin.take().expect("piped");
    for _ in 0..2 {
        stdin.write_all(format!("{}\n", probe_job(&["hang", &marker])).as_bytes()).expect("write a job");
    }
    stdin.flush().expect("flush");
    cluster.wait_for_status("both jobs to run", |s| s["running"] == 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while hanging(&marker).len() < 2 {
        assert!(Instant::now() < deadline, "the jobs never started: {:?}", hanging(&marker));
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    cluster.wait_for_status("the jobs to be cancelled", |s| s["running"] == 0 && s["clients"] == 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hanging(&marker).is_empty() {
        assert!(Instant::now() < deadline, "cancelled jobs still run: {:?}", hanging(&marker));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of probes running `hang <marker>`.
fn hanging(marker: &str) -> Vec<u32> {
    maelstrom_testbins::processes_with_args(&["/bin/probe", "hang", marker])
}

/// Connects, sends `bytes`, and reads until the broker closes the connection (or 10 s pass).
fn rogue(address: &str, bytes: &[u8], hang_up: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(bytes).expect("send");
    if hang_up {
        stream.shutdown(std::net::Shutdown::Write).expect("shut down");
    }
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    assert!(read.is_ok(), "the broker kept a rogue connection open: {read:?}");
    answer
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&[kind, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

fn hello(version: u32, role: maelstrom_wire::cluster::Role) -> Vec<u8> {
    let mut bytes = Vec::new();
    let hello = maelstrom_wire::cluster::Hello { version, role, name: "rogue".into() };
    maelstrom_wire::cluster::encode_control(&maelstrom_wire::cluster::Control::Hello(hello), &mut bytes)
        .expect("a hello fits");
    bytes
}

#[test]
fn rogue_peers_are_cut_off_while_others_finish() {
    use maelstrom_wire::cluster::{PROTOCOL_VERSION, Role};
    let cluster = Cluster::start(1, 2);
    let address = cluster.broker.address();
    let client = std::thread::scope(|s| {
        let honest = s.spawn(|| cluster.run(true, &numbered_jobs(300, 1)));
        // Garbage: an HTTP request.
        rogue(&address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
        // A header announcing a frame far over the limit.
        rogue(&address, &[0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0], false);
        rogue(&address, &[0, 0, 0, 0x40, 1, 0, 0, 0], false);
        // Another protocol version: refused, with the reason.
        let answer = rogue(&address, &hello(PROTOCOL_VERSION + 998, Role::Client), false);
        assert!(text(&answer).contains("protocol version"), "{answer:?}");
        // A client that cuts a frame short and hangs up.
        let mut cut = hello(PROTOCOL_VERSION, Role::Client);
        cut.extend_from_slice(&frame(2, &[7; 100])[..30]);
        rogue(&address, &cut, true);
        // A client whose job does not validate.
        let mut bad_job = hello(PROTOCOL_VERSION, Role::Client);
        bad_job.extend_from_slice(&frame(2, &[0xee; 64]));
        rogue(&address, &bad_job, false);
        // A client pushing an artifact nobody asked for.
        let mut push = hello(PROTOCOL_VERSION, Role::Client);
        let mut chunk = Vec::new();
        maelstrom_wire::cluster::encode_chunk(
            &maelstrom_wire::cluster::ChunkHeader {
                digest: maelstrom_wire::artifact::Digest::of(b"x"),
                offset: 0,
                total: 1,
            },
            b"x",
            &mut chunk,
        );
        push.extend_from_slice(&chunk);
        rogue(&address, &push, false);
        // A worker sending a client's message.
        let mut confused = hello(PROTOCOL_VERSION, Role::Worker { slots: 1, grants: 0 });
        maelstrom_wire::cluster::encode_control(
            &maelstrom_wire::cluster::Control::StatusRequest,
            &mut confused,
        )
        .expect("a request fits");
        rogue(&address, &confused, false);
        honest.join().expect("the honest client")
    });
    assert!(client.status.success(), "{}", text(&client.stderr));
    assert_each_once(&text(&client.stdout), 300);
    let log = cluster.broker.log();
    for reason in [
        "exceeds the limit",
        "protocol version",
        "in the middle of a frame",
        "bad frame",
        "was not asked for",
        "may not send",
    ] {
        assert!(log.contains(reason), "the broker's log does not say {reason:?}:\n{log}");
    }
    // Each rogue is named by its address in one line.
    assert!(log.lines().filter(|l| l.contains("127.0.0.1:") && l.contains("closing")).count() >= 8, "{log}");
}

/// The same job, standalone and on the cluster: the same output, errors and exit code.
#[test]
fn cluster_results_match_standalone() {
    let cluster = Cluster::start(1, 2);
    std::fs::create_dir(cluster.path().join("shared")).expect("mkdir");
    std::fs::write(cluster.path().join("shared/file"), "bound").expect("write");
    let jobs = [
        probe_job(&["exit", "3"]),
        probe_job(&["segfault"]),
        with(probe_job(&["hang"]), json!({"timeout": 1})),
        with(probe_job(&[]), json!({"program": "/nope"})),
        probe_job(&["spew", "1500000"]),
        probe_job(&["stderr", "to stderr"]),
        with(
            probe_job(&["report"]),
            json!({"environment": {"A": "1", "B": "two"}, "working_directory": "/work"}),
        ),
        with(probe_job(&["write", "/data/x", "y"]), json!({"enable_writable_file_system": true})),
        with(probe_job(&["write", "/data/x", "y"]), json!({})),
        with(
            probe_job(&["ls", "/proc/self"]),
            json!({"mounts": [{"type": "proc", "mount_point": "/proc"}, {"type": "tmp", "mount_point": "/tmp"}]}),
        ),
        with(probe_job(&["report"]), json!({"network": "loopback", "user": 1000, "group": 1000})),
        probe_job(&["try", "io_uring", "ptrace"]),
        // These three need this machine: they run on the client's local worker either way.
        with(probe_job(&["try", "io_uring", "ptrace"]), json!({"allow": ["ptrace"]})),
        with(probe_job(&["report"]), json!({"network": "local"})),
        with(
            probe_job(&["cat", "/data/file"]),
            json!({"mounts": [{"type": "bind", "mount_point": "/data", "local_path": "shared"}]}),
        ),
    ];
    for job in jobs {
        let standalone = cluster.run(false, std::slice::from_ref(&job));
        let clustered = cluster.run(true, std::slice::from_ref(&job));
        let show =
            |o: &Output| format!("{:?}\nstdout: {}\nstderr: {}", o.status, text(&o.stdout), text(&o.stderr));
        assert_eq!(show(&standalone), show(&clustered), "job {job}");
    }
    assert!(cluster.status()["completed"] >= 12);
}

#[test]
fn binaries_explain_missing_or_unreachable_brokers() {
    let out = Command::new(bin("maelstrom-worker"))
        .args(["--config-file", "-"])
        .env_remove("MAELSTROM_WORKER_BROKER")
        .env_remove("MAELSTROM_BROKER")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--broker"), "{}", text(&out.stderr));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
    let out = Command::new(bin("maelstrom-admin"))
        .args(["--broker", &closed.to_string(), "status"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("maelstrom-admin: connect to the broker at 127.0.0.1:"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(bin("maelstrom-run"))
        .args(["--config-file", "-", "--broker", &closed.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("connect to the broker at"), "{}", text(&out.stderr));
}

#[test]
fn admin_stop_ends_the_broker_and_its_workers() {
    let mut cluster = Cluster::start(2, 1);
    let out = Command::new(bin("maelstrom-admin"))
        .args(["-b", &cluster.broker.address(), "stop"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ended = |p: &mut Process| matches!(p.0.try_wait(), Ok(Some(_)));
    while !(ended(&mut cluster.broker.process) && cluster.workers.iter_mut().all(&mut ended)) {
        assert!(Instant::now() < deadline, "the broker or a worker kept running after stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    for worker in &mut cluster.workers {
        assert!(worker.0.try_wait().expect("wait").expect("ended").success());
    }
}

#[test]
fn the_broker_can_come_from_the_environment_or_a_config_file() {
    let cluster = Cluster::start(1, 1);
    let jobs: String = numbered_jobs(3, 0).iter().map(|j| format!("{j}\n")).collect();
    let config = cluster.path().join("run.toml");
    std::fs::write(&config, format!("broker = \"{}\"\n", cluster.broker.address()))
        .expect("write the config");
    let by_env = |name: &str| {
        let mut command = Command::new(bin("maelstrom-run"));
        command
            .current_dir(cluster.path())
            .args(["--config-file", "-", "--cache-root"])
            .arg(cluster.path().join("c"));
        command
            .env_remove("MAELSTROM_RUN_BROKER")
            .env_remove("MAELSTROM_BROKER")
            .env(name, cluster.broker.address());
        command
    };
    let mut by_file = Command::new(bin("maelstrom-run"));
    by_file
        .current_dir(cluster.path())
        .arg("--config-file")
        .arg(&config)
        .arg("--cache-root")
        .arg(cluster.path().join("c"));
    by_file.env_remove("MAELSTROM_RUN_BROKER").env_remove("MAELSTROM_BROKER");
    let mut completed = 0;
    for mut command in [by_env("MAELSTROM_RUN_BROKER"), by_env("MAELSTROM_BROKER"), by_file] {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start");
        child.stdin.take().expect("piped").write_all(jobs.as_bytes()).expect("write the jobs");
        let out = wait_output(child, Duration::from_secs(60));
        assert!(out.status.success(), "{command:?}: {}", text(&out.stderr));
        assert_each_once(&text(&out.stdout), 3);
        completed += 3;
        assert_eq!(cluster.status()["completed"], completed, "{command:?} did not use the broker");
    }
}

#[test]
fn results_too_large_for_a_frame_are_cut_not_crashed_on() {
    let cluster = Cluster::start_with(1, 1, &["--inline-limit", "8000000"]);
    let out = cluster.run(true, &[probe_job(&["spew", "6000000"])]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kept = out.stdout.len();
    assert!(kept > 3_000_000 && kept < 4_200_000, "kept {kept} bytes");
    assert!(
        text(&out.stderr).contains(&format!("stdout truncated, {} bytes lost", 6_000_000 - kept)),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(cluster.status()["workers"], 1, "the worker survived");
}

/// Reads control messages until one matches.
fn next_control(
    stream: &mut TcpStream,
    reader: &mut maelstrom_wire::cluster::FrameReader,
) -> Option<maelstrom_wire::cluster::Control> {
    use maelstrom_wire::cluster::{Control, Frame, decode};
    let mut buf = [0u8; 65536];
    loop {
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        let mut got = None;
        reader
            .feed(&buf[..n], &mut |kind, payload| {
                if let Ok(Frame::Control(control)) = decode(kind, payload) {
                    got = rkyv::deserialize::<Control, rkyv::rancor::Error>(control).ok();
                }
                got.is_none()
            })
            .expect("a well-formed stream from the broker");
        if got.is_some() {
            return got;
        }
    }
}

#[test]
fn a_bad_upload_fails_its_jobs_and_a_reused_id_closes_the_client() {
    use maelstrom_wire::artifact::Digest;
    use maelstrom_wire::cluster::{
        ChunkHeader, Control, FrameReader, JobSpec, Kind, LayerKind, LayerRef, Outcome, PROTOCOL_VERSION,
        Role, encode_chunk, encode_job, encode_job_frame, typical_job,
    };
    let cluster = Cluster::start(1, 1);
    let mut stream = TcpStream::connect(cluster.broker.address()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut reader = FrameReader::default();
    stream.write_all(&hello(PROTOCOL_VERSION, Role::Client)).expect("hello");
    assert!(matches!(next_control(&mut stream, &mut reader), Some(Control::Welcome { .. })));
    let digest = Digest::of(b"the real bytes");
    let job = JobSpec { layers: vec![LayerRef { kind: LayerKind::Tar, digest }], ..typical_job() };
    let mut frame = Vec::new();
    encode_job_frame(Kind::Submit, 1, &encode_job(&job), &mut frame).expect("encode");
    stream.write_all(&frame).expect("submit");
    assert_eq!(next_control(&mut stream, &mut reader), Some(Control::Want { digest }));
    let mut chunk = Vec::new();
    encode_chunk(&ChunkHeader { digest, offset: 0, total: 9 }, b"not those", &mut chunk);
    stream.write_all(&chunk).expect("upload");
    match next_control(&mut stream, &mut reader) {
        Some(Control::Done { id: 1, outcome: Outcome::SystemError(message) }) => {
            assert!(message.contains("do not match its digest"), "{message}");
        }
        other => panic!("expected the job to fail, got {other:?}"),
    }
    // The connection is still good: a job is taken, and then its id reused.
    frame.clear();
    encode_job_frame(Kind::Submit, 2, &encode_job(&job), &mut frame).expect("encode");
    stream.write_all(&frame).expect("submit");
    assert_eq!(next_control(&mut stream, &mut reader), Some(Control::Want { digest }));
    stream.write_all(&frame).expect("submit again");
    assert_eq!(next_control(&mut stream, &mut reader), None, "the broker closes the connection");
    let log = cluster.broker.log();
    assert!(log.contains("job id 2 was reused"), "{log}");
}

/// The broker authenticates no one yet, so it listens on loopback unless an operator says, by
/// a flag whose name says so, that everyone who can reach it is trusted.
#[test]
fn the_broker_listens_on_loopback_unless_told_it_is_unauthenticated() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // The lines the broker prints at once; then it is stopped.
    let start = |args: &[&str]| {
        let mut child = Command::new(bin("maelstrom-broker"))
            .args(["--config-file", "-", "--cache-root"])
            .arg(dir.path().join("cache"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start maelstrom-broker");
        let stdout = child.stdout.take().expect("piped");
        let (lines, said) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut all = Vec::new();
        while let Ok(line) = said.recv_timeout(Duration::from_secs(3)) {
            all.push(line);
        }
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        (all.join("\n"), text(&out.stderr), out.status)
    };
    let (said, _, _) = start(&["--port", "0"]);
    assert!(
        said.starts_with("maelstrom-broker: listening on 127.0.0.1:") && !said.contains("warning"),
        "{said}"
    );
    for listen in [&["--listen", "0.0.0.0", "--port", "0"][..], &["--listen", "::"], &["--listen", "[::]:0"]]
    {
        let (said, err, status) = start(listen);
        assert!(!status.success() && said.is_empty(), "{said}");
        assert!(err.contains("reachable from other machines") && err.contains("--unauthenticated"), "{err}");
    }
    let (_, err, _) = start(&["--listen", "[::1]:0", "--port", "9"]);
    assert!(err.contains("give it once"), "{err}");
    let (said, _, _) = start(&["--listen", "0.0.0.0", "--unauthenticated"]);
    assert!(
        said.starts_with("maelstrom-broker: listening on 0.0.0.0:")
            && said.contains("warning: listening unauthenticated"),
        "{said}"
    );
    let (_, err, status) = start(&["--listen", "somewhere"]);
    assert!(!status.success() && err.contains("is not an IP address"), "{err}");
}

/// Inside the protocol each role gets what it needs and no more: a worker is served only the
/// artifacts of jobs assigned to it and may not claim more than the slot bound; a client past
/// its bound of pending jobs is told so, job by job, and stays connected.
#[test]
fn each_peer_gets_only_what_its_role_needs() {
    use maelstrom_wire::artifact::Digest;
    use maelstrom_wire::cluster::{
        ChunkHeader, Control, FrameReader, JobSpec, Kind, LayerKind, LayerRef, PROTOCOL_VERSION, Role,
        encode_chunk, encode_job, encode_job_frame, typical_job,
    };
    let cluster = Cluster::start(1, 1);
    let connect = |role| {
        let mut stream = TcpStream::connect(cluster.broker.address()).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        stream.write_all(&hello(PROTOCOL_VERSION, role)).expect("hello");
        stream
    };
    // A client's artifact, stored: its job runs on the honest worker (and fails there, not
    // being a real layer; what matters is that the broker holds the bytes).
    let mut client = connect(Role::Client);
    let mut reader = FrameReader::default();
    assert!(matches!(next_control(&mut client, &mut reader), Some(Control::Welcome { .. })));
    let secret = b"a layer only the client's jobs need";
    let digest = Digest::of(secret);
    let job = JobSpec { layers: vec![LayerRef { kind: LayerKind::Tar, digest }], ..typical_job() };
    let mut frame = Vec::new();
    encode_job_frame(Kind::Submit, 1, &encode_job(&job), &mut frame).expect("encode");
    client.write_all(&frame).expect("submit");
    assert_eq!(next_control(&mut client, &mut reader), Some(Control::Want { digest }));
    let mut chunk = Vec::new();
    encode_chunk(&ChunkHeader { digest, offset: 0, total: secret.len() as u64 }, secret, &mut chunk);
    client.write_all(&chunk).expect("upload");
    assert!(matches!(next_control(&mut client, &mut reader), Some(Control::Done { id: 1, .. })));

    // A worker no job was given asks for it: refused, with the reason.
    let mut worker = connect(Role::Worker { slots: 1, grants: 0 });
    let mut worker_reader = FrameReader::default();
    assert!(matches!(next_control(&mut worker, &mut worker_reader), Some(Control::Welcome { .. })));
    let mut want = Vec::new();
    maelstrom_wire::cluster::encode_control(&Control::Want { digest }, &mut want).expect("encode");
    worker.write_all(&want).expect("want");
    match next_control(&mut worker, &mut worker_reader) {
        Some(Control::Unavailable { digest: refused, reason }) => {
            assert_eq!(refused, digest);
            assert!(reason.contains("no job assigned to this worker"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(worker);

    // A worker claiming more slots than any worker has.
    let answer = rogue(
        &cluster.broker.address(),
        &hello(PROTOCOL_VERSION, Role::Worker { slots: u32::MAX, grants: 0 }),
        false,
    );
    assert!(text(&answer).contains("1 to 1000 slots"), "{answer:?}");
    // A worker granting what no allowance is (a newer or a forged worker).
    let forged = hello(PROTOCOL_VERSION, Role::Worker { slots: 1, grants: 1 << 31 });
    let answer = rogue(&cluster.broker.address(), &forged, false);
    assert!(text(&answer).contains("allowances this broker does not know (bits 0x80000000)"), "{answer:?}");
    let log = cluster.broker.log();
    assert!(log.contains("refused to a worker: no job assigned") && log.contains("not 4294967295"), "{log}");
    assert_eq!(cluster.status()["workers"], 1, "only the honest worker");
}

/// A client past its bound of pending jobs (`client-jobs-max`) is told so, job by job, and stays
/// connected: its jobs in bound carry on.
#[test]
fn a_client_past_its_bound_of_jobs_is_told_so() {
    use maelstrom_wire::artifact::Digest;
    use maelstrom_wire::cluster::{
        Control, JobSpec, Kind, LayerKind, LayerRef, Outcome, encode_job, encode_job_frame, typical_job,
    };
    let (_dir, broker, mut client, mut reader) = broker_and_client(&["--client-jobs-max", "3"]);
    // Jobs that wait for an artifact the client never sends: pending until it goes.
    let digest = Digest::of(b"never sent");
    let job = JobSpec { layers: vec![LayerRef { kind: LayerKind::Tar, digest }], ..typical_job() };
    let mut frames = Vec::new();
    for id in 1..=5 {
        encode_job_frame(Kind::Submit, id, &encode_job(&job), &mut frames).expect("encode");
    }
    client.write_all(&frames).expect("submit");
    let mut refused = Vec::new();
    let mut buf = [0u8; 65536];
    while refused.len() < 2 {
        let n = client.read(&mut buf).expect("the broker's answers");
        assert!(n > 0, "the broker closed the connection");
        reader
            .feed(&buf[..n], &mut |kind, payload| {
                let Ok(maelstrom_wire::cluster::Frame::Control(control)) =
                    maelstrom_wire::cluster::decode(kind, payload)
                else {
                    return true;
                };
                match rkyv::deserialize::<Control, rkyv::rancor::Error>(control) {
                    Ok(Control::Want { .. }) => {}
                    Ok(Control::Done { id, outcome: Outcome::SystemError(message) }) => {
                        assert!(
                            message.contains("3 pending jobs of this client")
                                && message.contains("client-jobs-max"),
                            "{message}"
                        );
                        refused.push(id);
                    }
                    other => panic!("expected refusals, got {other:?}"),
                }
                true
            })
            .expect("a well-formed stream from the broker");
    }
    assert_eq!(refused, [4, 5]);
    // Still connected: a job in bound can be cancelled, and says so.
    let mut cancel = Vec::new();
    maelstrom_wire::cluster::encode_control(&Control::Cancel { id: 1 }, &mut cancel).expect("encode");
    client.write_all(&cancel).expect("cancel");
    assert_eq!(
        next_control(&mut client, &mut reader),
        Some(Control::Done { id: 1, outcome: Outcome::SystemError("cancelled".into()) })
    );
    drop(broker);
}

/// A peer that speaks TLS with the credential in `dir` (loaded as `load_as`'s), says hello as
/// `role`, then sends `then`; returns the control messages the broker sent until it closed the
/// connection, or why the connection failed.
fn tls_peer(
    address: &str,
    dir: &Path,
    load_as: maelstrom_tls::Role,
    role: maelstrom_wire::cluster::Role,
    then: Option<maelstrom_wire::cluster::Control>,
) -> Result<Vec<maelstrom_wire::cluster::Control>, String> {
    use maelstrom_wire::cluster::{Control, Frame, FrameReader, PROTOCOL_VERSION, decode, encode_control};
    let config = maelstrom_tls::peer_config(dir, load_as).map_err(|e| e.to_string())?;
    let mut session = maelstrom_tls::Session::client(&config).map_err(|e| e.to_string())?;
    let mut stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut plaintext = hello(PROTOCOL_VERSION, role);
    if let Some(then) = then {
        encode_control(&then, &mut plaintext).expect("encode");
    }
    let mut out = Vec::new();
    session.send(&plaintext, &mut out).map_err(|e| e.to_string())?;
    stream.write_all(&out).map_err(|e| e.to_string())?;
    let (mut reader, mut controls, mut buf) = (FrameReader::default(), Vec::new(), [0u8; 65536]);
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(controls),
            Ok(n) => n,
        };
        let mut plain = Vec::new();
        let received = session.receive(&buf[..n], &mut plain);
        out.clear();
        session.pending(&mut out);
        let _ = stream.write_all(&out);
        received.map_err(|e| e.to_string())?;
        reader
            .feed(&plain, &mut |kind, payload| {
                if let Ok(Frame::Control(control)) = decode(kind, payload)
                    && let Ok(control) = rkyv::deserialize::<Control, rkyv::rancor::Error>(control)
                {
                    controls.push(control);
                }
                true
            })
            .map_err(|e| e.to_string())?;
    }
}

/// With security on, a peer without credentials, with another role's credential, with an
/// expired or another cluster's certificate, or speaking garbage is refused with the reason
/// logged; a worker of another cluster refuses this broker, saying why in its alert; a worker's
/// credential cannot stop the cluster; and an honest client's 300 jobs all complete meanwhile.
#[test]
fn a_secure_cluster_refuses_strangers_while_an_honest_client_finishes() {
    use maelstrom_tls::Role as Credential;
    use maelstrom_tls::generate::{Validity, cluster as make_cluster, issue};
    use maelstrom_wire::cluster::{Control, PROTOCOL_VERSION, Role};
    let cluster = Cluster::secure(1, 2);
    let credentials = cluster.credentials.clone().expect("secure");
    let address = cluster.broker.address();
    let expired = cluster.path().join("expired");
    issue(&credentials.join("ca"), Credential::Client, &expired, Validity { from: 1_000_000_000, days: 1 })
        .expect("issue an expired credential");
    // Another cluster's client, which trusts this cluster's broker.
    let other = cluster.path().join("other");
    make_cluster(&other, Validity::days(30)).expect("another cluster's credentials");
    let foreign = cluster.path().join("foreign");
    std::fs::create_dir(&foreign).expect("create a dir");
    std::fs::copy(credentials.join("client/ca.pem"), foreign.join("ca.pem")).expect("copy");
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(other.join("client").join(file), foreign.join(file)).expect("copy");
    }
    let _stranger = Process(
        Command::new(bin("maelstrom-worker"))
            .args(["--broker", &address, "--credentials"])
            .arg(other.join("worker"))
            .arg("--cache-root")
            .arg(cluster.path().join("stranger"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start maelstrom-worker"),
    );
    let client = std::thread::scope(|s| {
        let honest = s.spawn(|| cluster.run(true, &numbered_jobs(300, 1)));
        // No credentials: a plaintext hello, then garbage.
        rogue(&address, &hello(PROTOCOL_VERSION, Role::Client), false);
        rogue(&address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
        // A client's credential acting as a worker (to be sent jobs).
        let answer = tls_peer(
            &address,
            &credentials.join("client"),
            Credential::Client,
            Role::Worker { slots: 1, grants: 0 },
            None,
        );
        let refused = |answer: &Result<Vec<Control>, String>| matches!(answer.as_deref(), Ok([Control::Refused(reason)]) if reason.contains("may not act as the"));
        assert!(refused(&answer), "{answer:?}");
        // A worker's credential acting as an admin, and sending Stop as the worker it is.
        let answer = tls_peer(
            &address,
            &credentials.join("worker"),
            Credential::Worker,
            Role::Admin,
            Some(Control::Stop),
        );
        assert!(refused(&answer), "{answer:?}");
        let answer = tls_peer(
            &address,
            &credentials.join("worker"),
            Credential::Worker,
            Role::Worker { slots: 1, grants: 0 },
            Some(Control::Stop),
        );
        assert!(matches!(answer.as_deref(), Ok([Control::Welcome { .. }])), "{answer:?}");
        // An expired certificate, and another cluster's.
        for dir in [&expired, &foreign] {
            let answer = tls_peer(&address, dir, Credential::Client, Role::Client, None);
            assert!(answer.is_err() || answer.as_ref().is_ok_and(Vec::is_empty), "{answer:?}");
        }
        honest.join().expect("the honest client")
    });
    assert!(client.status.success(), "{}", text(&client.stderr));
    assert_each_once(&text(&client.stdout), 300);
    // The broker logs a refusal once its alert is written: give it a moment.
    let reasons = [
        "tls handshake",
        "its certificate is for the client role: it may not act as the worker role",
        "its certificate is for the worker role: it may not act as the admin role",
        "a worker may not send an admin request",
        "expired",
        "issuer",
        // The other cluster's worker does not trust this broker's certificate, and says so.
        "received fatal alert: unknownca",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = cluster.broker.log().to_lowercase();
        let missing: Vec<&str> = reasons.iter().copied().filter(|r| !log.contains(r)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the broker's log does not say {missing:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cluster.status()["workers"], 1, "the cluster still runs: no one stopped it");
}

/// A client whose uploads would hold more of the store than its bound (`client-bytes-max`) is
/// told so through the jobs that need the upload, and stays connected.
#[test]
fn a_client_past_its_bound_of_bytes_is_told_so() {
    use maelstrom_wire::artifact::Digest;
    use maelstrom_wire::cluster::{
        ChunkHeader, Control, JobSpec, Kind, LayerKind, LayerRef, Outcome, encode_chunk, encode_control,
        encode_job, encode_job_frame, typical_job,
    };
    // No worker: the first job waits, pinning its 32 bytes.
    let (_dir, broker, mut client, mut reader) = broker_and_client(&["--client-bytes-max", "48"]);
    for (id, bytes) in [(1, b"thirty-two bytes of layer, no le"), (2, b"thirty-two other bytes, no fewer")] {
        let digest = Digest::of(bytes);
        let job = JobSpec { layers: vec![LayerRef { kind: LayerKind::Tar, digest }], ..typical_job() };
        let mut frame = Vec::new();
        encode_job_frame(Kind::Submit, id, &encode_job(&job), &mut frame).expect("encode");
        client.write_all(&frame).expect("submit");
        assert_eq!(next_control(&mut client, &mut reader), Some(Control::Want { digest }));
        let mut chunk = Vec::new();
        encode_chunk(&ChunkHeader { digest, offset: 0, total: bytes.len() as u64 }, bytes, &mut chunk);
        client.write_all(&chunk).expect("upload");
    }
    match next_control(&mut client, &mut reader) {
        Some(Control::Done { id: 2, outcome: Outcome::SystemError(message) }) => {
            assert!(
                message.contains("already hold 32 bytes") && message.contains("client-bytes-max"),
                "{message}"
            );
        }
        other => panic!("expected the second job to fail saying why, got {other:?}"),
    }
    // Still connected: the first job, within the bound, waits, and can be cancelled.
    let mut cancel = Vec::new();
    encode_control(&Control::Cancel { id: 1 }, &mut cancel).expect("encode");
    client.write_all(&cancel).expect("cancel");
    assert_eq!(
        next_control(&mut client, &mut reader),
        Some(Control::Done { id: 1, outcome: Outcome::SystemError("cancelled".into()) })
    );
    drop(broker);
}

/// A broker of its own, started with `extra` options, and a client connection to it that said
/// hello and was welcomed.
fn broker_and_client(
    extra: &[&str],
) -> (tempfile::TempDir, Broker, TcpStream, maelstrom_wire::cluster::FrameReader) {
    use maelstrom_wire::cluster::{Control, FrameReader, PROTOCOL_VERSION, Role};
    let dir = tempfile::tempdir().expect("a temp dir");
    let broker = Broker::start_with(dir.path(), 0, None, extra);
    let mut client = TcpStream::connect(broker.address()).expect("connect");
    client.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    client.write_all(&hello(PROTOCOL_VERSION, Role::Client)).expect("hello");
    let mut reader = FrameReader::default();
    assert!(matches!(next_control(&mut client, &mut reader), Some(Control::Welcome { .. })));
    (dir, broker, client, reader)
}

/// A peer that says hello and then nothing is closed after the idle timeout (with the reason
/// logged), while a worker with nothing to do stays: it pings as the broker's welcome asked.
#[test]
fn a_silent_peer_is_closed_and_an_idle_worker_stays() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let broker = Broker::start_with(dir.path(), 0, None, &["--idle-timeout", "2s"]);
    let worker = Process(
        Command::new(bin("maelstrom-worker"))
            .args(["--config-file", "-", "--broker", &broker.address(), "--slots", "1", "--cache-root"])
            .arg(dir.path().join("worker"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start maelstrom-worker"),
    );
    let workers = || {
        let out = Command::new(bin("maelstrom-admin"))
            .args(["--config-file", "-", "--broker", &broker.address(), "status"])
            .output()
            .expect("run maelstrom-admin");
        text(&out.stdout).contains("Number of workers: 1")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !workers() {
        assert!(Instant::now() < deadline, "the worker did not connect:\n{}", broker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let connected = Instant::now();
    // The silent one: a client that says hello, then nothing.
    let mut silent = TcpStream::connect(broker.address()).expect("connect");
    silent.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    silent
        .write_all(&hello(maelstrom_wire::cluster::PROTOCOL_VERSION, maelstrom_wire::cluster::Role::Client))
        .expect("hello");
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    // Its welcome, then the end: closed after the timeout, within a sweep (5 s) of it.
    while matches!(silent.read(&mut buf), Ok(n) if n > 0) {}
    assert!(started.elapsed() >= Duration::from_secs(2), "closed before its time: {:?}", started.elapsed());
    let log = broker.log();
    assert!(log.contains("nothing heard for 2 s"), "{log}");
    // The idle worker, connected longer than the timeout and a sweep, is still there.
    std::thread::sleep((connected + Duration::from_secs(8)).saturating_duration_since(Instant::now()));
    assert!(workers(), "{}", broker.log());
    assert!(!broker.log().contains("closing worker"), "{}", broker.log());
    drop(worker);
}

/// A peer on one address holds at most 64 connections that have not said hello: the next is
/// closed at once, with the reason logged; when they go, a client from that address is served.
#[test]
fn connections_without_a_hello_are_bounded_per_address() {
    let cluster = Cluster::start(1, 2);
    let address = cluster.broker.address();
    // Whether the broker closed a new connection within `wait` (it says nothing first).
    let closed_within = |wait: Duration| {
        let mut stream = TcpStream::connect(&address).expect("connect");
        stream.set_read_timeout(Some(wait)).expect("timeout");
        match stream.read(&mut [0; 1]) {
            Ok(0) => true,
            Ok(_) => panic!("the broker spoke first"),
            Err(e) => {
                let kind = e.kind();
                assert!(matches!(kind, std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}");
                false
            }
        }
    };
    // The broker takes accepted connections in order: each of these is counted before the next.
    let silent: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(&address).expect("connect")).collect();
    // Closed at once; well within the 10 s a kept one would wait for its hello.
    assert!(closed_within(Duration::from_secs(5)), "a 65th connection without a hello was kept");
    let log = cluster.broker.log();
    assert!(log.contains("64 connections from 127.0.0.1 have not said hello yet"), "{log}");
    drop(silent);
    // Once the broker has seen them go, it takes connections from that address again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while closed_within(Duration::from_secs(1)) {
        assert!(Instant::now() < deadline, "the broker still refuses after the silent peers left");
    }
    let out = cluster.run(true, &numbered_jobs(5, 1));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_each_once(&text(&out.stdout), 5);
}
