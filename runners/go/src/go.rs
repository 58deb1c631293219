//! Talking to go: a module's packages (`go list -json`), building their test binaries (one
//! `go test -exec`, each handed over as soon as it is linked), and listing a binary's cases
//! (`-test.list`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use maelstrom_test_runner::run::{self, Listed};
use serde::Deserialize;

/// Flags passed through to `go list` and the build.
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
    /// Empty for a pattern that names nothing.
    #[serde(default)]
    pub dir: PathBuf,
    pub import_path: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub test_go_files: Vec<String>,
    #[serde(default)]
    pub x_test_go_files: Vec<String>,
    #[serde(default)]
    pub error: Option<PackageError>,
    #[serde(default)]
    pub deps_errors: Vec<PackageError>,
    /// The module the package belongs to (none in GOPATH mode).
    #[serde(default)]
    pub module: Option<Module>,
    /// The package's path relative to the project root (`""` at the root); filled in after.
    #[serde(skip)]
    pub path: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PackageError {
    pub err: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Module {
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

impl Package {
    pub fn has_tests(&self) -> bool {
        !self.test_go_files.is_empty() || !self.x_test_go_files.is_empty()
    }

    /// Whether go cannot load it (a bad pattern, a missing import): go test reports it failed.
    pub fn is_broken(&self) -> bool {
        self.error.is_some() || !self.deps_errors.is_empty()
    }
}

/// The oldest go whose test binaries frame their events (`-test.v=test2json`).
const GO_MINOR_MIN: u32 = 20;

/// What go says of where it runs here.
#[derive(Debug, Default)]
pub struct GoEnv {
    /// The project's root: the directory of the `go.work` or `go.mod` go uses.
    pub root: PathBuf,
    /// Where go keeps its work directories (`GOTMPDIR`, from the environment or `go env -w`),
    /// if set.
    pub tmp_dir: Option<PathBuf>,
}

/// Asks go where it runs here. Checks that go is recent enough.
pub fn go_env() -> anyhow::Result<GoEnv> {
    let out = go()
        .args(["env", "GOWORK", "GOMOD", "GOVERSION", "GOTMPDIR"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| anyhow::anyhow!("run go env (is go installed and on PATH?): {e}"))?;
    anyhow::ensure!(out.status.success(), "go env failed ({})", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(str::trim);
    let (gowork, gomod) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let version = lines.next().unwrap_or("");
    let tmp_dir = lines.next().filter(|dir| !dir.is_empty()).map(PathBuf::from);
    let tmp_dir = tmp_dir.map(|dir| std::path::absolute(&dir).unwrap_or(dir));
    let minor =
        version.strip_prefix("go1.").and_then(|v| v.split(['.', 'r', 'b']).next()?.parse::<u32>().ok());
    if minor.is_some_and(|m| m < GO_MINOR_MIN) {
        anyhow::bail!(
            "{version} is too old: maelstrom-go-test needs go 1.{GO_MINOR_MIN} or later (its test binaries \
             report their events, -test.v=test2json), found at {}",
            std::env::var("MAELSTROM_GO").unwrap_or_else(|_| "go".into())
        );
    }

    for path in [gowork, gomod] {
        if !path.is_empty() && path != "off" && path != "/dev/null" {
            let root = Path::new(path).parent().unwrap_or(Path::new("/")).to_owned();
            return Ok(GoEnv { root, tmp_dir });
        }
    }
    if gomod.is_empty() {
        // GOPATH mode (GO111MODULE=off): the project is where go test is run.
        let root = std::env::current_dir().map_err(|e| anyhow::anyhow!("the current directory: {e}"))?;
        return Ok(GoEnv { root, tmp_dir });
    }
    anyhow::bail!("no go.mod here or above: run maelstrom-go-test in a Go module (see go mod init)")
}

/// `go list -json` for `patterns` (as `go test` takes them).
pub fn list_packages(patterns: &[String], flags: &BuildFlags, root: &Path) -> anyhow::Result<Vec<Package>> {
    let mut command = go();
    // -e: a package go cannot load is reported, as go test reports it, not the end of the run.
    // Only the fields read: the others (staleness above all) cost go several times more.
    command.args([
        "list",
        "-e",
        "-json=Dir,ImportPath,Name,TestGoFiles,XTestGoFiles,Error,DepsErrors,Module",
    ]);
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

/// The variable that turns this program into `go test`'s `-exec` helper, naming where the
/// binaries go.
pub const EXEC_INTO: &str = "MAELSTROM_GO_TEST_EXEC_INTO";

/// What the helper prints, for the runner to read in `go test -json`'s output.
const BUILT: &str = "maelstrom-go-test: built ";

/// Every package's test binary, from one `go test -json -exec <this program>`: go builds and
/// links them in parallel, as `go test` does, and hands each to the helper as soon as it is
/// linked; the helper keeps it and says where.
pub struct Build {
    child: Arc<Mutex<Child>>,
    stdout: Option<std::process::ChildStdout>,
    /// go's own messages, shown once the build is run (a build dropped unrun, beside a failed
    /// `go list` that said the same, shows nothing).
    stderr: Option<std::process::ChildStderr>,
    /// Import path → index, for the packages asked for.
    packages: Vec<(String, usize)>,
    /// Why go could not load a package (`go list -e`), by index.
    load_errors: Vec<(usize, String)>,
    /// go's `GOTMPDIR`, where it keeps its work directory: removed when the build is dropped
    /// (after go has ended), for go leaves its own behind when it is killed.
    _work: tempfile::TempDir,
}

impl std::fmt::Debug for Build {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Build").field("packages", &self.packages.len()).finish()
    }
}

/// One event of `go test -json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GoEvent {
    action: String,
    #[serde(default)]
    package: Option<String>,
    /// On build events: `path [path.test]`.
    #[serde(default)]
    import_path: Option<String>,
    #[serde(default)]
    output: Option<String>,
    /// On a package's failure: the build (`path [path.test]`) that failed, maybe a dependency.
    #[serde(default)]
    failed_build: Option<String>,
}

/// The start of the name of each run's directory for go's work: then the runner's pid.
const WORK_PREFIX: &str = "maelstrom-go-test-";

/// How long a work directory must have been left alone before a run that sees its runner gone
/// removes it: a runner in another pid namespace that shares this directory looks gone too.
const STALE_WORK_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the work directories of runs that ended without removing their own (interrupted,
/// or killed): those whose runner's pid is gone, untouched for [`STALE_WORK_AFTER`].
fn remove_stale_work(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(WORK_PREFIX)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let untouched = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > STALE_WORK_AFTER));
        if untouched && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Kills go and what it started, unless it has ended.
fn kill(child: &Mutex<Child>) {
    let mut child = child.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(child.try_wait(), Ok(None)) {
        maelstrom_client::kill_tree(child.id() as i32);
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        kill(&self.child);
        let _ = self.child.lock().unwrap_or_else(|p| p.into_inner()).wait();
    }
}

impl Build {
    /// Starts building the packages `patterns` name (as `go test` takes them) into `into`;
    /// [`Build::expect`] says which of them are wanted before the build is run.
    /// go's work directory goes in one the build makes in `tmp_dir` (go's `GOTMPDIR`), or else
    /// in the system's.
    pub fn start(
        patterns: &[String],
        flags: &BuildFlags,
        into: &Path,
        tmp_dir: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let helper = std::env::current_exe().map_err(|e| anyhow::anyhow!("find this program: {e}"))?;
        // go splits -exec's value into words, as a shell would.
        let helper = format!("'{}'", helper.display().to_string().replace('\'', "'\\''"));
        // Each set of build flags keeps its own binaries: a -race run beside a plain one
        // does not swap them under it.
        let into = into.join(format!("{:016x}", fnv1a(flags.flags.join("\0").as_bytes())));
        let parent = tmp_dir.map_or_else(std::env::temp_dir, Path::to_owned);
        remove_stale_work(&parent);
        let prefix = format!("{WORK_PREFIX}{}-", std::process::id());
        let work = tempfile::Builder::new().prefix(&prefix).tempdir_in(&parent).map_err(|e| {
            anyhow::anyhow!(
                "make a directory for go's work in {} (GOTMPDIR, else TMPDIR): {e}",
                parent.display()
            )
        })?;
        let mut command = go();
        command.env("GOTMPDIR", work.path());
        // -count=1: go must not answer from its test cache, or the helper is never run.
        command.args(["test", "-json", "-count=1", "-exec", &helper]).args(&flags.flags).args(patterns);
        let mut child = command
            .env(EXEC_INTO, &into)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("run go test: {e}"))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        Ok(Self {
            child: Arc::new(Mutex::new(child)),
            stdout,
            stderr,
            packages: Vec::new(),
            load_errors: Vec::new(),
            _work: work,
        })
    }

    /// The packages whose binaries are wanted: (index, import path, why go cannot load it).
    pub fn expect(&mut self, packages: Vec<(usize, String, Option<String>)>) {
        self.load_errors = packages.iter().filter_map(|(i, _, e)| e.clone().map(|e| (*i, e))).collect();
        self.packages = packages.into_iter().map(|(index, path, _)| (path, index)).collect();
    }

    fn index(&self, import_path: &str) -> Option<usize> {
        self.packages.iter().find(|(path, _)| path == import_path).map(|(_, index)| *index)
    }
}

impl run::Build<Artifact> for Build {
    fn run(mut self: Box<Self>, ready: &mut dyn FnMut(Artifact)) -> anyhow::Result<i32> {
        let stdout = self.stdout.take().ok_or_else(|| anyhow::anyhow!("go's output is not piped"))?;
        if let Some(mut stderr) = self.stderr.take() {
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::stderr()));
        }
        let mut handed: Vec<usize> = Vec::new();
        // What go said of each build (go 1.24 and later: `path [path.test]` → its errors), and
        // of each package (a setup failure, the helper's own errors).
        let mut builds: Vec<(String, String)> = Vec::new();
        let mut said: Vec<(usize, String)> = Vec::new();
        let append = |list: &mut Vec<(String, String)>, key: &str, text: &str| match list
            .iter_mut()
            .find(|(k, _)| k == key)
        {
            Some((_, all)) => all.push_str(text),
            None => list.push((key.to_owned(), text.to_owned())),
        };
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(|e| anyhow::anyhow!("read go's output: {e}"))?;
            let Ok(event) = serde_json::from_str::<GoEvent>(&line) else { continue };
            if event.action == "build-output"
                && let (Some(path), Some(output)) = (&event.import_path, &event.output)
            {
                append(&mut builds, path, output);
                continue;
            }
            let Some(index) = event.package.as_deref().and_then(|p| self.index(p)) else { continue };
            if handed.contains(&index) {
                continue;
            }
            let output = event.output.as_deref().unwrap_or_default();
            let binary = match event.action.as_str() {
                "output" => match output.strip_prefix(BUILT) {
                    Some(path) => Ok(PathBuf::from(path.trim_end())),
                    None => {
                        match said.iter_mut().find(|(i, _)| *i == index) {
                            Some((_, all)) => all.push_str(output),
                            None => said.push((index, output.to_owned())),
                        }
                        continue;
                    }
                },
                "fail" => {
                    let build =
                        event.failed_build.as_deref().and_then(|b| builds.iter().find(|(k, _)| k == b));
                    let own = said.iter().find(|(i, _)| *i == index).map(|(_, t)| t.as_str());
                    let loading = self.load_errors.iter().find(|(i, _)| *i == index).map(|(_, t)| t.as_str());
                    let text = build
                        .map(|(_, t)| t.as_str())
                        .or(own)
                        .or(loading)
                        .map(str::trim_end)
                        .unwrap_or_default();
                    Err(if text.is_empty() {
                        "the package does not build (go's errors are above)".to_owned()
                    } else {
                        format!("the package does not build:\n{text}")
                    })
                }
                _ => continue,
            };
            handed.push(index);
            ready(Artifact { package: index, binary });
        }
        let status = self.child.lock().unwrap_or_else(|p| p.into_inner()).wait();
        for (path, index) in &self.packages {
            if !handed.contains(index) {
                let why = match &status {
                    Ok(status) => format!("go test ended ({status}) without building {path}"),
                    Err(e) => format!("wait for go test: {e}"),
                };
                ready(Artifact { package: *index, binary: Err(why) });
            }
        }
        // Each package that does not build is its own error; the others still run, as with go test.
        Ok(0)
    }

    fn stopper(&self) -> Box<dyn Fn() + Send> {
        let child = Arc::clone(&self.child);
        Box::new(move || kill(&child))
    }
}

