//! The broker: schedules clients' jobs onto workers and keeps the artifacts they need.
//!
//! - [`core`]: the state machine, with no I/O.
//! - [`server`]: the io_uring shell around it.

pub mod core;
pub mod server;
