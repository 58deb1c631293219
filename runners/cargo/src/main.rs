//! `cargo maelstrom`: `cargo test`, with every test in its own container.
//!
//! It builds the workspace's test binaries with cargo, lists each binary's tests (a listing is
//! kept by the binary's digest), and runs every selected test as one job: on the embedded
//! worker, or on a cluster with `--broker`. Tests start as soon as their binary is linked. The
//! run itself is the runner core's; this file holds what is cargo's.
//!
//! Exit status: 0 when every test passed (or was ignored); 1 when a test failed; cargo's own
//! code when the build failed; 2 when cargo maelstrom itself could not run.

mod cargo;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use maelstrom_client::spec::{LayerSpec, MountSpec, PrefixOptions};
use maelstrom_config::{Config, Source, getenv};
use maelstrom_test_runner::filter::{self, Language, Selection, Selector};
use maelstrom_test_runner::run::{self, App, Build, CaseJob, Framework, Listed, RunnerOptions};
use maelstrom_test_runner::session::OutputRules;
use maelstrom_test_runner::specfile::TestSettings;

use crate::cargo::{Artifact, CargoOptions, Kind, Metadata, Package};

const SPEC_FILE: &str = "cargo-maelstrom.toml";
const DEFAULT_SPEC: &str = include_str!("default-spec.toml");

/// The language of cargo tests: artifact kinds as simple selectors, and the case's name, its
/// package and its target's name by kind as compound ones.
const LANGUAGE: Language = Language {
    simple: &[
        Selector { name: "library", min: "l" },
        Selector { name: "binary", min: "bi" },
        Selector { name: "benchmark", min: "be" },
        Selector { name: "example", min: "e" },
        Selector { name: "test", min: "te" },
    ],
    compound: &[
        Selector { name: "name", min: "n" },
        Selector { name: "package", min: "p" },
        Selector { name: "binary", min: "bi" },
        Selector { name: "benchmark", min: "be" },
        Selector { name: "example", min: "e" },
        Selector { name: "test", min: "te" },
    ],
};

const APP: App = App {
    name: "cargo maelstrom",
    config_name: "cargo-maelstrom",
    env_prefix: "CARGO_MAELSTROM",
    keys: &[
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
    ],
};

const AFTER_HELP: &str = "Tests are selected with the filter language: tests matching any --include (all, without \
one) and no --exclude. For example: -i 'package.equals(foo)', -x 'name.contains(slow)', -i 'test.equals(integration) \
& name.starts_with(net::)'. Operators: & | ! - and parentheses; selectors: name, package, library, binary, test, \
benchmark, example; matchers: equals, contains, starts_with, ends_with, matches (regex), globs. A workspace \
package's name given to -x excludes that package.

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
    runner: RunnerOptions,
    /// Only this package's tests (repeatable): the same as -i 'package.equals(NAME)'.
    #[arg(short = 'p', long, value_name = "NAME")]
    package: Vec<String>,
    /// Every package of the workspace (the default).
    #[arg(long)]
    workspace: bool,
    /// Print the selected test binaries (without building).
    #[arg(long, group = "listing")]
    list_binaries: bool,
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
    /// Arguments for every test binary, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    extra_test_binary_args: Vec<String>,
}

fn flag(set: bool) -> Option<bool> {
    set.then_some(true)
}

fn main() -> ExitCode {
    // `cargo maelstrom ...` runs `cargo-maelstrom maelstrom ...`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "maelstrom") {
        args.remove(1);
    }
    let cli = Cli::parse_from(args);
    run::main(&APP, &cli.runner, |config| Cargo::new(&cli, config))
}

/// cargo as a test framework: a workspace's packages, built with `cargo test --no-run`.
struct Cargo {
    options: CargoOptions,
    extra_test_binary_args_source: Source,
    extra_args: Vec<String>,
    metadata: Metadata,
    /// `-p`: the packages asked for.
    packages: Vec<String>,
    list_binaries: bool,
    /// cargo's target directory (a relative `--target-dir` made absolute, as cargo does).
    target_dir: PathBuf,
    /// The whole workspace's build, started before `cargo metadata` when nothing can narrow it,
    /// so the two overlap.
    early_build: std::cell::RefCell<Option<cargo::Build>>,
}

