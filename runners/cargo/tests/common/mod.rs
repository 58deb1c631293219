//! What the integration tests share.

use std::path::Path;
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

/// Copies a directory tree, leaving out `target` directories.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read a directory") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a type").is_dir() {
            if entry.file_name() != "target" {
                copy_tree(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
