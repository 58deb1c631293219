//! Paths of the static programs built by this crate's build script.

/// The isolation probe: run inside a container, it reports what it can see (see
/// `src/programs/probe.rs` for its commands).
pub const PROBE: &str = concat!(env!("OUT_DIR"), "/probe");

/// A static `int main(void) { return 0; }`: the trivial job of the startup benches.
pub const STATIC_TRUE: &str = concat!(env!("OUT_DIR"), "/static-true");
