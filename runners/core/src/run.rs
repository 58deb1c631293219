//! A whole test run, for every framework: the options every runner takes, start-up (the zygote,
//! then the client with its embedded worker or a broker), the spec file, the selection, listing,
//! the drive loop and the exit code. A framework (cargo, go, pytest) plugs in through
//! [`Framework`] and keeps only what is its own; its `main` parses its command line and calls
//! [`main`].
//!
//! This is the runners' shared `main`, so its errors are `anyhow` ones, each printed as one line
//! prefixed with the runner's name.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use anyhow::Context;
use maelstrom_client::client::Client;
use maelstrom_client::digests::DigestCache;
use maelstrom_client::local::LocalConfig;
use maelstrom_client::spec::{EnvironmentSpec, JobSpec, LayerSpec, MountSpec};
use maelstrom_client::{Allotment, JobCgroups, JobResult, Zygote, ZygoteConfig};
use maelstrom_config::{CommonOptions, Config, JobValues, LogLevel, Size, Source, getenv};

use crate::filter::{self, Language, Selection, Subject};
use crate::listing::ListingCache;
use crate::session::{self, Case, OutputRules, Session, SessionOptions};
use crate::specfile::{SpecFile, TestSettings, add_runner_items, default_network, etc_hosts_layer};
use crate::testdb::Estimate;
use crate::ui::UiKind;

/// How often the running tests' list is refreshed while nothing happens.
const IDLE_REFRESH: Duration = Duration::from_millis(250);

/// Slowest tests named in the summary.
const SLOWEST_SHOWN: usize = 5;

/// With `-L debug`, where a run's time goes: each phase's end, from the start, on stderr.
#[derive(Debug)]
struct Phases {
    start: std::time::Instant,
    on: bool,
}

impl Phases {
    fn mark(&self, phase: &str) {
        if self.on {
            eprintln!("phase {phase}: {:.1} ms", self.start.elapsed().as_secs_f64() * 1000.0);
        }
    }
}

/// Who is running: names for messages, config files and variables.
#[derive(Clone, Copy, Debug)]
pub struct App {
    /// As the user types it, in messages: `cargo maelstrom`.
    pub name: &'static str,
    /// The config directory under `maelstrom/`: `cargo-maelstrom`.
    pub config_name: &'static str,
    /// Variables are `<ENV_PREFIX>_<KEY>`, then `MAELSTROM_<KEY>`.
    pub env_prefix: &'static str,
    /// The framework's own config keys, besides [`COMMON_KEYS`].
    pub keys: &'static [&'static str],
}

/// The config keys of every runner.
pub const COMMON_KEYS: &[&str] = &[
    "broker",
    "credentials",
    "log-level",
    "cache-size",
    "inline-limit",
    "slots",
    "container-image-depot-root",
    "accept-invalid-remote-container-tls-certs",
    "ui",
    "repeat",
    "stop-after",
    "timeout",
    "junit",
    "job-timeout",
    "job-timeout-max",
    "job-memory",
];

/// The options every runner takes (flattened into each runner's own).
#[derive(Debug, Clone, clap::Args)]
pub struct RunnerOptions {
    #[command(flatten)]
    pub common: CommonOptions,
    /// Broker address; without one, tests run on this machine.
    #[arg(short = 'b', long, value_name = "ADDRESS")]
    pub broker: Option<String>,
    /// This client's credentials (the `client` directory `maelstrom-admin credentials` made),
    /// for a broker that has its own: the connection is then TLS, each side proving its role.
    #[arg(long, value_name = "DIR")]
    pub credentials: Option<PathBuf>,
    /// Target size of the layer cache [default: 1 GB]
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Bytes kept of each test's stdout and of its stderr [default: 1 MB]
    #[arg(long, value_name = "SIZE")]
    pub inline_limit: Option<String>,
    /// Tests run at once on this machine [default: the number of CPUs]
    #[arg(long, value_name = "N")]
    pub slots: Option<u64>,
    /// auto, simple, fancy or quiet [default: auto]
    #[arg(long, value_name = "UI")]
    pub ui: Option<String>,
    /// Run each selected test N times.
    #[arg(short = 'r', long, visible_alias = "loop", value_name = "N")]
    pub repeat: Option<u64>,
    /// Stop after N failures.
    #[arg(short = 's', long, value_name = "N")]
    pub stop_after: Option<u64>,
    /// Every test's timeout, in seconds (0: none), over the spec file's.
    #[arg(short = 't', long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// Run the tests this pattern matches (repeatable).
    #[arg(short = 'i', long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Skip the tests this pattern matches (repeatable).
    #[arg(short = 'x', long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Write the spec file with the default spec, and exit.
    #[arg(long)]
    pub init: bool,
    /// Run again when files change (not supported yet).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Build, and print the selected tests instead of running them.
    #[arg(short = 'l', long, visible_alias = "list", group = "listing")]
    pub list_tests: bool,
    /// Print the selected packages (without building).
    #[arg(long, group = "listing")]
    pub list_packages: bool,
    /// Where container images are kept (accepted for compatibility; images are not supported yet).
    #[arg(long, value_name = "PATH")]
    pub container_image_depot_root: Option<PathBuf>,
    /// Accept invalid registry certificates (accepted for compatibility).
    #[arg(long)]
    pub accept_invalid_remote_container_tls_certs: bool,
}

