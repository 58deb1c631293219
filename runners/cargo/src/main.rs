//! `cargo maelstrom`: `cargo test`, with every test in its own container.
//!
//! It builds the workspace's test binaries with cargo, lists each binary's tests (a listing is
//! kept by the binary's digest), and runs every selected test as one job: on the embedded
//! worker, or on a cluster with `--broker`. Tests start as soon as their binary is linked.
//!
//! Exit status: 0 when every test passed (or was ignored); 1 when a test failed; cargo's own
//! code when the build failed; 2 when cargo maelstrom itself could not run.

mod cargo;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use maelstrom_client::client::Client;
use maelstrom_client::digests::DigestCache;
use maelstrom_client::local::LocalConfig;
use maelstrom_client::spec::{ContainerSpec, EnvironmentSpec, JobSpec, LayerSpec, PrefixOptions};
use maelstrom_client::{JobResult, Zygote, ZygoteConfig};
use maelstrom_config::{CommonOptions, LogLevel, Size, Source, getenv};
use maelstrom_test_runner::filter::{self, Language, Selection};
use maelstrom_test_runner::session::{self, Case, Session, SessionOptions};
use maelstrom_test_runner::specfile::{SpecFile, TestSettings, add_runner_items, etc_hosts_layer};
use maelstrom_test_runner::ui::UiKind;

use crate::cargo::{Artifact, Build, CargoOptions, Kind, Listing, ListingCache, Metadata, Package};

const SPEC_FILE: &str = "cargo-maelstrom.toml";
const DEFAULT_SPEC: &str = include_str!("default-spec.toml");

/// The filter language of cargo tests.
const LANGUAGE: Language = filter::CARGO;

const KEYS: &[&str] = &[
    "broker",
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
    "features",
    "all-features",
    "no-default-features",
    "profile",
    "target",
    "target-dir",
    "manifest-path",
    "frozen",
    "locked",
    "offline",
    "extra-test-binary-args",
];

const AFTER_HELP: &str = "Tests are selected with the filter language: tests matching any --include (all, without \
one) and no --exclude. For example: -i 'package.equals(foo)', -x 'name.contains(slow)', -i 'test.equals(integration) \
& name.starts_with(net::)'. Operators: & | ! - and parentheses; selectors: name, package, library, binary, test, \
benchmark, example; matchers: equals, contains, starts_with, ends_with, matches (regex), globs.

Each test runs in a container described by cargo-maelstrom.toml in the workspace root (see --init).

Configuration values come, in order of preference, from the command line, from the environment \
(CARGO_MAELSTROM_<NAME>, then MAELSTROM_<NAME>), and from TOML files \
($XDG_CONFIG_HOME/maelstrom/cargo-maelstrom/config.toml, ...).

Exit status: 0 if every test passed; 1 if a test failed; cargo's exit code if the build failed; 2 if cargo maelstrom \
itself could not run.";

