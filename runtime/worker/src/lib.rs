//! The worker: runs jobs in containers. Used by `maelstrom-worker` on cluster machines and,
//! embedded, by every client in standalone mode (the same code either way).
//!
//! - [`executor`]: the io_uring event loop that drives the zygote's lanes and the jobs.
//! - [`queue`]: the order waiting jobs start in.
//! - [`layer`]: turning a manifest or a tar archive into a tree, refusing what could escape.
//! - [`remote`]: the cluster worker: the broker connection, artifact fetches, and the same
//!   executor.
//! - [`sandbox`]: a job's sandbox spec, the same wherever the job came from.
//! - [`cache`]: the layer cache: one extracted tree per layer artifact, shared by concurrent
//!   runs, bounded, least recently used first out.

pub mod cache;
pub mod executor;
pub mod layer;
pub mod queue;
pub mod remote;
pub mod sandbox;

pub use executor::{
    Allotment, Executor, ExecutorConfig, ExecutorError, JobError, JobId, JobRequest, JobResult, ResultSink,
    outcome,
};
pub use maelstrom_wire::cluster::{Outcome, Output};
