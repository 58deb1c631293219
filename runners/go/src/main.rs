//! `maelstrom-go-test`: `go test`, with every test in its own container.
//!
//! It lists the packages `go test` would test (`go list`), builds each one's test binary with
//! one `go test -exec` (in parallel, as go test builds; each runs as soon as it is linked), lists
//! each binary's tests,
//! examples and fuzz targets, and runs every selected one as a job: on the embedded worker, or
//! on a cluster with `--broker`. Outcomes come from the test binary's own events
//! (`-test.v=test2json`), not from scraped text. The run itself is the runner core's; this file
//! holds what is go's.
//!
//! Exit status: 0 when every test passed (or was skipped); 1 when a test failed or a package
//! did not build; 2 when maelstrom-go-test itself could not run.

mod events;
mod go;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use maelstrom_client::spec::{LayerSpec, PrefixOptions};
use maelstrom_config::{Config, getenv};
use maelstrom_test_runner::filter::{self, Language, Selector};
use maelstrom_test_runner::run::{self, App, Build, CaseJob, Framework, Listed, RunnerOptions};
use maelstrom_test_runner::session::OutputRules;
use maelstrom_test_runner::specfile::TestSettings;

use crate::go::{Artifact, BuildFlags, Package};

const SPEC_FILE: &str = "maelstrom-go-test.toml";
const DEFAULT_SPEC: &str = include_str!("default-spec.toml");

/// What go test sends a test at its timeout, so it dumps its goroutines.
const SIGQUIT: i32 = libc::SIGQUIT;

/// How long a timed-out test has to dump its goroutines before it is killed.
const TIMEOUT_GRACE_MS: u64 = 2000;

/// Where the runner keeps its state, under the project's root.
const STATE_DIR: &str = ".maelstrom-go-test";

/// The filter language of go tests.
const LANGUAGE: Language = Language {
    simple: &[],
    compound: &[
        Selector { name: "name", min: "n" },
        Selector { name: "package_path", min: "package_p" },
        Selector { name: "package_name", min: "package_n" },
        Selector { name: "package_import_path", min: "p" },
    ],
};

const APP: App = App {
    name: "maelstrom-go-test",
    config_name: "maelstrom-go-test",
    env_prefix: "MAELSTROM_GO_TEST",
    keys: &["vet", "short", "fullpath", "extra-test-binary-args"],
};

const AFTER_HELP: &str = "Packages are named as go test takes them (./..., ./pkg/..., import paths); without one, \
the package in the current directory. go test's own flags are taken as go spells them: -run, -skip, -short, \
-count, -failfast, -timeout, -v, -list, and the build's -tags, -race, -cover, -covermode, -coverpkg, -ldflags, \
-gcflags, -trimpath, -mod, -vet.

Tests are also selected with the filter language: -i 'package_import_path.starts_with(example.com/x)', \
-x 'name.contains(Slow)'. Selectors: name, package_import_path (any prefix of package), package_path, \
package_name; matchers: equals, contains, starts_with, ends_with, matches (regex), globs.

Each test runs in a container described by maelstrom-go-test.toml at the module's root (see --init).

Exit status: 0 if every test passed; 1 if a test failed or a package did not build; 2 if maelstrom-go-test \
itself could not run.";

#[derive(Parser, Debug)]
#[command(name = "maelstrom-go-test", version, about = "Run go tests, each in its own container.", after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    runner: RunnerOptions,
    /// Packages, as go test takes them [default: the current directory's].
    #[arg(value_name = "PACKAGES")]
    packages: Vec<String>,
    /// go test -run: only tests (and subtests, after a /) matching this regular expression.
    #[arg(long = "go-run", value_name = "REGEXP", hide = true)]
    run: Option<String>,
    /// go test -skip: not the tests matching this regular expression.
    #[arg(long = "go-skip", value_name = "REGEXP", hide = true)]
    skip: Option<String>,
    /// go test -short.
    #[arg(long = "go-short", hide = true)]
    short_flag: bool,
    /// go test -v: show what passing tests print too.
    #[arg(long = "go-v", hide = true)]
    verbose: bool,
    /// go test -json: go test's event stream on stdout (the UI and summary go to stderr).
    #[arg(long = "go-json", hide = true)]
    json: bool,
    /// go test -list: print the tests matching this regular expression, without running them.
    #[arg(long = "go-list", value_name = "REGEXP", hide = true)]
    list: Option<String>,
    /// Build flags for go test, as go spells them (-tags=..., -race...).
    #[arg(long = "go-build-flag", value_name = "FLAG", hide = true)]
    build_flags: Vec<String>,
    /// Print the selected packages' tests (the reference's name for --list-tests).
    #[arg(long = "list-tests-only", hide = true)]
    list_tests_only: bool,
    /// Arguments for every test binary, after `--` (-test.parallel 4...).
    #[arg(last = true, value_name = "ARGS")]
    extra_test_binary_args: Vec<String>,
}

