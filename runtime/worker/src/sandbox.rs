//! The one place a job becomes a sandbox spec: the same for a job from the embedded worker's
//! own client and for one from the cluster, so a job's container does not depend on where it
//! runs. Only a job from this machine may reach the host (bind mounts, the host's network).

use std::ffi::OsString;
use std::path::PathBuf;

use maelstrom_container::{Mount, NetworkMode, Rlimit, Spec};
use maelstrom_wire::cluster::{ArchivedJobSpec, ArchivedMount};
use maelstrom_wire::zygote::ArchivedNetworkMode;

/// Where a job came from: what it may ask of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This machine's own client: bind mounts and the host's network are allowed.
    ThisMachine,
    /// A broker: the job may not reach this machine's files or network.
    Cluster,
}

/// A job a worker refuses to run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    #[error("{what} ties a job to its client's machine; a cluster worker does not run it")]
    HostOnly { what: &'static str },
}

/// The sandbox spec of `job`, whose layers' trees are `layers` (bottom first), under the
/// worker's per-job `rlimits` (see [`maelstrom_container::rlimits_share`]).
pub fn sandbox(
    job: &ArchivedJobSpec,
    layers: Vec<PathBuf>,
    origin: Origin,
    rlimits: &[Rlimit],
) -> Result<Spec, SandboxError> {
    let refuse = |what| Err(SandboxError::HostOnly { what });
    let mut spec = Spec::new(layers, job.program.as_str());
    spec.rlimits = rlimits.to_vec();
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
        ArchivedNetworkMode::Local if origin == Origin::Cluster => return refuse("the host's network"),
        ArchivedNetworkMode::Local => NetworkMode::Local,
    };
    if origin == Origin::Cluster && !job.allow.is_empty() {
        return refuse("an allowance beyond the default sandbox");
    }
    spec.allow = job.allow.iter().map(|a| a.native()).collect();
    spec.user = job.user.to_native();
    spec.group = job.group.to_native();
    let mut mounts = Vec::with_capacity(job.mounts.len());
    for mount in job.mounts.iter() {
        mounts.push(match mount {
            ArchivedMount::Bind { .. } if origin == Origin::Cluster => return refuse("a bind mount"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use maelstrom_wire::cluster::{JobSpec, encode_job, typical_job};
    use maelstrom_wire::zygote::Allowance;

    #[test]
    fn cluster_workers_refuse_what_ties_a_job_to_its_client_or_widens_the_sandbox() {
        let plain = encode_job(&typical_job());
        let allowing = encode_job(&JobSpec { allow: vec![Allowance::IoUring], ..typical_job() });
        let access = |b| rkyv::access::<ArchivedJobSpec, rkyv::rancor::Error>(b).unwrap();
        assert!(sandbox(access(&plain), vec!["/l".into()], Origin::Cluster, &[]).is_ok());
        let refused = sandbox(access(&allowing), vec!["/l".into()], Origin::Cluster, &[]);
        assert!(matches!(refused, Err(SandboxError::HostOnly { .. })), "{refused:?}");
        let local = sandbox(access(&allowing), vec!["/l".into()], Origin::ThisMachine, &[]).unwrap();
        assert_eq!(local.allow, [Allowance::IoUring]);
    }
}
