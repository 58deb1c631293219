//! Compiles each program in `src/programs` into a statically linked executable with the same
//! rustc that builds the workspace, so that it runs in a container holding nothing but itself.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    for (name, source) in [("probe", "src/programs/probe.rs"), ("static-true", "src/programs/true.rs")] {
        println!("cargo:rerun-if-changed={source}");
        let status = Command::new(&rustc)
            .args([
                "--edition=2021",
                "-C",
                "opt-level=2",
                "-C",
                "panic=abort",
                "-C",
                "target-feature=+crt-static",
                "-C",
                "strip=symbols",
            ])
            .arg("-o")
            .arg(out.join(name))
            .arg(source)
            .status()
            .unwrap_or_else(|e| panic!("run rustc to build {name}: {e}"));
        assert!(
            status.success(),
            "rustc failed to build the static {name} (a static glibc is needed: install libc6-dev)"
        );
    }
}
