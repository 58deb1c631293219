//! The one place a job becomes a sandbox spec: the same for a job from the embedded worker's
//! own client and for one from the cluster, so a job's container does not depend on where it
//! runs. Only a job from this machine may reach the host (bind mounts, the host's network).

use std::ffi::OsString;
use std::path::PathBuf;

use maelstrom_container::{Mount, NetworkMode, Rlimit, Share, Spec};
use maelstrom_wire::cluster::{ArchivedJobSpec, ArchivedMount};
use maelstrom_wire::zygote::ArchivedNetworkMode;

/// Where a job came from: what it may ask of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This machine's own client: bind mounts, the host's network and any allowance are
    /// allowed (the client's own risk).
    ThisMachine,
    /// A broker: the job may not reach this machine's files or network, and gets only the
    /// allowances (as bits) this worker's operator grants.
    Cluster { grants: u32 },
}

/// A job a worker refuses to run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    #[error("{what} ties a job to its client's machine; a cluster worker does not run it")]
    HostOnly { what: &'static str },
    #[error("this worker does not grant {names} (its operator may, with `maelstrom-worker --allow`)")]
    NotGranted { names: String },
}

/// The sandbox spec of `job`, whose layers' trees are `layers` (bottom first), within the
/// worker's per-job `share`: the job's own limits where it sets them, up to the share's maxima.
pub fn sandbox(
    job: &ArchivedJobSpec,
    layers: Vec<PathBuf>,
    origin: Origin,
    share: &Share,
) -> Result<Spec, SandboxError> {
    let refuse = |what| Err(SandboxError::HostOnly { what });
    let mut spec = Spec::new(layers, job.program.as_str());
    apply_limits(&mut spec, job, share);
    spec.arguments = job.arguments.iter().map(|a| OsString::from(a.as_str())).collect();
    spec.environment = job
        .environment
        .iter()
        .map(|e| (OsString::from(e.0.as_str()), OsString::from(e.1.as_str())))
        .collect();
    spec.working_directory = PathBuf::from(job.working_directory.as_str());
    spec.writable_root = job.writable_root;
    spec.network = match job.network {
        ArchivedNetworkMode::Disabled => NetworkMode::Disabled,
        ArchivedNetworkMode::Loopback => NetworkMode::Loopback,
        ArchivedNetworkMode::Local if origin != Origin::ThisMachine => return refuse("the host's network"),
        ArchivedNetworkMode::Local => NetworkMode::Local,
    };
    if let Origin::Cluster { grants } = origin {
        let missing = maelstrom_wire::zygote::allowance_bits(job.allow.iter()) & !grants;
        if missing != 0 {
            let names: Vec<&str> = maelstrom_wire::zygote::allowances_of(missing)
                .unwrap_or_default()
                .iter()
                .map(|a| a.name())
                .collect();
            return Err(SandboxError::NotGranted { names: names.join(", ") });
        }
    }
    spec.allow = job.allow.iter().map(|a| a.native()).collect();
    spec.user = job.user.to_native();
    spec.group = job.group.to_native();
    let mut mounts = Vec::with_capacity(job.mounts.len());
    for mount in job.mounts.iter() {
        mounts.push(match mount {
            ArchivedMount::Bind { .. } if origin != Origin::ThisMachine => return refuse("a bind mount"),
            ArchivedMount::Bind { source, target, read_only } => Mount::Bind {
                source: source.as_str().into(),
                target: target.as_str().into(),
                read_only: *read_only,
            },
            ArchivedMount::Devices(devices) => Mount::Devices(devices.iter().map(|d| d.native()).collect()),
            ArchivedMount::Devpts(target) => Mount::Devpts { target: target.as_str().into() },
            ArchivedMount::Mqueue(target) => Mount::Mqueue { target: target.as_str().into() },
            ArchivedMount::Proc(target) => Mount::Proc { target: target.as_str().into() },
            ArchivedMount::Sys(target) => Mount::Sys { target: target.as_str().into() },
            ArchivedMount::Tmp(target) => Mount::Tmp { target: target.as_str().into() },
        });
    }
    spec.mounts = mounts;
    spec.keep_visible = job.keep_visible.iter().map(|k| PathBuf::from(k.as_str())).collect();
    Ok(spec)
}