#[derive(Parser, Debug)]
#[command(name = "cargo-maelstrom", bin_name = "cargo maelstrom", version, about = "Run cargo tests, each in its own container.", after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    common: CommonOptions,
    /// Broker address; without one, tests run on this machine.
    #[arg(short = 'b', long, value_name = "ADDRESS")]
    broker: Option<String>,
    /// Target size of the layer cache [default: 1 GB]
    #[arg(long, value_name = "SIZE")]
    cache_size: Option<String>,
    /// Bytes kept of each test's stdout and of its stderr [default: 1 MB]
    #[arg(long, value_name = "SIZE")]
    inline_limit: Option<String>,
    /// Tests run at once on this machine [default: the number of CPUs]
    #[arg(long, value_name = "N")]
    slots: Option<u64>,
    /// auto, simple, fancy or quiet [default: auto]
    #[arg(long, value_name = "UI")]
    ui: Option<String>,
    /// Run each selected test N times.
    #[arg(short = 'r', long, visible_alias = "loop", value_name = "N")]
    repeat: Option<u64>,
    /// Stop after N failures.
    #[arg(short = 's', long, value_name = "N")]
    stop_after: Option<u64>,
    /// Every test's timeout, in seconds (0: none), over the spec file's.
    #[arg(short = 't', long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "PATH")]
    junit: Option<PathBuf>,
    /// Run the tests this pattern matches (repeatable).
    #[arg(short = 'i', long, value_name = "PATTERN")]
    include: Vec<String>,
    /// Skip the tests this pattern matches (repeatable); a workspace package's name excludes it.
    #[arg(short = 'x', long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Only this package's tests (repeatable): the same as -i 'package.equals(NAME)'.
    #[arg(short = 'p', long, value_name = "NAME")]
    package: Vec<String>,
    /// Every package of the workspace (the default).
    #[arg(long)]
    workspace: bool,
    /// Write cargo-maelstrom.toml with the default spec, and exit.
    #[arg(long)]
    init: bool,
    /// Run again when files change (not supported yet).
    #[arg(short = 'w', long)]
    watch: bool,
    /// Build, and print the selected tests instead of running them.
    #[arg(short = 'l', long, visible_alias = "list", group = "listing")]
    list_tests: bool,
    /// Print the selected test binaries (without building).
    #[arg(long, group = "listing")]
    list_binaries: bool,
    /// Print the selected packages (without building).
    #[arg(long, group = "listing")]
    list_packages: bool,
    /// Features to build with (comma-separated).
    #[arg(short = 'F', long, value_name = "FEATURES")]
    features: Option<String>,
    #[arg(long)]
    all_features: bool,
    #[arg(long)]
    no_default_features: bool,
    /// Build with this cargo profile.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
    #[arg(long, value_name = "TRIPLE")]
    target: Option<String>,
    #[arg(long, value_name = "PATH")]
    target_dir: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    manifest_path: Option<PathBuf>,
    #[arg(long)]
    frozen: bool,
    #[arg(long)]
    locked: bool,
    #[arg(long)]
    offline: bool,
    /// Where container images are kept (accepted for compatibility; images are not supported yet).
    #[arg(long, value_name = "PATH")]
    container_image_depot_root: Option<PathBuf>,
    /// Accept invalid registry certificates (accepted for compatibility).
    #[arg(long)]
    accept_invalid_remote_container_tls_certs: bool,
    /// Arguments for every test binary, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    extra_test_binary_args: Vec<String>,
}

#[derive(Debug)]
#[allow(dead_code, reason = "read through Debug by --print-config")]
struct Settings {
    broker: Option<(String, Source)>,
    log_level: (LogLevel, Source),
    cache_size: (Size, Source),
    inline_limit: (Size, Source),
    slots: (u64, Source),
    ui: (String, Source),
    repeat: (u64, Source),
    stop_after: Option<(u64, Source)>,
    timeout: Option<(u64, Source)>,
    junit: Option<(PathBuf, Source)>,
    extra_test_binary_args: (Vec<String>, Source),
    cargo: CargoOptions,
}

fn flag(set: bool) -> Option<bool> {
    set.then_some(true)
}

