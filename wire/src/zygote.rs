//! The link between a worker and its zygote lanes.
//!
//! A lane is a single-threaded process that clones one job at a time. The worker sends a
//! [`SpawnRequest`] (with the job's stdout and stderr pipes attached as `SCM_RIGHTS`) over a
//! `SOCK_SEQPACKET` socket; the lane answers with one [`SpawnReply`] (with the job's pidfd
//! attached when a process exists). When a lane starts it sends one [`LaneHello`].
//!
//! The request carries the container's setup plan as data: a list of [`SetupOp`]s split in two.
//! The `template` part builds the read-only skeleton of the container (its root and static
//! mounts); the lane runs it once, keeps the result as a mount namespace, and reuses it for every
//! later request with equal template ops. The `job` part runs in each job's own process.
//!
//! Sequencing rules (checked by [`decode_request`], kept by the planner):
//! - a non-empty `template` is `Root` (read-only), then `CloneTree`/`NewFs`, then `PivotRoot`,
//!   then `Attach`; the `job` part is then `Mount` ops only;
//! - an empty `template` means the job builds everything itself: `job` is `Root`, then
//!   `CloneTree`/`NewFs`, then `PivotRoot`, then `Attach`/`Mount` in any order;
//! - every slot filled before the pivot is attached exactly once after it.

use std::fmt;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::{CBytes, DecodeError};

/// Bumped whenever a type in this module changes shape.
pub const LANE_PROTOCOL_VERSION: u32 = 5;

/// Largest spawn request, in bytes. Arguments and environment dominate; this allows about half
/// of a default `ARG_MAX`. The socket buffers are sized to carry it in one datagram.
pub const SPAWN_REQUEST_BYTES_MAX: usize = 1 << 20;

/// Largest reply or hello, in bytes.
pub const REPLY_BYTES_MAX: usize = 16 << 10;

/// Detached-mount slots one plan may use (each holds an fd between `CloneTree`/`NewFs` and
/// `Attach`).
pub const SLOTS_MAX: u8 = 32;

/// Setup ops in one part (template or job) of a plan.
pub const OPS_MAX: usize = 128;

/// Layers in one root.
pub const LAYERS_MAX: usize = 64;

/// Resource limits in one request.
pub const RLIMITS_MAX: usize = 16;

/// Exec candidates (one, or one per `PATH` entry).
pub const PROGRAM_CANDIDATES_MAX: usize = 64;

/// Arguments and environment entries, each.
pub const STRINGS_MAX: usize = 16 << 10;

/// How a job reaches the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "lowercase"))]
#[rkyv(compare(PartialEq), derive(Debug, Clone, Copy, PartialEq, Eq))]
pub enum NetworkMode {
    /// A private network namespace with no interface up.
    Disabled,
    /// A private network namespace with `lo` up.
    Loopback,
    /// The host's network.
    Local,
}

/// Something the default sandbox refuses a job, which its spec may allow by name.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
#[rkyv(compare(PartialEq), derive(Debug, Clone, Copy, PartialEq, Eq))]
pub enum Allowance {
    /// Keep the capabilities of root in the job's own user namespace.
    Capabilities,
    /// Create and enter user namespaces (`unshare`, `clone`, `clone3`, `setns`).
    UserNamespaces,
    /// `io_uring_setup`, `io_uring_enter`, `io_uring_register`.
    IoUring,
    /// `ptrace` and what shares its access check: `process_vm_readv`/`writev`, `kcmp`,
    /// `pidfd_getfd`, `process_madvise`.
    Ptrace,
    /// `mount`, `umount2`, `pivot_root` and the mount API (`fsopen`, `move_mount`...).
    Mount,
    Userfaultfd,
    /// `add_key`, `request_key`, `keyctl`.
    Keyrings,
    Bpf,
    /// `perf_event_open`.
    PerfEvents,
}

impl Allowance {
    pub const ALL: [Allowance; 9] = [
        Allowance::Capabilities,
        Allowance::UserNamespaces,
        Allowance::IoUring,
        Allowance::Ptrace,
        Allowance::Mount,
        Allowance::Userfaultfd,
        Allowance::Keyrings,
        Allowance::Bpf,
        Allowance::PerfEvents,
    ];

