//! One run of a test runner: the selected cases go in as jobs (each `--repeat` times, in the
//! test database's order), results come back, and the run ends with a summary, a JUnit report
//! if asked for, an updated test database, and an exit code.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use maelstrom_client::{Ended, JobId, JobResult, Output, Ran, Usage};

use crate::specfile::TestSettings;
use crate::testdb::{Estimate, TestDb};
use crate::ui::{Status, Ui, UiKind};

/// How the run goes.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub repeat: NonZeroU32,
    /// Stop once this many tests have failed.
    pub stop_after: Option<NonZeroU32>,
    /// `--timeout`: overrides every test's (0: none).
    pub timeout: Option<u32>,
    pub ui: UiKind,
    /// Where to write a JUnit XML report.
    pub junit: Option<PathBuf>,
    /// The test database's file.
    pub test_db: PathBuf,
    /// Slowest tests named in the summary.
    pub slowest_shown: usize,
    /// Show what passing tests printed too (`go test -v`).
    pub show_passing_output: bool,
}

/// One test case as a runner lists it.
#[derive(Clone, Debug)]
pub struct Case {
    pub package: String,
    /// The artifact's key in the test database (cargo: `name(kind)`).
    pub artifact: String,
    pub name: String,
    /// As shown to the user.
    pub display: String,
    /// Ignored by its framework (`#[ignore]`).
    pub ignored: bool,
}

/// The exit codes: every test passed (or was ignored); some failed; the runner itself could
/// not run. A build failure exits with the build tool's own code.
pub const EXIT_PASSED: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

/// Cleans a test's output for display (the runner knows its framework's chatter).
pub type Trim = Box<dyn Fn(&Case, &[u8]) -> String>;

/// A framework's own reading of a case that ran to its end, from what it printed (go's test
/// events): it decides over the exit status. A timeout stays a timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// With the lines that say why (failed subtests, a crash).
    Failed(Vec<String>),
    /// With the framework's reason.
    Skipped(Option<String>),
}

/// Reads a case's stdout, knowing how the job ended.
pub type Judge = Box<dyn Fn(&Case, Ended, &Output) -> Verdict>;

/// A framework's own report of each case, on stdout (go test -json's event stream); the UI
/// and the summary then go to stderr.
pub trait Reporter {
    /// A case ended: how (`None`: it never ran), what it printed, how long it took.
    fn case(&mut self, case: &Case, ended: Option<Ended>, stdout: &Output, duration: Option<Duration>);
    /// A case was not run: its framework or the spec file ignores it.
    fn ignored(&mut self, case: &Case);
    /// The run ended.
    fn finish(&mut self);
}

/// How a framework's test programs speak: their chatter, and what their exits mean.
pub struct OutputRules {
    /// Reports each case in the framework's own format, on stdout.
    pub reporter: Option<Box<dyn Reporter>>,
    /// A case's parts with results of their own (go's subtests).
    pub parts: Option<Parts>,
    pub trim: Trim,
    /// The framework's verdict, when its programs report one (otherwise the exit decides).
    pub judge: Option<Judge>,
    /// Exit codes that only say the test failed (libtest's 101), so are not shown.
    pub quiet_exit_codes: &'static [i32],
    /// What a test program prints when it ran no test at all: a run that prints it is an
    /// error, not a pass (say, a filter in the extra arguments that selects nothing).
    pub no_test_marker: Option<&'static str>,
}

impl Default for OutputRules {
    fn default() -> Self {
        Self {
            reporter: None,
            parts: None,
            trim: Box::new(|_, out| String::from_utf8_lossy(out).into_owned()),
            judge: None,
            quiet_exit_codes: &[],
            no_test_marker: None,
        }
    }
}

impl std::fmt::Debug for OutputRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputRules")
            .field("quiet_exit_codes", &self.quiet_exit_codes)
            .field("no_test_marker", &self.no_test_marker)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Finished {
    case: usize,
    status: Status,
    /// Whether the test database learns from it (not for a binary that could not be listed).
    about_a_test: bool,
    duration: Option<Duration>,
    stdout: String,
    stderr: String,
    details: Vec<String>,
    /// The case's own parts (go's subtests), for the JUnit report.
    parts: Vec<Part>,
    /// What its job used, if it ran.
    usage: Option<Usage>,
}

