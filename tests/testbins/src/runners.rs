//! What the runners' fixture tests share: copying a fixture, reading the simple UI's status
//! lines, the expected-outcome tables, and a real broker with one worker on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Copies a directory tree, leaving out `target` directories and `.git`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("a type");
        if kind.is_dir() {
            if entry.file_name() != "target" && entry.file_name() != ".git" {
                copy_tree(&entry.path(), &target);
            }
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A copy of the fixture at `source` in a new directory under /tmp (a project anywhere: the
/// default spec's tmpfs covers /tmp), for the tests of this process to share; removed when the
/// process exits, for statics are never dropped.
pub fn fixture_copy(prefix: &str, source: &Path) -> PathBuf {
    static COPIES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    extern "C" fn remove_copies() {
        // Not waiting: a thread may hold the lock as the process exits.
        if let Ok(mut copies) = COPIES.try_lock() {
            for dir in copies.drain(..) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").expect("a temp dir").keep();
    let mut copies = COPIES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if copies.is_empty() {
        #[expect(unsafe_code, reason = "atexit: the one way to run code when a test binary exits")]
        // SAFETY: `remove_copies` is a plain function that does not unwind (it ignores errors
        // and a poisoned lock); registering it has no other precondition.
        unsafe {
            libc::atexit(remove_copies);
        }
    }
    copies.push(dir.clone());
    drop(copies);
    copy_tree(source, &dir);
    dir
}

/// The status of each test line (`name.....STATUS 0.001s`) in the simple UI's output.
pub fn statuses(stdout: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        let line = match line.rsplit_once(' ') {
            Some((rest, last)) if last.ends_with('s') && last[..last.len() - 1].parse::<f64>().is_ok() => {
                rest
            }
            _ => line,
        };
        let Some((head, status)) = line.rsplit_once(' ') else { continue };
        if !matches!(status, "OK" | "FAIL" | "TIMEOUT" | "ERR" | "IGNORED") || !head.ends_with('.') {
            continue;
        }
        out.insert(head.trim_end_matches('.').to_owned(), status.to_owned());
    }
    out
}

/// A fixture's table (`expected.txt`): each test's name, then its status, a line each.
pub fn expected(table: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(table).unwrap_or_else(|e| panic!("{}: {e}", table.display()));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            l.rsplit_once(' ').map(|(name, status)| (name.trim().to_owned(), status.trim().to_owned()))
        })
        .collect()
}

/// What differs between a run's statuses and the table: one line per test.
pub fn mismatches(stdout: &str, table: &Path) -> Vec<String> {
    let got = statuses(stdout);
    let want = expected(table);
    want.iter()
        .filter(|(name, status)| got.get(*name) != Some(status))
        .map(|(name, status)| format!("{name}: want {status}, got {:?}", got.get(name)))
        .chain(got.keys().filter(|n| !want.contains_key(*n)).map(|n| format!("{n}: not in the table")))
        .collect()
}

/// A process killed when dropped.
#[derive(Debug)]
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A broker and its workers on 127.0.0.1, until dropped.
#[derive(Debug)]
pub struct Cluster {
    pub address: String,
    /// With security on, the cluster's credentials (`maelstrom-admin credentials`): each
    /// program is given its role's directory.
    pub credentials: Option<PathBuf>,
    pub broker_pid: u32,
    _broker: Killed,
    _workers: Vec<Killed>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `maelstrom-broker` and one `maelstrom-worker` with 2 slots, from `bin_dir`.
    pub fn start(bin_dir: &Path) -> Self {
        Self::start_with(bin_dir, 1, 2)
    }

    /// Starts `maelstrom-broker` and `workers` workers of `slots` slots each, from `bin_dir`.
    pub fn start_with(bin_dir: &Path, workers: usize, slots: usize) -> Self {
        Self::start_configured(bin_dir, workers, slots, false)
    }

    /// The same with security on (`secure`): credentials made by `maelstrom-admin`, TLS.
    pub fn start_configured(bin_dir: &Path, workers: usize, slots: usize, secure: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let credentials = secure.then(|| {
            let credentials = dir.path().join("credentials");
            let status = Command::new(bin_dir.join("maelstrom-admin"))
                .arg("credentials")
                .arg(&credentials)
                .stdout(Stdio::null())
                .status()
                .expect("run maelstrom-admin credentials");
            assert!(status.success(), "maelstrom-admin credentials failed");
            credentials
        });
        let with = |command: &mut Command, role: &str| {
            if let Some(credentials) = &credentials {
                command.arg("--credentials").arg(credentials.join(role));
            }
        };
        let mut broker = Command::new(bin_dir.join("maelstrom-broker"));
        with(&mut broker, "broker");
        let mut broker = broker
            .args(["--config-file", "-", "--cache-root"])
            .arg(dir.path().join("broker"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the broker");
        let mut line = String::new();
        std::io::BufReader::new(broker.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("its address");
        let broker_pid = broker.id();
        let broker = Killed(broker);
        let address = format!("127.0.0.1:{}", line.trim().rsplit(':').next().expect("a port"));
        let workers = (0..workers)
            .map(|n| {
                let mut worker = Command::new(bin_dir.join("maelstrom-worker"));
                with(&mut worker, "worker");
                Killed(
                    worker
                        .args(["--config-file", "-", "--broker", &address, "--slots", &slots.to_string()])
                        .arg("--cache-root")
                        .arg(dir.path().join(format!("worker-{n}")))
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("start a worker"),
                )
            })
            .collect();
        Self { address, credentials, broker_pid, _broker: broker, _workers: workers, _dir: dir }
    }
}

/// Where the cluster's binaries are: `MAELSTROM_BIN_DIR` when set (the test script's
/// unprivileged pass), else beside `own_binary`, built first with `cargo`.
pub fn cluster_bin_dir(cargo: &str, own_binary: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("MAELSTROM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let status = Command::new(cargo)
        .args(["build", "--bins", "-p", "maelstrom-broker", "-p", "maelstrom-worker"])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the broker and worker failed");
    own_binary.parent().expect("a directory").to_owned()
}
