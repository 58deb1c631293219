//! The planner: turns what a job needs ([`Spec`]) into the setup plan a lane executes
//! ([`SpawnRequest`]). Pure: no syscalls, so every plan can be printed and tested anywhere.
//!
//! The split into template and job ops is where the speed comes from. Everything that is the
//! same for every job with this root (the layers, bind mounts, device nodes) goes into the
//! template, which a lane builds once and keeps as a mount namespace. Only what must be fresh
//! per job (proc for its pid namespace, tmpfs, mqueue, devpts, sysfs for its network) is
//! mounted by the job itself. A static mount is hoisted into the template only when that cannot
//! change what the job sees: its path must be disjoint from every per-job mount that came
//! before it. A writable root cannot be shared, so such jobs build everything themselves.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

pub use maelstrom_wire::zygote::Device;
use maelstrom_wire::zygote::{
    Allowance, FsKind, NetworkMode, PROGRAM_CANDIDATES_MAX, Rlimit, SLOTS_MAX, SetupOp, SpawnRequest,
};
use maelstrom_wire::{CBytes, InteriorNul};

use crate::sys;

/// A mount inside the container. Mount points must already exist in the layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mount {
    /// The host's `source` (absolute) at `target`, recursively.
    Bind {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
    },
    /// Host device nodes at `/dev/<name>`.
    Devices(Vec<Device>),
    Devpts {
        target: PathBuf,
    },
    Mqueue {
        target: PathBuf,
    },
    Proc {
        target: PathBuf,
    },
    Sys {
        target: PathBuf,
    },
    Tmp {
        target: PathBuf,
    },
}

/// Everything the sandbox needs to run one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Directories stacked into the root, bottom first. Absolute.
    pub layers: Vec<PathBuf>,
    /// A writable root (changes go to a tmpfs and vanish with the job); read-only otherwise.
    pub writable_root: bool,
    /// Applied in order.
    pub mounts: Vec<Mount>,
    /// Trees of the layers that stay visible at their own paths when a tmpfs mount covers
    /// them (a project checked out under `/tmp` while the container mounts a fresh `/tmp`).
    /// Absolute; each must exist in the layers.
    pub keep_visible: Vec<PathBuf>,
    pub network: NetworkMode,
    pub hostname: String,
    /// uid and gid inside the container.
    pub user: u32,
    pub group: u32,
    /// Absolute, inside the container.
    pub working_directory: PathBuf,
    /// The job's whole environment.
    pub environment: Vec<(OsString, OsString)>,
    pub rlimits: Vec<Rlimit>,
    /// Looked up in the environment's `PATH` when it has no slash.
    pub program: OsString,
    pub arguments: Vec<OsString>,
    /// What the job may use beyond the default sandbox (see [`crate::seccomp`]).
    pub allow: Vec<Allowance>,
    /// The size of each tmpfs the job mounts and of a writable root's changes; 0 for the
    /// kernel's default (half the machine's memory, each).
    pub tmpfs_bytes: u64,
    /// Memory, enforced where the zygote has job cgroups; 0 for their default.
    pub memory_bytes: u64,
}

/// Kept trees a spec may name.
pub const KEEP_VISIBLE_MAX: usize = 16;

/// The hostname a container gets unless its spec says otherwise.
pub const HOSTNAME_DEFAULT: &str = "maelstrom";

/// `PATH` for lookups when the job's environment has none (what execvp uses).
pub const PATH_DEFAULT: &str = "/bin:/usr/bin";

/// Resource limits every job gets unless its spec says otherwise: no core dumps (a core
/// handler on the host would otherwise run on the job's behalf).
pub fn rlimits_default() -> Vec<Rlimit> {
    vec![Rlimit { resource: libc::RLIMIT_CORE, soft: 0, hard: 0 }]
}

/// Processes one job may have at once, whatever the worker's share (a fork bomb stops here).
pub const JOB_PROCESSES_MAX: u64 = 16_384;

/// Processes a job may have at least, however small the share (a build's test runs many).
pub const JOB_PROCESSES_MIN: u64 = 64;

/// Open files a job may raise its own limit to, at most.
pub const JOB_OPEN_FILES_MAX: u64 = 65_536;

