//! Layered configuration, as every binary reads it: the command line, then the environment
//! (`<PROGRAM>_<NAME>`, then `MAELSTROM_<NAME>`), then TOML files, then the default.
//!
//! Config files are searched in `$XDG_CONFIG_HOME` (default `~/.config`), then each directory of
//! `$XDG_CONFIG_DIRS` (default `/etc/xdg`), as `<dir>/<suffix>/config.toml`; an earlier file
//! wins over a later one. `--config-file PATH` reads only that file, `--config-file -` none.
//! Keys are the kebab-case value names; an unknown key is an error naming the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Environment(String),
    CommandLine,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Environment(name) => write!(f, "${name}"),
            Source::CommandLine => f.write_str("command line"),
        }
    }
}

/// A configuration mistake, in one line that says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: unknown key `{key}` (known keys: {known})")]
    UnknownKey { path: PathBuf, key: String, known: String },
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{key} from {origin}: {message}")]
    Value { key: String, origin: Source, message: String },
    #[error("--{option}: {message}")]
    Option { option: String, message: String },
}

/// A type a configuration value can have.
pub trait Value: Sized {
    /// From an environment variable or the command line.
    fn parse(text: &str) -> Result<Self, String>;
    /// From a config file.
    fn from_toml(value: &toml::Value) -> Result<Self, String>;
}

impl Value for String {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("expected a string, found {}", value.type_str()))
    }
}

impl Value for PathBuf {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        String::from_toml(value).map(PathBuf::from)
    }
}

impl Value for u64 {
    fn parse(text: &str) -> Result<Self, String> {
        text.trim().parse().map_err(|_| format!("expected a number, found {text:?}"))
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        value
            .as_integer()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| format!("expected a non-negative integer, found {value}"))
    }
}

impl Value for bool {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!("expected true or false, found {other:?}")),
        }
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        value.as_bool().ok_or_else(|| format!("expected true or false, found {value}"))
    }
}

impl Value for Vec<String> {
    /// Whitespace-separated, as the reference reads lists from the environment.
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.split_whitespace().map(str::to_owned).collect())
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        let list = value.as_array().ok_or_else(|| format!("expected a list of strings, found {value}"))?;
        list.iter().map(String::from_toml).collect()
    }
}

/// A size in bytes: `1000`, `"10 MB"`, `"1.5 GiB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl Value for Size {
    fn parse(text: &str) -> Result<Self, String> {
        bytesize::ByteSize::from_str(text.trim())
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("bad size {text:?}: {e}"))
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Integer(n) => u64::try_from(*n).map(Size).map_err(|_| format!("negative size {n}")),
            toml::Value::String(s) => Size::parse(s),
            other => Err(format!("expected a size (a number or a string like \"1 GB\"), found {other}")),
        }
    }
}

/// A length of time in whole seconds: `90` (a number is seconds), `"90s"`, `"15 min"`, `"2h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub u64);

impl Value for Seconds {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let scale = match unit.trim() {
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hour" | "hours" => 3600,
            _ => 0,
        };
        number
            .parse::<u64>()
            .ok()
            .filter(|_| scale > 0)
            .and_then(|n| n.checked_mul(scale))
            .map(Seconds)
            .ok_or_else(|| format!("bad length of time {text:?} (try \"90s\", \"15 min\" or \"2h\")"))
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Integer(n) => {
                u64::try_from(*n).map(Seconds).map_err(|_| format!("negative length of time {n}"))
            }
            toml::Value::String(s) => Seconds::parse(s),
            other => Err(format!("expected seconds, or a string like \"15 min\", found {other}")),
        }
    }
}

/// How much a binary logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
}

impl Value for LogLevel {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "error" => Ok(LogLevel::Error),
            "warning" => Ok(LogLevel::Warning),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            other => Err(format!("expected error, warning, info or debug, found {other:?}")),
        }
    }
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        LogLevel::parse(&String::from_toml(value)?)
    }
}

/// The sources of one binary's configuration.
#[derive(Debug)]
pub struct Config {
    env_prefixes: Vec<String>,
    files: Vec<(PathBuf, toml::Table)>,
}

