//! Talking to cargo: the workspace's packages (`cargo metadata`), and building their test
//! binaries (`cargo test --no-run`), each reported as soon as cargo has linked it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use maelstrom_test_runner::run::Listed;
use serde::Deserialize;

/// Options passed through to cargo.
#[derive(Clone, Debug, Default)]
pub struct CargoOptions {
    pub features: Option<String>,
    pub all_features: bool,
    pub no_default_features: bool,
    pub profile: Option<String>,
    pub release: bool,
    pub target: Option<String>,
    pub target_dir: Option<PathBuf>,
    pub manifest_path: Option<PathBuf>,
    pub frozen: bool,
    pub locked: bool,
    pub offline: bool,
}

impl CargoOptions {
    /// The options `cargo metadata` takes too.
    fn metadata_args(&self, command: &mut Command) {
        if let Some(features) = &self.features {
            command.args(["--features", features]);
        }
        if self.all_features {
            command.arg("--all-features");
        }
        if self.no_default_features {
            command.arg("--no-default-features");
        }
        if let Some(path) = &self.manifest_path {
            command.arg("--manifest-path").arg(path);
        }
        for (set, flag) in [(self.frozen, "--frozen"), (self.locked, "--locked"), (self.offline, "--offline")]
        {
            if set {
                command.arg(flag);
            }
        }
    }

