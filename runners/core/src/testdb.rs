//! What the last runs learned about each test: its last few durations and whether it last
//! passed. It orders the next run (new and failed tests first, then longest first) and sizes
//! the progress bar before the build has finished.
//!
//! Kept in `<state>/test-listing.toml`, by package, artifact and case. A missing or unreadable
//! file is an empty database: it is a cache of facts, never a source of truth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Durations kept per test.
const TIMINGS_KEPT: usize = 3;

const VERSION: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LastOutcome {
    Success,
    Failure,
    New,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Record {
    /// Seconds, oldest first.
    timings: Vec<f64>,
    outcome: Option<LastOutcome>,
}

type Cases = BTreeMap<String, Record>;
type Artifacts = BTreeMap<String, Cases>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    #[serde(default)]
    packages: BTreeMap<String, Artifacts>,
}

/// The database, in memory; [`TestDb::save`] writes it back.
#[derive(Debug)]
pub struct TestDb {
    path: PathBuf,
    packages: BTreeMap<String, Artifacts>,
    /// Tests with a failed copy in this run: a repeated test fails if any copy did.
    failed: std::collections::HashSet<(String, String, String)>,
}

/// Where a test stands before it runs: it decides the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// 1 for a new test or one that failed last time, else 0.
    pub priority: i8,
    /// The mean of its last durations, if it ever ran.
    pub duration: Option<Duration>,
}

impl TestDb {
    /// Opens the database at `path`, empty if there is none (or it is from another version).
    pub fn open(path: &Path) -> Self {
        let packages = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| toml::from_str::<File>(&text).ok())
            .filter(|file| file.version == VERSION)
            .map(|file| file.packages)
            .unwrap_or_default();
        Self { path: path.to_owned(), packages, failed: Default::default() }
    }

    fn record(&self, package: &str, artifact: &str, case: &str) -> Option<&Record> {
        self.packages.get(package)?.get(artifact)?.get(case)
    }

    pub fn estimate(&self, package: &str, artifact: &str, case: &str) -> Estimate {
        match self.record(package, artifact, case) {
            None => Estimate { priority: 1, duration: None },
            Some(record) => {
                let failed = !matches!(record.outcome, Some(LastOutcome::Success));
                let duration = (!record.timings.is_empty()).then(|| {
                    Duration::from_secs_f64(record.timings.iter().sum::<f64>() / record.timings.len() as f64)
                });
                Estimate { priority: i8::from(failed), duration }
            }
        }
    }

    /// How many tests the packages had last time (for a progress bar before listing ends).
    pub fn count(&self, packages: &[&str]) -> usize {
        packages
            .iter()
            .filter_map(|p| self.packages.get(*p))
            .flat_map(|a| a.values())
            .map(BTreeMap::len)
            .sum()
    }

    /// Records a run of a test: any failure among repeated runs makes it failed.
    pub fn update(
        &mut self,
        package: &str,
        artifact: &str,
        case: &str,
        duration: Option<Duration>,
        passed: bool,
    ) {
        let record = self
            .packages
            .entry(package.to_owned())
            .or_default()
            .entry(artifact.to_owned())
            .or_default()
            .entry(case.to_owned())
            .or_default();
        if let Some(duration) = duration {
            record.timings.push(duration.as_secs_f64());
            let excess = record.timings.len().saturating_sub(TIMINGS_KEPT);
            record.timings.drain(..excess);
        }
        let key = (package.to_owned(), artifact.to_owned(), case.to_owned());
        if !passed {
            self.failed.insert(key.clone());
        }
        record.outcome =
            Some(if self.failed.contains(&key) { LastOutcome::Failure } else { LastOutcome::Success });
    }

    /// Forgets what is gone: packages no longer in the workspace, and artifacts of a package
    /// that were listed afresh without some of their cases.
    pub fn retain_packages(&mut self, packages: &[&str]) {
        self.packages.retain(|p, _| packages.contains(&p.as_str()));
    }

    /// Keeps only `cases` of an artifact (after it was listed).
    pub fn retain_cases(&mut self, package: &str, artifact: &str, cases: &[&str]) {
        if let Some(known) = self.packages.get_mut(package).and_then(|a| a.get_mut(artifact)) {
            known.retain(|c, _| cases.contains(&c.as_str()));
        }
    }

    /// Writes the database back (atomically: a crash leaves the old one).
    pub fn save(&self) -> std::io::Result<()> {
        let file = File { version: VERSION, packages: self.packages.clone() };
        let text = toml::to_string(&file).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temp = self.path.with_extension(format!("toml.{}", std::process::id()));
        std::fs::write(&temp, text)?;
        std::fs::rename(&temp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_and_failed_tests_come_first_and_durations_average_the_last_three() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/test-listing.toml");
        let mut db = TestDb::open(&path);
        assert_eq!(db.estimate("p", "a(test)", "t"), Estimate { priority: 1, duration: None });
        for seconds in [10.0, 1.0, 2.0, 3.0] {
            db.update("p", "a(test)", "t", Some(Duration::from_secs_f64(seconds)), true);
        }
        db.update("p", "a(test)", "bad", Some(Duration::from_secs(1)), false);
        db.save().unwrap();
        let db = TestDb::open(&path);
        assert_eq!(
            db.estimate("p", "a(test)", "t"),
            Estimate { priority: 0, duration: Some(Duration::from_secs(2)) }
        );
        assert_eq!(db.estimate("p", "a(test)", "bad").priority, 1);
        assert_eq!(db.count(&["p", "q"]), 2);
    }

    #[test]
    fn a_repeated_test_fails_if_any_copy_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = TestDb::open(&dir.path().join("db.toml"));
        db.update("p", "a", "t", None, true);
        db.update("p", "a", "t", None, false);
        db.update("p", "a", "t", None, true);
        assert_eq!(db.estimate("p", "a", "t").priority, 1);
        db.save().unwrap();
        let mut next = TestDb::open(&dir.path().join("db.toml"));
        next.update("p", "a", "t", None, true);
        assert_eq!(next.estimate("p", "a", "t").priority, 0, "a new run starts clean");
    }

    #[test]
    fn what_is_gone_is_forgotten_and_junk_is_an_empty_db() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.toml");
        std::fs::write(&path, "not = [toml").unwrap();
        let mut db = TestDb::open(&path);
        assert_eq!(db.count(&["p"]), 0);
        db.update("p", "a", "t1", None, true);
        db.update("p", "a", "t2", None, true);
        db.update("q", "a", "t", None, true);
        db.retain_cases("p", "a", &["t2"]);
        db.retain_packages(&["p"]);
        assert_eq!(db.count(&["p", "q"]), 1);
    }
}