/// What each of a worker's jobs may use: its share of what the worker itself may use, and the
/// most one job may ask for. See [`Share::of`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// Every job's resource limits unless its spec asks for lower (or, up to the maximum,
    /// higher) ones.
    pub rlimits: Vec<Rlimit>,
    /// Processes at once; `None` where the kernel cannot count them per job.
    pub processes: Option<u64>,
    /// The most processes a job may ask for.
    pub processes_max: u64,
    /// The most open files a job may ask for.
    pub open_files_max: u64,
    /// Memory, where cgroups enforce it.
    pub memory_bytes: u64,
    /// The most memory a job may ask for: all the worker's jobs may use together.
    pub memory_max: u64,
    /// The size of each tmpfs, and of a writable root's changes.
    pub tmpfs_bytes: u64,
}

/// The share of memory all of a worker's jobs together may use, of what the worker may (the
/// rest is for the worker itself and the page cache its layers live in).
const JOBS_MEMORY_NUMERATOR: u64 = 3;
const JOBS_MEMORY_DENOMINATOR: u64 = 4;

impl Share {
    /// The share of each of a worker's `slots` jobs.
    ///
    /// - Processes: a quarter of the machine's process ids, or half of the worker's own soft
    ///   limit if that is lower (the kernel counts jobs against it too, and the worker needs
    ///   the rest), shared among the slots, within [`JOB_PROCESSES_MIN`]..[`JOB_PROCESSES_MAX`].
    ///   A job's processes are counted in its own user namespace, so one job's count is its
    ///   own; before Linux 5.14 the count was the user's over the whole machine, so no process
    ///   limit is set there (it would count every job, and the worker's user's other
    ///   processes, at once).
    /// - Open files: the worker's own limit, up to [`JOB_OPEN_FILES_MAX`].
    /// - Memory: three quarters of what the worker may use (its cgroup's limit if it has one,
    ///   else the machine's memory), shared among the slots; each tmpfs gets half of that.
    ///
    /// Never above what the worker has, which a job could not be given.
    pub fn of(slots: usize) -> Self {
        let slots = slots.max(1) as u64;
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let number = |path: &str| read(path).and_then(|t| t.trim().parse::<u64>().ok());
        let machine = [number("/proc/sys/kernel/pid_max"), number("/proc/sys/kernel/threads-max")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(32_768);
        let unlimited = (u64::MAX, u64::MAX);
        let (own_soft, own_hard) = sys::getrlimit(libc::RLIMIT_NPROC).unwrap_or(unlimited);
        let (own_files_soft, own_files) = sys::getrlimit(libc::RLIMIT_NOFILE).unwrap_or(unlimited);
        let mut rlimits = rlimits_default();
        let processes_max = JOB_PROCESSES_MAX.min(own_hard);
        let processes = read("/proc/sys/kernel/osrelease")
            .is_some_and(|release| counts_processes_per_namespace(&release))
            .then(|| ((machine / 4).min(own_soft / 2) / slots).max(JOB_PROCESSES_MIN).min(processes_max));
        if let Some(processes) = processes {
            rlimits.push(Rlimit { resource: libc::RLIMIT_NPROC, soft: processes, hard: processes });
        }
        let open_files_max = own_files.min(JOB_OPEN_FILES_MAX);
        rlimits.push(Rlimit {
            resource: libc::RLIMIT_NOFILE,
            soft: own_files_soft.min(open_files_max),
            hard: open_files_max,
        });
        let memory = crate::cgroup::own_memory_limit().unwrap_or(u64::MAX).min(machine_memory());
        let memory_max = memory / JOBS_MEMORY_DENOMINATOR * JOBS_MEMORY_NUMERATOR;
        let memory_bytes = memory_max / slots;
        Self {
            rlimits,
            processes,
            processes_max,
            open_files_max,
            memory_bytes,
            memory_max,
            tmpfs_bytes: memory_bytes / 2,
        }
    }
}

impl Share {
    /// The same share with each job's memory set to `bytes` (at most [`Share::memory_max`]), its
    /// tmpfs mounts to half of that; `None` keeps it.
    pub fn with_memory(mut self, bytes: Option<u64>) -> Self {
        if let Some(bytes) = bytes {
            self.memory_bytes = bytes.min(self.memory_max);
            self.tmpfs_bytes = self.memory_bytes / 2;
        }
        self
    }
}

/// The machine's memory (`MemTotal`), or 1 GiB if it cannot be read.
fn machine_memory() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map_or(1 << 30, |kb| kb.saturating_mul(1024))
}