/// The build when no package asked for has tests.
#[derive(Debug)]
pub struct NothingToBuild;

impl run::Build<Artifact> for NothingToBuild {
    fn run(self: Box<Self>, _ready: &mut dyn FnMut(Artifact)) -> anyhow::Result<i32> {
        Ok(0)
    }

    fn stopper(&self) -> Box<dyn Fn() + Send> {
        Box::new(|| {})
    }
}

/// As `go test`'s `-exec` helper: keeps the test binary go built (go deletes it afterwards),
/// under `into`, named after the package's directory, and says where. An unchanged binary is
/// left as it was, with its digest and listing.
pub fn keep_binary(into: &Path, binary: &Path) -> Result<(), String> {
    let dir = std::env::current_dir().map_err(|e| format!("the package's directory: {e}"))?;
    let file = binary.file_name().ok_or_else(|| format!("{}: not a file", binary.display()))?;
    // Named by the package's directory, so the same package keeps the same file.
    let keep = into.join(format!("{:016x}", fnv1a(dir.as_os_str().as_encoded_bytes()))).join(file);
    if let Some(parent) = keep.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    if !same_contents(binary, &keep) {
        let temp = keep.with_extension(format!("new{}", std::process::id()));
        std::fs::copy(binary, &temp)
            .map_err(|e| format!("copy {} to {}: {e}", binary.display(), temp.display()))?;
        std::fs::rename(&temp, &keep)
            .map_err(|e| format!("move the test binary to {}: {e}", keep.display()))?;
    }
    println!("{BUILT}{}", keep.display());
    Ok(())
}

