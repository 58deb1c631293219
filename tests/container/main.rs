//! Container tests: a real zygote, real containers, and the static probe reporting from inside.
//!
//! The zygote must be forked before any thread exists, so this binary has its own `main`: it
//! starts the zygote, then hands the cases to libtest-mimic (which runs them on threads).
//! Every case passes as root and as an unprivileged user; CI runs this binary both ways.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libtest_mimic::{Arguments, Failed, Trial};
use maelstrom_container::{Completed, Limits, Spec, Zygote, ZygoteConfig};

mod isolation;
mod lifecycle;
mod network;
mod setup;

/// What every case gets.
#[derive(Debug)]
pub struct Ctx {
    pub zygote: Zygote,
}

pub type Case = fn(&Ctx) -> anyhow::Result<()>;

/// A root holding the probe at /bin/probe and empty mount points, removed when dropped.
#[derive(Debug)]
pub struct Layer {
    pub dir: tempfile::TempDir,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("maelstrom-layer-").tempdir().expect("create a layer dir");
        for sub in ["bin", "dev", "dev/shm", "dev/pts", "proc", "sys", "tmp", "data", "mq", "work"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("create a mount point");
        }
        for device in ["null", "zero", "full", "random", "urandom", "tty", "fuse", "ptmx"] {
            std::fs::write(dir.path().join("dev").join(device), b"").expect("create a device stub");
        }
        let probe = dir.path().join("bin/probe");
        if std::fs::hard_link(maelstrom_testbins::probe(), &probe).is_err() {
            std::fs::copy(maelstrom_testbins::probe(), &probe).expect("copy the probe");
        }
        Self { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

/// The probe with `args`, in a read-only root of `layer`.
pub fn probe(layer: &Layer, args: &[&str]) -> Spec {
    let mut spec = Spec::new(vec![layer.path()], "/bin/probe");
    spec.arguments = args.iter().map(Into::into).collect();
    spec
}

pub fn run(ctx: &Ctx, spec: &Spec) -> anyhow::Result<Completed> {
    run_with(ctx, spec, &Limits::default())
}

pub fn run_with(ctx: &Ctx, spec: &Spec, limits: &Limits) -> anyhow::Result<Completed> {
    let request = maelstrom_container::compile(spec)?;
    Ok(ctx.zygote.run(&request, limits)?)
}

/// Runs the probe's `report` and parses its facts.
pub fn report(ctx: &Ctx, spec: &Spec) -> anyhow::Result<BTreeMap<String, String>> {
    let done = run(ctx, spec)?;
    anyhow::ensure!(
        done.outcome == maelstrom_container::Ended::Exited(0),
        "probe ended {:?}; stderr: {}",
        done.outcome,
        String::from_utf8_lossy(&done.stderr.bytes)
    );
    Ok(facts(&done.stdout.bytes))
}

pub fn facts(stdout: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Asserts that fact `key` equals `expected`.
pub fn expect_fact(facts: &BTreeMap<String, String>, key: &str, expected: &str) -> anyhow::Result<()> {
    let actual = facts.get(key).map(String::as_str);
    anyhow::ensure!(
        actual == Some(expected),
        "fact {key}: expected {expected:?}, got {actual:?}\nall facts: {facts:#?}"
    );
    Ok(())
}

/// Makes `path` writable by anyone: a root worker's jobs run as the host's nobody, so a test
/// that wants a job to write somewhere must allow it for both kinds of worker.
pub fn open_to_all(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if path.is_dir() { 0o777 } else { 0o666 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The host uid a job's files get: the worker's own, or nobody's for a root worker.
pub fn job_host_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self").expect("/proc/self").uid() {
        0 => 65534,
        uid => uid,
    }
}

fn main() {
    if std::env::var_os(network::REUSE_CHECK).is_some() {
        if let Err(e) = network::reuse_check() {
            println!("{e:#}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    let args = Arguments::from_args();
    let zygote = match Zygote::start(ZygoteConfig { lanes: 2, cgroups: None }) {
        Ok(zygote) => zygote,
        Err(e) => {
            eprintln!("cannot start the zygote: {e}");
            std::process::exit(1);
        }
    };
    let ctx = Arc::new(Ctx { zygote });
    static CASES: OnceLock<Vec<(&'static str, Case)>> = OnceLock::new();
    let cases = CASES.get_or_init(|| {
        let mut all = Vec::new();
        all.extend(isolation::CASES.iter().map(|(n, c)| (*n, *c)));
        all.extend(lifecycle::CASES.iter().map(|(n, c)| (*n, *c)));
        all.extend(network::CASES.iter().map(|(n, c)| (*n, *c)));
        all.extend(setup::CASES.iter().map(|(n, c)| (*n, *c)));
        all
    });
    let trials = cases
        .iter()
        .map(|&(name, case)| {
            let ctx = Arc::clone(&ctx);
            Trial::test(name, move || case(&ctx).map_err(|e| Failed::from(format!("{e:#}"))))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