/// A part of a case with a result of its own (a go subtest): reported under its case.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// Its full name (`TestX/case_1`).
    pub name: String,
    pub status: Status,
    pub duration: Option<Duration>,
}

/// Finds a case's parts in its stdout.
pub type Parts = Box<dyn Fn(&Case, &[u8]) -> Vec<Part>>;

pub struct Session {
    options: SessionOptions,
    ui: Ui,
    db: TestDb,
    cases: Vec<Case>,
    running: HashMap<JobId, (usize, Instant)>,
    finished: Vec<Finished>,
    failures: u32,
    not_run: u64,
    /// Runs the listed cases make (each `repeat` times, ignored ones once).
    expected_runs: u64,
    rules: OutputRules,
    last_running_update: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("cases", &self.cases.len())
            .field("running", &self.running.len())
            .finish()
    }
}

/// A job for a case, made by the runner: its settings from the directives, the timeout to use,
/// and its place in the order.
pub type Submit<'a> = &'a mut dyn FnMut(&TestSettings, Option<NonZeroU32>, Estimate) -> Result<JobId, String>;

impl Session {
    pub fn new(options: SessionOptions, rules: OutputRules) -> Self {
        let db = TestDb::open(&options.test_db);
        let ui = Ui::new(options.ui, false, rules.reporter.is_some());
        Self {
            options,
            ui,
            db,
            cases: Vec::new(),
            running: HashMap::new(),
            finished: Vec::new(),
            failures: 0,
            not_run: 0,
            expected_runs: 0,
            rules,
            last_running_update: Instant::now(),
        }
    }

    /// Something that is not one test went wrong (a binary that could not be listed): it is
    /// reported as an error under `display`, and counts as a failure.
    pub fn error(&mut self, package: &str, display: String, message: String) {
        let index = self.cases.len();
        self.cases.push(Case {
            package: package.to_owned(),
            artifact: String::new(),
            name: display.clone(),
            display,
            ignored: false,
        });
        self.expected_runs += 1;
        self.ui.set_total(self.expected_runs);
        if let Some(reporter) = &mut self.rules.reporter {
            reporter.case(
                &self.cases[index],
                None,
                &Output { bytes: message.clone().into_bytes(), cut: 0 },
                None,
            );
        }
        self.record(Finished {
            case: index,
            status: Status::Error,
            about_a_test: false,
            duration: None,
            stdout: String::new(),
            stderr: String::new(),
            details: vec![message],
            parts: Vec::new(),
            usage: None,
        });
    }

    pub fn ui(&mut self) -> &mut Ui {
        &mut self.ui
    }

    pub fn db(&mut self) -> &mut TestDb {
        &mut self.db
    }

    /// Tests expected in all (from the test database, before listing is done).
    pub fn expect(&mut self, tests: usize) {
        self.ui.set_total(tests as u64 * u64::from(self.options.repeat.get()));
    }

    /// Runs `repeat` copies of a case through `submit`, or reports it ignored.
    pub fn add(&mut self, case: Case, settings: &TestSettings, submit: Submit<'_>) {
        let index = self.cases.len();
        let estimate = self.db.estimate(&case.package, &case.artifact, &case.name);
        self.cases.push(case);
        let ignored = self.cases[index].ignored || settings.ignore;
        self.expected_runs += if ignored { 1 } else { u64::from(self.options.repeat.get()) };
        if ignored {
            if let Some(reporter) = &mut self.rules.reporter {
                reporter.ignored(&self.cases[index]);
            }
            self.record(Finished {
                case: index,
                status: Status::Ignored,
                about_a_test: true,
                duration: None,
                stdout: String::new(),
                stderr: String::new(),
                details: Vec::new(),
                parts: Vec::new(),
                usage: None,
            });
            return;
        }
        let timeout = match self.options.timeout {
            Some(seconds) => NonZeroU32::new(seconds),
            None => settings.timeout,
        };
        for _ in 0..self.options.repeat.get() {
            match submit(settings, timeout, estimate) {
                Ok(id) => {
                    self.running.insert(id, (index, Instant::now()));
                }
                Err(message) => self.record(Finished {
                    case: index,
                    status: Status::Error,
                    about_a_test: true,
                    duration: None,
                    stdout: String::new(),
                    stderr: String::new(),
                    details: vec![format!("error: {message}")],
                    parts: Vec::new(),
                    usage: None,
                }),
            }
        }
    }

