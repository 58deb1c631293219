//! maelstrom-go-test on the fixture module (`tests/fixtures/go`): every outcome its table
//! (`expected.txt`) names, standalone and on a cluster; go test's flags, listings, a package
//! without tests, a nested module, a benchmark that is no test, and clear errors.
//!
//! The fixture is copied once per run under /tmp (where each test gets its own tmpfs) and built
//! there. These tests need go (`MAELSTROM_GO`, else `go` on PATH): a user who cannot run it
//! (the test script's unprivileged pass) is told so, and nothing is checked. CI installs go.
#![expect(clippy::tests_outside_test_module, reason = "an integration test file is its own test module")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use maelstrom_testbins::runners::{self, fixture_copy};

fn go() -> String {
    std::env::var("MAELSTROM_GO").unwrap_or_else(|_| "go".to_owned())
}

/// Whether go, and this build's maelstrom-go-test, can be run by this user (the test script's
/// unprivileged pass reaches neither); says so when not.
fn go_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        let runs = |command: &mut Command| command.output().is_ok_and(|o| o.status.success());
        let usable = runs(Command::new(go()).arg("version"))
            && runs(Command::new(env!("CARGO_BIN_EXE_maelstrom-go-test")).arg("--version"));
        if !usable {
            eprintln!("skipped: go ({}) or maelstrom-go-test cannot be run by this user", go());
        }
        usable
    })
}

/// The fixture's copy, shared by the tests one at a time (they share its build).
struct Fixture {
    dir: PathBuf,
}

fn fixture() -> MutexGuard<'static, Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| Mutex::new(Fixture { dir: fixture_copy("go-fixture-", &source()) }))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/go")
}

impl Fixture {
    fn run_in(&self, dir: &str, args: &[&str]) -> Output {
        self.command_in(dir, args).output().expect("run maelstrom-go-test")
    }

    fn command_in(&self, dir: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_maelstrom-go-test"));
        command.current_dir(self.dir.join(dir)).args(["--config-file", "-", "--ui", "simple"]).args(args);
        for var in ["MAELSTROM_GO_TEST_BROKER", "MAELSTROM_BROKER"] {
            command.env_remove(var);
        }
        command.env("GOFLAGS", "-mod=mod").stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_in("", args)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_table(out: &Output) {
    let stdout = text(&out.stdout);
    let wrong = runners::mismatches(&stdout, &source().join("expected.txt"));
    assert!(
        wrong.is_empty(),
        "{}\n--- stdout:\n{stdout}\n--- stderr:\n{}",
        wrong.join("\n"),
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "tests failed: exit 1");
}

#[test]
fn the_table_holds_standalone() {
    if !go_usable() {
        return;
    }
    let fixture = fixture();
    let out = fixture.run(&["./..."]);
    assert_table(&out);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("arithmetic is broken"), "a failure's output is shown:\n{stdout}");
    assert!(stdout.contains("--- FAIL: TestSubtests/bad"), "the failing subtest is named:\n{stdout}");
    assert!(stdout.contains("log.Fatal ends the binary"), "{stdout}");
    assert!(stdout.contains("the test binary crashed before TestExitsThree finished"), "{stdout}");
    assert!(stdout.contains("exited with code 3"), "{stdout}");
    assert!(stdout.contains("panic: a goroutine panics"), "{stdout}");
    // A timeout sends SIGQUIT first, as go test's own does: the goroutines are dumped.
    assert!(stdout.contains("SIGQUIT: quit") && stdout.contains("fixture.TestHangs"), "{stdout}");
    assert!(stdout.contains("skipped: fixture_test.go:"), "a skip says why:\n{stdout}");
    assert!(stdout.contains("got:\ngoodbye\nwant:\nhello"), "an example's output is compared:\n{stdout}");
    assert!(!stdout.contains("BenchmarkParse") && !stdout.contains("TestNested"), "{stdout}");
    assert!(stderr.contains("?   \texample.com/fixture/notests\t[no test files]"), "{stderr}");
    assert!(
        stdout.contains("cannot use \"not a number\""),
        "a package that does not build says why:\n{stdout}"
    );
}

#[test]
fn the_table_holds_on_a_cluster() {
    if !go_usable() {
        return;
    }
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let bins = DIR.get_or_init(|| {
        runners::cluster_bin_dir(env!("CARGO"), Path::new(env!("CARGO_BIN_EXE_maelstrom-go-test")))
    });
    let fixture = fixture();
    let cluster = runners::Cluster::start(bins);
    let out = fixture.run(&["./...", "--broker", &cluster.address]);
    assert_table(&out);
}

#[test]
fn go_test_flags() {
    if !go_usable() {
        return;
    }
    let fixture = fixture();
    // -run with a subtest path: only the good subtest runs, so the test passes.
    let out = fixture.run(&["-run", "TestSubtests/good"]);
    let got = runners::statuses(&text(&out.stdout));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got["example.com/fixture TestSubtests"], "OK");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // -skip, -short, -count: two runs each.
    let out =
        fixture.run(&["-run", "^Test(Passes|ShortOnly|Fails)$", "-skip", "TestFails", "-short", "-count=2"]);
    let stdout = text(&out.stdout);
    assert_eq!(stdout.matches("example.com/fixture TestShortOnly.").count(), 2, "{stdout}");
    assert!(!stdout.contains("TestFails"), "{stdout}");
    assert!(runners::statuses(&stdout).values().all(|s| s == "OK"), "{stdout}");

