//! Reading a go test binary's events. Run with `-test.v=test2json`, the binary frames each of
//! its own lines (`=== RUN`, `--- PASS: ...`, the final `PASS`) with a ^V byte, so they cannot be
//! confused with what a test prints; `go tool test2json` reads the same framing. A case's
//! verdict comes from its own `--- PASS/FAIL/SKIP` line, never from scraped text: a binary that
//! exits without one (`log.Fatal`, `os.Exit`, a panic in a goroutine) crashed.

use maelstrom_client::Ended;
use maelstrom_test_runner::session::Verdict;

/// Frames a line the testing package wrote itself.
const FRAME: char = '\u{16}';
/// Bracket the text of a `t.Error` (newer go versions), for test2json's highlighting.
const ERROR_START: char = '\u{0f}';
const ERROR_END: char = '\u{0e}';

/// One framed event.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event<'a> {
    /// `=== RUN`, `=== CONT`, `=== NAME`, `=== PAUSE`: who prints next.
    Owner(&'a str),
    /// `--- PASS|FAIL|SKIP: name (0.00s)`.
    Result { name: &'a str, result: &'a str },
    /// The binary's last word: `PASS` or `FAIL`.
    End,
}

fn event(line: &str) -> Option<Event<'_>> {
    let framed = line.strip_prefix(FRAME)?;
    if let Some(rest) = framed.strip_prefix("=== ") {
        let (_, name) = rest.split_once(' ').unwrap_or((rest, ""));
        return Some(Event::Owner(name.trim()));
    }
    if let Some(rest) = framed.trim_start().strip_prefix("--- ") {
        let (result, rest) = rest.split_once(": ")?;
        let name = rest.rsplit_once(" (").map_or(rest, |(name, _)| name);
        return Some(Event::Result { name, result });
    }
    matches!(framed.trim(), "PASS" | "FAIL").then_some(Event::End)
}

/// The verdict on top-level case `case` from the binary's stdout (and whether it was cut),
/// knowing how it exited.
pub fn verdict(case: &str, ended: Ended, stdout: &[u8], cut: bool) -> Verdict {
    let text = String::from_utf8_lossy(stdout);
    let mut own = None;
    let mut failed_subtests = Vec::new();
    // The last line the case itself printed: a skip's reason.
    let mut last_line = None;
    let mut owner = "";
    for line in text.lines() {
        match event(line) {
            Some(Event::Owner(name)) => owner = name,
            Some(Event::Result { name, result }) if name == case => own = Some(result.to_owned()),
            Some(Event::Result { name, result: "FAIL" }) if name.starts_with(&format!("{case}/")) => {
                failed_subtests.push(format!("--- FAIL: {name}"));
            }
            Some(_) => {}
            None if owner == case => {
                let line = clean(line).trim().to_owned();
                if !line.is_empty() {
                    last_line = Some(line);
                }
            }
            None => {}
        }
    }
    match (own.as_deref(), ended) {
        (Some("PASS"), Ended::Exited(0)) => Verdict::Passed,
        (Some("SKIP"), Ended::Exited(0)) => Verdict::Skipped(last_line.map(|r| format!("skipped: {r}"))),
        (Some("FAIL"), _) => Verdict::Failed(failed_subtests),
        (Some(_), Ended::Exited(code)) => {
            Verdict::Failed(vec![format!("the test passed, but the binary then exited with code {code}")])
        }
        // The session says which signal, or which limit.
        (_, Ended::Signaled(_) | Ended::Killed(_)) => Verdict::Failed(Vec::new()),
        // Passed, its result line past what was kept of a long output (thousands of subtests).
        (None, Ended::Exited(0)) if cut => Verdict::Passed,
        (None, Ended::Exited(0)) if text.contains("testing: warning: no tests to run") => Verdict::Failed(
            vec![format!("the binary ran no test: do its extra arguments filter {case} out?")],
        ),
        (None, Ended::Exited(0)) => Verdict::Failed(vec![format!(
            "the binary exited 0 without a result for {case} (a TestMain that does not call m.Run?)"
        )]),
        (None, Ended::Exited(_)) if cut => {
            Verdict::Failed(vec![format!("the test binary failed; {case}'s result is past the output kept")])
        }
        (None, Ended::Exited(_)) => {
            Verdict::Failed(vec![format!("the test binary crashed before {case} finished")])
        }
        (_, Ended::TimedOut) => Verdict::Failed(vec!["timed out".to_owned()]),
    }
}