    /// Tests listed so far (to size the progress bar once listing is done).
    pub fn listed(&self) -> usize {
        self.cases.len()
    }

    /// Fixes the progress bar's length once every case is known.
    pub fn listing_done(&mut self) {
        self.ui.set_total(self.expected_runs);
    }

    /// Jobs sent and not yet finished.
    pub fn pending(&self) -> usize {
        self.running.len()
    }

    /// Whether `--stop-after` failures have been seen.
    pub fn should_stop(&self) -> bool {
        self.options.stop_after.is_some_and(|n| self.failures >= n.get())
    }

    /// A finished job.
    pub fn result(&mut self, result: JobResult) {
        let Some((index, _)) = self.running.remove(&result.id) else { return };
        let case = &self.cases[index];
        if let Some(reporter) = &mut self.rules.reporter {
            match result.outcome.ran() {
                Ok(ran) => reporter.case(case, Some(ran.ended), ran.stdout, Some(ran.duration)),
                Err(why) => {
                    reporter.case(case, None, &Output { bytes: why.to_string().into_bytes(), cut: 0 }, None)
                }
            }
        }
        let usage = result.outcome.ran().ok().map(|ran| ran.usage);
        let (status, duration, stdout, stderr, mut details) = match result.outcome.ran() {
            Ok(Ran { ended, stdout: out, stderr: err, duration, met, usage: _ }) => {
                let empty = ended == Ended::Exited(0)
                    && self.rules.no_test_marker.is_some_and(|marker| {
                        out.bytes.windows(marker.len()).any(|w| w == marker.as_bytes())
                    });
                let mut status = match ended {
                    Ended::Exited(0) if empty => Status::Error,
                    Ended::Exited(0) => Status::Ok,
                    Ended::Exited(_) | Ended::Signaled(_) | Ended::Killed(_) => Status::Fail,
                    Ended::TimedOut => Status::Timeout,
                };
                let stdout = (self.rules.trim)(case, &out.bytes);
                let stderr = String::from_utf8_lossy(&err.bytes).into_owned();
                let mut details = Vec::new();
                let judged = !matches!(ended, Ended::TimedOut | Ended::Killed(_));
                if let Some(judge) = self.rules.judge.as_ref().filter(|_| judged) {
                    match judge(case, ended, out) {
                        Verdict::Passed => status = Status::Ok,
                        Verdict::Failed(why) => {
                            status = Status::Fail;
                            details.extend(why);
                        }
                        Verdict::Skipped(why) => {
                            status = Status::Ignored;
                            details.extend(why);
                        }
                    }
                }
                match ended {
                    Ended::Exited(0) if empty => {
                        details.push(
                            "the test binary ran no test (do its extra arguments filter them out?)".into(),
                        );
                    }
                    Ended::Signaled(signal) => details.push(format!("killed by signal {signal}")),
                    Ended::TimedOut => details.push("timed out".to_owned()),
                    Ended::Killed(limit) => details.push(format!("killed: {limit}")),
                    Ended::Exited(code)
                        if code != 0
                            && !self.rules.quiet_exit_codes.contains(&code)
                            && status != Status::Ignored =>
                    {
                        details.push(format!("exited with code {code}"));
                    }
                    Ended::Exited(_) => {}
                }
                if status == Status::Fail {
                    details.extend(met.iter().map(ToString::to_string));
                }
                for (name, captured) in [("stdout", &out), ("stderr", &err)] {
                    if captured.cut > 0 {
                        details.push(format!("{name} truncated, {} bytes lost", captured.cut));
                    }
                }
                (status, Some(duration), stdout, stderr, details)
            }
            Err(why) => (Status::Error, None, String::new(), String::new(), vec![why.to_string()]),
        };
        let (mut stdout, mut stderr) = (stdout, stderr);
        if status == Status::Ok && !self.options.show_passing_output {
            // A passing test's output is not shown or kept, nor what was cut of it.
            details.clear();
            stdout.clear();
            stderr.clear();
        } else if status == Status::Ok {
            details = [&stdout, &stderr]
                .into_iter()
                .map(|output| output.trim_matches('\n').trim_end().to_owned())
                .filter(|output| !output.is_empty())
                .collect();
            stdout.clear();
            stderr.clear();
        } else {
            let mut shown = Vec::new();
            for output in [&stdout, &stderr] {
                let output = output.trim_matches('\n').trim_end();
                if !output.is_empty() {
                    shown.push(output.to_owned());
                }
            }
            shown.append(&mut details);
            details = shown;
        }
        let parts = match (&self.rules.parts, result.outcome.ran()) {
            (Some(parts), Ok(ran)) => parts(&self.cases[index], &ran.stdout.bytes),
            _ => Vec::new(),
        };
        self.record(Finished {
            case: index,
            status,
            about_a_test: true,
            duration,
            stdout,
            stderr,
            details,
            parts,
            usage,
        });
        self.refresh_running(false);
    }