    // -list prints without running; the current directory's package is the default.
    let out = fixture.run(&["-list", "^Example"]);
    assert_eq!(
        text(&out.stdout),
        "example.com/fixture Example_passes\nexample.com/fixture Example_failsOnOutput\n",
        "{}",
        text(&out.stderr)
    );
    let out = fixture.run_in("withmain", &["--list-tests"]);
    assert_eq!(
        text(&out.stdout),
        "example.com/fixture/withmain TestReadsModuleTestdata\nexample.com/fixture/withmain TestSawMain\n",
        "{}",
        text(&out.stderr)
    );
    let out = fixture.run(&["--list-packages", "./..."]);
    assert_eq!(
        text(&out.stdout),
        "example.com/fixture\nexample.com/fixture/broken\nexample.com/fixture/notests\nexample.com/fixture/withmain\n"
    );

    // The filter language's selectors.
    let out = fixture.run(&["./...", "-i", "package_name.equals(withmain) | name.equals(TestPasses)"]);
    let got = runners::statuses(&text(&out.stdout));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        [
            "example.com/fixture TestPasses",
            // It might have had a TestPasses: it was built, and it does not build.
            "example.com/fixture/broken",
            "example.com/fixture/withmain TestReadsModuleTestdata",
            "example.com/fixture/withmain TestSawMain"
        ]
    );

    // -json: go test's event stream, and nothing else, on stdout.
    let out = fixture.run(&["-json", "-run", "^Test(Subtests|Passes)$"]);
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    let has = |action: &str, test: Option<&str>| {
        events.iter().any(|e| {
            e["Action"] == action && e["Package"] == "example.com/fixture" && e["Test"].as_str() == test
        })
    };
    assert!(has("pass", Some("TestPasses")) && has("pass", Some("TestSubtests/good")), "{events:?}");
    assert!(has("fail", Some("TestSubtests/bad")) && has("fail", Some("TestSubtests")), "{events:?}");
    assert!(has("start", None) && has("fail", None), "the package starts and fails: {events:?}");
    assert!(text(&out.stderr).contains("Test Summary"), "the summary goes to stderr");

    // --junit: subtests are test cases of their own, under their test's suite.
    let report = tempfile::NamedTempFile::new().expect("a temp file");
    let out = fixture.run(&["-run", "^TestSubtests$", "--junit", report.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let xml = std::fs::read_to_string(report.path()).expect("the report");
    for name in ["name=\"TestSubtests\"", "name=\"TestSubtests/good\"", "name=\"TestSubtests/bad\""] {
        assert!(xml.contains(name), "{name} in {xml}");
    }
    assert_eq!(xml.matches("<failure").count(), 2, "the test and its bad subtest fail: {xml}");

    // -v shows what passing tests print; -failfast stops at the first failure.
    let out = fixture.run(&["-run", "^TestPasses$", "-v"]);
    assert!(text(&out.stdout).contains("a passing test's log"), "{}", text(&out.stdout));
    let out = fixture.run(&["-run", "^TestPasses$"]);
    assert!(!text(&out.stdout).contains("a passing test's log"), "{}", text(&out.stdout));
    let out = fixture.run(&["-run", "^Test(Fails|ExitsThree)$", "-failfast", "--slots", "1"]);
    assert_eq!(runners::statuses(&text(&out.stdout)).len(), 1, "{}", text(&out.stdout));
}

/// go leaves its work directory behind when it is killed, as it is when a run stops before
/// every package is built: each run's goes in a directory of the runner's own, removed after.
/// And `--list-tests` lists what builds when a package does not, as `go test -list` does.
#[test]
fn listing_past_a_broken_package_and_leaving_no_work_directory() {
    if !go_usable() {
        return;
    }
    let fixture = fixture();
    let temp = tempfile::tempdir().expect("a temp dir");
    // What an interrupted run left (its pid is past any pid_max) goes too, once old; a fresh
    // one may be a live run's in another pid namespace.
    let stale = temp.path().join("maelstrom-go-test-99999999-x");
    std::fs::create_dir_all(stale.join("go-build1/b001")).expect("mkdir");
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    std::fs::File::open(&stale).and_then(|dir| dir.set_modified(day_ago)).expect("age it");
    let fresh = tempfile::tempdir().expect("a temp dir");
    std::fs::create_dir(fresh.path().join("maelstrom-go-test-99999999-y")).expect("mkdir");
    let out = fixture.command_in("", &["-run", "^TestPasses$"]).env("GOTMPDIR", fresh.path()).output();
    assert!(out.expect("run").status.success());
    assert!(fresh.path().join("maelstrom-go-test-99999999-y").exists(), "a fresh one is kept");
    let runs: [&[&str]; 3] = [
        &["--list-tests", "./..."],
        &["./...", "-run", "^TestFails$", "-failfast"],
        &["-run", "^TestPasses$"],
    ];
    for args in runs {
        let out = fixture.command_in("", args).env("GOTMPDIR", temp.path()).output().expect("run");
        let stdout = text(&out.stdout);
        assert!(stdout.contains("example.com/fixture"), "{args:?}: {stdout}\n{}", text(&out.stderr));
        let left: Vec<_> =
            std::fs::read_dir(temp.path()).expect("read").map(|e| e.expect("entry").path()).collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
        if args[0] == "--list-tests" {
            assert!(stdout.contains("example.com/fixture/withmain TestSawMain\n"), "{stdout}");
            let stderr = text(&out.stderr);
            assert!(stderr.contains("maelstrom-go-test: example.com/fixture/broken: "), "{stderr}");
            assert_eq!(out.status.code(), Some(1));
        }
    }
    // GOTMPDIR set with `go env -w` counts too.
    let goenv = temp.path().join("goenv");
    std::fs::write(&goenv, "GOTMPDIR=/nonexistent/go-tmp\n").expect("write");
    let out = fixture.command_in("", &[]).env("GOENV", &goenv).output().expect("run");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("make a directory for go's work in /nonexistent/go-tmp (GOTMPDIR"), "{stderr}");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn mistakes_get_one_clear_line() {
    if !go_usable() {
        return;
    }
    let fixture = fixture();
    let out = fixture.run(&["-bench", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("maelstrom-go-test: -bench: not a flag maelstrom-go-test takes"));
    // A pattern that names nothing fails, as under go test, with go's reason.
    let out = fixture.run(&["./nowhere/..."]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ERR") && stdout.contains("lstat ./nowhere/: no such file or directory"),
        "{stdout}"
    );
    let out = fixture.run(&["-i", "nmae.eq(x)"]);
    assert!(
        text(&out.stderr).contains("--include \"nmae.eq(x)\": column 1: unknown compound selector `nmae`"),
        "{}",
        text(&out.stderr)
    );
    let empty = tempfile::tempdir().expect("a temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_maelstrom-go-test"))
        .current_dir(empty.path())
        .args(["--config-file", "-"])
        .env("GO111MODULE", "on")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no go.mod here or above"), "{}", text(&out.stderr));

    // --init needs a module, not a package where it is run.
    std::fs::write(empty.path().join("go.mod"), "module example.com/empty\n\ngo 1.19\n").expect("write");
    let init = || {
        Command::new(env!("CARGO_BIN_EXE_maelstrom-go-test"))
            .current_dir(empty.path())
            .args(["--config-file", "-", "--init"])
            .output()
            .expect("run")
    };
    let out = init();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(empty.path().join("maelstrom-go-test.toml")).expect("written");
    assert!(
        written.contains("enable_writable_file_system = true") && written.contains("GOCACHE"),
        "{written}"
    );
    assert_eq!(init().status.code(), Some(1), "an existing file is kept");
}