/// The common options, resolved against the environment and the config files.
#[derive(Debug)]
pub struct Settings {
    broker: Option<(String, Source)>,
    credentials: Option<(PathBuf, Source)>,
    log_level: (LogLevel, Source),
    cache_size: (Size, Source),
    inline_limit: (Size, Source),
    slots: (u64, Source),
    jobs: JobValues,
    ui: (UiKind, Source),
    repeat: (u64, Source),
    stop_after: Option<(u64, Source)>,
    timeout: Option<(u64, Source)>,
    junit: Option<(PathBuf, Source)>,
}

impl RunnerOptions {
    fn settings(&self, config: &Config, cores: u64) -> anyhow::Result<Settings> {
        let worker = config.worker_values(
            self.cache_size.as_deref(),
            self.inline_limit.as_deref(),
            self.slots,
            cores,
        )?;
        let (ui, source) = config.get_or("ui", self.ui.clone(), "auto".to_owned(), &getenv)?;
        let ui = (ui.parse::<UiKind>().map_err(|e| anyhow::anyhow!("ui from {source}: {e}"))?, source);
        let settings = Settings {
            broker: config.get("broker", self.broker.clone(), &getenv)?,
            credentials: config.get("credentials", self.credentials.clone(), &getenv)?,
            log_level: self.common.log_level(config)?,
            cache_size: worker.cache_size,
            inline_limit: worker.inline_limit,
            slots: worker.slots,
            jobs: worker.jobs,
            ui,
            repeat: config.get_or("repeat", self.repeat, 1, &getenv)?,
            stop_after: config.get("stop-after", self.stop_after, &getenv)?,
            timeout: config.get("timeout", self.timeout, &getenv)?,
            junit: config.get("junit", self.junit.clone(), &getenv)?,
        };
        let (repeat, source) = &settings.repeat;
        anyhow::ensure!(*repeat >= 1, "repeat from {source}: must be at least 1");
        if let Some((n, source)) = &settings.stop_after {
            anyhow::ensure!(*n >= 1, "stop-after from {source}: must be at least 1");
        }
        Ok(settings)
    }
}

/// A test case as its framework lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// Ignored by the framework (`#[ignore]`): reported, not run.
    pub ignored: bool,
}

/// What a framework adds to every one of its cases' containers, and what runs there.
#[derive(Clone, Debug, Default)]
pub struct CaseJob {
    /// Added after the directives' layers.
    pub layers: Vec<LayerSpec>,
    /// Added to the directives' environment.
    pub environment: BTreeMap<String, String>,
    /// Added after the directives' mounts (with the layers' stubs their mount points need).
    pub mounts: Vec<MountSpec>,
    /// Directories of its layers that stay visible at their own paths under a fresh tmpfs.
    pub keep_visible: Vec<String>,
    /// Unless the spec chose one.
    pub working_directory: String,
    pub program: String,
    pub arguments: Vec<String>,
    /// What the case is sent at its timeout before it is killed.
    pub timeout_warning: Option<maelstrom_client::TimeoutWarning>,
}