    fn record(&mut self, finished: Finished) {
        let case = &self.cases[finished.case];
        if matches!(finished.status, Status::Fail | Status::Timeout | Status::Error) {
            self.failures += 1;
            self.ui.set_failures(u64::from(self.failures));
        }
        if finished.status != Status::Ignored && finished.about_a_test {
            let passed = finished.status == Status::Ok;
            self.db.update(&case.package, &case.artifact, &case.name, finished.duration, passed);
        }
        self.ui.finished(&case.display, finished.status, finished.duration, &finished.details);
        self.finished.push(finished);
    }

    /// Updates the list of running tests (at most a few times a second).
    pub fn refresh_running(&mut self, force: bool) {
        if self.ui.kind() != UiKind::Fancy
            || (!force && self.last_running_update.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last_running_update = Instant::now();
        let mut running: Vec<(String, Duration)> =
            self.running.values().map(|(i, t)| (self.cases[*i].display.clone(), t.elapsed())).collect();
        running.sort_by_key(|r| std::cmp::Reverse(r.1));
        self.ui.set_running(&running);
    }

    /// Ends the run: the summary, the report, the database. `build_failure` is the build
    /// tool's exit code if the build failed. Returns the exit code.
    pub fn finish(mut self, build_failure: Option<i32>) -> i32 {
        self.not_run = self.running.len() as u64;
        self.ui.finish();
        let summary = self.summary();
        match &mut self.rules.reporter {
            Some(reporter) => {
                reporter.finish();
                eprintln!("{summary}");
            }
            None => println!("{summary}"),
        }
        if let Some(path) = &self.options.junit
            && let Err(e) = self.write_junit(path)
        {
            eprintln!("error: write the JUnit report {}: {e}", path.display());
        }
        if let Err(e) = self.db.save() {
            eprintln!("warning: save the test database {}: {e}", self.options.test_db.display());
        }
        match build_failure {
            Some(code) => code,
            None if self.failures > 0 => EXIT_FAILED,
            None => EXIT_PASSED,
        }
    }

    fn summary(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        let count = |status: Status| self.finished.iter().filter(|f| f.status == status).count();
        let failed: Vec<&Finished> = self
            .finished
            .iter()
            .filter(|f| matches!(f.status, Status::Fail | Status::Timeout | Status::Error))
            .collect();
        let ignored: Vec<&Finished> = self.finished.iter().filter(|f| f.status == Status::Ignored).collect();
        line(&mut out, String::new());
        line(&mut out, format!("{:=^60}", " Test Summary "));
        line(&mut out, format!("Successful Tests:         {}", count(Status::Ok)));
        line(&mut out, format!("Failed Tests    :         {}", failed.len()));
        for f in &failed {
            let why = match f.status {
                Status::Timeout => "timeout",
                Status::Error => "error",
                _ => "failure",
            };
            line(&mut out, format!("    {}: {why}", self.cases[f.case].display));
        }
        line(&mut out, format!("Ignored Tests   :         {}", ignored.len()));
        for f in &ignored {
            line(&mut out, format!("    {}: ignored", self.cases[f.case].display));
        }
        if self.not_run > 0 {
            line(&mut out, format!("Tests Not Run   :         {}", self.not_run));
        }
        let mut slowest: Vec<&Finished> = self.finished.iter().filter(|f| f.duration.is_some()).collect();
        slowest.sort_by_key(|f| std::cmp::Reverse(f.duration));
        if !slowest.is_empty() && self.options.slowest_shown > 0 {
            line(&mut out, "Slowest Tests   :".to_owned());
            for f in slowest.iter().take(self.options.slowest_shown) {
                let seconds = f.duration.unwrap_or_default().as_secs_f64();
                line(&mut out, format!("    {seconds:8.3}s {}", self.cases[f.case].display));
            }
        }
        line(&mut out, format!("Wall Time       :         {:.3}s", self.ui.elapsed().as_secs_f64()));
        out.pop();
        out
    }

    fn write_junit(&self, path: &std::path::Path) -> std::io::Result<()> {
        use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
        let mut report = Report::new("maelstrom");
        let mut suites: Vec<(String, TestSuite)> = Vec::new();
        for f in &self.finished {
            let case = &self.cases[f.case];
            let suite_name = format!("{} {}", case.package, case.artifact);
            let position = match suites.iter().position(|(name, _)| *name == suite_name) {
                Some(position) => position,
                None => {
                    suites.push((suite_name.clone(), TestSuite::new(suite_name)));
                    suites.len() - 1
                }
            };
            let status = match f.status {
                Status::Ok => TestCaseStatus::success(),
                Status::Ignored => TestCaseStatus::skipped(),
                Status::Fail | Status::Timeout => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status.set_message(
                        f.details.last().cloned().unwrap_or_else(|| f.status.label().to_owned()),
                    );
                    status
                }
                Status::Error => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                    status.set_message(f.details.join("\n"));
                    status
                }
            };
            let mut test = TestCase::new(case.name.clone(), status);
            test.set_classname(format!("{} {}", case.package, case.artifact));
            if let Some(duration) = f.duration {
                test.set_time(duration);
            }
            // What the test used, all its processes together: CPU time, and the largest
            // resident set one of them reached.
            if let Some(usage) = f.usage {
                test.add_property(("cpu-seconds", format!("{:.3}", usage.cpu().as_secs_f64()).as_str()));
                test.add_property(("peak-rss-bytes", usage.peak_rss_bytes.to_string().as_str()));
            }
            if f.status != Status::Ok {
                test.set_system_out(f.stdout.clone());
                test.set_system_err(f.stderr.clone());
            }
            suites[position].1.add_test_case(test);
            for part in &f.parts {
                let status = match part.status {
                    Status::Ok => TestCaseStatus::success(),
                    Status::Ignored => TestCaseStatus::skipped(),
                    _ => TestCaseStatus::non_success(NonSuccessKind::Failure),
                };
                let mut test = TestCase::new(part.name.clone(), status);
                test.set_classname(format!("{} {}", case.package, case.artifact));
                if let Some(duration) = part.duration {
                    test.set_time(duration);
                }
                suites[position].1.add_test_case(test);
            }
        }
        report.add_test_suites(suites.into_iter().map(|(_, suite)| suite));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(path)?;
        report.serialize(file).map_err(std::io::Error::other)
    }
}

/// Captured output as text (for runners that build their own details).
pub fn text(captured: &Output) -> String {
    String::from_utf8_lossy(&captured.bytes).into_owned()
}
