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

/// The verdict on top-level case `case` from the binary's stdout, knowing how it exited.
pub fn verdict(case: &str, ended: Ended, stdout: &[u8]) -> Verdict {
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
        (_, Ended::Signaled(signal)) => Verdict::Failed(vec![format!("killed by signal {signal}")]),
        (None, Ended::Exited(0)) if text.contains("testing: warning: no tests to run") => Verdict::Failed(
            vec![format!("the binary ran no test: do its extra arguments filter {case} out?")],
        ),
        // Passed, its result line past what was kept of a long output (thousands of subtests).
        (None, Ended::Exited(0)) => Verdict::Passed,
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
        assert_eq!(verdict("TestA", Ended::Exited(0), &pass), Verdict::Passed);
        // A test that prints a fake result line is not fooled by it: only framed lines count.
        let fake = b"=== RUN   TestA\n--- PASS: TestA (0.00s)\n".to_vec();
        assert!(matches!(verdict("TestA", Ended::Exited(1), &fake), Verdict::Failed(_)));
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
            verdict("TestSub", Ended::Exited(1), &out),
            Verdict::Failed(vec!["--- FAIL: TestSub/bad".into()])
        );
        assert!(trim(&out).contains("    x_test.go:9: the bad subtest fails\n--- FAIL: TestSub/bad (0.00s)"));
        assert!(!trim(&out).contains("=== RUN"));

        let skip =
            framed(&["=== RUN   TestS", "    s_test.go:3: not today", "--- SKIP: TestS (0.00s)", "PASS"]);
        assert_eq!(
            verdict("TestS", Ended::Exited(0), &skip),
            Verdict::Skipped(Some("skipped: s_test.go:3: not today".into()))
        );
    }

    #[test]
    fn a_passing_binary_whose_output_was_cut_passed_unless_it_ran_nothing() {
        let cut = framed(&["=== RUN   TestMany", "=== RUN   TestMany/1", "--- PASS: TestMany/1 (0.00s)"]);
        assert_eq!(verdict("TestMany", Ended::Exited(0), &cut), Verdict::Passed);
        let none = b"testing: warning: no tests to run\nPASS\n".to_vec();
        assert!(matches!(verdict("TestMany", Ended::Exited(0), &none), Verdict::Failed(_)));
    }

    #[test]
    fn a_binary_that_ends_without_the_result_crashed() {
        let out = framed(&["=== RUN   TestExit"]);
        let Verdict::Failed(why) = verdict("TestExit", Ended::Exited(3), &out) else { panic!() };
        assert_eq!(why, ["the test binary crashed before TestExit finished"]);
        let Verdict::Failed(why) = verdict("TestExit", Ended::Signaled(9), &out) else { panic!() };
        assert_eq!(why, ["killed by signal 9"]);
    }
}