    fn build_args(&self, command: &mut Command) {
        self.metadata_args(command);
        if let Some(profile) = &self.profile {
            command.args(["--profile", profile]);
        }
        if self.release {
            command.arg("--release");
        }
        if let Some(target) = &self.target {
            command.args(["--target", target]);
        }
        if let Some(dir) = &self.target_dir {
            command.arg("--target-dir").arg(dir);
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

#[derive(Clone, Debug, Deserialize)]
pub struct Target {
    pub name: String,
    pub kind: Vec<String>,
    #[serde(default = "yes")]
    pub test: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
pub struct Package {
    pub id: String,
    pub name: String,
    pub version: String,
    pub manifest_path: PathBuf,
    pub targets: Vec<Target>,
}

impl Package {
    pub fn dir(&self) -> &Path {
        self.manifest_path.parent().unwrap_or(Path::new("/"))
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    pub packages: Vec<Package>,
    pub workspace_members: Vec<String>,
    pub workspace_root: PathBuf,
    pub target_directory: PathBuf,
}

impl Metadata {
    /// The workspace's own packages, by name.
    pub fn members(&self) -> Vec<&Package> {
        let mut members: Vec<&Package> =
            self.packages.iter().filter(|p| self.workspace_members.contains(&p.id)).collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members
    }
}

/// Whether cargo will find a manifest (`--manifest-path`, or a `Cargo.toml` here or above), so
/// that a build started now is not an error cargo metadata is about to report too.
pub fn finds_a_manifest(options: &CargoOptions) -> bool {
    match &options.manifest_path {
        Some(path) => path.is_file(),
        None => {
            std::env::current_dir().is_ok_and(|dir| dir.ancestors().any(|d| d.join("Cargo.toml").is_file()))
        }
    }
}

/// `cargo metadata` for the workspace.
///
/// With `beside`, a build of the same workspace already running: a failure that cargo reports
/// to both (a broken manifest) is shown once, by the build.
pub fn metadata(options: &CargoOptions, beside: Option<&mut Build>) -> anyhow::Result<Metadata> {
    let mut command = cargo();
    command.args(["metadata", "--format-version=1", "--no-deps"]);
    options.metadata_args(&mut command);
    let stderr = if beside.is_some() { Stdio::piped() } else { Stdio::inherit() };
    let out = command.stderr(stderr).output().map_err(|e| anyhow::anyhow!("run cargo metadata: {e}"))?;
    if !out.status.success() {
        let build_failed = beside.is_some_and(Build::fails_soon);
        if !build_failed {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        anyhow::bail!("cargo metadata failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("read cargo metadata's output: {e}"))
}

/// What kind of target an artifact is, in the filter language's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Library,
    Binary,
    Test,
    Benchmark,
    Example,
}

impl Kind {
    pub fn from_cargo(kinds: &[String]) -> Option<Self> {
        kinds.iter().find_map(|k| match k.as_str() {
            "lib" | "rlib" | "dylib" | "cdylib" | "staticlib" => Some(Kind::Library),
            "bin" => Some(Kind::Binary),
            "test" => Some(Kind::Test),
            "bench" => Some(Kind::Benchmark),
            "example" => Some(Kind::Example),
            _ => None,
        })
    }

    pub fn selector(self) -> &'static str {
        match self {
            Kind::Library => "library",
            Kind::Binary => "binary",
            Kind::Test => "test",
            Kind::Benchmark => "benchmark",
            Kind::Example => "example",
        }
    }
}

/// A test binary cargo built.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub package_id: String,
    pub target: String,
    pub kind: Kind,
    pub executable: PathBuf,
}

#[derive(Deserialize)]
struct Message {
    reason: String,
    package_id: Option<String>,
    target: Option<Target>,
    profile: Option<Profile>,
    executable: Option<PathBuf>,
    success: Option<bool>,
}

#[derive(Deserialize)]
struct Profile {
    test: bool,
}

/// How long a build that runs beside a failed `cargo metadata` has to fail too (on the same
/// broken manifest, reporting it itself) before it is killed.
const FAILING_BESIDE_METADATA_MS: u64 = 2000;

/// The build, running: its artifacts come out as cargo reports them. Dropped before it ended,
/// it is killed with the compilers it started.
pub struct Build {
    child: Arc<Mutex<Child>>,
    stdout: Option<std::process::ChildStdout>,
}

/// Kills cargo and what it started, unless it has ended (a reaped child is never signalled, so
/// its process id cannot be reused under it).
fn kill(child: &Mutex<Child>) {
    let mut child = child.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(child.try_wait(), Ok(None)) {
        maelstrom_client::kill_tree(child.id() as i32);
    }
}

/// Waits for cargo to end; its exit code.
fn end(child: &Mutex<Child>) -> anyhow::Result<i32> {
    let status = child
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .wait()
        .map_err(|e| anyhow::anyhow!("wait for cargo: {e}"))?;
    Ok(status.code().unwrap_or(101))
}

/// Stops a build from another thread (on `--stop-after`).
#[derive(Clone)]
pub struct Stopper(Arc<Mutex<Child>>);

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stopper")
    }
}

impl Stopper {
    pub fn stop(&self) {
        kill(&self.0);
    }
}

impl Drop for Build {
    /// A build that did not run to its end (the run ended first: a bad spec file, say) does
    /// not go on alone.
    fn drop(&mut self) {
        kill(&self.child);
        let _ = end(&self.child);
    }
}

impl std::fmt::Debug for Build {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Build")
    }
}

impl maelstrom_test_runner::run::Build<Artifact> for Build {
    fn run(self: Box<Self>, ready: &mut dyn FnMut(Artifact)) -> anyhow::Result<i32> {
        Build::run(*self, ready)
    }

    fn stopper(&self) -> Box<dyn Fn() + Send> {
        let stopper = self.stopper();
        Box::new(move || stopper.stop())
    }
}

impl Build {
    /// Starts `cargo test --no-run` for `packages` (all of the workspace's if `None`).
    pub fn start(options: &CargoOptions, packages: Option<&[(&str, &str)]>) -> anyhow::Result<Self> {
        let mut command = cargo();
        // cargo's own messages go to our stderr, colored as cargo decides for it.
        command.args(["test", "--no-run", "--message-format=json-render-diagnostics"]);
        options.build_args(&mut command);
        match packages {
            None => {
                command.arg("--workspace");
            }
            Some(packages) => {
                for (name, version) in packages {
                    command.args(["--package", &format!("{name}@{version}")]);
                }
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("run cargo test --no-run: {e}"))?;
        let stdout = child.stdout.take();
        Ok(Self { child: Arc::new(Mutex::new(child)), stdout })
    }

    /// Whether the build failed by itself soon (reporting why on its own), its artifacts unread;
    /// if it did not, it is killed.
    pub fn fails_soon(&mut self) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed().as_millis() < u128::from(FAILING_BESIDE_METADATA_MS) {
            match self.child.lock().unwrap_or_else(|p| p.into_inner()).try_wait() {
                Ok(Some(status)) => return !status.success(),
                Ok(None) => {}
                Err(_) => break,
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        kill(&self.child);
        false
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.child))
    }

    /// Reads cargo's messages, calling `artifact` for each test binary; returns the build's
    /// exit code (0 when it succeeded).
    pub fn run(mut self, artifact: &mut dyn FnMut(Artifact)) -> anyhow::Result<i32> {
        let stdout = self.stdout.take().ok_or_else(|| anyhow::anyhow!("cargo's output is not piped"))?;
        for line in BufReader::new(stdout).lines() {
            // On an error, the build is killed as it is dropped.
            let line = line.map_err(|e| anyhow::anyhow!("read cargo's output: {e}"))?;
            let Ok(message) = serde_json::from_str::<Message>(&line) else { continue };
            if message.reason == "build-finished" && message.success == Some(false) {
                continue;
            }
            if message.reason != "compiler-artifact" || !message.profile.is_some_and(|p| p.test) {
                continue;
            }
            let (Some(package_id), Some(target), Some(executable)) =
                (message.package_id, message.target, message.executable)
            else {
                continue;
            };
            let Some(kind) = Kind::from_cargo(&target.kind) else { continue };
            artifact(Artifact { package_id, target: target.name, kind, executable });
        }
        end(&self.child)
    }
}

/// A test binary's test cases: names and whether they are `#[ignore]`d.
pub fn list_tests(executable: &Path) -> anyhow::Result<Vec<Listed>> {
    let list = |ignored: bool| -> anyhow::Result<Vec<String>> {
        let mut command = Command::new(executable);
        command.args(["--list", "--format", "terse"]);
        if ignored {
            command.arg("--ignored");
        }
        let out = command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("list the tests of {}: {e}", executable.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "list the tests of {}: it exited with {}: {}",
                executable.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_owned)
            .collect())
    };
    let ignored: std::collections::HashSet<String> = list(true)?.into_iter().collect();
    Ok(list(false)?
        .into_iter()
        .map(|name| {
            let ignored = ignored.contains(&name);
            Listed { name, ignored }
        })
        .collect())
}