/// How a go test flag is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GoFlag {
    /// Becomes `--<ours>`, with its value.
    Value(&'static str),
    /// Becomes `--<ours>`.
    Switch(&'static str),
    /// A build flag with a value, passed to the build as given.
    BuildValue,
    /// A build flag without a value.
    BuildSwitch,
    /// Repeats (`-count=1`, go's way of skipping its test cache, is a no-op: nothing is cached).
    Count,
    /// A duration: every test's timeout.
    Timeout,
    /// Stop at the first failure.
    Failfast,
    /// Accepted: each test runs alone in a container of its own, so no order between tests
    /// can matter.
    Shuffle,
}

/// go test's flags, as a go developer types them, single dash.
const GO_FLAGS: &[(&str, GoFlag)] = &[
    ("run", GoFlag::Value("go-run")),
    ("skip", GoFlag::Value("go-skip")),
    ("list", GoFlag::Value("go-list")),
    ("short", GoFlag::Switch("go-short")),
    ("v", GoFlag::Switch("go-v")),
    ("json", GoFlag::Switch("go-json")),
    ("count", GoFlag::Count),
    ("timeout", GoFlag::Timeout),
    ("failfast", GoFlag::Failfast),
    ("shuffle", GoFlag::Shuffle),
    ("tags", GoFlag::BuildValue),
    ("covermode", GoFlag::BuildValue),
    ("coverpkg", GoFlag::BuildValue),
    ("ldflags", GoFlag::BuildValue),
    ("gcflags", GoFlag::BuildValue),
    ("mod", GoFlag::BuildValue),
    ("vet", GoFlag::BuildValue),
    ("race", GoFlag::BuildSwitch),
    ("cover", GoFlag::BuildSwitch),
    ("trimpath", GoFlag::BuildSwitch),
];

/// Our own one-letter options that take a value (`-r3`, `-ifoo` stay ours).
const SHORT_WITH_VALUE: &str = "bcrstixL";

/// Rewrites go test's single-dash flags into this program's options. Unknown ones are an error
/// that names them.
fn translate(args: Vec<String>) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    if let Some(program) = args.next() {
        out.push(program);
    }
    let mut expecting_value = false;
    while let Some(arg) = args.next() {
        if arg == "--" {
            out.push(arg);
            out.extend(args.by_ref());
            break;
        }
        let one_letter_ours = arg.len() == 2 && arg != "-v";
        if expecting_value || !arg.starts_with('-') || arg.starts_with("--") || one_letter_ours || arg == "-"
        {
            expecting_value = !arg.contains('=') && takes_value(&arg);
            out.push(arg);
            continue;
        }
        let (name, value) = match arg[1..].split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (&arg[1..], None),
        };
        if name == "args" {
            // go test's own way of saying: the rest is for the test binary.
            out.push("--".to_owned());
            out.extend(args.by_ref());
            break;
        }
        let Some(&(_, flag)) = GO_FLAGS.iter().find(|(n, _)| *n == name) else {
            // Our own one-letter option with its value attached (`-r3`, `-ifoo`), never a
            // `-name=value`, which is go's.
            let first = name.chars().next().unwrap_or('-');
            let attached = !arg[1..].contains('=') && !name.chars().all(|c| c.is_ascii_alphabetic());
            if SHORT_WITH_VALUE.contains(first) && attached {
                out.push(arg);
                continue;
            }
            return Err(format!(
                "-{name}: not a flag maelstrom-go-test takes (go test's it takes: {}; see --help)",
                GO_FLAGS.iter().map(|(n, _)| format!("-{n}")).collect::<Vec<_>>().join(" ")
            ));
        };
        let takes = matches!(
            flag,
            GoFlag::Value(_) | GoFlag::BuildValue | GoFlag::Count | GoFlag::Timeout | GoFlag::Shuffle
        );
        let value = match (takes, value) {
            (true, Some(value)) => Some(value),
            (true, None) => Some(args.next().ok_or_else(|| format!("-{name} needs a value"))?),
            (false, Some(value)) if value == "true" => None,
            // Off, as the default is.
            (false, Some(value)) if value == "false" => continue,
            (false, Some(value)) => return Err(format!("-{name}={value}: -{name} is true or false")),
            (false, None) => None,
        };
        match flag {
            GoFlag::Value(ours) => out.push(format!("--{ours}={}", value.unwrap_or_default())),
            GoFlag::Switch(ours) => out.push(format!("--{ours}")),
            GoFlag::BuildValue => out.push(format!("--go-build-flag=-{name}={}", value.unwrap_or_default())),
            GoFlag::BuildSwitch => out.push(format!("--go-build-flag=-{name}")),
            GoFlag::Count => {
                let count = value.unwrap_or_default();
                let n: u64 = count.parse().map_err(|_| format!("-count {count}: not a number"))?;
                if n == 0 {
                    return Err(format!("-count {count}: must be at least 1"));
                }
                out.extend(["--repeat".to_owned(), n.to_string()]);
            }
            GoFlag::Timeout => {
                let text = value.unwrap_or_default();
                let seconds = go_duration_seconds(&text).ok_or_else(|| {
                    format!("-timeout {text}: not a duration (say 30s, 10m, 1h30m; 0 for none)")
                })?;
                out.extend(["--timeout".to_owned(), seconds.to_string()]);
            }
            GoFlag::Failfast => out.extend(["--stop-after".to_owned(), "1".to_owned()]),
            GoFlag::Shuffle => {
                let text = value.unwrap_or_default();
                if !(text == "on" || text == "off" || text.parse::<i64>().is_ok()) {
                    return Err(format!("-shuffle {text}: expected off, on or a seed"));
                }
            }
        }
    }
    Ok(out)
}

