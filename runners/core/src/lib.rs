//! What every test runner (`cargo maelstrom`, and the go and pytest runners to come) shares.
//!
//! - [`filter`]: the test filter language (`-i`, `-x`, directives' `filter`).
//! - [`specfile`]: the spec file: named containers and directives.
//! - [`testdb`]: each test's last durations and outcome, which order the next run.

pub mod filter;
pub mod specfile;
pub mod testdb;