    /// The name specs use.
    pub fn name(self) -> &'static str {
        match self {
            Allowance::Capabilities => "capabilities",
            Allowance::UserNamespaces => "user_namespaces",
            Allowance::IoUring => "io_uring",
            Allowance::Ptrace => "ptrace",
            Allowance::Mount => "mount",
            Allowance::Userfaultfd => "userfaultfd",
            Allowance::Keyrings => "keyrings",
            Allowance::Bpf => "bpf",
            Allowance::PerfEvents => "perf_events",
        }
    }

    /// This allowance's bit in a set.
    pub fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl ArchivedAllowance {
    pub fn native(self) -> Allowance {
        match self {
            ArchivedAllowance::Capabilities => Allowance::Capabilities,
            ArchivedAllowance::UserNamespaces => Allowance::UserNamespaces,
            ArchivedAllowance::IoUring => Allowance::IoUring,
            ArchivedAllowance::Ptrace => Allowance::Ptrace,
            ArchivedAllowance::Mount => Allowance::Mount,
            ArchivedAllowance::Userfaultfd => Allowance::Userfaultfd,
            ArchivedAllowance::Keyrings => Allowance::Keyrings,
            ArchivedAllowance::Bpf => Allowance::Bpf,
            ArchivedAllowance::PerfEvents => Allowance::PerfEvents,
        }
    }
}

/// The allowances of a set of bits ([`Allowance::bit`]), in [`Allowance::ALL`]'s order;
/// `Err` with the bits no allowance has.
pub fn allowances_of(bits: u32) -> Result<Vec<Allowance>, u32> {
    let known = Allowance::ALL.iter().fold(0, |all, a| all | a.bit());
    if bits & !known != 0 {
        return Err(bits & !known);
    }
    Ok(Allowance::ALL.into_iter().filter(|a| bits & a.bit() != 0).collect())
}

/// A set of allowances as bits ([`Allowance::bit`]).
pub fn allowance_bits<'a>(allowances: impl IntoIterator<Item = &'a ArchivedAllowance>) -> u32 {
    allowances.into_iter().fold(0, |bits, a| bits | a.native().bit())
}

/// A device a container can be given (`/dev/<name>`, the host's node; `shm` is a fresh tmpfs).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "lowercase"))]
#[rkyv(compare(PartialEq), derive(Debug, Clone, Copy, PartialEq, Eq))]
pub enum Device {
    Full,
    Fuse,
    Null,
    Random,
    /// A fresh tmpfs at /dev/shm (never the host's).
    Shm,
    Tty,
    Urandom,
    Zero,
}

impl Device {
    pub const ALL: [Device; 8] = [
        Device::Full,
        Device::Fuse,
        Device::Null,
        Device::Random,
        Device::Shm,
        Device::Tty,
        Device::Urandom,
        Device::Zero,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Device::Full => "full",
            Device::Fuse => "fuse",
            Device::Null => "null",
            Device::Random => "random",
            Device::Shm => "shm",
            Device::Tty => "tty",
            Device::Urandom => "urandom",
            Device::Zero => "zero",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl ArchivedDevice {
    pub fn native(self) -> Device {
        match self {
            ArchivedDevice::Full => Device::Full,
            ArchivedDevice::Fuse => Device::Fuse,
            ArchivedDevice::Null => Device::Null,
            ArchivedDevice::Random => Device::Random,
            ArchivedDevice::Shm => Device::Shm,
            ArchivedDevice::Tty => Device::Tty,
            ArchivedDevice::Urandom => Device::Urandom,
            ArchivedDevice::Zero => Device::Zero,
        }
    }
}

/// The filesystems a plan can create.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug, Clone, Copy, PartialEq, Eq))]
pub enum FsKind {
    Proc,
    Sys,
    Tmp,
    Mqueue,
    Devpts,
}

impl FsKind {
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Proc => "proc",
            FsKind::Sys => "sysfs",
            FsKind::Tmp => "tmpfs",
            FsKind::Mqueue => "mqueue",
            FsKind::Devpts => "devpts",
        }
    }
}

impl ArchivedFsKind {
    pub fn native(self) -> FsKind {
        match self {
            ArchivedFsKind::Proc => FsKind::Proc,
            ArchivedFsKind::Sys => FsKind::Sys,
            ArchivedFsKind::Tmp => FsKind::Tmp,
            ArchivedFsKind::Mqueue => FsKind::Mqueue,
            ArchivedFsKind::Devpts => FsKind::Devpts,
        }
    }
}

/// One step of a container's setup, executed in order by the lane's interpreter.
#[derive(Clone, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum SetupOp {
    /// Build the root from layer directories, bottom layer first: a bind of the only layer, or an
    /// overlay of several; with a fresh tmpfs upper when `writable`. Leaves the current
    /// directory at the new root, which is mounted on the top layer's path.
    Root { layers: Vec<CBytes>, writable: bool },
    /// Clone the host tree at `source` (an absolute host path) into detached-mount `slot`.
    CloneTree { source: CBytes, read_only: bool, slot: u8 },
    /// Create a filesystem into detached-mount `slot`. Proc and sysfs must be created while an
    /// instance of them is still visible, that is, before the pivot.
    NewFs { kind: FsKind, slot: u8 },
    /// Make the current directory the root of the mount namespace and detach the old root.
    PivotRoot,
    /// Attach detached-mount `slot` at `target`, an absolute path inside the container.
    Attach { slot: u8, target: CBytes },
    /// Mount a new filesystem of `kind` at `target`, an absolute path inside the container.
    Mount { kind: FsKind, target: CBytes },
    /// After the pivot: clone the container's own tree at `source` into detached-mount `slot`,
    /// to attach again once a later mount has covered it.
    Hold { source: CBytes, slot: u8 },
    /// After the pivot: make the directory `target` (one level; an existing one is fine).
    MakeDir { target: CBytes },
}