/// Whether a kernel of `release` (as in `uname -r`) counts RLIMIT_NPROC per user namespace
/// (5.14 and later).
fn counts_processes_per_namespace(release: &str) -> bool {
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (5, 14)
}

impl Spec {
    /// A spec that runs `program` with `layers` as a read-only root and nothing else.
    pub fn new(layers: Vec<PathBuf>, program: impl Into<OsString>) -> Self {
        Self {
            layers,
            writable_root: false,
            mounts: Vec::new(),
            keep_visible: Vec::new(),
            network: NetworkMode::Disabled,
            hostname: HOSTNAME_DEFAULT.to_owned(),
            user: 0,
            group: 0,
            working_directory: PathBuf::from("/"),
            environment: Vec::new(),
            rlimits: rlimits_default(),
            program: program.into(),
            arguments: Vec::new(),
            allow: Vec::new(),
            tmpfs_bytes: 0,
            memory_bytes: 0,
        }
    }
}

/// A spec that cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("a container needs at least one layer")]
    NoLayers,
    #[error("layer {0:?} must be an absolute path")]
    RelativeLayer(PathBuf),
    #[error("bind mount source {0:?} must be an absolute path")]
    RelativeSource(PathBuf),
    #[error("mount point {target:?} {why}")]
    BadTarget { target: PathBuf, why: &'static str },
    #[error("working directory {0:?} must be an absolute path")]
    RelativeWorkingDirectory(PathBuf),
    #[error("a sys mount needs a private network: use network \"disabled\" or \"loopback\", not \"local\"")]
    SysNeedsPrivateNetwork,
    #[error("the program is empty")]
    EmptyProgram,
    #[error("environment variable name {0:?} is empty or contains '='")]
    BadVariableName(OsString),
    #[error("more than {SLOTS_MAX} bind, device, proc and sys mounts")]
    TooManyMounts,
    #[error("kept tree {path:?} {why}")]
    BadKept { path: PathBuf, why: &'static str },
    #[error("more than {KEEP_VISIBLE_MAX} kept trees")]
    TooManyKept,
    #[error("PATH has more than {PROGRAM_CANDIDATES_MAX} entries")]
    PathTooLong,
    #[error("hostname {0:?} must be 1 to 64 bytes")]
    BadHostname(String),
    #[error("{0}")]
    Nul(#[from] InteriorNul),
}

fn cbytes(s: impl AsRef<OsStr>) -> Result<CBytes, PlanError> {
    Ok(CBytes::new(s.as_ref().as_bytes())?)
}

/// Checks a mount point: absolute, normalized, not the root.
fn target(path: &Path) -> Result<CBytes, PlanError> {
    let bad = |why| Err(PlanError::BadTarget { target: path.to_owned(), why });
    if !path.is_absolute() {
        return bad("must be an absolute path");
    }
    if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return bad("must not contain '.' or '..'");
    }
    if path.components().count() < 2 {
        return bad("must not be the root");
    }
    cbytes(path)
}

/// Whether one path lies within the other (or they are equal), by components.
fn overlapping(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// One mount, lowered: static (`CloneTree` + `Attach`) or per job (`Mount`, or `NewFs` + `Attach`
/// when no template provides a visible instance).
enum Lowered {
    Static { source: CBytes, read_only: bool, target: CBytes, path: PathBuf },
    PerJob { kind: FsKind, target: CBytes, path: PathBuf },
}

fn lower(mounts: &[Mount]) -> Result<Vec<Lowered>, PlanError> {
    let mut lowered = Vec::new();
    for mount in mounts {
        let per_job = |kind, t: &PathBuf| {
            Ok::<_, PlanError>(Lowered::PerJob { kind, target: target(t)?, path: t.clone() })
        };
        match mount {
            Mount::Bind { source, target: t, read_only } => {
                if !source.is_absolute() {
                    return Err(PlanError::RelativeSource(source.clone()));
                }
                lowered.push(Lowered::Static {
                    source: cbytes(source)?,
                    read_only: *read_only,
                    target: target(t)?,
                    path: t.clone(),
                });
            }
            Mount::Devices(devices) => {
                let mut devices = devices.clone();
                devices.sort();
                devices.dedup();
                for device in devices {
                    let path = PathBuf::from(format!("/dev/{}", device.name()));
                    if device == Device::Shm {
                        lowered.push(per_job(FsKind::Tmp, &path)?);
                    } else {
                        let t = target(&path)?;
                        lowered.push(Lowered::Static {
                            source: t.clone(),
                            read_only: false,
                            target: t,
                            path,
                        });
                    }
                }
            }
            Mount::Devpts { target: t } => lowered.push(per_job(FsKind::Devpts, t)?),
            Mount::Mqueue { target: t } => lowered.push(per_job(FsKind::Mqueue, t)?),
            Mount::Proc { target: t } => lowered.push(per_job(FsKind::Proc, t)?),
            Mount::Sys { target: t } => lowered.push(per_job(FsKind::Sys, t)?),
            Mount::Tmp { target: t } => lowered.push(per_job(FsKind::Tmp, t)?),
        }
    }
    Ok(lowered)
}

/// Proc and sysfs can only be mounted while an instance is visible: before the pivot, or over
/// a placeholder the template left.
fn needs_visible_instance(kind: FsKind) -> bool {
    matches!(kind, FsKind::Proc | FsKind::Sys)
}

/// Plans `spec`.
pub fn compile(spec: &Spec) -> Result<SpawnRequest, PlanError> {
    if spec.layers.is_empty() {
        return Err(PlanError::NoLayers);
    }
    if let Some(layer) = spec.layers.iter().find(|l| !l.is_absolute()) {
        return Err(PlanError::RelativeLayer(layer.clone()));
    }
    if !spec.working_directory.is_absolute() {
        return Err(PlanError::RelativeWorkingDirectory(spec.working_directory.clone()));
    }
    if spec.hostname.is_empty() || spec.hostname.len() > 64 {
        return Err(PlanError::BadHostname(spec.hostname.clone()));
    }
    let lowered = lower(&spec.mounts)?;
    if spec.keep_visible.len() > KEEP_VISIBLE_MAX {
        return Err(PlanError::TooManyKept);
    }
    let kept = spec
        .keep_visible
        .iter()
        .map(|k| match target(k) {
            Ok(path) => Ok((path, k.clone())),
            Err(PlanError::BadTarget { why, .. }) => Err(PlanError::BadKept { path: k.clone(), why }),
            Err(other) => Err(other),
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    let has_sys = lowered.iter().any(|l| matches!(l, Lowered::PerJob { kind: FsKind::Sys, .. }));
    if has_sys && spec.network == NetworkMode::Local {
        return Err(PlanError::SysNeedsPrivateNetwork);
    }
    let slots = lowered
        .iter()
        .filter(|l| {
            matches!(l, Lowered::Static { .. } | Lowered::PerJob { kind: FsKind::Proc | FsKind::Sys, .. })
        })
        .count()
        + lowered.iter().map(|l| covered(l, &kept).count()).sum::<usize>();
    if slots > usize::from(SLOTS_MAX) {
        return Err(PlanError::TooManyMounts);
    }
    let layers = spec.layers.iter().map(cbytes).collect::<Result<Vec<_>, _>>()?;

    let hoistable = lowered.iter().enumerate().all(|(i, l)| match l {
        Lowered::PerJob { .. } => true,
        Lowered::Static { path, .. } => lowered[..i]
            .iter()
            .all(|earlier| !matches!(earlier, Lowered::PerJob { path: p, .. } if overlapping(p, path))),
    });
    let (template, job) = if spec.writable_root || !hoistable {
        (Vec::new(), self_built(layers, spec.writable_root, lowered, &kept))
    } else {
        templated(layers, lowered, &kept)
    };

    let (program, arguments) = exec_plan(spec)?;
    let environment = spec
        .environment
        .iter()
        .map(|(name, value)| {
            if name.is_empty() || name.as_bytes().contains(&b'=') {
                return Err(PlanError::BadVariableName(name.clone()));
            }
            let mut entry = name.clone();
            entry.push("=");
            entry.push(value);
            cbytes(entry)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SpawnRequest {
        template,
        job,
        network: spec.network,
        hostname: cbytes(&spec.hostname)?,
        user: spec.user,
        group: spec.group,
        working_directory: cbytes(&spec.working_directory)?,
        rlimits: spec.rlimits.clone(),
        program,
        arguments,
        environment,
        allow: spec.allow.clone(),
        tmpfs_bytes: spec.tmpfs_bytes,
        memory_bytes: spec.memory_bytes,
        cgroup: maelstrom_wire::zygote::NO_CGROUP,
    })
}

/// The kept trees a per-job tmpfs mount would cover (strictly below its mount point).
fn covered<'a>(
    lowered: &'a Lowered,
    kept: &'a [(CBytes, PathBuf)],
) -> impl Iterator<Item = &'a (CBytes, PathBuf)> {
    let covering = match lowered {
        Lowered::PerJob { kind: FsKind::Tmp, path, .. } => Some(path),
        _ => None,
    };
    kept.iter().filter(move |(_, k)| covering.is_some_and(|p| k.starts_with(p) && k != p))
}

/// A per-job mount, with the kept trees it covers held before it and shown again after it:
/// the directories down to each are made in the fresh tmpfs, and the held tree attached there.
fn per_job_mount(
    ops: &mut Vec<SetupOp>,
    slots: &mut std::ops::RangeFrom<u8>,
    lowered: &Lowered,
    kept: &[(CBytes, PathBuf)],
    fresh: &mut Vec<PathBuf>,
) {
    let Lowered::PerJob { kind, target, path } = lowered else { return };
    let held: Vec<(u8, &(CBytes, PathBuf))> = covered(lowered, kept)
        .map(|k| (slots.next().expect("INVARIANT: compile checked the slot count"), k))
        .collect();
    for (slot, (source, _)) in &held {
        ops.push(SetupOp::Hold { source: source.clone(), slot: *slot });
    }
    make_mount_point(ops, fresh, kept, path);
    ops.push(SetupOp::Mount { kind: *kind, target: target.clone() });
    if *kind == FsKind::Tmp {
        fresh.push(path.clone());
    }
    for (slot, (source, kept)) in held {
        let mut dir = path.clone();
        for component in
            kept.strip_prefix(path).expect("INVARIANT: covered trees lie below the mount").components()
        {
            dir.push(component);
            ops.push(SetupOp::MakeDir { target: cbytes(&dir).expect("INVARIANT: a prefix of a valid path") });
        }
        ops.push(SetupOp::Attach { slot, target: source.clone() });
    }
}

/// A mount point below an earlier fresh tmpfs (a directory the layers had, now covered) is made
/// again in it, unless a kept tree shown again there holds it.
fn make_mount_point(ops: &mut Vec<SetupOp>, fresh: &[PathBuf], kept: &[(CBytes, PathBuf)], path: &Path) {
    let Some(tmpfs) = fresh.iter().rev().find(|t| path.starts_with(t) && path != *t) else { return };
    if kept.iter().any(|(_, k)| path.starts_with(k) && k.starts_with(tmpfs) && k != tmpfs) {
        return;
    }
    let mut dir = tmpfs.clone();
    for component in path.strip_prefix(tmpfs).expect("INVARIANT: found below it").components() {
        dir.push(component);
        ops.push(SetupOp::MakeDir { target: cbytes(&dir).expect("INVARIANT: a prefix of a valid path") });
    }
}

/// The job builds its whole root: prepare every mount before the pivot, attach after it.
fn self_built(
    layers: Vec<CBytes>,
    writable: bool,
    lowered: Vec<Lowered>,
    kept: &[(CBytes, PathBuf)],
) -> Vec<SetupOp> {
    let mut before = vec![SetupOp::Root { layers, writable }];
    let mut after = Vec::new();
    let mut slots = 0u8..;
    let mut fresh = Vec::new();
    for l in lowered {
        match l {
            Lowered::Static { source, read_only, target, path } => {
                let slot = slots.next().expect("INVARIANT: compile checked the slot count");
                before.push(SetupOp::CloneTree { source, read_only, slot });
                make_mount_point(&mut after, &fresh, kept, &path);
                after.push(SetupOp::Attach { slot, target });
            }
            Lowered::PerJob { kind, target, path } if needs_visible_instance(kind) => {
                let slot = slots.next().expect("INVARIANT: compile checked the slot count");
                before.push(SetupOp::NewFs { kind, slot });
                make_mount_point(&mut after, &fresh, kept, &path);
                after.push(SetupOp::Attach { slot, target });
            }
            per_job @ Lowered::PerJob { .. } => {
                per_job_mount(&mut after, &mut slots, &per_job, kept, &mut fresh);
            }
        }
    }
    before.push(SetupOp::PivotRoot);
    before.extend(after);
    before
}

/// A shared template with the static mounts (and placeholders for proc and sysfs), and a job
/// part of fresh mounts only.
fn templated(
    layers: Vec<CBytes>,
    lowered: Vec<Lowered>,
    kept: &[(CBytes, PathBuf)],
) -> (Vec<SetupOp>, Vec<SetupOp>) {
    let mut before = vec![SetupOp::Root { layers, writable: false }];
    let mut after = Vec::new();
    let mut job = Vec::new();
    let mut slots = 0u8..;
    let mut placeholders: Vec<FsKind> = Vec::new();
    let mut fresh = Vec::new();
    for l in lowered {
        match l {
            Lowered::Static { source, read_only, target, .. } => {
                let slot = slots.next().expect("INVARIANT: compile checked the slot count");
                before.push(SetupOp::CloneTree { source, read_only, slot });
                after.push(SetupOp::Attach { slot, target });
            }
            Lowered::PerJob { kind, ref target, .. } => {
                if needs_visible_instance(kind) && !placeholders.contains(&kind) {
                    placeholders.push(kind);
                    let slot = slots.next().expect("INVARIANT: compile checked the slot count");
                    before.push(SetupOp::NewFs { kind, slot });
                    after.push(SetupOp::Attach { slot, target: target.clone() });
                }
                per_job_mount(&mut job, &mut slots, &l, kept, &mut fresh);
            }
        }
    }
    before.push(SetupOp::PivotRoot);
    before.extend(after);
    (before, job)
}

/// The exec candidates and argv: `argv[0]` is the program as given.
fn exec_plan(spec: &Spec) -> Result<(Vec<CBytes>, Vec<CBytes>), PlanError> {
    let program = spec.program.as_bytes();
    if program.is_empty() {
        return Err(PlanError::EmptyProgram);
    }
    let candidates = if program.contains(&b'/') {
        vec![cbytes(&spec.program)?]
    } else {
        let path = spec
            .environment
            .iter()
            .find(|(name, _)| name == "PATH")
            .map_or(OsStr::new(PATH_DEFAULT), |(_, value)| value.as_os_str());
        let entries: Vec<&[u8]> = path.as_bytes().split(|&b| b == b':').collect();
        if entries.len() > PROGRAM_CANDIDATES_MAX {
            return Err(PlanError::PathTooLong);
        }
        entries
            .into_iter()
            .map(|dir| {
                let mut full = dir.to_vec();
                if !full.is_empty() && full.last() != Some(&b'/') {
                    full.push(b'/');
                }
                full.extend_from_slice(program);
                Ok(CBytes::new(full)?)
            })
            .collect::<Result<Vec<_>, PlanError>>()?
    };
    let mut arguments = vec![cbytes(&spec.program)?];
    for argument in &spec.arguments {
        arguments.push(cbytes(argument)?);
    }
    Ok((candidates, arguments))
}

/// A plan, one op per line, for people.
#[derive(Debug)]
pub struct Printed<'a>(pub &'a SpawnRequest);

impl fmt::Display for Printed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        for op in &r.template {
            writeln!(f, "template: {op}")?;
        }
        for op in &r.job {
            writeln!(f, "job: {op}")?;
        }
        writeln!(f, "network: {:?}", r.network)?;
        writeln!(f, "hostname: {}", r.hostname)?;
        writeln!(f, "user: {} group: {}", r.user, r.group)?;
        writeln!(f, "working directory: {}", r.working_directory)?;
        let argv: Vec<String> = r.arguments.iter().map(ToString::to_string).collect();
        writeln!(f, "exec: {} {:?}", r.program.first().map(ToString::to_string).unwrap_or_default(), argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_limits_wait_for_kernels_that_count_per_namespace() {
        assert!(counts_processes_per_namespace("6.18.44-fc-v857"));
        assert!(counts_processes_per_namespace("5.14.0-284.el9.x86_64"));
        assert!(!counts_processes_per_namespace("5.13.19"));
        assert!(!counts_processes_per_namespace("5.10.0-28-amd64"));
        assert!(!counts_processes_per_namespace("garbage"));
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn typical() -> Spec {
        let mut spec = Spec::new(vec![p("/layers/libs"), p("/layers/bin")], "test-binary");
        spec.mounts = vec![
            Mount::Tmp { target: p("/tmp") },
            Mount::Proc { target: p("/proc") },
            Mount::Devices(vec![Device::Null, Device::Zero, Device::Shm]),
        ];
        spec.environment = vec![("PATH".into(), "/usr/bin:/bin".into())];
        spec
    }

    fn at_in(text: &[String], op: &str) -> usize {
        text.iter().position(|o| o == op).unwrap_or_else(|| panic!("{op}: {text:?}"))
    }

    fn printed(spec: &Spec) -> String {
        Printed(&compile(spec).unwrap()).to_string()
    }

    #[test]
    fn typical_job_shares_a_template_and_mounts_only_fresh_filesystems() {
        assert_eq!(
            printed(&typical()),
            "template: root read-only from /layers/libs /layers/bin\n\
             template: new proc into slot 0\n\
             template: clone /dev/null into slot 1\n\
             template: clone /dev/zero into slot 2\n\
             template: pivot root\n\
             template: attach slot 0 at /proc\n\
             template: attach slot 1 at /dev/null\n\
             template: attach slot 2 at /dev/zero\n\
             job: mount tmpfs at /tmp\n\
             job: mount proc at /proc\n\
             job: mount tmpfs at /dev/shm\n\
             network: Disabled\n\
             hostname: maelstrom\n\
             user: 0 group: 0\n\
             working directory: /\n\
             exec: /usr/bin/test-binary [\"test-binary\"]\n"
        );
    }

    #[test]
    fn writable_root_builds_everything_in_the_job() {
        let mut spec = typical();
        spec.writable_root = true;
        let plan = compile(&spec).unwrap();
        assert!(plan.template.is_empty());
        let text: Vec<String> = plan.job.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "root writable from /layers/libs /layers/bin",
                "new proc into slot 0",
                "clone /dev/null into slot 1",
                "clone /dev/zero into slot 2",
                "pivot root",
                "mount tmpfs at /tmp",
                "attach slot 0 at /proc",
                "attach slot 1 at /dev/null",
                "mount tmpfs at /dev/shm",
                "attach slot 2 at /dev/zero",
            ]
        );
    }

    #[test]
    fn a_static_mount_under_an_earlier_fresh_one_is_not_hoisted() {
        let mut spec = Spec::new(vec![p("/l")], "/bin/x");
        spec.mounts = vec![
            Mount::Tmp { target: p("/data") },
            Mount::Bind { source: p("/host/in"), target: p("/data/in"), read_only: true },
        ];
        let plan = compile(&spec).unwrap();
        assert!(plan.template.is_empty(), "order must be kept, so the job builds everything");
        let text: Vec<String> = plan.job.iter().map(ToString::to_string).collect();
        assert_eq!(
            &text[3..],
            ["mount tmpfs at /data", "make directory /data/in", "attach slot 0 at /data/in"],
            "the mount point, covered by the tmpfs, is made again in it"
        );

        spec.mounts.reverse();
        assert!(!compile(&spec).unwrap().template.is_empty(), "a bind first can be hoisted");
    }

    #[test]
    fn a_kept_tree_under_a_fresh_tmpfs_is_shown_again() {
        let mut spec = typical();
        spec.keep_visible = vec![p("/tmp/work/project"), p("/srv/elsewhere")];
        let plan = compile(&spec).unwrap();
        let text: Vec<String> = plan.job.iter().map(ToString::to_string).collect();
        assert_eq!(
            &text[..6],
            [
                "hold /tmp/work/project in slot 0",
                "mount tmpfs at /tmp",
                "make directory /tmp/work",
                "make directory /tmp/work/project",
                "attach slot 0 at /tmp/work/project",
                "mount proc at /proc",
            ]
        );
        assert_eq!(text.len(), 7, "a tree no mount covers needs nothing: {text:?}");

        spec.writable_root = true;
        let text: Vec<String> = compile(&spec).unwrap().job.iter().map(ToString::to_string).collect();
        let pivot = text.iter().position(|op| op == "pivot root").unwrap();
        assert_eq!(text[pivot + 1], "hold /tmp/work/project in slot 0", "held after the pivot: {text:?}");
    }

    /// A mount below a fresh tmpfs (`CARGO_TARGET_TMPDIR` of a target directory under /tmp)
    /// gets its mount point made in that tmpfs; below a kept tree, the tree has it.
    #[test]
    fn a_mount_below_a_fresh_tmpfs_gets_its_mount_point_made() {
        let mut spec = typical();
        spec.keep_visible = vec![p("/tmp/project")];
        spec.mounts.push(Mount::Tmp { target: p("/tmp/target/tmp") });
        spec.mounts.push(Mount::Tmp { target: p("/tmp/project/target/tmp") });
        let text: Vec<String> = compile(&spec).unwrap().job.iter().map(ToString::to_string).collect();
        let at = |op: &str| text.iter().position(|o| o == op).unwrap_or_else(|| panic!("{op}: {text:?}"));
        let made = at("make directory /tmp/target");
        assert_eq!(text[made + 1], "make directory /tmp/target/tmp");
        assert_eq!(text[made + 2], "mount tmpfs at /tmp/target/tmp");
        let kept = at("mount tmpfs at /tmp/project/target/tmp");
        assert_eq!(text[kept - 1], "mount tmpfs at /tmp/target/tmp", "nothing made in a kept tree: {text:?}");
        // A kept tree at the tmpfs itself is not shown again, so it holds no mount point.
        spec.keep_visible = vec![p("/tmp")];
        let text: Vec<String> = compile(&spec).unwrap().job.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|o| o == "make directory /tmp/target/tmp"), "{text:?}");
        // A job that builds its root makes them as well.
        spec.writable_root = true;
        let text: Vec<String> = compile(&spec).unwrap().job.iter().map(ToString::to_string).collect();
        let made = at_in(&text, "make directory /tmp/target/tmp");
        assert_eq!(text[made + 1], "mount tmpfs at /tmp/target/tmp");
    }

    #[test]
    fn the_plan_validates_on_the_wire() {
        for writable in [false, true] {
            let mut spec = typical();
            spec.writable_root = writable;
            spec.keep_visible = vec![p("/tmp/project")];
            spec.mounts.push(Mount::Sys { target: p("/sys") });
            let plan = compile(&spec).unwrap();
            let mut buf = rkyv::util::AlignedVec::new();
            maelstrom_wire::zygote::encode(&plan, &mut buf).unwrap();
            maelstrom_wire::zygote::decode_request(&buf).unwrap();
        }
    }

    #[test]
    fn program_lookup_follows_path_like_execvp() {
        let mut spec = Spec::new(vec![p("/l")], "tool");
        let (candidates, argv) = exec_plan(&spec).unwrap();
        assert_eq!(candidates, [CBytes::new("/bin/tool").unwrap(), CBytes::new("/usr/bin/tool").unwrap()]);
        assert_eq!(argv, [CBytes::new("tool").unwrap()]);

        spec.environment = vec![("PATH".into(), ":/opt/".into())];
        let (candidates, _) = exec_plan(&spec).unwrap();
        assert_eq!(candidates, [CBytes::new("tool").unwrap(), CBytes::new("/opt/tool").unwrap()]);

        spec.program = "./tool".into();
        assert_eq!(exec_plan(&spec).unwrap().0, [CBytes::new("./tool").unwrap()]);
    }

    #[test]
    fn bad_specs_get_one_clear_error() {
        let base = || Spec::new(vec![p("/l")], "/bin/x");
        let cases: Vec<(Spec, &str)> = vec![
            (Spec { layers: vec![], ..base() }, "at least one layer"),
            (Spec { layers: vec![p("rel")], ..base() }, "\"rel\" must be an absolute path"),
            (
                Spec { mounts: vec![Mount::Tmp { target: p("tmp") }], ..base() },
                "\"tmp\" must be an absolute path",
            ),
            (Spec { mounts: vec![Mount::Tmp { target: p("/") }], ..base() }, "must not be the root"),
            (Spec { mounts: vec![Mount::Tmp { target: p("/a/../b") }], ..base() }, "'..'"),
            (
                Spec {
                    mounts: vec![Mount::Sys { target: p("/sys") }],
                    network: NetworkMode::Local,
                    ..base()
                },
                "network \"disabled\" or \"loopback\"",
            ),
            (Spec { program: "".into(), ..base() }, "program is empty"),
            (Spec { arguments: vec!["a\0b".into()], ..base() }, "NUL byte at offset 1"),
            (Spec { environment: vec![("A=B".into(), "c".into())], ..base() }, "contains '='"),
            (Spec { hostname: String::new(), ..base() }, "hostname"),
            (
                Spec { keep_visible: vec![p("/tmp/../etc")], ..base() },
                "kept tree \"/tmp/../etc\" must not contain",
            ),
            (Spec { keep_visible: vec![p("/k"); KEEP_VISIBLE_MAX + 1], ..base() }, "more than 16 kept trees"),
        ];
        for (spec, expected) in cases {
            let error = compile(&spec).unwrap_err().to_string();
            assert!(error.contains(expected), "{error:?} should contain {expected:?}");
        }
    }
}