fn settings(cli: &Cli, cores: u64) -> anyhow::Result<Settings> {
    let config = cli.common.load("cargo-maelstrom", "CARGO_MAELSTROM", KEYS)?;
    let get_bool = |key: &str, cli: bool| -> anyhow::Result<bool> {
        Ok(config.get_or(key, flag(cli), false, &getenv)?.0)
    };
    let cargo = CargoOptions {
        features: config.get("features", cli.features.clone(), &getenv)?.map(|v| v.0),
        all_features: get_bool("all-features", cli.all_features)?,
        no_default_features: get_bool("no-default-features", cli.no_default_features)?,
        profile: config.get("profile", cli.profile.clone(), &getenv)?.map(|v| v.0),
        release: cli.release,
        target: config.get("target", cli.target.clone(), &getenv)?.map(|v| v.0),
        target_dir: config.get("target-dir", cli.target_dir.clone(), &getenv)?.map(|v| v.0),
        manifest_path: config.get("manifest-path", cli.manifest_path.clone(), &getenv)?.map(|v| v.0),
        frozen: get_bool("frozen", cli.frozen)?,
        locked: get_bool("locked", cli.locked)?,
        offline: get_bool("offline", cli.offline)?,
    };
    let extra = (!cli.extra_test_binary_args.is_empty()).then(|| cli.extra_test_binary_args.clone());
    let worker =
        config.worker_values(cli.cache_size.as_deref(), cli.inline_limit.as_deref(), cli.slots, cores)?;
    let settings = Settings {
        broker: config.get("broker", cli.broker.clone(), &getenv)?,
        log_level: cli.common.log_level(&config)?,
        cache_size: worker.cache_size,
        inline_limit: worker.inline_limit,
        slots: worker.slots,
        ui: config.get_or("ui", cli.ui.clone(), "auto".to_owned(), &getenv)?,
        repeat: config.get_or("repeat", cli.repeat, 1, &getenv)?,
        stop_after: config.get("stop-after", cli.stop_after, &getenv)?,
        timeout: config.get("timeout", cli.timeout, &getenv)?,
        junit: config.get("junit", cli.junit.clone(), &getenv)?,
        extra_test_binary_args: config.get_or("extra-test-binary-args", extra, Vec::new(), &getenv)?,
        cargo,
    };
    let (repeat, source) = &settings.repeat;
    anyhow::ensure!(*repeat >= 1, "repeat from {source}: must be at least 1");
    if let Some((n, source)) = &settings.stop_after {
        anyhow::ensure!(*n >= 1, "stop-after from {source}: must be at least 1");
    }
    settings.ui.0.parse::<UiKind>().map_err(|e| anyhow::anyhow!("ui from {}: {e}", settings.ui.1))?;
    Ok(settings)
}

fn main() -> ExitCode {
    // `cargo maelstrom ...` runs `cargo-maelstrom maelstrom ...`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "maelstrom") {
        args.remove(1);
    }
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("cargo maelstrom: {}", maelstrom_config::one_line(e.as_ref()));
            ExitCode::from(session::EXIT_ERROR as u8)
        }
    }
}

/// What a pattern sees of a test: a package always, the rest once known.
struct Subject<'a> {
    package: &'a str,
    kind: Option<Kind>,
    target: Option<&'a str>,
    name: Option<&'a str>,
}

impl filter::Subject for Subject<'_> {
    fn is(&self, selector: &str) -> Option<bool> {
        self.kind.map(|k| k.selector() == selector)
    }

    fn value(&self, selector: &str) -> Option<Option<&str>> {
        match selector {
            "package" => Some(Some(self.package)),
            "name" => self.name.map(Some),
            kind => self.kind.map(|k| if k.selector() == kind { self.target } else { None }),
        }
    }
}