impl fmt::Display for SetupOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupOp::Root { layers, writable } => {
                let mode = if *writable { "writable" } else { "read-only" };
                write!(f, "root {mode} from")?;
                for layer in layers {
                    write!(f, " {layer}")?;
                }
                Ok(())
            }
            SetupOp::CloneTree { source, read_only, slot } => {
                let ro = if *read_only { " read-only" } else { "" };
                write!(f, "clone {source}{ro} into slot {slot}")
            }
            SetupOp::NewFs { kind, slot } => write!(f, "new {} into slot {slot}", kind.name()),
            SetupOp::PivotRoot => f.write_str("pivot root"),
            SetupOp::Attach { slot, target } => write!(f, "attach slot {slot} at {target}"),
            SetupOp::Mount { kind, target } => write!(f, "mount {} at {target}", kind.name()),
            SetupOp::Hold { source, slot } => write!(f, "hold {source} in slot {slot}"),
            SetupOp::MakeDir { target } => write!(f, "make directory {target}"),
        }
    }
}

/// How many of a job's fillable filesystems (see [`SetupOp::fillable`]) are checked for
/// fullness when it ends: the first ones its setup makes. The job's process hands an fd of
/// each to its lane, which passes it on to the worker with the job's pidfd.
pub const FILLABLE_MAX: usize = 3;

impl SetupOp {
    /// Where the job sees the filesystem this op makes, if the job's writes can fill it: a
    /// tmpfs mount's path, or `/` for a writable root's changes.
    pub fn fillable(&self) -> Option<String> {
        match self {
            SetupOp::Root { writable: true, .. } => Some("/".to_owned()),
            SetupOp::Mount { kind: FsKind::Tmp, target } => Some(target.to_string()),
            _ => None,
        }
    }
}

impl ArchivedSetupOp {
    /// Whether [`SetupOp::fillable`] names the filesystem this op makes.
    pub fn is_fillable(&self) -> bool {
        matches!(
            self,
            ArchivedSetupOp::Root { writable: true, .. }
                | ArchivedSetupOp::Mount { kind: ArchivedFsKind::Tmp, .. }
        )
    }
}

impl fmt::Display for ArchivedSetupOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchivedSetupOp::Root { layers, writable } => {
                let mode = if *writable { "writable" } else { "read-only" };
                write!(f, "root {mode} from")?;
                for layer in layers.iter() {
                    write!(f, " {layer}")?;
                }
                Ok(())
            }
            ArchivedSetupOp::CloneTree { source, read_only, slot } => {
                let ro = if *read_only { " read-only" } else { "" };
                write!(f, "clone {source}{ro} into slot {slot}")
            }
            ArchivedSetupOp::NewFs { kind, slot } => {
                write!(f, "new {} into slot {slot}", kind.native().name())
            }
            ArchivedSetupOp::PivotRoot => f.write_str("pivot root"),
            ArchivedSetupOp::Attach { slot, target } => write!(f, "attach slot {slot} at {target}"),
            ArchivedSetupOp::Mount { kind, target } => {
                write!(f, "mount {} at {target}", kind.native().name())
            }
            ArchivedSetupOp::Hold { source, slot } => write!(f, "hold {source} in slot {slot}"),
            ArchivedSetupOp::MakeDir { target } => write!(f, "make directory {target}"),
        }
    }
}

