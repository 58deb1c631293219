//! What every test runner (`cargo maelstrom`, and the go and pytest runners to come) shares:
//! the whole run, with a framework plugged in through [`run::Framework`].
//!
//! - [`run`]: options, start-up, selection, listing, the drive loop, the exit code.
//! - [`listing`]: test listings kept by artifact digest.
//! - [`filter`]: the test filter language (`-i`, `-x`, directives' `filter`).
//! - [`specfile`]: the spec file: named containers and directives.
//! - [`testdb`]: each test's last durations and outcome, which order the next run.
//! - [`ui`]: lines per test, progress bars, the summary.
//! - [`session`]: one run: cases in as jobs, results out, summary, report, exit code.

pub mod filter;
pub mod listing;
pub mod run;
pub mod session;
pub mod specfile;
pub mod testdb;
pub mod ui;