/// The selection from -i, -x and -p: tests matching an include (and one of the `-p` packages),
/// and no exclude. A bare package name given to -x excludes that package (as
/// `cargo test --workspace --exclude NAME` does).
fn selection(cli: &Cli, packages: &[&Package]) -> anyhow::Result<Selection> {
    // Each pattern is checked alone first, so an error's column is in the user's own text.
    for pattern in &cli.include {
        filter::parse(pattern, &LANGUAGE).map_err(|e| anyhow::anyhow!("--include {pattern:?}: {e}"))?;
    }
    // -p narrows whatever the includes select to its packages.
    let include: Vec<String> = if cli.package.is_empty() {
        cli.include.clone()
    } else {
        let packages: Vec<String> = cli.package.iter().map(|p| format!("package.equals({p})")).collect();
        let packages = packages.join(" | ");
        if cli.include.is_empty() {
            vec![packages]
        } else {
            cli.include.iter().map(|i| format!("({i}) & ({packages})")).collect()
        }
    };
    let exclude: Vec<String> = cli
        .exclude
        .iter()
        .map(|x| {
            let is_package = packages.iter().any(|p| p.name == *x);
            if is_package && filter::parse(x, &LANGUAGE).is_err() {
                format!("package.equals({x})")
            } else {
                x.clone()
            }
        })
        .collect();
    Selection::new(&include, &exclude, &LANGUAGE).map_err(|e| anyhow::anyhow!(e))
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = settings(&cli, cores as u64)?;
    if cli.common.print_config {
        println!("{settings:#?}");
        return Ok(0);
    }
    anyhow::ensure!(!cli.watch, "--watch is not supported yet; run cargo maelstrom again instead");
    let metadata = cargo::metadata(&settings.cargo)?;
    let spec_path = metadata.workspace_root.join(SPEC_FILE);
    if cli.init {
        if spec_path.exists() {
            eprintln!("cargo maelstrom: {} already exists; not overwritten", spec_path.display());
            return Ok(1);
        }
        std::fs::write(&spec_path, DEFAULT_SPEC).with_context(|| format!("write {}", spec_path.display()))?;
        println!("wrote {}", spec_path.display());
        return Ok(0);
    }
    let members = metadata.members();
    if let Some(unknown) = cli.package.iter().find(|p| !members.iter().any(|m| m.name == **p)) {
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        anyhow::bail!("-p {unknown}: no such package in the workspace (it has {})", names.join(", "));
    }
    let selection = selection(&cli, &members)?;
    let wanted: Vec<&Package> = members
        .iter()
        .copied()
        .filter(|p| {
            selection.eval(&Subject { package: &p.name, kind: None, target: None, name: None }) != Some(false)
        })
        .collect();
    if cli.list_packages {
        for package in &wanted {
            println!("{}", package.name);
        }
        return Ok(0);
    }
    if cli.list_binaries {
        for package in &wanted {
            for target in package.targets.iter().filter(|t| t.test) {
                let Some(kind) = Kind::from_cargo(&target.kind) else { continue };
                let subject = Subject {
                    package: &package.name,
                    kind: Some(kind),
                    target: Some(&target.name),
                    name: None,
                };
                if selection.eval(&subject) != Some(false) {
                    match display_target(package, &target.name) {
                        "" => println!("{} ({})", package.name, kind.selector()),
                        target => println!("{} {target} ({})", package.name, kind.selector()),
                    }
                }
            }
        }
        return Ok(0);
    }
    let mut spec = SpecFile::load(&spec_path, DEFAULT_SPEC, &LANGUAGE)?;
    // cargo takes a relative --target-dir from the current directory.
    let target_dir = match &settings.cargo.target_dir {
        Some(dir) => std::path::absolute(dir).with_context(|| format!("--target-dir {}", dir.display()))?,
        None => metadata.target_directory.clone(),
    };
    spec.apply_templates(&[("build-dir", build_dir(&target_dir, &settings.cargo).display().to_string())])?;
    let state_dir = target_dir.join("maelstrom");
    let packages: Vec<(&str, &str)> = wanted.iter().map(|p| (p.name.as_str(), p.version.as_str())).collect();
    let whole_workspace = wanted.len() == members.len();
    let runner = Runner {
        metadata: &metadata,
        selection,
        spec,
        target_dir: target_dir.clone(),
        extra_args: settings.extra_test_binary_args.0.clone(),
        listings: ListingCache::new(state_dir.join("cache/test-listings")),
        digests: DigestCache::open(&state_dir.join("cache/listing-digests")),
        hosts: etc_hosts_layer(&state_dir)
            .with_context(|| format!("write /etc/hosts under {}", state_dir.display()))?,
    };
    if wanted.is_empty() {
        eprintln!("cargo maelstrom: no package has tests the filters select; nothing to build");
        return Ok(0);
    }
    let build = Build::start(&settings.cargo, (!whole_workspace).then_some(&packages[..]))?;
    if cli.list_tests {
        return runner.list(build);
    }
    let slots = settings.slots.0 as usize;
    // The zygote forks before any thread exists; everything threaded comes after.
    let zygote = Zygote::start(ZygoteConfig { lanes: slots.min(cores) })?;
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
        project: metadata.workspace_root.clone(),
    };
    let broker = settings.broker.as_ref().map(|(b, _)| b.as_str());
    let mut client = Client::start(zygote, config, broker, sink).context("start the client")?;
    client.add_containers(runner.spec.containers.clone());
    let options = SessionOptions {
        repeat: NonZeroU32::new(u32::try_from(settings.repeat.0).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN),
        stop_after: settings
            .stop_after
            .and_then(|(n, _)| NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX))),
        timeout: settings.timeout.map(|(n, _)| u32::try_from(n).unwrap_or(u32::MAX)),
        ui: settings.ui.0.parse().unwrap_or(UiKind::Auto),
        junit: settings.junit.map(|(p, _)| p),
        test_db: state_dir.join("state/test-listing.toml"),
        slowest_shown: 5,
    };
    let mut session = Session::new(options, Box::new(|case, stdout| trim_libtest_output(&case.name, stdout)));
    session.set_no_test_marker("\nrunning 0 tests\n");
    let names: Vec<&str> = wanted.iter().map(|p| p.name.as_str()).collect();
    let expected = session.db().count(&names);
    session.expect(expected);
    session.db().retain_packages(&members.iter().map(|p| p.name.as_str()).collect::<Vec<_>>());
    let stopper = build.stopper();
    let build_events = events;
    std::thread::Builder::new()
        .name("build".into())
        .spawn(move || {
            let done = build.run(&mut |artifact| {
                let _ = build_events.send(Event::Artifact(artifact));
            });
            let _ = build_events.send(Event::BuildDone(done.map_err(|e| e.to_string())));
        })
        .context("start the build thread")?;
    runner.drive(session, &mut client, &inbox, &stopper)
}