/// The job's limits: the share's, and the job's own where it sets them, capped at the share's
/// maxima.
fn apply_limits(spec: &mut Spec, job: &ArchivedJobSpec, share: &Share) {
    let limits = &job.limits;
    let asked = |n: u64| (n != 0).then_some(n);
    spec.rlimits = share.rlimits.clone();
    let mut set = |resource, soft: u64, hard: u64| {
        spec.rlimits.retain(|l| l.resource != resource);
        spec.rlimits.push(Rlimit { resource, soft, hard });
    };
    if let (Some(n), Some(_)) = (asked(limits.processes.to_native()), share.processes) {
        let n = n.min(share.processes_max);
        set(libc::RLIMIT_NPROC, n, n);
    }
    if let Some(n) = asked(limits.open_files.to_native()) {
        let n = n.min(share.open_files_max);
        set(libc::RLIMIT_NOFILE, n, n);
    }
    if let Some(n) = asked(limits.cpu_seconds.to_native()) {
        // SIGKILL at the limit: a job's first process, the init of its pid namespace, would
        // ignore the SIGXCPU of a lower soft limit.
        set(libc::RLIMIT_CPU, n, n);
    }
    let memory = asked(limits.memory_bytes.to_native()).map(|n| n.min(share.memory_max));
    spec.memory_bytes = memory.unwrap_or(0);
    spec.tmpfs_bytes = match asked(limits.tmpfs_bytes.to_native()) {
        Some(n) => n.min(share.memory_max),
        None => memory.map_or(share.tmpfs_bytes, |m| m / 2),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use maelstrom_wire::cluster::{JobLimits, JobSpec, encode_job, typical_job};
    use maelstrom_wire::zygote::Allowance;

    #[test]
    fn cluster_workers_refuse_what_ties_a_job_to_its_client_or_widens_the_sandbox() {
        let plain = encode_job(&typical_job());
        let allowing = encode_job(&JobSpec { allow: vec![Allowance::IoUring], ..typical_job() });
        let access = |b| rkyv::access::<ArchivedJobSpec, rkyv::rancor::Error>(b).unwrap();
        let share = Share::of(2);
        let cluster = Origin::Cluster { grants: 0 };
        assert!(sandbox(access(&plain), vec!["/l".into()], cluster, &share).is_ok());
        let refused = sandbox(access(&allowing), vec!["/l".into()], cluster, &share).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "this worker does not grant io_uring (its operator may, with `maelstrom-worker --allow`)"
        );
        let local = sandbox(access(&allowing), vec!["/l".into()], Origin::ThisMachine, &share).unwrap();
        assert_eq!(local.allow, [Allowance::IoUring]);
        // A worker whose operator grants it runs it, with that allowance and no other.
        let granting = Origin::Cluster { grants: Allowance::IoUring.bit() | Allowance::Ptrace.bit() };
        let granted = sandbox(access(&allowing), vec!["/l".into()], granting, &share).unwrap();
        assert_eq!(granted.allow, [Allowance::IoUring]);
        let more = encode_job(&JobSpec { allow: vec![Allowance::IoUring, Allowance::Bpf], ..typical_job() });
        let refused = sandbox(access(&more), vec!["/l".into()], granting, &share).unwrap_err();
        assert!(refused.to_string().starts_with("this worker does not grant bpf "), "{refused}");
    }

    #[test]
    fn a_job_sets_its_own_limits_within_the_workers_maxima() {
        let share = Share {
            rlimits: vec![
                Rlimit { resource: libc::RLIMIT_CORE, soft: 0, hard: 0 },
                Rlimit { resource: libc::RLIMIT_NPROC, soft: 500, hard: 500 },
                Rlimit { resource: libc::RLIMIT_NOFILE, soft: 1024, hard: 4096 },
            ],
            processes: Some(500),
            processes_max: 2000,
            open_files_max: 4096,
            memory_bytes: 1 << 30,
            memory_max: 2 << 30,
            tmpfs_bytes: 512 << 20,
        };
        let spec_of = |limits| {
            let bytes = encode_job(&JobSpec { limits, ..typical_job() });
            let job = rkyv::access::<ArchivedJobSpec, rkyv::rancor::Error>(&bytes).unwrap();
            sandbox(job, vec!["/l".into()], Origin::Cluster { grants: 0 }, &share).unwrap()
        };
        let rlimit = |spec: &Spec, resource| spec.rlimits.iter().find(|l| l.resource == resource).copied();
        let default = spec_of(JobLimits::default());
        assert_eq!(default.rlimits, share.rlimits);
        assert_eq!((default.memory_bytes, default.tmpfs_bytes), (0, 512 << 20));
        let own = spec_of(JobLimits {
            memory_bytes: 64 << 20,
            processes: 100,
            open_files: 99_999,
            cpu_seconds: 10,
            tmpfs_bytes: 0,
        });
        assert_eq!((own.memory_bytes, own.tmpfs_bytes), (64 << 20, 32 << 20), "tmpfs: half the memory");
        assert_eq!(
            rlimit(&own, libc::RLIMIT_NPROC),
            Some(Rlimit { resource: libc::RLIMIT_NPROC, soft: 100, hard: 100 })
        );
        assert_eq!(rlimit(&own, libc::RLIMIT_NOFILE).map(|l| l.hard), Some(4096), "capped at the maximum");
        assert_eq!(rlimit(&own, libc::RLIMIT_CPU).map(|l| (l.soft, l.hard)), Some((10, 10)));
        let greedy =
            spec_of(JobLimits { memory_bytes: 1 << 40, tmpfs_bytes: 1 << 40, ..JobLimits::default() });
        assert_eq!((greedy.memory_bytes, greedy.tmpfs_bytes), (2 << 30, 2 << 30));
    }
}
