//! What the user sees while tests run: a line per finished test (the reference's simple UI),
//! failures with their output, a live progress bar on a terminal, and a summary at the end.
//!
//! `--ui`: `simple` (lines, and a bar on a terminal), `fancy` (lines, a bar, and the tests
//! running now), `quiet` (a bar and the summary), `auto` (fancy on a terminal, else simple).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UiKind {
    Auto,
    Simple,
    Fancy,
    Quiet,
}

impl std::str::FromStr for UiKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(UiKind::Auto),
            "simple" => Ok(UiKind::Simple),
            "fancy" => Ok(UiKind::Fancy),
            "quiet" => Ok(UiKind::Quiet),
            other => Err(format!("unknown UI {other:?}: expected auto, simple, fancy or quiet")),
        }
    }
}

/// How a test ended, as shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Fail,
    Timeout,
    Error,
    Ignored,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Fail => "FAIL",
            Status::Timeout => "TIMEOUT",
            Status::Error => "ERR",
            Status::Ignored => "IGNORED",
        }
    }
}

/// Lines per test up to the width of the terminal, or this wide when not on one.
const WIDTH_DEFAULT: usize = 100;

/// Tests listed as running in the fancy UI.
const RUNNING_SHOWN: usize = 8;

pub struct Ui {
    kind: UiKind,
    width: usize,
    multi: Option<MultiProgress>,
    bar: Option<ProgressBar>,
    running: Option<ProgressBar>,
    started: Instant,
    /// Stderr when stdout is a framework's event stream (`go test -json`).
    to_stderr: bool,
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui").field("kind", &self.kind).finish()
    }
}

impl Ui {
    pub fn new(kind: UiKind, listing: bool, to_stderr: bool) -> Self {
        let terminal =
            if to_stderr { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
        let kind = match kind {
            UiKind::Auto if terminal && !listing => UiKind::Fancy,
            UiKind::Auto => UiKind::Simple,
            other => other,
        };
        let width = if terminal { terminal_width().unwrap_or(WIDTH_DEFAULT) } else { WIDTH_DEFAULT };
        let (multi, bar, running) = if terminal && !listing {
            let target = if to_stderr { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::stdout() };
            let multi = MultiProgress::with_draw_target(target);
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40.green/blue} {pos}/{len} tests {msg} [{elapsed}, ETA {eta}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let running = (kind == UiKind::Fancy).then(|| {
                let running = multi.add(ProgressBar::new_spinner());
                running.set_style(
                    ProgressStyle::with_template("{msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                running
            });
            (Some(multi), Some(bar), running)
        } else {
            (None, None, None)
        };
        Self { kind, width, multi, bar, running, started: Instant::now(), to_stderr }
    }

    pub fn kind(&self) -> UiKind {
        self.kind
    }

    /// Prints above the bars (or plainly, without them).
    pub fn println(&mut self, line: &str) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(line);
            }
            None if self.to_stderr => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            None => {
                let _ = writeln!(std::io::stdout(), "{line}");
            }
        }
    }

    /// How many tests the run will have (an estimate until listing is done).
    pub fn set_total(&mut self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    pub fn set_failures(&mut self, failures: u64) {
        if let Some(bar) = &self.bar {
            bar.set_message(if failures == 0 { String::new() } else { format!("({failures} failed)") });
        }
    }

    /// The tests running now, longest running first.
    pub fn set_running(&mut self, running: &[(String, Duration)]) {
        if let Some(line) = &self.running {
            let shown: Vec<String> = running
                .iter()
                .take(RUNNING_SHOWN)
                .map(|(name, elapsed)| format!("  {:>6.1}s {name}", elapsed.as_secs_f64()))
                .collect();
            line.set_message(shown.join("\n"));
        }
    }

    /// One finished test: a line `name....STATUS 0.123s`, then its output if it failed.
    pub fn finished(&mut self, name: &str, status: Status, duration: Option<Duration>, details: &[String]) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        if self.kind == UiKind::Quiet {
            return;
        }
        let tail = match duration {
            Some(d) => format!("{} {:.3}s", status.label(), d.as_secs_f64()),
            None => status.label().to_owned(),
        };
        let mut text = dotted(name, &tail, self.width);
        for detail in details {
            text.push('\n');
            text.push_str(detail);
        }
        // One print, however long the output: each redraws the bars.
        self.println(&text);
    }

    /// Clears the bars; the summary follows in plain text.
    pub fn finish(&mut self) {
        if let Some(running) = self.running.take() {
            running.finish_and_clear();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.multi = None;
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// `name`, dots, and `tail`, in `width` columns; a long name loses its start to a `<`.
pub fn dotted(name: &str, tail: &str, width: usize) -> String {
    let name_room = width.saturating_sub(tail.chars().count() + 4).max(10);
    let count = name.chars().count();
    let name: String = if count > name_room {
        std::iter::once('<').chain(name.chars().skip(count - name_room + 1)).collect()
    } else {
        name.to_owned()
    };
    let dots = width.saturating_sub(name.chars().count() + tail.chars().count()).max(1);
    format!("{name}{} {tail}", ".".repeat(dots - 1))
}

fn terminal_width() -> Option<usize> {
    let (_, columns) = console::Term::stdout().size_checked()?;
    let columns = usize::from(columns);
    (columns > 20).then_some(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_fit_the_width_and_long_names_lose_their_start() {
        assert_eq!(dotted("pkg test", "OK 0.001s", 30), "pkg test............ OK 0.001s");
        assert_eq!(dotted("pkg test", "OK 0.001s", 30).chars().count(), 30);
        let long = dotted(&"x".repeat(50), "FAIL 1.000s", 40);
        assert!(long.starts_with("<x"), "{long}");
        assert_eq!(long.chars().count(), 40);
        assert!(long.ends_with("x... FAIL 1.000s"), "{long}");
    }
}