/// A stable 64-bit hash (FNV-1a) for cache names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Bytes compared at a time.
const COMPARE_CHUNK_BYTES: usize = 1 << 20;

/// The longest a test binary may take to list its tests.
pub const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether two files hold the same bytes (read a chunk at a time).
fn same_contents(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(mut a), Ok(mut b)) = (std::fs::File::open(a), std::fs::File::open(b)) else { return false };
    match (a.metadata(), b.metadata()) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => {}
        _ => return false,
    }
    let (mut x, mut y) = (vec![0u8; COMPARE_CHUNK_BYTES], vec![0u8; COMPARE_CHUNK_BYTES]);
    loop {
        let Ok(n) = a.read(&mut x) else { return false };
        if n == 0 {
            return true;
        }
        if b.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}

/// A test binary's cases: tests, examples with output, fuzz targets (run on their seed
/// corpus). Benchmarks are not tests.
///
/// The binary runs here, outside any container (its TestMain too), for at most
/// [`LIST_TIMEOUT`]: a listing that hangs is an error, not a hung run.
pub fn list_cases(binary: &Path, dir: &Path) -> anyhow::Result<Vec<Listed>> {
    let mut child = Command::new(binary)
        .args(["-test.list", "."])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("list the tests of {}: {e}", binary.display()))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let (stdout, stderr) = (read(stdout.map(|p| Box::new(p) as _)), read(stderr.map(|p| Box::new(p) as _)));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) =
            child.try_wait().map_err(|e| anyhow::anyhow!("wait for {}: {e}", binary.display()))?
        {
            break status;
        }
        if started.elapsed() > LIST_TIMEOUT {
            maelstrom_client::kill_tree(child.id() as i32);
            let _ = child.wait();
            anyhow::bail!(
                "list the tests of {}: it took more than {} s (does its TestMain wait for something?)",
                binary.display(),
                LIST_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let out = std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
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