/// What `--print-config` shows of cargo's settings.
impl std::fmt::Debug for Cargo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CargoSettings")
            .field("cargo", &self.options)
            .field("extra_test_binary_args", &(&self.extra_args, &self.extra_test_binary_args_source))
            .field("package", &self.packages)
            .finish()
    }
}

impl Cargo {
    fn new(cli: &Cli, config: &Config) -> anyhow::Result<Self> {
        let get_bool = |key: &str, cli: bool| -> anyhow::Result<bool> {
            Ok(config.get_or(key, flag(cli), false, &getenv)?.0)
        };
        let options = CargoOptions {
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
        let (extra_args, extra_test_binary_args_source) =
            config.get_or("extra-test-binary-args", extra, Vec::new(), &getenv)?;
        if cli.runner.common.print_config {
            // Without asking cargo anything.
            return Ok(Self {
                options,
                extra_test_binary_args_source,
                extra_args,
                metadata: Metadata::default(),
                packages: cli.package.clone(),
                list_binaries: cli.list_binaries,
                target_dir: PathBuf::new(),
                early_build: std::cell::RefCell::new(None),
            });
        }
        let runner = &cli.runner;
        let builds_everything = !(runner.init
            || runner.watch
            || runner.list_packages
            || cli.list_binaries
            || !cli.package.is_empty()
            || !runner.include.is_empty()
            || !runner.exclude.is_empty());
        let mut early_build = if builds_everything && cargo::finds_a_manifest(&options) {
            Some(cargo::Build::start(&options, None)?)
        } else {
            None
        };
        let metadata = cargo::metadata(&options, early_build.as_mut())?;
        let members = metadata.members();
        if let Some(unknown) = cli.package.iter().find(|p| !members.iter().any(|m| m.name == **p)) {
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            anyhow::bail!("-p {unknown}: no such package in the workspace (it has {})", names.join(", "));
        }
        let target_dir = match &options.target_dir {
            Some(dir) => {
                std::path::absolute(dir).with_context(|| format!("--target-dir {}", dir.display()))?
            }
            None => metadata.target_directory.clone(),
        };
        Ok(Self {
            options,
            extra_test_binary_args_source,
            extra_args,
            metadata,
            packages: cli.package.clone(),
            list_binaries: cli.list_binaries,
            target_dir,
            early_build: std::cell::RefCell::new(early_build),
        })
    }

    /// The variables cargo sets for a test of `package`'s `target`.
    fn variables(package: &Package, target: &str) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        let escape = |s: &str| s.replace('$', "$$");
        vars.insert("CARGO_MANIFEST_DIR".to_owned(), escape(&package.dir().display().to_string()));
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
        vars.insert("CARGO_CRATE_NAME".to_owned(), target.replace('-', "_"));
        vars
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

impl Framework for Cargo {
    type Package = Package;
    type Artifact = Artifact;

    fn language(&self) -> &'static Language {
        &LANGUAGE
    }

    fn spec_file(&self) -> (PathBuf, &'static str) {
        (self.metadata.workspace_root.join(SPEC_FILE), DEFAULT_SPEC)
    }

    fn project_root(&self) -> &Path {
        &self.metadata.workspace_root
    }

    fn state_dir(&self) -> PathBuf {
        self.target_dir.join("maelstrom")
    }

    fn packages(&self) -> Vec<&Package> {
        self.metadata.members()
    }

    fn package_name<'a>(&self, package: &'a Package) -> &'a str {
        &package.name
    }

    /// `-p` narrows whatever the includes select to its packages; a bare package name given to
    /// `-x` excludes that package (as `cargo test --workspace --exclude NAME` does).
    fn patterns(&self, include: &[String], exclude: &[String]) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let include: Vec<String> = if self.packages.is_empty() {
            include.to_vec()
        } else {
            let packages: Vec<String> =
                self.packages.iter().map(|p| format!("package.equals({p})")).collect();
            let packages = packages.join(" | ");
            if include.is_empty() {
                vec![packages]
            } else {
                include.iter().map(|i| format!("({i}) & ({packages})")).collect()
            }
        };
        let members = self.metadata.members();
        let exclude = exclude
            .iter()
            .map(|x| {
                let is_package = members.iter().any(|p| p.name == *x);
                if is_package && filter::parse(x, &LANGUAGE).is_err() {
                    format!("package.equals({x})")
                } else {
                    x.clone()
                }
            })
            .collect();
        Ok((include, exclude))
    }

    fn subject<'a>(
        &'a self,
        package: &'a Package,
        artifact: Option<&'a Artifact>,
        case: Option<&'a str>,
    ) -> Box<dyn filter::Subject + 'a> {
        Box::new(Subject {
            package: &package.name,
            kind: artifact.map(|a| a.kind),
            target: artifact.map(|a| a.target.as_str()),
            name: case,
        })
    }

    /// `--list-binaries`: `package [target] (kind)` for each selected test target.
    fn listing(&self, selection: &Selection, packages: &[&Package]) -> Option<Vec<String>> {
        if !self.list_binaries {
            return None;
        }
        let mut lines = Vec::new();
        for package in packages {
            for target in package.targets.iter().filter(|t| t.test) {
                let Some(kind) = Kind::from_cargo(&target.kind) else { continue };
                let subject = Subject {
                    package: &package.name,
                    kind: Some(kind),
                    target: Some(&target.name),
                    name: None,
                };
                if selection.eval(&subject) != Some(false) {
                    lines.push(match display_target(package, &target.name) {
                        "" => format!("{} ({})", package.name, kind.selector()),
                        target => format!("{} {target} ({})", package.name, kind.selector()),
                    });
                }
            }
        }
        Some(lines)
    }

    fn templates(&self) -> Vec<(&'static str, String)> {
        vec![("build-dir", build_dir(&self.target_dir, &self.options).display().to_string())]
    }

    fn build(&self, packages: &[&Package], all: bool) -> anyhow::Result<Box<dyn Build<Artifact>>> {
        let early = self.early_build.borrow_mut().take();
        if let Some(build) = early.filter(|_| all) {
            return Ok(Box::new(build));
        }
        let packages: Vec<(&str, &str)> =
            packages.iter().map(|p| (p.name.as_str(), p.version.as_str())).collect();
        Ok(Box::new(cargo::Build::start(&self.options, (!all).then_some(&packages[..]))?))
    }

    fn package_of(&self, artifact: &Artifact) -> Option<&Package> {
        self.metadata.packages.iter().find(|p| p.id == artifact.package_id)
    }

    fn executable<'a>(&self, artifact: &'a Artifact) -> Option<&'a Path> {
        Some(&artifact.executable)
    }

    fn list_cases(&self, artifact: &Artifact) -> anyhow::Result<Vec<Listed>> {
        cargo::list_tests(&artifact.executable)
    }

    fn artifact_key(&self, artifact: &Artifact) -> String {
        format!("{}({})", artifact.target, artifact.kind.selector())
    }

    fn artifact_display(&self, artifact: &Artifact) -> String {
        let package = self.package_of(artifact).map_or("", |p| p.name.as_str());
        format!("{package} {}({})", artifact.target, artifact.kind.selector())
    }

    fn case_display(&self, artifact: &Artifact, case: &str) -> String {
        match self.package_of(artifact) {
            Some(package) => display(package, &artifact.target, case),
            None => case.to_owned(),
        }
    }

    /// What every cargo test gets: its workspace's files (with the package as working directory),
    /// its shared libraries, the binary at `/`, and the variables cargo sets for tests.
    fn case_job(&self, artifact: &Artifact, case: &str, settings: &TestSettings) -> CaseJob {
        let executable = artifact.executable.display().to_string();
        let Some(package) = self.package_of(artifact) else { return CaseJob::default() };
        // The workspace's files at their own paths (a test may read `../shared/data`), or the
        // package's own directory where it lies outside the workspace's.
        let root = &self.metadata.workspace_root;
        let tree = if package.dir().starts_with(root) { root.as_path() } else { package.dir() };
        let mut layers = vec![LayerSpec::Tree {
            tree: tree.display().to_string(),
            exclude: vec![self.target_dir.display().to_string()],
        }];
        // The package's binaries, where the integration tests and benchmarks that run them look
        // (`CARGO_BIN_EXE_<name>`, in the compiled test and in its environment), kept visible
        // even under a fresh /tmp. Cargo builds them before those tests, beside the test binary's
        // `deps/` (whatever target it was built for), or, with `build.build-dir`, in the target
        // directory's profile directory; one a feature left out is not there.
        let mut environment = Self::variables(package, &artifact.target);
        let mut keep_visible = Vec::new();
        let mut binaries = Vec::new();
        if matches!(artifact.kind, Kind::Test | Kind::Benchmark) {
            let beside = artifact.executable.parent().and_then(Path::parent).map(Path::to_path_buf);
            let dirs: Vec<PathBuf> =
                beside.into_iter().chain([build_dir(&self.target_dir, &self.options)]).collect();
            for target in package.targets.iter().filter(|t| t.kind.iter().any(|k| k == "bin")) {
                let Some(dir) = dirs.iter().find(|dir| dir.join(&target.name).is_file()) else { continue };
                let path = dir.join(&target.name).display().to_string();
                environment.insert(format!("CARGO_BIN_EXE_{}", target.name), path.replace('$', "$$"));
                binaries.push(path);
                let dir = dir.display().to_string();
                if !keep_visible.contains(&dir) {
                    keep_visible.push(dir);
                }
            }
            if !binaries.is_empty() {
                layers.push(LayerSpec::Paths { paths: binaries.clone(), prefix: PrefixOptions::default() });
            }
        }
        if settings.include_shared_libraries {
            layers.push(LayerSpec::SharedLibraryDependencies {
                binaries: std::iter::once(executable.clone()).chain(binaries).collect(),
                prefix: PrefixOptions::default(),
            });
        }
        let strip = artifact.executable.parent().map(|d| d.display().to_string());
        layers.push(LayerSpec::Paths {
            paths: vec![executable],
            prefix: PrefixOptions { strip_prefix: strip, ..PrefixOptions::default() },
        });
        // `CARGO_TARGET_TMPDIR`, which integration tests and benchmarks may write in: here an
        // empty directory of the test's own (a path with braces cannot be a stub, and is left).
        let mut mounts = Vec::new();
        let tmpdir = self.target_dir.join("tmp").display().to_string();
        if matches!(artifact.kind, Kind::Test | Kind::Benchmark) && !tmpdir.contains(['{', '}']) {
            layers.push(LayerSpec::Stubs { stubs: vec![format!("{tmpdir}/")] });
            mounts.push(MountSpec::Tmp { mount_point: tmpdir });
        }
        let mut arguments = vec!["--exact".to_owned(), "--nocapture".to_owned()];
        arguments.extend(self.extra_args.iter().cloned());
        arguments.push(case.to_owned());
        CaseJob {
            layers,
            environment,
            mounts,
            keep_visible,
            working_directory: package.dir().display().to_string(),
            program: format!("/{}", file_name(&artifact.executable)),
            arguments,
            timeout_warning: None,
        }
    }

    /// libtest's chatter is trimmed; its 101 only says a test failed; "running 0 tests" is no pass.
    fn output_rules(&self) -> OutputRules {
        OutputRules {
            reporter: None,
            parts: None,
            trim: Box::new(|case, stdout| trim_libtest_output(&case.name, stdout)),
            judge: None,
            quiet_exit_codes: &[101],
            no_test_marker: Some("\nrunning 0 tests\n"),
        }
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