impl Config {
    /// Reads the config files for `xdg_suffix` (e.g. `maelstrom/run`), refusing keys not in
    /// `known`. `config_file` is the `--config-file` option.
    pub fn load(
        xdg_suffix: &str,
        env_prefix: &str,
        config_file: Option<&str>,
        known: &[&str],
        getenv: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let paths: Vec<PathBuf> = match config_file {
            Some("-") => Vec::new(),
            Some(path) => vec![PathBuf::from(path)],
            None => search_path(xdg_suffix, getenv).into_iter().filter(|p| p.is_file()).collect(),
        };
        let mut files = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::Read { path: path.clone(), message: e.to_string() })?;
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                let (line, column) = e.span().map_or((1, 1), |span| line_column(&text, span.start));
                let message = e.message().trim().replace('\n', "; ");
                ConfigError::Parse { path: path.clone(), line, column, message }
            })?;
            if let Some(key) = table.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(ConfigError::UnknownKey { path, key: key.clone(), known: known.join(", ") });
            }
            files.push((path, table));
        }
        Ok(Self { env_prefixes: vec![format!("{env_prefix}_"), "MAELSTROM_".into()], files })
    }

    /// The value of `key`: `cli` if given, else the environment, else the first file that
    /// sets it. `None` when nothing does (the caller applies the default).
    pub fn get<T: Value>(
        &self,
        key: &str,
        cli: Option<T>,
        getenv: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<(T, Source)>, ConfigError> {
        if let Some(value) = cli {
            return Ok(Some((value, Source::CommandLine)));
        }
        let env_name = key.to_uppercase().replace('-', "_");
        for prefix in &self.env_prefixes {
            let name = format!("{prefix}{env_name}");
            if let Some(text) = getenv(&name) {
                let source = Source::Environment(name);
                return T::parse(&text)
                    .map(|v| Some((v, source.clone())))
                    .map_err(|message| ConfigError::Value { key: key.into(), origin: source, message });
            }
        }
        for (path, table) in &self.files {
            if let Some(value) = table.get(key) {
                let source = Source::File(path.clone());
                return T::from_toml(value)
                    .map(|v| Some((v, source.clone())))
                    .map_err(|message| ConfigError::Value { key: key.into(), origin: source, message });
            }
        }
        Ok(None)
    }

    /// Like [`Config::get`], falling back to `default`.
    pub fn get_or<T: Value>(
        &self,
        key: &str,
        cli: Option<T>,
        default: T,
        getenv: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(T, Source), ConfigError> {
        Ok(self.get(key, cli, getenv)?.unwrap_or((default, Source::Default)))
    }

    /// The files that were read, highest preference first.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }
}

/// Where config files for `suffix` are looked for, highest preference first.
pub fn search_path(suffix: &str, getenv: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let home = getenv("HOME").unwrap_or_default();
    let config_home =
        getenv("XDG_CONFIG_HOME").filter(|s| !s.is_empty()).unwrap_or_else(|| format!("{home}/.config"));
    let dirs = getenv("XDG_CONFIG_DIRS").filter(|s| !s.is_empty()).unwrap_or_else(|| "/etc/xdg".into());
    std::iter::once(config_home.as_str())
        .chain(dirs.split(':'))
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(suffix).join("config.toml"))
        .collect()
}

/// The cache directory for `suffix`: `$XDG_CACHE_HOME/<suffix>` (default `~/.cache`).
pub fn cache_dir(suffix: &str, getenv: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let home = getenv("HOME").unwrap_or_else(|| "/tmp".into());
    let cache_home =
        getenv("XDG_CACHE_HOME").filter(|s| !s.is_empty()).unwrap_or_else(|| format!("{home}/.cache"));
    Path::new(&cache_home).join(suffix)
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    (line, offset.min(text.len()) - line_start + 1)
}

/// The options every binary takes: which config file, printing the configuration, the log
/// level (flattened into each binary's own options).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonOptions {
    /// Read only this config file ("-" for none).
    #[arg(short = 'c', long, value_name = "PATH")]
    pub config_file: Option<String>,
    /// Print the resolved configuration and exit.
    #[arg(short = 'P', long)]
    pub print_config: bool,
    /// error, warning, info or debug [default: info]
    #[arg(short = 'L', long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

