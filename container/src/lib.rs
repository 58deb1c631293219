//! The sandbox: a zygote that clones each job into fresh namespaces in microseconds.
//!
//! Reading order: [`plan`] turns a [`Spec`] into a setup plan (pure data); [`Zygote`] forks
//! lanes (single-threaded until booted) before the worker starts any thread; each lane (`lane.rs`) builds or
//! reuses a template mount namespace for the plan, takes a network namespace from its pool, and
//! clones the job, whose setup runs in `child.rs` (no allocation, no locks) up to `execve`; the
//! worker gets back a [`Job`] holding the pidfd, which it waits on, kills, or [`supervise`]s.
//! `README.md` beside this file has the diagram and the invariants.
//!
//! Owns every raw syscall and raw fd of the workspace (with `wire`'s `CBytes` pointers);
//! nothing outside this crate needs `unsafe`.

pub mod cgroup;
mod child;
mod job;
mod lane;
pub mod plan;
pub mod seccomp;
mod sys;
mod zygote;

pub use cgroup::{JobCgroups, Settled};
pub use job::{Captured, Completed, Ended, Job, Limits, Met, OUTPUT_BYTES_MAX_DEFAULT, supervise};
pub use maelstrom_wire::zygote::REPLY_BYTES_MAX;
pub use maelstrom_wire::zygote::{Allowance, NetworkMode, Rlimit, SpawnRequest, Step};
pub use plan::{Device, Mount, PlanError, Share, Spec, compile};
pub use sys::{
    ExitStatus, available_bytes, die_by_signal, eventfd, kill_tree, mkfifo, pipe, posix_spawn_wait, write_all,
};
pub use zygote::{Lane, SpawnError, StartError, Zygote, ZygoteConfig, describe, encode_request};

/// The host uid and gid a root worker's jobs run as (the host's nobody: real root's ids never
/// reach a job), or `None` for any other worker, whose jobs run as its own ids. Files a job
/// must be able to change as the owner (a layer under a writable root) are given to these.
pub fn jobs_host_id() -> Option<u32> {
    (sys::geteuid() == 0).then_some(lane::NOBODY)
}