enum Event {
    Artifact(Artifact),
    BuildDone(Result<i32, String>),
    Result(JobResult),
}

struct Runner<'a> {
    metadata: &'a Metadata,
    selection: Selection,
    spec: SpecFile,
    target_dir: PathBuf,
    extra_args: Vec<String>,
    listings: ListingCache,
    digests: DigestCache,
    /// The containers' `/etc/hosts`.
    hosts: LayerSpec,
}

impl Runner<'_> {
    fn package(&self, id: &str) -> Option<&Package> {
        self.metadata.packages.iter().find(|p| p.id == id)
    }

    /// The artifact's cases (with whether each is ignored), and which of them are selected.
    fn cases(&mut self, artifact: &Artifact) -> anyhow::Result<(Listing, Listing)> {
        let digest = self
            .digests
            .digest(&artifact.executable)
            .map_err(|e| anyhow::anyhow!("{}: {e}", artifact.executable.display()))?
            .0
            .hex();
        let executable = artifact.executable.clone();
        let cases = self.listings.get(&digest, || cargo::list_tests(&executable))?;
        let Some(package) = self.package(&artifact.package_id) else { return Ok((cases, Vec::new())) };
        let selected = cases
            .iter()
            .filter(|(name, _)| {
                let subject = Subject {
                    package: &package.name,
                    kind: Some(artifact.kind),
                    target: Some(&artifact.target),
                    name: Some(name),
                };
                self.selection.eval(&subject) == Some(true)
            })
            .cloned()
            .collect();
        Ok((cases, selected))
    }

    /// `--list-tests`: builds, and prints each selected test.
    fn list(mut self, build: Build) -> anyhow::Result<i32> {
        let mut artifacts = Vec::new();
        let code = build.run(&mut |artifact| artifacts.push(artifact))?;
        if code != 0 {
            return Ok(code);
        }
        for artifact in artifacts {
            let Some(package) = self.package(&artifact.package_id).cloned() else { continue };
            for (name, _) in self.cases(&artifact)?.1 {
                println!("{}", display(&package, &artifact.target, &name));
            }
        }
        self.digests.save().ok();
        Ok(0)
    }

    fn drive(
        mut self,
        mut session: Session,
        client: &mut Client,
        inbox: &std::sync::mpsc::Receiver<Event>,
        stopper: &cargo::Stopper,
    ) -> anyhow::Result<i32> {
        let mut build: Option<Result<i32, String>> = None;
        let mut failure = None;
        loop {
            if session.should_stop() {
                // Enough failures: stop building and running.
                if build.is_none() {
                    stopper.stop();
                }
                break;
            }
            if build.is_some() && session.pending() == 0 {
                break;
            }
            let event = match inbox.recv_timeout(Duration::from_millis(250)) {
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
                    session.listing_done();
                    build = Some(Ok(0));
                }
                Event::BuildDone(Ok(code)) => {
                    failure = Some(code);
                    break;
                }
                Event::BuildDone(Err(e)) => anyhow::bail!("the build: {e}"),
                Event::Artifact(artifact) => self.artifact(&artifact, &mut session, client),
            }
        }
        client.save();
        let _ = self.digests.save();
        Ok(session.finish(failure))
    }

    /// Lists an artifact's tests and sends the selected ones.
    fn artifact(&mut self, artifact: &Artifact, session: &mut Session, client: &mut Client) {
        let Some(package) = self.package(&artifact.package_id).cloned() else { return };
        let artifact_key = format!("{}({})", artifact.target, artifact.kind.selector());
        let (all, cases) = match self.cases(artifact) {
            Ok(cases) => cases,
            Err(e) => {
                // One binary that cannot be listed does not stop the others.
                let display = format!("{} {}({})", package.name, artifact.target, artifact.kind.selector());
                session.error(&package.name, display, format!("could not list its tests: {e}"));
                return;
            }
        };
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        session.db().retain_cases(&package.name, &artifact_key, &names);
        for (name, ignored) in cases {
            let subject = Subject {
                package: &package.name,
                kind: Some(artifact.kind),
                target: Some(&artifact.target),
                name: Some(&name),
            };
            let settings = self.spec.settings(&subject);
            let case = Case {
                package: package.name.clone(),
                artifact: artifact_key.clone(),
                name: name.clone(),
                display: display(&package, &artifact.target, &name),
                ignored,
            };
            let mut submit =
                |settings: &TestSettings, timeout, estimate: maelstrom_test_runner::testdb::Estimate| {
                    let job = JobSpec {
                        container: self.container(settings, &package, artifact),
                        program: format!("/{}", file_name(&artifact.executable)),
                        arguments: self.arguments(&name),
                        timeout,
                        priority: estimate.priority,
                        estimated: estimate.duration,
                    };
                    client.run(&job).map_err(|e| e.to_string())
                };
            session.add(case, &settings, &mut submit);
        }
    }

    fn arguments(&self, case: &str) -> Vec<String> {
        let mut arguments = vec!["--exact".to_owned(), "--nocapture".to_owned()];
        arguments.extend(self.extra_args.iter().cloned());
        arguments.push(case.to_owned());
        arguments
    }

    /// The directives' container plus what every cargo test gets: its package's files (with
    /// the package as working directory), its shared libraries, the binary at `/`, and the
    /// variables cargo sets for tests.
    fn container(&self, settings: &TestSettings, package: &Package, artifact: &Artifact) -> ContainerSpec {
        let mut container = settings.container.clone();
        let executable = artifact.executable.display().to_string();
        let mut layers = vec![
            self.hosts.clone(),
            LayerSpec::Tree {
                tree: package.dir().display().to_string(),
                exclude: vec![self.target_dir.display().to_string()],
            },
        ];
        if settings.include_shared_libraries {
            layers.push(LayerSpec::SharedLibraryDependencies {
                binaries: vec![executable.clone()],
                prefix: PrefixOptions::default(),
            });
        }
        let strip = artifact.executable.parent().map(|d| d.display().to_string());
        layers.push(LayerSpec::Paths {
            paths: vec![executable],
            prefix: PrefixOptions { strip_prefix: strip, ..PrefixOptions::default() },
        });
        let dir = package.dir().display().to_string();
        let mut vars = BTreeMap::new();
        let escape = |s: &str| s.replace('$', "$$");
        vars.insert("CARGO_MANIFEST_DIR".to_owned(), escape(&dir));
        vars.insert("CARGO_MANIFEST_PATH".to_owned(), escape(&package.manifest_path.display().to_string()));
        vars.insert("CARGO_PKG_NAME".to_owned(), escape(&package.name));
        vars.insert("CARGO_PKG_VERSION".to_owned(), escape(&package.version));
        let (core, pre) = package.version.split_once('-').unwrap_or((&package.version, ""));
        let mut parts = core.split('.');
        for name in ["CARGO_PKG_VERSION_MAJOR", "CARGO_PKG_VERSION_MINOR", "CARGO_PKG_VERSION_PATCH"] {
            vars.insert(
                name.to_owned(),
                parts.next().unwrap_or("0").split('+').next().unwrap_or("0").to_owned(),
            );
        }
        vars.insert("CARGO_PKG_VERSION_PRE".to_owned(), escape(pre));
        vars.insert("CARGO_CRATE_NAME".to_owned(), artifact.target.replace('-', "_"));
        let environment = vec![EnvironmentSpec { vars, extend: true }];
        add_runner_items(&mut container, layers, environment, dir);
        container
    }
}