impl CommonOptions {
    /// Loads the configuration files under `maelstrom/<program>` (and the environment under
    /// `<env_prefix>_*`, then `MAELSTROM_*`), refusing keys not in `known`.
    pub fn load(&self, program: &str, env_prefix: &str, known: &[&str]) -> Result<Config, ConfigError> {
        let suffix = format!("maelstrom/{program}");
        Config::load(&suffix, env_prefix, self.config_file.as_deref(), known, &getenv)
    }

    /// The log level, from the command line or the configuration.
    pub fn log_level(&self, config: &Config) -> Result<(LogLevel, Source), ConfigError> {
        config.get_or("log-level", option(self.log_level.as_deref(), "log-level")?, LogLevel::Info, &getenv)
    }
}

/// The values of every program that runs jobs on a worker of its own: `cache-size`,
/// `inline-limit` and `slots` (1 to 1000; the CPU count by default), and what each job gets
/// unless its spec asks otherwise: `job-timeout` (1 h), at most `job-timeout-max` (6 h), and
/// `job-memory` (by default the job's share of what the worker may use).
#[derive(Debug)]
pub struct WorkerValues {
    pub cache_size: (Size, Source),
    pub inline_limit: (Size, Source),
    pub slots: (u64, Source),
    pub jobs: JobValues,
}

/// What each job gets unless its spec asks otherwise (part of [`WorkerValues`]).
#[derive(Clone, Debug)]
pub struct JobValues {
    pub timeout: (Seconds, Source),
    pub timeout_max: (Seconds, Source),
    pub memory: Option<(Size, Source)>,
}

/// The longest `job-timeout-max`: a year.
pub const TIMEOUT_LONGEST: Seconds = Seconds(365 * 24 * 60 * 60);

/// The keys of [`JobValues`], known to every program that reads [`WorkerValues`].
pub const JOB_KEYS: &[&str] = &["job-timeout", "job-timeout-max", "job-memory"];

impl Config {
    /// Resolves the [`WorkerValues`] from the command line's texts and the other sources.
    pub fn worker_values(
        &self,
        cache_size: Option<&str>,
        inline_limit: Option<&str>,
        slots: Option<u64>,
        cores: u64,
    ) -> Result<WorkerValues, ConfigError> {
        let mut values = WorkerValues {
            cache_size: self.get_or(
                "cache-size",
                option(cache_size, "cache-size")?,
                Size(1_000_000_000),
                &getenv,
            )?,
            inline_limit: self.get_or(
                "inline-limit",
                option(inline_limit, "inline-limit")?,
                Size(1_000_000),
                &getenv,
            )?,
            slots: self.get_or("slots", slots, cores, &getenv)?,
            jobs: JobValues {
                timeout: self.get_or("job-timeout", None, Seconds(60 * 60), &getenv)?,
                timeout_max: self.get_or("job-timeout-max", None, Seconds(6 * 60 * 60), &getenv)?,
                memory: self.get("job-memory", None, &getenv)?,
            },
        };
        let (slots, origin) = &values.slots;
        if !(1..=1000).contains(slots) {
            let message = format!("must be between 1 and 1000, not {slots}");
            return Err(ConfigError::Value { key: "slots".into(), origin: origin.clone(), message });
        }
        let jobs = &mut values.jobs;
        let (max, origin) = &jobs.timeout_max;
        if !(1..=TIMEOUT_LONGEST.0).contains(&max.0) {
            let message =
                format!("must be between 1 s and {} s (a year), not {} s", TIMEOUT_LONGEST.0, max.0);
            return Err(ConfigError::Value {
                key: "job-timeout-max".into(),
                origin: origin.clone(),
                message,
            });
        }
        // A maximum below the default timeout lowers the default.
        if jobs.timeout.1 == Source::Default && jobs.timeout.0 > jobs.timeout_max.0 {
            jobs.timeout.0 = jobs.timeout_max.0;
        }
        let ((timeout, origin), (max, _)) = (&jobs.timeout, &jobs.timeout_max);
        if timeout.0 == 0 || timeout > max {
            let message =
                format!("must be between 1 s and job-timeout-max ({} s), not {} s", max.0, timeout.0);
            return Err(ConfigError::Value { key: "job-timeout".into(), origin: origin.clone(), message });
        }
        if let Some((Size(bytes), origin)) = &values.jobs.memory
            && *bytes < 1 << 20
        {
            let message = format!("must be at least 1 MiB, not {bytes} bytes");
            return Err(ConfigError::Value { key: "job-memory".into(), origin: origin.clone(), message });
        }
        Ok(values)
    }
}

