//! Talking to go: a module's packages (`go list -json`), building their test binaries
//! (`go test -c`, in parallel, each handed over as soon as it is linked), and listing a
//! binary's cases (`-test.list`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maelstrom_test_runner::run::{self, Listed};
use serde::Deserialize;

/// How often a build worker looks at its `go test -c`, so a stop can reach it.
const BUILD_POLL: Duration = Duration::from_millis(5);

/// Flags passed through to `go list` and `go test -c`.
#[derive(Clone, Debug, Default)]
pub struct BuildFlags {
    /// `-tags`, `-race`, `-cover`... as go takes them (`-name=value` or `-name`).
    pub flags: Vec<String>,
}

pub fn go() -> Command {
    Command::new(std::env::var_os("MAELSTROM_GO").unwrap_or_else(|| "go".into()))
}

/// A package as `go list -json` describes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Package {
    pub dir: PathBuf,
    pub import_path: String,
    pub name: String,
    #[serde(default)]
    pub test_go_files: Vec<String>,
    #[serde(default)]
    pub x_test_go_files: Vec<String>,
    #[serde(default)]
    pub error: Option<PackageError>,
    /// The package's path relative to the project root (`""` at the root); filled in after.
    #[serde(skip)]
    pub path: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PackageError {
    pub err: String,
}

impl Package {
    pub fn has_tests(&self) -> bool {
        !self.test_go_files.is_empty() || !self.x_test_go_files.is_empty()
    }
}

/// The project's root: the directory of the `go.work` or `go.mod` go uses here.
pub fn project_root() -> anyhow::Result<PathBuf> {
    let out = go()
        .args(["env", "GOWORK", "GOMOD"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| anyhow::anyhow!("run go env (is go installed and on PATH?): {e}"))?;
    anyhow::ensure!(out.status.success(), "go env failed ({})", out.status);
    for path in String::from_utf8_lossy(&out.stdout).lines().map(str::trim) {
        if !path.is_empty() && path != "off" && path != "/dev/null" {
            let root = Path::new(path).parent().unwrap_or(Path::new("/"));
            return Ok(root.to_owned());
        }
    }
    anyhow::bail!("no go.mod here or above: run maelstrom-go-test in a Go module (see go mod init)")
}

/// `go list -json` for `patterns` (as `go test` takes them).
pub fn list_packages(patterns: &[String], flags: &BuildFlags, root: &Path) -> anyhow::Result<Vec<Package>> {
    let mut command = go();
    command.args(["list", "-json"]);
    command.args(flags.flags.iter().filter(|f| is_list_flag(f)));
    command.args(patterns);
    let out = command.stderr(Stdio::inherit()).output().map_err(|e| anyhow::anyhow!("run go list: {e}"))?;
    anyhow::ensure!(out.status.success(), "go list failed ({})", out.status);
    let mut packages = Vec::new();
    for package in serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Package>() {
        let mut package = package.map_err(|e| anyhow::anyhow!("read go list's output: {e}"))?;
        package.path = package
            .dir
            .strip_prefix(root)
            .map_or_else(|_| package.dir.display().to_string(), |p| p.display().to_string());
        packages.push(package);
    }
    Ok(packages)
}

/// The build flags `go list` takes too (they change which files a package has).
fn is_list_flag(flag: &str) -> bool {
    let name = flag.trim_start_matches('-').split('=').next().unwrap_or("");
    matches!(name, "tags" | "mod")
}

/// A package's test binary, or why there is none.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The package's index in the project's list.
    pub package: usize,
    pub binary: Result<PathBuf, String>,
}

/// `go test -c` for each package, a few at once.
pub struct Build {
    jobs: Vec<(usize, String, PathBuf)>,
    flags: BuildFlags,
    parallel: usize,
    running: Arc<Mutex<Running>>,
}

#[derive(Default)]
struct Running {
    stopped: bool,
    children: Vec<Arc<Mutex<Child>>>,
}

impl std::fmt::Debug for Build {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Build").field("packages", &self.jobs.len()).finish()
    }
}

impl Build {
    /// `packages`: (index, import path, where its binary goes).
    pub fn new(packages: Vec<(usize, String, PathBuf)>, flags: BuildFlags, parallel: usize) -> Self {
        Self { jobs: packages, flags, parallel: parallel.max(1), running: Arc::default() }
    }
}