/// A resource limit applied just before exec. `u64::MAX` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub struct Rlimit {
    /// The `RLIMIT_*` number.
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// Worker → lane: start one job.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub struct SpawnRequest {
    /// Builds the shared read-only skeleton; empty when the job builds everything itself.
    pub template: Vec<SetupOp>,
    /// Runs in the job's own process.
    pub job: Vec<SetupOp>,
    pub network: NetworkMode,
    pub hostname: CBytes,
    /// The job's uid and gid inside its user namespace.
    pub user: u32,
    pub group: u32,
    /// Absolute, inside the container.
    pub working_directory: CBytes,
    pub rlimits: Vec<Rlimit>,
    /// Paths to exec, tried in order while they fail with "not found" (one per `PATH` entry
    /// for a program without a slash).
    pub program: Vec<CBytes>,
    /// The whole argv, `argv[0]` first.
    pub arguments: Vec<CBytes>,
    /// `NAME=value` entries: the job's whole environment.
    pub environment: Vec<CBytes>,
    /// What the job may use beyond the default sandbox.
    pub allow: Vec<Allowance>,
    /// The size of each tmpfs the job mounts, a writable root's upper layer included; 0 for the
    /// kernel's default (half of the machine's memory).
    pub tmpfs_bytes: u64,
    /// The job's memory limit, enforced through its cgroup; 0 for the worker's default.
    pub memory_bytes: u64,
    /// Which of the zygote's job cgroups the job starts in ([`NO_CGROUP`]: none). Set by
    /// whoever sends the request (the executor), not by the plan.
    pub cgroup: u32,
}

/// [`SpawnRequest::cgroup`] when the job gets no cgroup.
pub const NO_CGROUP: u32 = u32::MAX;

/// Where a job's setup stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug, Clone, Copy, PartialEq, Eq))]
pub enum Step {
    /// The lane's clone of the job process.
    Clone,
    /// Making a network namespace for the pool.
    CreateNetwork,
    /// Making an IPC namespace for the pool.
    CreateIpc,
    /// Building the template mount namespace; `op` indexes `SpawnRequest::template`, or is
    /// `u32::MAX` for the builder's own steps.
    Template {
        op: u32,
    },
    /// A step of the job process before its ops.
    Prepare,
    /// Moving into its cgroup.
    Cgroup,
    JoinNetwork,
    JoinIpc,
    JoinTemplate,
    UnshareMounts,
    /// `op` indexes `SpawnRequest::job`.
    Job {
        op: u32,
    },
    Hostname,
    WorkingDirectory,
    UserNamespace,
    Stdio,
    Rlimit,
    /// Dropping capabilities and loading the job's own seccomp filter.
    Policy,
    Exec,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Clone => f.write_str("clone the job process"),
            Step::CreateNetwork => f.write_str("create a network namespace"),
            Step::CreateIpc => f.write_str("create an IPC namespace"),
            Step::Template { .. } => f.write_str("build the container template"),
            Step::Prepare => f.write_str("prepare the job process"),
            Step::Cgroup => f.write_str("move into the job's cgroup"),
            Step::JoinNetwork => f.write_str("join the network namespace"),
            Step::JoinIpc => f.write_str("join the IPC namespace"),
            Step::JoinTemplate => f.write_str("join the template mount namespace"),
            Step::UnshareMounts => f.write_str("unshare the mount namespace"),
            Step::Job { .. } => f.write_str("set up the container"),
            Step::Hostname => f.write_str("set the hostname"),
            Step::WorkingDirectory => f.write_str("change to the working directory"),
            Step::UserNamespace => f.write_str("enter the job's user namespace"),
            Step::Stdio => f.write_str("set up stdin, stdout and stderr"),
            Step::Rlimit => f.write_str("set a resource limit"),
            Step::Policy => f.write_str("apply the job's sandbox policy (capabilities, seccomp)"),
            Step::Exec => f.write_str("execute the program"),
        }
    }
}

impl ArchivedStep {
    pub fn native(self) -> Step {
        match self {
            ArchivedStep::Clone => Step::Clone,
            ArchivedStep::CreateNetwork => Step::CreateNetwork,
            ArchivedStep::CreateIpc => Step::CreateIpc,
            ArchivedStep::Template { op } => Step::Template { op: op.to_native() },
            ArchivedStep::Prepare => Step::Prepare,
            ArchivedStep::Cgroup => Step::Cgroup,
            ArchivedStep::JoinNetwork => Step::JoinNetwork,
            ArchivedStep::JoinIpc => Step::JoinIpc,
            ArchivedStep::JoinTemplate => Step::JoinTemplate,
            ArchivedStep::UnshareMounts => Step::UnshareMounts,
            ArchivedStep::Job { op } => Step::Job { op: op.to_native() },
            ArchivedStep::Hostname => Step::Hostname,
            ArchivedStep::WorkingDirectory => Step::WorkingDirectory,
            ArchivedStep::UserNamespace => Step::UserNamespace,
            ArchivedStep::Stdio => Step::Stdio,
            ArchivedStep::Rlimit => Step::Rlimit,
            ArchivedStep::Policy => Step::Policy,
            ArchivedStep::Exec => Step::Exec,
        }
    }
}