/// Where cargo puts the profile's outputs: the reference's `<build-dir>`.
fn build_dir(target_dir: &Path, options: &CargoOptions) -> PathBuf {
    let profile = match (options.profile.as_deref(), options.release) {
        (Some("dev" | "test") | None, false) => "debug",
        (Some("release" | "bench"), _) | (None, true) => "release",
        (Some(custom), _) => custom,
    };
    match &options.target {
        Some(triple) => target_dir.join(triple).join(profile),
        None => target_dir.join(profile),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// A target's name as shown: omitted when it is the package's own (the library, the main
/// binary).
fn display_target<'a>(package: &Package, target: &'a str) -> &'a str {
    if target.replace('_', "-") == package.name.replace('_', "-") { "" } else { target }
}

/// `<package> [<target> ]<case>`.
fn display(package: &Package, target: &str, case: &str) -> String {
    match display_target(package, target) {
        "" => format!("{} {case}", package.name),
        target => format!("{} {target} {case}", package.name),
    }
}

/// A libtest binary's output for one test, without libtest's own lines: what comes after
/// `running 1 test` and before `test <case> ... `.
fn trim_libtest_output(case: &str, stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    let start = text.find("running 1 test\n").map_or(0, |i| i + "running 1 test\n".len());
    let rest = &text[start..];
    let end = rest.find(&format!("test {case} ... ")).unwrap_or(rest.len());
    rest[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_chatter_is_trimmed() {
        let out = b"\nrunning 1 test\nhello from the test\ntest tests::x ... FAILED\n\nfailures:\n";
        assert_eq!(trim_libtest_output("tests::x", out), "hello from the test\n");
        assert_eq!(trim_libtest_output("tests::x", b"just this"), "just this");
    }

    #[test]
    fn names_omit_the_packages_own_target() {
        let package = Package {
            id: "x".into(),
            name: "foo-bar".into(),
            version: "1.0.0".into(),
            manifest_path: "/w/foo-bar/Cargo.toml".into(),
            targets: vec![],
        };
        assert_eq!(display(&package, "foo_bar", "tests::a"), "foo-bar tests::a");
        assert_eq!(display(&package, "integration", "a"), "foo-bar integration a");
    }
}