/// Kills what it started, and waits for it.
fn stop(running: &Mutex<Running>) {
    let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
    running.stopped = true;
    for child in &running.children {
        let mut child = child.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(child.try_wait(), Ok(None)) {
            maelstrom_client::kill_tree(child.id() as i32);
        }
    }
}

impl run::Build<Artifact> for Build {
    fn run(self: Box<Self>, ready: &mut dyn FnMut(Artifact)) -> anyhow::Result<i32> {
        let queue = Arc::new(Mutex::new(VecDeque::from(self.jobs.clone())));
        let (done, results) = channel();
        let mut workers = Vec::new();
        for _ in 0..self.parallel.min(self.jobs.len()) {
            let (queue, done, flags, running) =
                (Arc::clone(&queue), done.clone(), self.flags.clone(), Arc::clone(&self.running));
            workers.push(std::thread::spawn(move || {
                loop {
                    let Some((index, import_path, output)) =
                        queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
                    else {
                        return;
                    };
                    let binary = compile(&import_path, &output, &flags, &running);
                    if done.send(Artifact { package: index, binary }).is_err() {
                        return;
                    }
                }
            }));
        }
        drop(done);
        for artifact in results {
            ready(artifact);
        }
        for worker in workers {
            let _ = worker.join();
        }
        // A package that does not build is its own error; the others still run, as with go test.
        Ok(0)
    }

    fn stopper(&self) -> Box<dyn Fn() + Send> {
        let running = Arc::clone(&self.running);
        Box::new(move || stop(&running))
    }
}

/// One `go test -c`: the binary, or go's errors.
fn compile(
    import_path: &str,
    output: &Path,
    flags: &BuildFlags,
    running: &Mutex<Running>,
) -> Result<PathBuf, String> {
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    // Built beside the last binary, which is kept (with its digest, listing and layer) when
    // nothing changed.
    let fresh = output.with_extension("test.new");
    let mut command = go();
    command.args(["test", "-c", "-o"]).arg(&fresh).args(&flags.flags).arg(import_path);
    let child = {
        let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
        if running.stopped {
            return Err("the build was stopped".into());
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run go test -c: {e}"))?;
        let child = Arc::new(Mutex::new(child));
        running.children.push(Arc::clone(&child));
        child
    };
    let mut stderr = child.lock().unwrap_or_else(|p| p.into_inner()).stderr.take();
    // go's errors, read as they come, so a long report cannot fill the pipe and stall it.
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = std::io::Read::read_to_string(stderr, &mut text);
        }
        text
    });
    let status = loop {
        match child.lock().unwrap_or_else(|p| p.into_inner()).try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(format!("wait for go test -c: {e}")),
        }
        std::thread::sleep(BUILD_POLL);
    }?;
    let errors = errors.join().unwrap_or_default();
    if status.success() && fresh.exists() {
        if same_contents(&fresh, output) {
            let _ = std::fs::remove_file(&fresh);
        } else {
            std::fs::rename(&fresh, output)
                .map_err(|e| format!("move the test binary to {}: {e}", output.display()))?;
        }
        Ok(output.to_owned())
    } else if status.success() {
        Err(format!(
            "go test -c made no binary{}",
            if errors.is_empty() { String::new() } else { format!(": {errors}") }
        ))
    } else {
        Err(format!("the package does not build:\n{}", errors.trim_end()))
    }
}

/// Whether two files hold the same bytes.
fn same_contents(a: &Path, b: &Path) -> bool {
    let same_size = match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.len() == b.len(),
        _ => false,
    };
    same_size && matches!((std::fs::read(a), std::fs::read(b)), (Ok(a), Ok(b)) if a == b)
}

/// A test binary's cases: tests, examples with output, fuzz targets (run on their seed
/// corpus). Benchmarks are not tests.
pub fn list_cases(binary: &Path, dir: &Path) -> anyhow::Result<Vec<Listed>> {
    let out = Command::new(binary)
        .args(["-test.list", "."])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("list the tests of {}: {e}", binary.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "list the tests of {}: it exited with {}: {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| ["Test", "Example", "Fuzz"].iter().any(|p| name.starts_with(p)))
        .map(|name| Listed { name: name.to_owned(), ignored: false })
        .collect())
}