/// Lane → worker: the outcome of one [`SpawnRequest`].
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum SpawnReply {
    /// The job process exists and got past its setup; its pidfd is attached, last, after an fd
    /// of each of its fillable filesystems (the first [`FILLABLE_MAX`], in the order of its
    /// ops). `pid` is in the worker's pid namespace.
    Started { pid: i32 },
    /// Setup failed at `step` with `errno`. If `pid` is non-zero the process existed and
    /// exited; its pidfd is attached and the worker must reap it.
    Failed { step: Step, errno: i32, pid: i32 },
    /// The request broke the protocol (a worker bug); nothing was started.
    Rejected { reason: String },
}

/// Where a lane's start stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug, Clone, Copy, PartialEq, Eq))]
pub enum BootStep {
    UserNamespace,
    PrivateMounts,
    JoinUserNamespace,
    JoinMountNamespace,
    OpenDevNull,
    WatchWorker,
    NetworkOwner,
    ChildStack,
    Seccomp,
    Checker,
    Protocol,
}

impl ArchivedBootStep {
    pub fn native(self) -> BootStep {
        match self {
            ArchivedBootStep::UserNamespace => BootStep::UserNamespace,
            ArchivedBootStep::PrivateMounts => BootStep::PrivateMounts,
            ArchivedBootStep::JoinUserNamespace => BootStep::JoinUserNamespace,
            ArchivedBootStep::JoinMountNamespace => BootStep::JoinMountNamespace,
            ArchivedBootStep::OpenDevNull => BootStep::OpenDevNull,
            ArchivedBootStep::WatchWorker => BootStep::WatchWorker,
            ArchivedBootStep::NetworkOwner => BootStep::NetworkOwner,
            ArchivedBootStep::ChildStack => BootStep::ChildStack,
            ArchivedBootStep::Checker => BootStep::Checker,
            ArchivedBootStep::Seccomp => BootStep::Seccomp,
            ArchivedBootStep::Protocol => BootStep::Protocol,
        }
    }
}

impl fmt::Display for BootStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootStep::UserNamespace => "create the zygote's user namespace",
            BootStep::PrivateMounts => "make the zygote's mounts private",
            BootStep::JoinUserNamespace => "join the zygote's user namespace",
            BootStep::JoinMountNamespace => "join the zygote's mount namespace",
            BootStep::OpenDevNull => "open /dev/null",
            BootStep::WatchWorker => "open a pidfd on the worker",
            BootStep::NetworkOwner => "create the network namespaces' owner",
            BootStep::ChildStack => "map the child stack",
            BootStep::Checker => "start the thread that checks namespaces jobs gave back",
            BootStep::Seccomp => "install the seccomp filter",
            BootStep::Protocol => "talk to the worker",
        })
    }
}

/// Lane → worker, once, when the lane is ready or could not start.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum LaneHello {
    Ready { version: u32, pid: i32 },
    Failed { version: u32, step: BootStep, errno: i32 },
}

/// Serializes `value` into `out`, reusing its allocation.
pub fn encode<T>(value: &T, out: &mut AlignedVec) -> Result<(), rancor::Error>
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
        >,
{
    let mut buf = std::mem::take(out);
    buf.clear();
    *out = rkyv::api::high::to_bytes_in(value, buf)?;
    Ok(())
}

/// Validates a received spawn request: size, layout (bytecheck), then the invariants the types
/// cannot express. `bytes` must be 16-byte aligned (receive into an [`AlignedVec`]).
pub fn decode_request(bytes: &[u8]) -> Result<&ArchivedSpawnRequest, DecodeError> {
    let request = access::<ArchivedSpawnRequest>(bytes, SPAWN_REQUEST_BYTES_MAX, "spawn request")?;
    check_request(request).map_err(|reason| DecodeError::Semantic { what: "spawn request", reason })?;
    Ok(request)
}

/// Validates a received spawn reply.
pub fn decode_reply(bytes: &[u8]) -> Result<&ArchivedSpawnReply, DecodeError> {
    access::<ArchivedSpawnReply>(bytes, REPLY_BYTES_MAX, "spawn reply")
}

/// Validates a received lane hello.
pub fn decode_hello(bytes: &[u8]) -> Result<&ArchivedLaneHello, DecodeError> {
    access::<ArchivedLaneHello>(bytes, REPLY_BYTES_MAX, "lane hello")
}

fn access<'a, T>(bytes: &'a [u8], max: usize, what: &'static str) -> Result<&'a T, DecodeError>
where
    T: rkyv::Portable
        + for<'b> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'b, rancor::Error>>,
{
    if bytes.len() > max {
        return Err(DecodeError::TooLarge { len: bytes.len(), max });
    }
    if !(bytes.as_ptr() as usize).is_multiple_of(16) {
        return Err(DecodeError::Invalid { what, reason: "receive buffer is not 16-byte aligned".into() });
    }
    rkyv::access::<T, rancor::Error>(bytes).map_err(|e| DecodeError::Invalid { what, reason: e.to_string() })
}

