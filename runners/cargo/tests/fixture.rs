//! cargo maelstrom on the fixture workspace (`tests/fixtures/cargo`): every outcome its table
//! (`expected.txt`) names, standalone and on a cluster; filters, listings, options, reports and
//! exit codes.
//!
//! The fixture is copied once per run under /tmp, where the default spec mounts each test's
//! own tmpfs, and built there: the package stays visible at its own path all the same. These
//! tests need cargo: as a user who cannot run it (the test script's unprivileged pass), they
//! say so and pass without checking anything.
#![expect(clippy::tests_outside_test_module, reason = "an integration test file is its own test module")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

mod common;

use common::CARGO;
use maelstrom_testbins::runners::{self, fixture_copy};

fn cargo_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(common::cargo_usable)
}

/// The fixture's copy, shared by the tests one at a time (they share its build).
struct Fixture {
    dir: PathBuf,
}

fn fixture() -> MutexGuard<'static, Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/cargo");
            Mutex::new(Fixture { dir: fixture_copy("cargo-fixture-", &source) })
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

impl Fixture {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cargo-maelstrom"));
        command
            .current_dir(self.path())
            .arg("maelstrom")
            .args(["--config-file", "-", "--ui", "simple"])
            .args(args);
        for var in ["CARGO_MAELSTROM_BROKER", "MAELSTROM_BROKER", "CARGO_TARGET_DIR", "RUST_BACKTRACE"] {
            command.env_remove(var);
        }
        command.env("CARGO", CARGO);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().expect("run cargo maelstrom")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_table(out: &Output) {
    let stdout = text(&out.stdout);
    let table = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/cargo/expected.txt");
    let wrong = runners::mismatches(&stdout, &table);
    assert!(
        wrong.is_empty(),
        "{}\n--- stdout:\n{stdout}\n--- stderr:\n{}",
        wrong.join("\n"),
        text(&out.stderr)
    );
}

#[test]
fn the_table_holds_standalone() {
    if !cargo_usable() {
        return;
    }
    let fixture = fixture();
    let out = fixture.run(&[]);
    assert_table(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("arithmetic is broken"), "a failure's output is shown:\n{stdout}");
    assert!(stdout.contains("killed by signal 11"), "{stdout}");
    assert!(stdout.contains("exited with code 3"), "{stdout}");
    assert!(!stdout.contains("xxxxxxxxxx"), "a passing test's output is not shown");
}

/// Two copies of a test that binds localhost:20000 run at once, each on its own loopback.
#[test]
fn a_fixed_localhost_port_twice_at_once() {
    if !cargo_usable() {
        return;
    }
    let fixture = fixture();
    let out =
        fixture.run(&["-i", "name.equals(tests::binds_a_fixed_localhost_port)", "-r", "2", "--slots", "2"]);
    let stdout = text(&out.stdout);
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("fixture tests::binds_a_fixed_localhost_port") && l.contains(" OK "))
        .count();
    assert_eq!(passed, 2, "{stdout}\n{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
}

/// With the target directory under /tmp but outside the workspace (`CARGO_TARGET_DIR=/tmp/...`,
/// as CI often sets it), integration tests still get their own `CARGO_TARGET_TMPDIR` and the
/// package's binaries, though the tests' fresh /tmp covers where they were.
#[test]
fn a_target_directory_under_tmp_keeps_its_tmpdir() {
    if !cargo_usable() {
        return;
    }
    let fixture = fixture();
    let target =
        tempfile::Builder::new().prefix("maelstrom-target-").tempdir_in("/tmp").expect("a target dir");
    let out = fixture
        .command(&["-p", "fixture", "-i", "name.contains(tmpdir) | name.contains(bin_exe)"])
        .env("CARGO_TARGET_DIR", target.path())
        .stdin(Stdio::null())
        .output()
        .expect("run cargo maelstrom");
    let statuses = runners::statuses(&text(&out.stdout));
    assert_eq!(statuses.len(), 3, "{statuses:?}\n{}", text(&out.stderr));
    assert!(statuses.values().all(|s| s == "OK"), "{statuses:?}\n{}", text(&out.stdout));
}

/// Where the broker and worker are: beside this package's binary, built first unless given.
fn cluster_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| runners::cluster_bin_dir(CARGO, Path::new(env!("CARGO_BIN_EXE_cargo-maelstrom"))))
}

#[test]
fn the_table_holds_on_a_cluster() {
    if !cargo_usable() {
        return;
    }
    let fixture = fixture();
    let cluster = runners::Cluster::start(cluster_bin_dir());
    let address = cluster.address.clone();
    let report = fixture.path().join("reports/cluster.xml");
    let out = fixture.run(&["--broker", &address, "--junit", report.to_str().expect("utf-8")]);
    assert_table(&out);
    // What each test used comes back from the worker with its result (the ignored one never ran).
    let xml = std::fs::read_to_string(&report).expect("the report is written");
    assert_eq!(usage_reported(&xml), xml.matches("<testcase ").count() - 1, "{xml}");
}

