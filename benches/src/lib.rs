//! Shared pieces of the benches: the trivial container every startup bench spawns, and the
//! unisolated floor it is compared against.

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
    pub fn new(network: NetworkMode, mounts: Mounts) -> std::io::Result<Self> {
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
        let mut job = zygote.spawn(&self.request, self.devnull.as_fd(), self.devnull.as_fd())?;
        job.wait().map_err(maelstrom_container::SpawnError::Pipes)?;
        Ok(())
    }
}