/// A build running: its artifacts come out as the build tool reports them.
pub trait Build<A>: Send {
    /// Runs the build to its end, handing over each artifact as soon as it is built; returns
    /// the build tool's exit code (0 when it succeeded).
    fn run(self: Box<Self>, ready: &mut dyn FnMut(A)) -> anyhow::Result<i32>;
    /// Something that stops the build from another thread (on `--stop-after`).
    fn stopper(&self) -> Box<dyn Fn() + Send>;
}

/// What differs from one test framework to another. The core runs everything else.
pub trait Framework: Debug {
    /// What is built and selected as a whole (a cargo package, a go package).
    type Package;
    /// A built test program (a cargo test binary).
    type Artifact: Send + 'static;

    /// Patterns' selectors.
    fn language(&self) -> &'static Language;
    /// The spec file: where it is (at the project's root), and the default when it is absent.
    fn spec_file(&self) -> (PathBuf, &'static str);
    /// The project's root: relative paths of layers and bind mounts start here.
    fn project_root(&self) -> &Path;
    /// Where the runner keeps its state (the test database, caches).
    fn state_dir(&self) -> PathBuf;
    /// Every package of the project.
    fn packages(&self) -> Vec<&Self::Package>;
    fn package_name<'a>(&self, package: &'a Self::Package) -> &'a str;
    /// The user's `-i` and `-x` as the patterns to select with (a framework may add its own
    /// shorthands, like cargo's `-p`).
    fn patterns(&self, include: &[String], exclude: &[String]) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        Ok((include.to_vec(), exclude.to_vec()))
    }
    /// What patterns see of a test: its package always, its artifact and its case once known.
    fn subject<'a>(
        &'a self,
        package: &'a Self::Package,
        artifact: Option<&'a Self::Artifact>,
        case: Option<&'a str>,
    ) -> Box<dyn Subject + 'a>;
    /// A listing of the framework's own the user asked for, printed without building (cargo's
    /// `--list-binaries`).
    fn listing(&self, _selection: &Selection, _packages: &[&Self::Package]) -> Option<Vec<String>> {
        None
    }
    /// `<name>` templates in the spec file's layer paths.
    fn templates(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Starts building `packages` (`all` when they are every package of the project).
    fn build(&self, packages: &[&Self::Package], all: bool)
    -> anyhow::Result<Box<dyn Build<Self::Artifact>>>;
    /// The artifact's package, found among [`Framework::packages`].
    fn package_of(&self, artifact: &Self::Artifact) -> Option<&Self::Package>;
    /// The artifact's file, whose digest keys the cached listing (`None`: none to list, say a
    /// package that failed to build; [`Framework::list_cases`] then says why).
    fn executable<'a>(&self, artifact: &'a Self::Artifact) -> Option<&'a Path>;
    /// The artifact's cases, as the framework lists them (kept by the artifact's digest, so
    /// the same whatever this run selects).
    fn list_cases(&self, artifact: &Self::Artifact) -> anyhow::Result<Vec<Listed>>;
    /// Whether this run's framework options let a case through (go's `-run`), besides the
    /// filters.
    fn case_wanted(&self, _artifact: &Self::Artifact, _case: &str) -> bool {
        true
    }
    /// The artifact's key in the test database (unique within its package).
    fn artifact_key(&self, artifact: &Self::Artifact) -> String;
    /// The artifact as shown when it fails as a whole.
    fn artifact_display(&self, artifact: &Self::Artifact) -> String;
    /// A case as shown to the user.
    fn case_display(&self, artifact: &Self::Artifact, case: &str) -> String;
    /// What the case's container gets besides the directives', and its command.
    fn case_job(&self, artifact: &Self::Artifact, case: &str, settings: &TestSettings) -> CaseJob;
    /// How a case's output and exit are read.
    fn output_rules(&self) -> OutputRules;
    /// Whether what passing tests print is shown too (`go test -v`).
    fn show_passing_output(&self) -> bool {
        false
    }
}

/// Runs a runner: resolves the options, makes the framework with `make` (from the loaded
/// configuration), and runs the tests. Every error is one line, `<name>: <what>`, and exit 2.
pub fn main<F: Framework>(
    app: &App,
    options: &RunnerOptions,
    make: impl FnOnce(&Config) -> anyhow::Result<F>,
) -> ExitCode {
    match run(app, options, make) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("{}: {}", app.name, maelstrom_config::one_line(e.as_ref()));
            ExitCode::from(session::EXIT_ERROR as u8)
        }
    }
}