/// Checks what bytecheck cannot: string termination, counts, and op sequencing.
pub fn check_request(r: &ArchivedSpawnRequest) -> Result<(), String> {
    let strings = |name: &str, list: &rkyv::vec::ArchivedVec<crate::cbytes::ArchivedCBytes>, max: usize| {
        if list.len() > max {
            return Err(format!("{name}: {} entries, at most {max}", list.len()));
        }
        match list.iter().position(|s| !s.is_valid()) {
            Some(i) => Err(format!("{name}[{i}] is not a NUL-terminated string")),
            None => Ok(()),
        }
    };
    let string = |name: &str, s: &crate::cbytes::ArchivedCBytes| {
        if s.is_valid() { Ok(()) } else { Err(format!("{name} is not a NUL-terminated string")) }
    };
    strings("program", &r.program, PROGRAM_CANDIDATES_MAX)?;
    if r.program.is_empty() {
        return Err("program: no candidate to execute".into());
    }
    strings("arguments", &r.arguments, STRINGS_MAX)?;
    if r.arguments.is_empty() {
        return Err("arguments: argv[0] is missing".into());
    }
    strings("environment", &r.environment, STRINGS_MAX)?;
    string("hostname", &r.hostname)?;
    string("working_directory", &r.working_directory)?;
    if r.working_directory.as_bytes().first() != Some(&b'/') {
        return Err("working_directory must be absolute".into());
    }
    if r.rlimits.len() > RLIMITS_MAX {
        return Err(format!("rlimits: {} entries, at most {RLIMITS_MAX}", r.rlimits.len()));
    }
    check_ops(&r.template, &r.job)
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Phase {
    Start,
    Prepare,
    Attach,
}

fn check_ops(template: &[ArchivedSetupOp], job: &[ArchivedSetupOp]) -> Result<(), String> {
    for (name, ops) in [("template", template), ("job", job)] {
        if ops.len() > OPS_MAX {
            return Err(format!("{name}: {} ops, at most {OPS_MAX}", ops.len()));
        }
    }
    if template.is_empty() {
        return check_part("job", job, true);
    }
    check_part("template", template, false)?;
    // The template pivoted already: the job part may only mount, hold, make directories and
    // attach what it held.
    check_part_from("job", job, false, Phase::Attach)
}

/// Checks a part that builds a root: Start → Prepare → Attach.
fn check_part(name: &str, ops: &[ArchivedSetupOp], writable_allowed: bool) -> Result<(), String> {
    check_part_from(name, ops, writable_allowed, Phase::Start)
}

fn check_part_from(
    name: &str,
    ops: &[ArchivedSetupOp],
    writable_allowed: bool,
    start: Phase,
) -> Result<(), String> {
    let mut phase = start;
    let mut filled = [false; SLOTS_MAX as usize];
    let mut attached = [false; SLOTS_MAX as usize];
    let bad = |i: usize, op: &ArchivedSetupOp, why: &str| Err(format!("{name}[{i}] ({op}): {why}"));
    for (i, op) in ops.iter().enumerate() {
        match op {
            ArchivedSetupOp::Root { layers, writable } => {
                if phase != Phase::Start {
                    return bad(i, op, "the root must come first, once");
                }
                if *writable && !writable_allowed {
                    return bad(i, op, "a template root must be read-only");
                }
                if layers.is_empty() || layers.len() > LAYERS_MAX {
                    return bad(i, op, &format!("needs 1 to {LAYERS_MAX} layers"));
                }
                if layers.iter().any(|l| !l.is_valid() || l.as_bytes().first() != Some(&b'/')) {
                    return bad(i, op, "layers must be absolute NUL-terminated paths");
                }
                phase = Phase::Prepare;
            }
            ArchivedSetupOp::CloneTree { source, slot, .. } => {
                if phase != Phase::Prepare {
                    return bad(i, op, "must come between the root and the pivot");
                }
                if !source.is_valid() || source.as_bytes().first() != Some(&b'/') {
                    return bad(i, op, "source must be an absolute NUL-terminated path");
                }
                fill(&mut filled, *slot).or_else(|why| bad(i, op, why))?;
            }
            ArchivedSetupOp::NewFs { slot, .. } => {
                if phase != Phase::Prepare {
                    return bad(i, op, "must come between the root and the pivot");
                }
                fill(&mut filled, *slot).or_else(|why| bad(i, op, why))?;
            }
            ArchivedSetupOp::PivotRoot => {
                if phase != Phase::Prepare {
                    return bad(i, op, "must follow the root, once");
                }
                phase = Phase::Attach;
            }
            ArchivedSetupOp::Attach { slot, target } => {
                if phase != Phase::Attach {
                    return bad(i, op, "must follow the pivot");
                }
                check_target(target).or_else(|why| bad(i, op, why))?;
                let s = usize::from(*slot);
                if s >= filled.len() || !filled[s] || attached[s] {
                    return bad(i, op, "slot is not filled, or attached twice");
                }
                attached[s] = true;
            }
            ArchivedSetupOp::Mount { target, .. } | ArchivedSetupOp::MakeDir { target } => {
                if phase != Phase::Attach {
                    return bad(i, op, "must follow the pivot");
                }
                check_target(target).or_else(|why| bad(i, op, why))?;
            }
            ArchivedSetupOp::Hold { source, slot } => {
                if phase != Phase::Attach {
                    return bad(i, op, "must follow the pivot");
                }
                check_target(source).or_else(|why| bad(i, op, why))?;
                fill(&mut filled, *slot).or_else(|why| bad(i, op, why))?;
            }
        }
    }
    if phase != Phase::Attach {
        return Err(format!("{name}: the plan never pivots into its root"));
    }
    if filled != attached {
        return Err(format!("{name}: a filled slot is never attached"));
    }
    Ok(())
}

fn fill(filled: &mut [bool; SLOTS_MAX as usize], slot: u8) -> Result<(), &'static str> {
    match filled.get_mut(usize::from(slot)) {
        Some(f) if !*f => {
            *f = true;
            Ok(())
        }
        Some(_) => Err("slot filled twice"),
        None => Err("slot out of range"),
    }
}