/// The process environment, as [`Config::load`] and [`Config::get`] read it.
pub fn getenv(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A command-line option's text as a configuration value; the error names the option.
pub fn option<T: Value>(text: Option<&str>, option: &str) -> Result<Option<T>, ConfigError> {
    text.map(|t| T::parse(t).map_err(|message| ConfigError::Option { option: option.to_owned(), message }))
        .transpose()
}

/// How a binary ends: success, or one line on stderr (`program: what went wrong: why`) and
/// exit code 2.
pub fn exit_code(
    program: &str,
    result: Result<(), impl Into<Box<dyn std::error::Error + Send + Sync>>>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let error: Box<dyn std::error::Error + Send + Sync> = error.into();
            eprintln!("{program}: {}", one_line(&*error));
            std::process::ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, skipping a cause whose text is already there (so a
/// binary can end with `program: what went wrong: why`).
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = next.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KNOWN: &[&str] = &["cache-size", "slots", "log-level", "broker"];

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn command_line_beats_environment_beats_files_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "slots = 3\ncache-size = \"2 MB\"\nlog-level = \"debug\"\n").unwrap();
        let getenv = env(&[("MAELSTROM_RUN_SLOTS", "5"), ("MAELSTROM_CACHE_SIZE", "7 kB")]);
        let config = Config::load("maelstrom/run", "MAELSTROM_RUN", file.to_str(), KNOWN, &getenv).unwrap();
        assert_eq!(config.get::<u64>("slots", Some(9), &getenv).unwrap().unwrap().0, 9);
        assert_eq!(
            config.get::<u64>("slots", None, &getenv).unwrap().unwrap(),
            (5, Source::Environment("MAELSTROM_RUN_SLOTS".into()))
        );
        assert_eq!(config.get::<Size>("cache-size", None, &getenv).unwrap().unwrap().0, Size(7000));
        assert_eq!(
            config.get::<LogLevel>("log-level", None, &getenv).unwrap().unwrap(),
            (LogLevel::Debug, Source::File(file))
        );
        assert_eq!(
            config.get_or::<String>("broker", None, "none".into(), &getenv).unwrap(),
            ("none".into(), Source::Default)
        );
    }

    #[test]
    fn worker_values_have_defaults_and_slots_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "slots = 0\n").unwrap();
        let none = Config::load("maelstrom/run", "MAELSTROM_RUN", Some("-"), KNOWN, &env(&[])).unwrap();
        let values = none.worker_values(None, Some("2 kB"), None, 4).unwrap();
        assert_eq!(
            (values.cache_size.0, values.inline_limit.0, values.slots.0),
            (Size(1_000_000_000), Size(2000), 4)
        );
        assert_eq!(values.inline_limit.1, Source::CommandLine);
        let zero = Config::load("maelstrom/run", "MAELSTROM_RUN", file.to_str(), KNOWN, &env(&[])).unwrap();
        let error = zero.worker_values(None, None, None, 4).unwrap_err().to_string();
        assert!(error.ends_with("config.toml: must be between 1 and 1000, not 0"), "{error}");
        let error = none.worker_values(Some("lots"), None, Some(1001), 4).unwrap_err().to_string();
        assert!(error.starts_with("--cache-size: "), "{error}");
    }

    #[test]
    fn job_timeouts_and_memory_are_worker_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        let known = [KNOWN, JOB_KEYS].concat();
        let load = |text: &str, vars: &[(&str, &str)]| {
            std::fs::write(&file, text).unwrap();
            Config::load("maelstrom/run", "MAELSTROM_RUN", file.to_str(), &known, &env(vars))
                .unwrap()
                .worker_values(None, None, None, 4)
        };
        let values = load("", &[]).unwrap();
        assert_eq!((values.jobs.timeout.0, values.jobs.timeout_max.0), (Seconds(3600), Seconds(21600)));
        assert_eq!(values.jobs.memory, None);
        let values = load("job-timeout = \"15 min\"\njob-memory = \"2 GiB\"\n", &[]).unwrap();
        assert_eq!(values.jobs.timeout.0, Seconds(900));
        assert_eq!(values.jobs.memory.unwrap().0, Size(2 << 30));
        let error = load("job-timeout = \"7h\"\n", &[]).unwrap_err().to_string();
        assert!(error.ends_with("must be between 1 s and job-timeout-max (21600 s), not 25200 s"), "{error}");
        let values = load("job-timeout-max = 60\n", &[]).unwrap();
        assert_eq!(values.jobs.timeout.0, Seconds(60), "a lower maximum lowers the default");
        let error = load("job-timeout-max = 0\n", &[]).unwrap_err().to_string();
        assert!(error.contains("job-timeout-max from"), "{error}");
        let error = load("job-timeout = 0\n", &[]).unwrap_err().to_string();
        assert!(error.contains("config.toml: must be between 1 s"), "{error}");
        let error = load("job-memory = 1000\n", &[]).unwrap_err().to_string();
        assert!(error.contains("must be at least 1 MiB"), "{error}");
    }

    #[test]
    fn xdg_files_earlier_win_and_dash_reads_none() {
        let home = tempfile::tempdir().unwrap();
        let dirs = tempfile::tempdir().unwrap();
        for (root, slots) in [(home.path(), 1), (dirs.path(), 2)] {
            let dir = root.join("maelstrom/run");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("config.toml"), format!("slots = {slots}\n")).unwrap();
        }
        let getenv = env(&[
            ("XDG_CONFIG_HOME", home.path().to_str().unwrap()),
            ("XDG_CONFIG_DIRS", dirs.path().to_str().unwrap()),
        ]);
        let config = Config::load("maelstrom/run", "MAELSTROM_RUN", None, KNOWN, &getenv).unwrap();
        assert_eq!(config.get::<u64>("slots", None, &getenv).unwrap().unwrap().0, 1);
        assert_eq!(config.files().count(), 2);
        let none = Config::load("maelstrom/run", "MAELSTROM_RUN", Some("-"), KNOWN, &getenv).unwrap();
        assert_eq!(none.get::<u64>("slots", None, &getenv).unwrap(), None);
    }

    #[test]
    fn mistakes_say_where() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        let getenv = env(&[("MAELSTROM_SLOTS", "many")]);
        std::fs::write(&file, "slots = 3\nbogus = 1\n").unwrap();
        let error =
            Config::load("x", "MAELSTROM_RUN", file.to_str(), KNOWN, &getenv).unwrap_err().to_string();
        assert!(
            error.ends_with("unknown key `bogus` (known keys: cache-size, slots, log-level, broker)"),
            "{error}"
        );
        std::fs::write(&file, "slots = 3\ncache-size = [\n").unwrap();
        let error =
            Config::load("x", "MAELSTROM_RUN", file.to_str(), KNOWN, &getenv).unwrap_err().to_string();
        assert_eq!(error, format!("{}:3:1: invalid array; expected `]`", file.display()));
        std::fs::write(&file, "log-level = \"loud\"\n").unwrap();
        let config = Config::load("x", "MAELSTROM_RUN", file.to_str(), KNOWN, &getenv).unwrap();
        let error = config.get::<LogLevel>("log-level", None, &getenv).unwrap_err().to_string();
        assert!(error.contains("expected error, warning, info or debug"), "{error}");
        let error = config.get::<u64>("slots", None, &getenv).unwrap_err().to_string();
        assert_eq!(error, "slots from $MAELSTROM_SLOTS: expected a number, found \"many\"");
    }

    #[test]
    fn sizes_and_lists_parse() {
        assert_eq!(Size::parse("1 GB").unwrap(), Size(1_000_000_000));
        assert_eq!(Size::parse("1 GiB").unwrap(), Size(1 << 30));
        assert_eq!(Size::parse("1000").unwrap(), Size(1000));
        assert!(Size::parse("lots").is_err());
        assert_eq!(Vec::<String>::parse(" a  b ").unwrap(), ["a", "b"]);
        assert_eq!(Seconds::parse("90").unwrap(), Seconds(90));
        assert_eq!(Seconds::parse("90s").unwrap(), Seconds(90));
        assert_eq!(Seconds::parse("15 min").unwrap(), Seconds(900));
        assert_eq!(Seconds::parse("2h").unwrap(), Seconds(7200));
        let error = Seconds::parse("soon").unwrap_err();
        assert_eq!(error, "bad length of time \"soon\" (try \"90s\", \"15 min\" or \"2h\")");
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