fn run<F: Framework>(
    app: &App,
    options: &RunnerOptions,
    make: impl FnOnce(&Config) -> anyhow::Result<F>,
) -> anyhow::Result<i32> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let keys: Vec<&str> = COMMON_KEYS.iter().chain(app.keys).copied().collect();
    let config = options.common.load(app.config_name, app.env_prefix, &keys)?;
    let settings = options.settings(&config, cores as u64)?;
    let phases = Phases { start: std::time::Instant::now(), on: settings.log_level.0 >= LogLevel::Debug };
    let framework = make(&config)?;
    phases.mark("project (the framework's metadata)");
    if options.common.print_config {
        println!("{settings:#?}\n{framework:#?}");
        return Ok(0);
    }
    anyhow::ensure!(!options.watch, "--watch is not supported yet; run {} again instead", app.name);
    let (spec_path, default_spec) = framework.spec_file();
    if options.init {
        if spec_path.exists() {
            eprintln!("{}: {} already exists; not overwritten", app.name, spec_path.display());
            return Ok(1);
        }
        std::fs::write(&spec_path, default_spec).with_context(|| format!("write {}", spec_path.display()))?;
        println!("wrote {}", spec_path.display());
        return Ok(0);
    }
    let language = framework.language();
    // Each pattern is checked alone first, so an error's column is in the user's own text (an
    // exclude after the framework's shorthands: cargo's bare package names).
    let check = |flag: &str, patterns: &[String]| -> anyhow::Result<()> {
        for pattern in patterns {
            filter::parse(pattern, language).map_err(|e| anyhow::anyhow!("{flag} {pattern:?}: {e}"))?;
        }
        Ok(())
    };
    check("--include", &options.include)?;
    let (include, exclude) = framework.patterns(&options.include, &options.exclude)?;
    check("--exclude", &exclude)?;
    let selection = Selection::new(&include, &exclude, language).map_err(|e| anyhow::anyhow!(e))?;
    let all = framework.packages();
    let wanted: Vec<&F::Package> = all
        .iter()
        .copied()
        .filter(|p| selection.eval(&*framework.subject(p, None, None)) != Some(false))
        .collect();
    if options.list_packages {
        for package in &wanted {
            println!("{}", framework.package_name(package));
        }
        return Ok(0);
    }
    if let Some(lines) = framework.listing(&selection, &wanted) {
        for line in lines {
            println!("{line}");
        }
        return Ok(0);
    }
    phases.mark("selection");
    let mut spec = SpecFile::load(&spec_path, default_spec, language)?;
    spec.apply_templates(&framework.templates())?;
    if wanted.is_empty() {
        eprintln!("{}: no package has tests the filters select; nothing to build", app.name);
        return Ok(0);
    }
    let state_dir = framework.state_dir();
    let build = framework.build(&wanted, wanted.len() == all.len())?;
    phases.mark("spec file, build started");
    let runner = Runner {
        framework: &framework,
        selection,
        spec,
        listings: ListingCache::new(state_dir.join("cache/test-listings")),
        digests: DigestCache::open(&state_dir.join("cache/listing-digests")),
        hosts: etc_hosts_layer(&state_dir)
            .with_context(|| format!("write /etc/hosts under {}", state_dir.display()))?,
    };
    if options.list_tests {
        return runner.list(build, app.name);
    }

    let slots = settings.slots.0 as usize;
    // The zygote forks before any thread exists; everything threaded comes after.
    let allotment = Allotment::configured(slots, &settings.jobs);
    let cgroups = match JobCgroups::for_slots(slots, &allotment.share) {
        Ok(cgroups) => Some(cgroups),
        Err(why) => {
            if phases.on {
                eprintln!("{}: jobs' memory and processes are limited by rlimits only: {why}", app.name);
            }
            None
        }
    };
    let zygote = Zygote::start(ZygoteConfig { lanes: slots.min(cores), cgroups })?;
    let (events, inbox) = channel();
    let result_events = events.clone();
    let sink = Box::new(move |result: JobResult| {
        let _ = result_events.send(Event::Result(result));
    });
    let config = LocalConfig {
        cache_root: state_dir.join("cache"),
        cache_bytes_max: settings.cache_size.0.0,
        slots,
        output_bytes_max: usize::try_from(settings.inline_limit.0.0).unwrap_or(usize::MAX),
        allotment,
        project: framework.project_root().to_owned(),
    };
    let broker =
        maelstrom_client::Broker::from_settings(settings.broker.as_ref(), settings.credentials.as_ref())
            .map_err(anyhow::Error::msg)?;
    phases.mark("zygote");
    let mut client = Client::start(zygote, config, broker.as_ref(), sink).context("start the client")?;
    client.add_containers(runner.spec.containers.clone());
    phases.mark("client");
    let session_options = SessionOptions {
        repeat: NonZeroU32::new(u32::try_from(settings.repeat.0).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN),
        stop_after: settings
            .stop_after
            .and_then(|(n, _)| NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX))),
        timeout: settings.timeout.map(|(n, _)| u32::try_from(n).unwrap_or(u32::MAX)),
        ui: settings.ui.0,
        junit: settings.junit.map(|(p, _)| p),
        test_db: state_dir.join("state/test-listing.toml"),
        slowest_shown: SLOWEST_SHOWN,
        show_passing_output: framework.show_passing_output(),
    };
    let mut session = Session::new(session_options, framework.output_rules());
    let names: Vec<&str> = wanted.iter().map(|p| framework.package_name(p)).collect();
    let expected = session.db().count(&names);
    session.expect(expected);
    session.db().retain_packages(&all.iter().map(|p| framework.package_name(p)).collect::<Vec<_>>());
    let stopper = build.stopper();
    let build_events = events;
    let build_thread = std::thread::Builder::new()
        .name("build".into())
        .spawn(move || {
            let done = build.run(&mut |artifact| {
                let _ = build_events.send(Event::Artifact(artifact));
            });
            let _ = build_events.send(Event::BuildDone(done.map_err(|e| format!("{e:#}"))));
        })
        .context("start the build thread")?;
    let code = runner.drive(session, &mut client, &inbox, &*stopper, &phases);
    // The build ends with the run, and is dropped before the process exits: it holds what is
    // cleaned up after the build tool (go's work directory, which go leaves when killed).
    stopper();
    let _ = build_thread.join();
    code
}

