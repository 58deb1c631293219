//! The client library: what a runner (or a user writing one) needs to run jobs.
//!
//! - [`spec`]: the job and container spec formats (JSON and TOML).
//! - [`resolve`]: container inheritance and environment evaluation.
//! - [`layers`]: layer specs into artifacts (manifests or tars), with [`digests`] caching file
//!   hashes and [`elf`] finding shared libraries.
//! - [`local`]: standalone mode, with the worker embedded.
//! - [`remote`]: cluster mode: jobs go to a broker; those that need this machine stay local.
//! - [`client`]: either mode behind one type.

pub mod client;
pub mod digests;
pub mod elf;
pub mod layers;
pub mod local;
pub mod remote;
pub mod resolve;
pub mod spec;

// What a runner needs of the layers below, so that it depends on this crate alone: the zygote,
// started before any thread; the one result type; exiting as a job did; ending a build tool
// with the compilers it started.
pub use maelstrom_container::{JobCgroups, Zygote, ZygoteConfig, die_by_signal, kill_tree};
pub use maelstrom_wire::cluster::{Ended, Limit, NotRun, Ran, TimeoutWarning, Usage};
pub use maelstrom_worker::{Allotment, JobId, JobResult, Outcome, Output, ResultSink};
pub use remote::Broker;