#[test]
fn filters_and_listings() {
    if !cargo_usable() {
        return;
    }
    let fixture = fixture();
    let out = fixture.run(&["--list-packages"]);
    assert_eq!(text(&out.stdout), "fixture\nother-pkg\n");
    let out = fixture.run(&["--list-packages", "-x", "other-pkg"]);
    assert_eq!(text(&out.stdout), "fixture\n", "a bare package name excludes it, as with cargo test");
    let out = fixture.run(&["--list-binaries"]);
    let binaries = text(&out.stdout);
    for line in ["fixture (library)", "fixture integration (test)", "other-pkg other-tool (binary)"] {
        assert!(binaries.lines().any(|l| l == line), "{line} missing:\n{binaries}");
    }
    let out = fixture.run(&["--list-tests", "-i", "package.equals(other-pkg)"]);
    assert_eq!(
        text(&out.stdout),
        "other-pkg other-tool tests::exits_three\nother-pkg other-tool tests::tool_test\n"
    );
    let out =
        fixture.run(&["--list", "-p", "fixture", "-i", "test", "-x", "n.c(cargo)", "-x", "n.c(tmpdir)"]);
    assert_eq!(text(&out.stdout), "fixture integration integration_passes\n");
    let out = fixture.run(&["-i", "package.equals(other-pkg) - name.contains(exits)"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(runners::statuses(&text(&out.stdout)).len(), 1);
    let out = fixture.run(&["-p", "no-such-package"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("-p no-such-package: no such package in the workspace"),
        "{}",
        text(&out.stderr)
    );
    let out = fixture.run(&["-i", "name.eq(x) &"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--include \"name.eq(x) &\": column 13: expected a selector"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn options_reports_and_exit_codes() {
    if !cargo_usable() {
        return;
    }
    let fixture = fixture();
    let out = fixture.run(&["-r", "3", "-i", "name.equals(tests::passes)"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).lines().filter(|l| l.starts_with("fixture tests::passes.")).count(), 3);

    let out = fixture.run(&["-i", "name.equals(tests::sees_extra_arguments)", "--", "--show-output"]);
    assert_eq!(out.status.code(), Some(0), "arguments after -- reach the test binary: {}", text(&out.stdout));

    let out = fixture.run(&["-i", "name.equals(tests::passes)", "--", "--ignored"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a binary that ran no test is not a pass: {stdout}");
    assert!(stdout.contains("the test binary ran no test"), "{stdout}");

    let out = fixture.run(&["-t", "3", "-i", "name.equals(tests::hangs)"]);
    let stdout = text(&out.stdout);
    let seconds: f64 = stdout
        .lines()
        .find_map(|l| l.strip_suffix('s')?.rsplit_once("TIMEOUT ")?.1.parse().ok())
        .unwrap_or_else(|| panic!("no TIMEOUT line:\n{stdout}"));
    assert!(seconds >= 3.0, "--timeout overrides the spec's 1 s: {seconds}");

    let out = fixture.run(&[
        "-s",
        "1",
        "-i",
        "package.equals(fixture) & (name.c(fails) | name.c(panics) | name.c(segfaults))",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let failed = runners::statuses(&text(&out.stdout)).values().filter(|s| *s == "FAIL").count();
    assert!(failed >= 1, "{}", text(&out.stdout));

    let report = fixture.path().join("reports/junit.xml");
    let out = fixture.run(&["-p", "other-pkg", "--junit", report.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let xml = std::fs::read_to_string(&report).expect("the report is written");
    assert!(
        xml.contains("<testsuites") && xml.contains("tests=\"2\"") && xml.contains("failures=\"1\""),
        "{xml}"
    );
    assert!(xml.contains("name=\"tests::exits_three\""), "{xml}");
    assert_eq!(usage_reported(&xml), 2, "{xml}");
}

/// How many of a JUnit report's test cases say what they used (CPU time, peak RSS); each must
/// say it sensibly.
fn usage_reported(xml: &str) -> usize {
    let peaks: Vec<u64> = xml
        .split("<property name=\"peak-rss-bytes\" value=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().and_then(|n| n.parse().ok()).expect("a byte count"))
        .collect();
    assert!(peaks.iter().all(|&bytes| bytes > 0 && bytes < 1 << 30), "{peaks:?}");
    assert_eq!(xml.matches("<property name=\"cpu-seconds\" value=\"").count(), peaks.len(), "{xml}");
    peaks.len()
}

#[test]
fn build_failures_exit_with_cargos_code_and_init_writes_the_default() {
    if !cargo_usable() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("cargo-broken-").tempdir_in("/var/tmp").expect("a temp dir");
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"broken\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    )
    .expect("write");
    std::fs::create_dir(dir.path().join("src")).expect("mkdir");
    std::fs::write(dir.path().join("src/lib.rs"), "pub fn f() -> u32 { \"not a number\" }\n").expect("write");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cargo-maelstrom"))
            .current_dir(dir.path())
            .args(["maelstrom", "--config-file", "-"])
            .args(args)
            .env("CARGO", CARGO)
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("run")
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(101), "cargo's own code: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("mismatched types"),
        "cargo's errors are shown: {}",
        text(&out.stderr)
    );

    assert_eq!(text(&out.stderr).matches("mismatched types").count(), 1, "shown once: {}", text(&out.stderr));

    // A broken manifest: cargo's error once (the build and cargo metadata run side by side).
    let manifest = std::fs::read_to_string(dir.path().join("Cargo.toml")).expect("read");
    std::fs::write(dir.path().join("Cargo.toml"), "[package]\nname = \"broken\"\nversion = \n")
        .expect("write");
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr).matches("string values must be quoted").count(), 1, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cargo maelstrom: cargo metadata failed"), "{}", text(&out.stderr));
    std::fs::write(dir.path().join("Cargo.toml"), manifest).expect("write");

    let out = run(&["--init"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(dir.path().join("cargo-maelstrom.toml")).expect("written");
    assert!(written.contains("[[directives]]") && written.contains("RUST_BACKTRACE"), "{written}");
    let out = run(&["--init"]);
    assert_eq!(out.status.code(), Some(1), "an existing file is kept");
    std::fs::write(dir.path().join("cargo-maelstrom.toml"), "[[directives]]\nfilter = \"nmae.eq(x)\"\n")
        .expect("write");
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cargo-maelstrom.toml:1:1: directive 1: filter \"nmae.eq(x)\": column 1"),
        "{}",
        text(&out.stderr)
    );
}