enum Event<A> {
    Artifact(A),
    BuildDone(Result<i32, String>),
    Result(JobResult),
}

struct Runner<'f, F: Framework> {
    framework: &'f F,
    selection: Selection,
    spec: SpecFile,
    listings: ListingCache,
    digests: DigestCache,
    /// The containers' `/etc/hosts`.
    hosts: LayerSpec,
}

impl<F: Framework> Runner<'_, F> {
    /// The artifact's cases, and which of them are selected.
    fn cases(&mut self, artifact: &F::Artifact) -> anyhow::Result<(Vec<Listed>, Vec<Listed>)> {
        let framework = self.framework;
        let cases = match framework.executable(artifact) {
            Some(executable) => {
                let digest = self
                    .digests
                    .digest(executable)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", executable.display()))?;
                self.listings.get(&digest.0.hex(), || framework.list_cases(artifact))?
            }
            None => framework.list_cases(artifact)?,
        };
        let Some(package) = self.framework.package_of(artifact) else { return Ok((cases, Vec::new())) };
        let selected = cases
            .iter()
            .filter(|case| {
                framework.case_wanted(artifact, &case.name)
                    && self.selection.eval(&*framework.subject(package, Some(artifact), Some(&case.name)))
                        == Some(true)
            })
            .cloned()
            .collect();
        Ok((cases, selected))
    }

    /// `--list-tests`: builds, and prints each selected test.
    /// A package whose cases cannot be listed (one that does not build, with go) is an error
    /// of its own, as with `go test -list`: the others are listed, and the exit is 1.
    fn list(mut self, build: Box<dyn Build<F::Artifact>>, name: &str) -> anyhow::Result<i32> {
        let mut artifacts = Vec::new();
        let code = build.run(&mut |artifact| artifacts.push(artifact))?;
        if code != 0 {
            return Ok(code);
        }
        let mut code = 0;
        for artifact in artifacts {
            match self.cases(&artifact) {
                Ok((_, selected)) => {
                    for case in selected {
                        println!("{}", self.framework.case_display(&artifact, &case.name));
                    }
                }
                Err(e) => {
                    let package =
                        self.framework.package_of(&artifact).map(|p| self.framework.package_name(p));
                    eprintln!("{name}: {}{e:#}", package.map(|p| format!("{p}: ")).unwrap_or_default());
                    code = session::EXIT_FAILED;
                }
            }
        }
        let _ = self.digests.save();
        Ok(code)
    }

    fn drive(
        mut self,
        mut session: Session,
        client: &mut Client,
        inbox: &Receiver<Event<F::Artifact>>,
        stop_build: &dyn Fn(),
        phases: &Phases,
    ) -> anyhow::Result<i32> {
        let mut build: Option<Result<i32, String>> = None;
        let mut failure = None;
        loop {
            if session.should_stop() {
                // Enough failures: stop building and running.
                if build.is_none() {
                    stop_build();
                }
                break;
            }
            if build.is_some() && session.pending() == 0 {
                break;
            }
            let event = match inbox.recv_timeout(IDLE_REFRESH) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => {
                    session.refresh_running(true);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            match event {
                Event::Result(result) => session.result(result),
                Event::BuildDone(Ok(0)) => {
                    phases.mark("build done");
                    session.listing_done();
                    build = Some(Ok(0));
                }
                Event::BuildDone(Ok(code)) => {
                    failure = Some(code);
                    break;
                }
                Event::BuildDone(Err(e)) => anyhow::bail!("the build: {e}"),
                Event::Artifact(artifact) => {
                    phases.mark("an artifact built");
                    self.artifact(&artifact, &mut session, client);
                    phases.mark("its tests sent");
                }
            }
        }
        phases.mark("tests done");
        client.save();
        let _ = self.digests.save();
        let code = session.finish(failure);
        phases.mark("summary and saves");
        Ok(code)
    }

    /// Lists an artifact's cases and sends the selected ones.
    fn artifact(&mut self, artifact: &F::Artifact, session: &mut Session, client: &mut Client) {
        let framework = self.framework;
        let Some(package) = framework.package_of(artifact) else { return };
        let package_name = framework.package_name(package);
        let key = framework.artifact_key(artifact);
        let (all, cases) = match self.cases(artifact) {
            Ok(cases) => cases,
            Err(e) => {
                // One artifact that cannot be listed does not stop the others.
                let display = framework.artifact_display(artifact);
                session.error(package_name, display, format!("could not list its tests: {e:#}"));
                return;
            }
        };
        let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
        session.db().retain_cases(package_name, &key, &names);
        for listed in cases {
            let settings =
                self.spec.settings(&*framework.subject(package, Some(artifact), Some(&listed.name)));
            let case = Case {
                package: package_name.to_owned(),
                artifact: key.clone(),
                name: listed.name.clone(),
                display: framework.case_display(artifact, &listed.name),
                ignored: listed.ignored,
            };
            let mut submit = |settings: &TestSettings, timeout, estimate: Estimate| {
                let job = self.job(artifact, &listed.name, settings, timeout, estimate);
                client.run(&job).map_err(|e| e.to_string())
            };
            session.add(case, &settings, &mut submit);
        }
    }

    /// The case's job: the directives' container, plus the framework's items and `/etc/hosts`.
    fn job(
        &self,
        artifact: &F::Artifact,
        case: &str,
        settings: &TestSettings,
        timeout: Option<NonZeroU32>,
        estimate: Estimate,
    ) -> JobSpec {
        let CaseJob {
            layers,
            environment,
            mounts,
            keep_visible,
            working_directory,
            program,
            arguments,
            timeout_warning,
        } = self.framework.case_job(artifact, case, settings);
        let mut container = settings.container.clone();
        let environment = vec![EnvironmentSpec { vars: environment, extend: true }];
        add_runner_items(&mut container, layers, environment, mounts, working_directory);
        // `/etc/hosts` goes below the directives' layers, so an image's or a layer's own wins
        // (below the framework's additions at least, when the layers come from a parent).
        match (&mut container.layers, &mut container.added_layers) {
            (Some(layers), _) | (None, Some(layers)) => layers.insert(0, self.hosts.clone()),
            (None, None) => container.added_layers = Some(vec![self.hosts.clone()]),
        }
        default_network(&mut container, &self.spec.containers);
        JobSpec {
            container,
            program,
            arguments,
            timeout,
            timeout_warning,
            priority: estimate.priority,
            estimated: estimate.duration,
            keep_visible,
        }
    }
}
