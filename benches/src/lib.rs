//! Shared pieces of the benches: the trivial container every startup bench spawns, the
//! unisolated floor it is compared against, and what the suite benches share (a binary of
//! this workspace, a timed command, medians).

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use maelstrom_container::{Device, Mount, NetworkMode, SpawnRequest, Spec};

/// Which mounts the trivial container gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mounts {
    /// The root layer only: what a static binary needs.
    None,
    /// What a typical test gets: /proc, a private /tmp, and /dev/{null,zero,urandom}.
    Typical,
}

/// A layer holding the static `true` at /true and the mount points a typical test uses.
#[derive(Debug)]
pub struct TrivialContainer {
    _layer: tempfile::TempDir,
    pub request: SpawnRequest,
    /// The same binary on the host, for the floor.
    pub host_binary: CString,
    pub devnull: OwnedFd,
}

impl TrivialContainer {
    /// The container with `network`, `mounts`, and a writable root (its changes on a fresh
    /// tmpfs) if `writable`.
    pub fn new(network: NetworkMode, mounts: Mounts, writable: bool) -> std::io::Result<Self> {
        let layer = tempfile::Builder::new().prefix("maelstrom-bench-").tempdir()?;
        for dir in ["proc", "tmp", "dev"] {
            std::fs::create_dir(layer.path().join(dir))?;
        }
        for device in ["null", "zero", "urandom"] {
            std::fs::write(layer.path().join("dev").join(device), b"")?;
        }
        std::fs::copy(maelstrom_testbins::static_true(), layer.path().join("true"))?;
        let mut spec = Spec::new(vec![layer.path().to_owned()], "/true");
        spec.network = network;
        spec.writable_root = writable;
        if mounts == Mounts::Typical {
            spec.mounts = vec![
                Mount::Proc { target: "/proc".into() },
                Mount::Tmp { target: "/tmp".into() },
                Mount::Devices(vec![Device::Null, Device::Zero, Device::Urandom]),
            ];
        }
        let request = maelstrom_container::compile(&spec).map_err(std::io::Error::other)?;
        let host_binary = CString::new(maelstrom_testbins::static_true().as_os_str().as_bytes())
            .map_err(std::io::Error::other)?;
        let devnull = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?.into();
        Ok(Self { _layer: layer, request, host_binary, devnull })
    }

    /// The floor: posix_spawn and wait of the same binary, no isolation.
    pub fn floor_once(&self) -> std::io::Result<()> {
        maelstrom_container::posix_spawn_wait(&self.host_binary, self.devnull.as_fd()).map(drop)
    }

    /// One container: spawn through the zygote, exec, exit, reap.
    pub fn container_once(
        &self,
        zygote: &maelstrom_container::Zygote,
    ) -> Result<(), maelstrom_container::SpawnError> {
        self.spawn_once(zygote, &self.request)
    }

    /// One container of `request` (this container's, maybe limited: see [`Self::limited`]).
    pub fn spawn_once(
        &self,
        zygote: &maelstrom_container::Zygote,
        request: &SpawnRequest,
    ) -> Result<(), maelstrom_container::SpawnError> {
        let mut job = zygote.spawn(request, self.devnull.as_fd(), self.devnull.as_fd())?;
        job.wait().map_err(maelstrom_container::SpawnError::Pipes)?;
        Ok(())
    }

    /// This container under a worker's limits: its share's rlimits and tmpfs size, started in
    /// job cgroup `cgroup`.
    pub fn limited(&self, share: &maelstrom_container::Share, cgroup: u32) -> SpawnRequest {
        let mut request = self.request.clone();
        request.rlimits = share.rlimits.clone();
        request.tmpfs_bytes = share.tmpfs_bytes;
        request.cgroup = cgroup;
        request
    }
}

/// This workspace's binary `name` (of package `package`): `given` if the user named one (made
/// absolute: the benches run commands elsewhere), else beside this bench, built first if cargo
/// is at hand.
pub fn workspace_binary(given: Option<&std::path::Path>, package: &str, name: &str) -> std::path::PathBuf {
    if let Some(binary) = given {
        return std::path::absolute(binary).expect("the binary's absolute path");
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "--quiet", "-p", package])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of {package} failed");
    }
    std::env::current_exe().expect("our own path").with_file_name(name)
}

/// Runs a command in `dir`; its wall time, exit code and stdout.
pub fn timed_in(
    mut command: std::process::Command,
    dir: &std::path::Path,
) -> (std::time::Duration, Option<i32>, String) {
    let start = std::time::Instant::now();
    let out = command
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .expect("run");
    (start.elapsed(), out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The median (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