/// Whether one of our own options takes the next argument as its value.
fn takes_value(arg: &str) -> bool {
    const LONG: &[&str] = &[
        "--broker",
        "--cache-size",
        "--inline-limit",
        "--slots",
        "--ui",
        "--repeat",
        "--loop",
        "--stop-after",
        "--timeout",
        "--junit",
        "--include",
        "--exclude",
        "--config-file",
        "--log-level",
        "--container-image-depot-root",
    ];
    LONG.contains(&arg) || (arg.len() == 2 && arg.starts_with('-') && SHORT_WITH_VALUE.contains(&arg[1..]))
}

/// A go duration (`1h30m`, `90s`, `1.5m`, `0`) in whole seconds, rounded up.
fn go_duration_seconds(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let mut total = 0.0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_end..];
    }
    Some(total.ceil() as u64)
}

fn main() -> ExitCode {
    // Run by go test as its -exec helper, with a test binary go just linked.
    if let Some(into) = std::env::var_os(go::EXEC_INTO) {
        let binary = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_default();
        return match go::keep_binary(Path::new(&into), &binary) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("maelstrom-go-test: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match translate(std::env::args().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("maelstrom-go-test: {e}");
            return ExitCode::from(maelstrom_test_runner::session::EXIT_ERROR as u8);
        }
    };
    let mut cli = Cli::parse_from(args);
    if cli.list.is_some() || cli.list_tests_only {
        cli.runner.list_tests = true;
    }
    run::main(&APP, &cli.runner, |config| GoTest::new(&cli, config))
}

/// go as a test framework: a module's packages, built as `go test` builds them.
struct GoTest {
    root: PathBuf,
    /// go's `GOTMPDIR`, if set.
    go_tmp_dir: Option<PathBuf>,
    packages: Vec<Package>,
    flags: BuildFlags,
    run: Option<GoPattern>,
    skip: Option<GoPattern>,
    short: bool,
    fullpath: bool,
    verbose: bool,
    json: bool,
    extra_args: Vec<String>,
    /// Every package's build, started before `go list` when nothing can narrow it, so the two
    /// overlap.
    early_build: std::cell::RefCell<Option<go::Build>>,
}