/// Strips the error brackets.
fn clean(line: &str) -> String {
    line.chars().filter(|&c| c != ERROR_START && c != ERROR_END).collect()
}

/// The output to show of a case: what its tests printed, with the testing package's own
/// framing dropped but its subtests' results kept (so a failure shows which subtest failed).
pub fn trim(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    let mut out = String::new();
    for line in text.lines() {
        match event(line) {
            Some(Event::Result { .. }) => {
                out.push_str(&clean(line.trim_start_matches(FRAME)));
                out.push('\n');
            }
            Some(_) => {}
            None => {
                out.push_str(&clean(line));
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(lines: &[&str]) -> Vec<u8> {
        lines
            .iter()
            .map(|l| {
                if l.starts_with("===") || l.starts_with("---") || *l == "PASS" || *l == "FAIL" {
                    format!("{FRAME}{l}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn results_come_from_the_cases_own_line() {
        let pass = framed(&["=== RUN   TestA", "--- PASS: TestA (0.00s)", "=== NAME  ", "PASS"]);
        assert_eq!(verdict("TestA", Ended::Exited(0), &pass, false), Verdict::Passed);
        // A test that prints a fake result line is not fooled by it: only framed lines count.
        let fake = b"=== RUN   TestA\n--- PASS: TestA (0.00s)\n".to_vec();
        assert!(matches!(verdict("TestA", Ended::Exited(1), &fake, false), Verdict::Failed(_)));
    }

    #[test]
    fn subtests_failures_and_skips_are_told_apart() {
        let out = framed(&[
            "=== RUN   TestSub",
            "=== RUN   TestSub/good",
            "--- PASS: TestSub/good (0.00s)",
            "=== RUN   TestSub/bad",
            "\u{f}    x_test.go:9: the bad subtest fails\u{e}",
            "--- FAIL: TestSub/bad (0.00s)",
            "=== NAME  TestSub",
            "--- FAIL: TestSub (0.00s)",
            "FAIL",
        ]);
        assert_eq!(
            verdict("TestSub", Ended::Exited(1), &out, false),
            Verdict::Failed(vec!["--- FAIL: TestSub/bad".into()])
        );
        assert!(trim(&out).contains("    x_test.go:9: the bad subtest fails\n--- FAIL: TestSub/bad (0.00s)"));
        assert!(!trim(&out).contains("=== RUN"));

        let skip =
            framed(&["=== RUN   TestS", "    s_test.go:3: not today", "--- SKIP: TestS (0.00s)", "PASS"]);
        assert_eq!(
            verdict("TestS", Ended::Exited(0), &skip, false),
            Verdict::Skipped(Some("skipped: s_test.go:3: not today".into()))
        );
    }

    #[test]
    fn a_passing_binary_whose_output_was_cut_passed_unless_it_ran_nothing() {
        let cut = framed(&["=== RUN   TestMany", "=== RUN   TestMany/1", "--- PASS: TestMany/1 (0.00s)"]);
        assert_eq!(verdict("TestMany", Ended::Exited(0), &cut, true), Verdict::Passed);
        assert!(
            matches!(verdict("TestMany", Ended::Exited(0), &cut, false), Verdict::Failed(_)),
            "not cut: no pass"
        );
        let none = b"testing: warning: no tests to run\nPASS\n".to_vec();
        assert!(matches!(verdict("TestMany", Ended::Exited(0), &none, false), Verdict::Failed(_)));
    }

    #[test]
    fn a_binary_that_ends_without_the_result_crashed() {
        let out = framed(&["=== RUN   TestExit"]);
        let Verdict::Failed(why) = verdict("TestExit", Ended::Exited(3), &out, false) else { panic!() };
        assert_eq!(why, ["the test binary crashed before TestExit finished"]);
        let Verdict::Failed(why) = verdict("TestExit", Ended::Signaled(9), &out, false) else { panic!() };
        assert!(why.is_empty(), "the session says which signal: {why:?}");
    }
}

/// `go test -json`'s event stream, on stdout, from each case's framed output: what
/// `go tool test2json` would make of it, so gotestsum and go-junit-report can read it. Each
/// package starts when its first case ends, and passes or fails at the end of the run.
#[derive(Debug, Default)]
pub struct JsonReporter {
    /// Package → whether a case of it failed, and the time its cases took.
    packages: Vec<(String, bool, f64)>,
}

impl JsonReporter {
    fn emit(
        &self,
        action: &str,
        package: &str,
        test: Option<&str>,
        elapsed: Option<f64>,
        output: Option<&str>,
    ) {
        use std::io::Write;
        let mut event = serde_json::Map::new();
        event.insert("Time".into(), now_rfc3339().into());
        event.insert("Action".into(), action.into());
        event.insert("Package".into(), package.into());
        if let Some(test) = test.filter(|t| !t.is_empty()) {
            event.insert("Test".into(), test.into());
        }
        if let Some(elapsed) = elapsed {
            event.insert("Elapsed".into(), serde_json::json!((elapsed * 1000.0).round() / 1000.0));
        }
        if let Some(output) = output {
            event.insert("Output".into(), output.into());
        }
        let _ = writeln!(std::io::stdout().lock(), "{}", serde_json::Value::Object(event));
    }

    fn package(&mut self, package: &str) -> usize {
        if let Some(index) = self.packages.iter().position(|(p, _, _)| p == package) {
            return index;
        }
        self.emit("start", package, None, None, None);
        self.packages.push((package.to_owned(), false, 0.0));
        self.packages.len() - 1
    }
}

/// Seconds in a `--- PASS: name (1.23s)` line.
fn elapsed_of(line: &str) -> Option<f64> {
    let inner = line.rsplit_once(" (")?.1.strip_suffix("s)")?;
    inner.parse().ok()
}

impl maelstrom_test_runner::session::Reporter for JsonReporter {
    fn case(
        &mut self,
        case: &maelstrom_test_runner::session::Case,
        ended: Option<Ended>,
        output: &maelstrom_client::Output,
        duration: Option<std::time::Duration>,
    ) {
        let stdout = output.bytes.as_slice();
        let package = case.package.clone();
        let index = self.package(&package);
        if case.artifact.is_empty() {
            // Not a test: its package failed as a whole (it does not build).
            for line in String::from_utf8_lossy(stdout).lines() {
                self.emit("output", &package, None, None, Some(&format!("{line}\n")));
            }
            self.packages[index].1 = true;
            return;
        }
        let text = String::from_utf8_lossy(stdout);
        let mut owner = case.name.clone();
        let mut own_result = false;
        for line in text.lines() {
            let shown = format!("{}\n", clean(line.trim_start_matches(FRAME)));
            match event(line) {
                Some(Event::Owner(name)) => {
                    let name = if name.is_empty() { case.name.as_str() } else { name };
                    owner = name.to_owned();
                    let rest = line.trim_start_matches(FRAME);
                    if rest.starts_with("=== RUN") {
                        self.emit("run", &package, Some(name), None, None);
                    } else if rest.starts_with("=== PAUSE") {
                        self.emit("pause", &package, Some(name), None, None);
                    } else if rest.starts_with("=== CONT") {
                        self.emit("cont", &package, Some(name), None, None);
                    }
                    if !rest.starts_with("=== NAME") {
                        self.emit("output", &package, Some(name), None, Some(&shown));
                    }
                }
                Some(Event::Result { name, result }) => {
                    self.emit("output", &package, Some(name), None, Some(&shown));
                    let action = match result {
                        "PASS" => "pass",
                        "SKIP" => "skip",
                        _ => "fail",
                    };
                    self.emit(action, &package, Some(name), elapsed_of(line), None);
                    own_result |= name == case.name;
                }
                // The binary's last word belongs to the package, whose result comes at the end.
                Some(Event::End) => {}
                None => self.emit("output", &package, Some(&owner), None, Some(&shown)),
            }
        }
        let seconds = duration.map(|d| d.as_secs_f64());
        let verdict = match ended {
            Some(ended) => verdict(&case.name, ended, stdout, output.cut > 0),
            None => Verdict::Failed(Vec::new()),
        };
        if !own_result {
            // A crash, a timeout or a cut output: the case's result is the runner's.
            let (action, why) = match (&verdict, ended) {
                (_, Some(Ended::TimedOut)) => ("fail", Some("timed out".to_owned())),
                (Verdict::Passed, _) => ("pass", None),
                (Verdict::Skipped(_), _) => ("skip", None),
                (Verdict::Failed(why), _) => ("fail", why.first().cloned()),
            };
            if let Some(why) = why {
                self.emit("output", &package, Some(&case.name), None, Some(&format!("{why}\n")));
            }
            self.emit(action, &package, Some(&case.name), seconds, None);
        }
        let failed = matches!(verdict, Verdict::Failed(_)) || ended == Some(Ended::TimedOut);
        let entry = &mut self.packages[index];
        entry.1 |= failed;
        entry.2 += seconds.unwrap_or(0.0);
    }

    fn ignored(&mut self, case: &maelstrom_test_runner::session::Case) {
        self.package(&case.package);
        self.emit("run", &case.package, Some(&case.name), None, None);
        self.emit(
            "output",
            &case.package,
            Some(&case.name),
            None,
            Some("    ignored by maelstrom-go-test.toml\n"),
        );
        self.emit("skip", &case.package, Some(&case.name), Some(0.0), None);
    }

    fn finish(&mut self) {
        for (package, failed, seconds) in &self.packages {
            let (action, word) = if *failed { ("fail", "FAIL") } else { ("pass", "ok  ") };
            self.emit("output", package, None, None, Some(&format!("{word}\t{package}\t{seconds:.3}s\n")));
            self.emit(action, package, None, Some(*seconds), None);
        }
    }
}

/// Now, as test2json writes it (UTC, RFC 3339 with nanoseconds).
fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (days, rest) = ((now.as_secs() / 86_400) as i64, now.as_secs() % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        now.subsec_nanos()
    )
}

#[cfg(test)]
mod json_tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        let text = now_rfc3339();
        assert_eq!(text.len(), "2026-12-01T21:00:00.000000000Z".len(), "{text}");
        assert!(text.starts_with("20") && text.ends_with('Z'), "{text}");
        assert_eq!(elapsed_of("--- PASS: TestA (1.25s)"), Some(1.25));
    }
}

/// A case's subtests, with their results, from its framed output (for the JUnit report).
pub fn subtests(case: &str, stdout: &[u8]) -> Vec<maelstrom_test_runner::session::Part> {
    use maelstrom_test_runner::ui::Status;
    let text = String::from_utf8_lossy(stdout);
    let prefix = format!("{case}/");
    text.lines()
        .filter_map(|line| match event(line) {
            Some(Event::Result { name, result }) if name.starts_with(&prefix) => {
                let status = match result {
                    "PASS" => Status::Ok,
                    "SKIP" => Status::Ignored,
                    _ => Status::Fail,
                };
                let duration = elapsed_of(line).map(std::time::Duration::from_secs_f64);
                Some(maelstrom_test_runner::session::Part { name: name.to_owned(), status, duration })
            }
            _ => None,
        })
        .collect()
}
