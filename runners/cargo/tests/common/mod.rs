//! What the integration tests share.

use std::process::Command;

pub const CARGO: &str = env!("CARGO");

/// Whether cargo can be run by this user (not by the unprivileged user of the test script's
/// second pass, who cannot reach the toolchain); says so when not.
pub fn cargo_usable() -> bool {
    let usable = Command::new(CARGO).arg("--version").output().is_ok_and(|o| o.status.success());
    if !usable {
        eprintln!("skipped: cargo ({CARGO}) cannot be run by this user");
    }
    usable
}