fn check_target(target: &crate::cbytes::ArchivedCBytes) -> Result<(), &'static str> {
    if !target.is_valid() {
        return Err("target is not a NUL-terminated string");
    }
    let t = target.as_bytes();
    if t.first() != Some(&b'/') || t == b"/" {
        return Err("target must be absolute and not the root");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> CBytes {
        CBytes::new(s).unwrap()
    }

    pub(crate) fn sample() -> SpawnRequest {
        SpawnRequest {
            template: vec![
                SetupOp::Root { layers: vec![c("/layers/a"), c("/layers/b")], writable: false },
                SetupOp::CloneTree { source: c("/dev/null"), read_only: false, slot: 0 },
                SetupOp::NewFs { kind: FsKind::Proc, slot: 1 },
                SetupOp::PivotRoot,
                SetupOp::Attach { slot: 0, target: c("/dev/null") },
                SetupOp::Attach { slot: 1, target: c("/proc") },
            ],
            job: vec![
                SetupOp::Mount { kind: FsKind::Proc, target: c("/proc") },
                SetupOp::Mount { kind: FsKind::Tmp, target: c("/tmp") },
            ],
            network: NetworkMode::Loopback,
            hostname: c("maelstrom"),
            user: 1000,
            group: 1000,
            working_directory: c("/"),
            rlimits: vec![Rlimit { resource: 4, soft: 0, hard: 0 }],
            program: vec![c("/usr/bin/true"), c("/bin/true")],
            arguments: vec![c("true"), c("--flag")],
            environment: vec![c("PATH=/usr/bin:/bin")],
            allow: vec![Allowance::IoUring],
            tmpfs_bytes: 64 << 20,
            memory_bytes: 0,
            cgroup: NO_CGROUP,
        }
    }

    fn roundtrip(request: &SpawnRequest) -> Result<(), DecodeError> {
        let mut buf = AlignedVec::new();
        encode(request, &mut buf).unwrap();
        let archived = decode_request(&buf)?;
        assert_eq!(archived, request);
        Ok(())
    }

    #[test]
    fn request_round_trips() {
        roundtrip(&sample()).unwrap();
    }

    #[test]
    fn reply_and_hello_round_trip() {
        let mut buf = AlignedVec::new();
        let reply = SpawnReply::Failed { step: Step::Job { op: 3 }, errno: 2, pid: 42 };
        encode(&reply, &mut buf).unwrap();
        assert_eq!(decode_reply(&buf).unwrap(), &reply);
        let hello = LaneHello::Ready { version: LANE_PROTOCOL_VERSION, pid: 7 };
        encode(&hello, &mut buf).unwrap();
        assert_eq!(decode_hello(&buf).unwrap(), &hello);
    }

    #[test]
    fn garbage_and_truncation_are_rejected() {
        let mut buf = AlignedVec::new();
        encode(&sample(), &mut buf).unwrap();
        for cut in [0, 1, 7, buf.len() / 2, buf.len() - 1] {
            let mut short = AlignedVec::<16>::new();
            short.extend_from_slice(&buf[..cut]);
            assert!(decode_request(&short).is_err(), "truncated to {cut} bytes");
        }
        let mut noise = AlignedVec::<16>::new();
        noise.extend_from_slice(&[0xA5; 256]);
        assert!(decode_request(&noise).is_err());
    }

    #[test]
    fn oversized_is_rejected_before_validation() {
        let mut big = AlignedVec::<16>::new();
        big.resize(SPAWN_REQUEST_BYTES_MAX + 1, 0);
        assert!(matches!(decode_request(&big), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn sequencing_is_enforced() {
        let mut r = sample();
        r.template.swap(0, 3);
        assert!(roundtrip(&r).unwrap_err().to_string().contains("pivot"));

        let mut r = sample();
        r.template.pop();
        assert!(roundtrip(&r).unwrap_err().to_string().contains("never attached"));

        let mut r = sample();
        r.job.push(SetupOp::PivotRoot);
        assert!(roundtrip(&r).unwrap_err().to_string().contains("must follow the root"));

        // After a template, a job may hold a tree and attach it again, but only what it held.
        let mut r = sample();
        r.job.insert(0, SetupOp::Hold { source: c("/tmp/p"), slot: 0 });
        r.job.push(SetupOp::MakeDir { target: c("/tmp/p") });
        r.job.push(SetupOp::Attach { slot: 0, target: c("/tmp/p") });
        roundtrip(&r).unwrap();
        r.job.remove(0);
        assert!(roundtrip(&r).unwrap_err().to_string().contains("slot is not filled"));
        r.job.pop();
        r.job.push(SetupOp::Hold { source: c("/tmp/p"), slot: 0 });
        assert!(roundtrip(&r).unwrap_err().to_string().contains("never attached"));

        let mut r = sample();
        r.template[0] = SetupOp::Root { layers: vec![c("/a")], writable: true };
        assert!(roundtrip(&r).unwrap_err().to_string().contains("read-only"));

        let mut r = sample();
        r.job[1] = SetupOp::Mount { kind: FsKind::Tmp, target: c("/") };
        assert!(roundtrip(&r).unwrap_err().to_string().contains("not the root"));

        let mut r = sample();
        r.template[1] = SetupOp::CloneTree { source: c("/dev/null"), read_only: false, slot: SLOTS_MAX };
        assert!(roundtrip(&r).unwrap_err().to_string().contains("out of range"));
    }

    #[test]
    fn a_job_without_template_builds_everything() {
        let mut r = sample();
        let mut job = std::mem::take(&mut r.template);
        job[0] = SetupOp::Root { layers: vec![c("/layers/a")], writable: true };
        job.push(SetupOp::Mount { kind: FsKind::Tmp, target: c("/tmp") });
        r.job = job;
        roundtrip(&r).unwrap();

        r.job.truncate(1);
        assert!(roundtrip(&r).unwrap_err().to_string().contains("never pivots"));
    }

    #[test]
    fn unterminated_strings_are_rejected() {
        let mut r = sample();
        r.arguments.push(CBytes(b"no-nul".to_vec()));
        assert!(roundtrip(&r).unwrap_err().to_string().contains("arguments[2]"));
    }

    /// Writes valid messages as fuzzing seeds when asked (see fuzz/README.md); otherwise only
    /// checks that they encode.
    #[test]
    fn fuzz_seeds() {
        let mut requests = vec![sample()];
        let mut bare = sample();
        bare.job = std::mem::take(&mut bare.template);
        bare.job[0] = SetupOp::Root { layers: vec![c("/l")], writable: true };
        requests.push(bare);
        let replies = [
            SpawnReply::Started { pid: 4242 },
            SpawnReply::Failed { step: Step::Exec, errno: 2, pid: 7 },
            SpawnReply::Rejected { reason: "bad".into() },
        ];
        let hellos = [
            LaneHello::Ready { version: LANE_PROTOCOL_VERSION, pid: 1 },
            LaneHello::Failed { version: LANE_PROTOCOL_VERSION, step: BootStep::UserNamespace, errno: 1 },
        ];
        let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut buf = AlignedVec::new();
        for r in &requests {
            encode(r, &mut buf).unwrap();
            seeds.push(("zygote_request", buf.to_vec()));
        }
        for r in &replies {
            encode(r, &mut buf).unwrap();
            seeds.push(("zygote_reply", buf.to_vec()));
        }
        for h in &hellos {
            encode(h, &mut buf).unwrap();
            seeds.push(("zygote_reply", buf.to_vec()));
        }
        if std::env::var_os("MAELSTROM_WRITE_FUZZ_SEEDS").is_some() {
            crate::write_fuzz_seeds(&seeds);
        }
    }

    #[test]
    fn plan_prints_one_line_per_op() {
        let text: Vec<String> = sample().template.iter().map(ToString::to_string).collect();
        assert_eq!(text[0], "root read-only from /layers/a /layers/b");
        assert_eq!(text[4], "attach slot 0 at /dev/null");
    }
}