impl std::fmt::Debug for GoTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoTest")
            .field("build_flags", &self.flags.flags)
            .field("short", &self.short)
            .field("fullpath", &self.fullpath)
            .field("extra_test_binary_args", &self.extra_args)
            .finish()
    }
}

/// A `-run` or `-skip` pattern, split as go splits it: alternatives at the top level (`|`), each
/// a path of elements (`/`), each a regular expression for the test at that depth.
#[derive(Debug)]
struct GoPattern {
    text: String,
    /// Each alternative: its first element (matched against top-level tests), and the rest.
    alternatives: Vec<(regex::Regex, Vec<String>)>,
}

impl GoPattern {
    /// `None` for an empty pattern, which selects nothing out (as go takes it).
    fn new(flag: &str, text: &str) -> anyhow::Result<Option<Self>> {
        if text.is_empty() {
            return Ok(None);
        }
        let alternatives = split_go(text)
            .into_iter()
            .map(|elements| {
                let mut elements = elements.into_iter();
                let first = elements.next().unwrap_or_default();
                let regex = regex::Regex::new(&first).map_err(|e| anyhow::anyhow!("{flag} {text:?}: {e}"))?;
                Ok((regex, elements.collect()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Some(Self { text: text.to_owned(), alternatives }))
    }

    /// The alternatives whose first element matches top-level test `name`.
    fn matching<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [String]> + 'a {
        self.alternatives
            .iter()
            .filter(move |(first, _)| first.is_match(name))
            .map(|(_, rest)| rest.as_slice())
    }

    /// `-test.run` for one top-level test: `^Name$`, and what the pattern asks of its subtests.
    fn for_test(&self, name: &str) -> String {
        let own = format!("^{}$", regex::escape(name));
        let rests: Vec<&[String]> = self.matching(name).collect();
        if rests.is_empty() || rests.iter().any(|rest| rest.is_empty()) {
            return own;
        }
        rests.iter().map(|rest| format!("{own}/{}", rest.join("/"))).collect::<Vec<_>>().join("|")
    }
}

/// Splits a go test pattern as go's testing package does: alternatives at `|`, elements at
/// `/`, both outside brackets and parentheses; a backslash escapes the next character.
fn split_go(pattern: &str) -> Vec<Vec<String>> {
    let (mut alternatives, mut elements, mut current) = (Vec::new(), Vec::new(), String::new());
    let (mut brackets, mut parens) = (0usize, 0i32);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '[' => brackets += 1,
            ']' => brackets = brackets.saturating_sub(1),
            '(' if brackets == 0 => parens += 1,
            ')' if brackets == 0 => parens -= 1,
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
                continue;
            }
            '/' if brackets == 0 && parens == 0 => {
                elements.push(std::mem::take(&mut current));
                continue;
            }
            '|' if brackets == 0 && parens == 0 => {
                elements.push(std::mem::take(&mut current));
                alternatives.push(std::mem::take(&mut elements));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    elements.push(current);
    alternatives.push(elements);
    alternatives
}

impl GoTest {
    fn new(cli: &Cli, config: &Config) -> anyhow::Result<Self> {
        let flag = |set: bool| set.then_some(true);
        let short = config.get_or("short", flag(cli.short_flag), false, &getenv)?.0;
        let fullpath = config.get_or("fullpath", None, false, &getenv)?.0;
        let extra = (!cli.extra_test_binary_args.is_empty()).then(|| cli.extra_test_binary_args.clone());
        let extra_args = config.get_or("extra-test-binary-args", extra, Vec::new(), &getenv)?.0;
        let mut flags = BuildFlags { flags: cli.build_flags.clone() };
        if let Some((vet, _)) = config.get::<String>("vet", None, &getenv)?
            && !flags.flags.iter().any(|f| f.starts_with("-vet="))
        {
            flags.flags.push(format!("-vet={vet}"));
        }
        let run = match (&cli.list, &cli.run) {
            (Some(list), _) => GoPattern::new("-list", list)?,
            (None, Some(run)) => GoPattern::new("-run", run)?,
            (None, None) => None,
        };
        let skip = match &cli.skip {
            Some(skip) => GoPattern::new("-skip", skip)?,
            None => None,
        };
        let mut this = Self {
            root: PathBuf::new(),
            go_tmp_dir: None,
            packages: Vec::new(),
            flags,
            run,
            skip,
            short,
            fullpath,
            verbose: cli.verbose,
            json: cli.json,
            extra_args,
            early_build: std::cell::RefCell::new(None),
        };
        if cli.runner.common.print_config {
            return Ok(this);
        }
        let env = go::go_env()?;
        (this.root, this.go_tmp_dir) = (env.root, env.tmp_dir);
        if cli.runner.init {
            // Writing the spec file needs the project's root, nothing else.
            return Ok(this);
        }
        let patterns = if cli.packages.is_empty() { vec![".".to_owned()] } else { cli.packages.clone() };
        let runner = &cli.runner;
        let builds_everything = !(runner.init
            || runner.watch
            || runner.list_packages
            || !runner.include.is_empty()
            || !runner.exclude.is_empty());
        if builds_everything {
            let into = this.state_dir().join("cache/test-binaries");
            let build = go::Build::start(&patterns, &this.flags, &into, this.go_tmp_dir.as_deref())?;
            *this.early_build.borrow_mut() = Some(build);
        }
        this.packages = go::list_packages(&patterns, &this.flags, &this.root)?;
        Ok(this)
    }

    fn package(&self, artifact: &Artifact) -> &Package {
        &self.packages[artifact.package]
    }

    /// Whether `-run` and `-skip` let a top-level case through.
    fn runs(&self, case: &str) -> bool {
        let run = self.run.as_ref().is_none_or(|run| run.matching(case).next().is_some());
        // A -skip alternative with a subtest part skips subtests, not the whole case.
        let skipped = self.skip.as_ref().is_some_and(|skip| skip.matching(case).any(<[String]>::is_empty));
        run && !skipped
    }
}

/// What a pattern sees of a test.
struct Subject<'a> {
    package: &'a Package,
    name: Option<&'a str>,
}

impl filter::Subject for Subject<'_> {
    fn is(&self, _selector: &str) -> Option<bool> {
        Some(false)
    }

