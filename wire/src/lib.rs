//! Every message that crosses a process boundary, as rkyv types.
//!
//! This crate owns the data only: type definitions, their encoding, and the checks a receiver
//! runs on bytes it did not write. It never does I/O and never trusts input: every decoder
//! validates with bytecheck first and then checks the invariants the types cannot express
//! (NUL-terminated strings, bounded counts), and every decoder has a fuzz target in `fuzz/`.
//!
//! Links so far:
//! - [`artifact`]: digests and layer manifests (content-addressed artifacts).
//! - [`cluster`]: clients, the broker, workers and admin tools, over TCP.
//! - [`zygote`]: the worker and its zygote lanes (spawn requests carrying a setup plan, and the
//!   replies that carry a pidfd or an error as data).

pub mod artifact;
pub mod cluster;
pub mod zygote;

mod cbytes;

pub use cbytes::{ArchivedCBytes, CBytes, InteriorNul};

/// Failure to decode or validate bytes received from another process.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("message does not validate as {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("{what}: {reason}")]
    Semantic { what: &'static str, reason: String },
}

/// Writes each fuzz target's seeds (`fuzz/seeds/<target>/seed-<n>`, numbered per target),
/// replacing the ones there: the seeds are always the valid messages of today's protocol.
#[cfg(test)]
fn write_fuzz_seeds(seeds: &[(&str, Vec<u8>)]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let mut targets: Vec<&str> = seeds.iter().map(|(target, _)| *target).collect();
    targets.sort_unstable();
    targets.dedup();
    for target in targets {
        let dir = root.join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ours = seeds.iter().filter(|(t, _)| *t == target);
        for (i, (_, bytes)) in ours.enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), bytes).unwrap();
        }
    }
}