    fn value(&self, selector: &str) -> Option<Option<&str>> {
        match selector {
            "name" => self.name.map(Some),
            "package_import_path" => Some(Some(&self.package.import_path)),
            "package_path" => Some(Some(&self.package.path)),
            "package_name" => Some(Some(&self.package.name)),
            _ => Some(None),
        }
    }
}

impl Framework for GoTest {
    type Package = Package;
    type Artifact = Artifact;

    fn language(&self) -> &'static Language {
        &LANGUAGE
    }

    fn spec_file(&self) -> (PathBuf, &'static str) {
        (self.root.join(SPEC_FILE), DEFAULT_SPEC)
    }

    fn project_root(&self) -> &Path {
        &self.root
    }

    fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    fn packages(&self) -> Vec<&Package> {
        self.packages.iter().collect()
    }

    fn package_name<'a>(&self, package: &'a Package) -> &'a str {
        &package.import_path
    }

    fn subject<'a>(
        &'a self,
        package: &'a Package,
        _artifact: Option<&'a Artifact>,
        case: Option<&'a str>,
    ) -> Box<dyn filter::Subject + 'a> {
        Box::new(Subject { package, name: case })
    }

    fn build(&self, packages: &[&Package], all: bool) -> anyhow::Result<Box<dyn Build<Artifact>>> {
        // The state directory is a cache: never part of a package's files.
        let state = self.state_dir();
        std::fs::create_dir_all(&state).map_err(|e| anyhow::anyhow!("create {}: {e}", state.display()))?;
        let _ = std::fs::write(
            state.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55\n# maelstrom-go-test's caches and state.\n",
        );
        let mut build = Vec::new();
        for package in packages {
            let index = self
                .packages
                .iter()
                .position(|p| std::ptr::eq(p, *package))
                .expect("INVARIANT: the core builds packages from Framework::packages");
            // A package go cannot load is built too: go test says why, and it fails alone.
            if package.has_tests() || package.is_broken() {
                let why = package
                    .error
                    .iter()
                    .chain(&package.deps_errors)
                    .map(|e| e.err.trim())
                    .collect::<Vec<_>>();
                let why = (!why.is_empty()).then(|| why.join("\n"));
                build.push((index, package.import_path.clone(), why));
            } else {
                // As go test reports it.
                eprintln!("?   \t{}\t[no test files]", package.import_path);
            }
        }
        if build.is_empty() {
            return Ok(Box::new(go::NothingToBuild));
        }
        let early = self.early_build.borrow_mut().take();
        let mut started = match early.filter(|_| all) {
            Some(build) => build,
            None => {
                let paths: Vec<String> = build.iter().map(|(_, path, _)| path.clone()).collect();
                let into = state.join("cache/test-binaries");
                go::Build::start(&paths, &self.flags, &into, self.go_tmp_dir.as_deref())?
            }
        };
        started.expect(build);
        Ok(Box::new(started))
    }

    fn package_of(&self, artifact: &Artifact) -> Option<&Package> {
        self.packages.get(artifact.package)
    }

    fn executable<'a>(&self, artifact: &'a Artifact) -> Option<&'a Path> {
        artifact.binary.as_ref().ok().map(PathBuf::as_path)
    }

    fn list_cases(&self, artifact: &Artifact) -> anyhow::Result<Vec<Listed>> {
        match &artifact.binary {
            Ok(binary) => go::list_cases(binary, &self.package(artifact).dir),
            Err(why) => Err(anyhow::anyhow!("{why}")),
        }
    }

    fn case_wanted(&self, _artifact: &Artifact, case: &str) -> bool {
        self.runs(case)
    }

    fn artifact_key(&self, _artifact: &Artifact) -> String {
        "test".to_owned()
    }

    fn artifact_display(&self, artifact: &Artifact) -> String {
        self.package(artifact).import_path.clone()
    }

    fn case_display(&self, artifact: &Artifact, case: &str) -> String {
        format!("{} {case}", self.package(artifact).import_path)
    }

    /// What every go test gets: the project's files at their own paths (its package's testdata
    /// and golden files, and the module's, which tests reach as `../../testdata`), its
    /// package's directory as working directory, as go test runs it; the binary at `/`, and its
    /// shared libraries if it has any (cgo).
    fn case_job(&self, artifact: &Artifact, case: &str, settings: &TestSettings) -> CaseJob {
        let package = self.package(artifact);
        let Ok(binary) = &artifact.binary else { return CaseJob::default() };
        let executable = binary.display().to_string();
        // Its module's files (a go.work's modules each have their own), else the project's, or
        // just the package's own directory where it lies outside both.
        let module =
            package.module.as_ref().and_then(|m| m.dir.as_ref()).filter(|d| package.dir.starts_with(d));
        let tree = match module {
            Some(module) => module,
            None if package.dir.starts_with(&self.root) => &self.root,
            None => &package.dir,
        };
        let mut layers = vec![LayerSpec::Tree {
            tree: tree.display().to_string(),
            exclude: vec![self.state_dir().display().to_string()],
        }];
        if settings.include_shared_libraries {
            layers.push(LayerSpec::SharedLibraryDependencies {
                binaries: vec![executable.clone()],
                prefix: PrefixOptions::default(),
            });
        }
        let strip = binary.parent().map(|d| d.display().to_string());
        layers.push(LayerSpec::Paths {
            paths: vec![executable],
            prefix: PrefixOptions { strip_prefix: strip, ..PrefixOptions::default() },
        });
        let run = match &self.run {
            Some(run) => run.for_test(case),
            None => format!("^{}$", regex::escape(case)),
        };
        let mut arguments = vec![
            format!("-test.run={run}"),
            "-test.v=test2json".to_owned(),
            "-test.timeout=0".to_owned(),
            // As go test passes it: a test that exits 0 on its own has not passed.
            "-test.paniconexit0".to_owned(),
            format!("-test.short={}", self.short),
        ];
        if self.fullpath {
            // Known to go 1.21 and later only.
            arguments.push("-test.fullpath=true".to_owned());
        }
        if let Some(skip) = &self.skip {
            arguments.push(format!("-test.skip={}", skip.text));
        }
        arguments.extend(self.extra_args.iter().cloned());
        let file = binary.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        CaseJob {
            layers,
            environment: BTreeMap::new(),
            mounts: Vec::new(),
            keep_visible: Vec::new(),
            working_directory: package.dir.display().to_string(),
            program: format!("/{file}"),
            arguments,
            // As go test's own -timeout does: SIGQUIT, so the goroutines are dumped.
            timeout_warning: Some(maelstrom_client::TimeoutWarning {
                signal: SIGQUIT,
                grace_ms: TIMEOUT_GRACE_MS,
            }),
        }
    }

    /// The binary's own events decide; its framing is trimmed from what is shown.
    fn output_rules(&self) -> OutputRules {
        OutputRules {
            reporter: self.json.then(|| Box::new(events::JsonReporter::default()) as _),
            parts: Some(Box::new(|case, stdout| events::subtests(&case.name, stdout))),
            trim: Box::new(|_, stdout| events::trim(stdout)),
            judge: Some(Box::new(|case, ended, stdout| {
                events::verdict(&case.name, ended, &stdout.bytes, stdout.cut > 0)
            })),
            quiet_exit_codes: &[1],
            no_test_marker: None,
        }
    }

    fn show_passing_output(&self) -> bool {
        self.verbose
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Vec<String>, String> {
        translate(
            std::iter::once("maelstrom-go-test").chain(list.iter().copied()).map(str::to_owned).collect(),
        )
        .map(|mut a| a.split_off(1))
    }

    #[test]
    fn go_flags_become_ours() {
        assert_eq!(
            args(&["-run", "TestX/case_1", "-short", "-count=3", "./...", "-timeout", "1m30s"]).unwrap(),
            ["--go-run=TestX/case_1", "--go-short", "--repeat", "3", "./...", "--timeout", "90"]
        );
        assert_eq!(
            args(&["-tags=integration", "-race", "-failfast", "-v", "-r", "2"]).unwrap(),
            [
                "--go-build-flag=-tags=integration",
                "--go-build-flag=-race",
                "--stop-after",
                "1",
                "--go-v",
                "-r",
                "2"
            ]
        );
        assert_eq!(
            args(&["-i", "name.equals(-run)", "--", "-test.parallel", "4"]).unwrap()[1],
            "name.equals(-run)"
        );
        assert_eq!(args(&["-r3", "-run=^TestA$"]).unwrap(), ["-r3", "--go-run=^TestA$"]);
        assert_eq!(args(&["-run", "-x"]).unwrap(), ["--go-run=-x"], "a value may start with a dash");
        assert_eq!(args(&["./...", "-args", "-v"]).unwrap(), ["./...", "--", "-v"]);
    }

    #[test]
    fn unknown_go_flags_are_named() {
        let error = args(&["-bench", "."]).unwrap_err();
        assert!(error.starts_with("-bench: not a flag maelstrom-go-test takes"), "{error}");
        for go_only in ["-bench=.", "-coverprofile=c.out", "-test.run=X", "-é"] {
            assert!(args(&[go_only]).is_err(), "{go_only} is refused by name, not taken as one of ours");
        }
        assert_eq!(args(&["-count", "0"]).unwrap_err(), "-count 0: must be at least 1");
        assert_eq!(args(&["-shuffle=on", "./..."]).unwrap(), ["./..."]);
        assert!(args(&["-shuffle", "sometimes"]).unwrap_err().contains("expected off, on or a seed"));
        assert!(args(&["-timeout", "soon"]).unwrap_err().contains("not a duration"));
        assert_eq!(args(&["-short=false"]).unwrap(), Vec::<String>::new());
        assert_eq!(args(&["-short=maybe"]).unwrap_err(), "-short=maybe: -short is true or false");
    }

    #[test]
    fn durations_and_run_patterns() {
        assert_eq!(go_duration_seconds("10m"), Some(600));
        assert_eq!(go_duration_seconds("1.5s"), Some(2));
        assert_eq!(go_duration_seconds("0"), Some(0));
        assert_eq!(go_duration_seconds("10"), None);
        assert_eq!(split_go("TestX/case_1"), [vec!["TestX", "case_1"]]);
        assert_eq!(split_go("Test[/]X"), [vec!["Test[/]X"]]);
        assert_eq!(split_go("TestA|TestB/x"), [vec!["TestA"], vec!["TestB", "x"]]);
        assert_eq!(split_go("(A|B)/c\\/d"), [vec!["(A|B)", "c\\/d"]]);
        let run = GoPattern::new("-run", "TestA|TestB/x|TestB/y").unwrap().unwrap();
        assert_eq!(run.for_test("TestA"), "^TestA$");
        assert_eq!(run.for_test("TestB"), "^TestB$/x|^TestB$/y");
        assert!(GoPattern::new("-skip", "").unwrap().is_none(), "an empty pattern skips nothing");
    }
}
