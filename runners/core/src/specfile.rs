//! The spec file (`cargo-maelstrom.toml` and its siblings): named containers, and directives
//! that say, for the tests their filter selects, what container to run in, how long to allow,
//! and whether to run at all.
//!
//! Every matching directive applies, in file order, to a candidate that starts empty:
//! - one with `image` or `parent` replaces the whole container part (inheritance then follows
//!   the usual rules);
//! - one without augments it: `layers`, `environment` and `mounts` replace the candidate's,
//!   `added_*` append to them, and scalars override;
//! - `timeout`, `ignore` and `include_shared_libraries` take the last value set.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use maelstrom_client::spec::{
    ContainerSpec, EnvSpecs, EnvironmentSpec, LayerSpec, MountSpec, NetworkMode, PrefixOptions, UseField,
};

use crate::filter::{self, Language, Pattern, Subject};

/// A directive, parsed.
#[derive(Clone, Debug)]
pub struct Directive {
    pub filter: Option<Pattern>,
    pub ignore: Option<bool>,
    /// 0 means no timeout.
    pub timeout: Option<u32>,
    pub include_shared_libraries: Option<bool>,
    pub container: ContainerSpec,
}

/// A spec file, parsed.
#[derive(Clone, Debug, Default)]
pub struct SpecFile {
    pub containers: BTreeMap<String, ContainerSpec>,
    pub directives: Vec<Directive>,
    /// Where it came from (`None`: the embedded default).
    pub path: Option<PathBuf>,
}

/// What the directives say about one test.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestSettings {
    pub container: ContainerSpec,
    pub ignore: bool,
    pub timeout: Option<NonZeroU32>,
    pub include_shared_libraries: bool,
}

/// A spec file that could not be read: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

const DIRECTIVE_KEYS: [&str; 4] = ["filter", "ignore", "timeout", "include_shared_libraries"];

impl SpecFile {
    /// Reads `path` if it exists, else parses `default` (the runner's embedded default).
    pub fn load(path: &Path, default: &str, language: &Language) -> Result<Self, SpecError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, Some(path), language),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::parse(default, None, language),
            Err(e) => Err(SpecError(format!("{}: {e}", path.display()))),
        }
    }

    /// Parses a spec file's text; errors say file:line:column.
    pub fn parse(text: &str, path: Option<&Path>, language: &Language) -> Result<Self, SpecError> {
        let name = path.map_or_else(|| "the default spec".to_owned(), |p| p.display().to_string());
        let at = |offset: usize, message: &str| {
            let (line, column) = maelstrom_config::line_column(text, offset);
            SpecError(format!("{name}:{line}:{column}: {message}"))
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| at(e.span().map_or(0, |s| s.start), e.message().trim()))?;
        // Spans are kept for each directive, so an error inside one points at it.
        let spanned: Spanned =
            toml::from_str(text).map_err(|e| at(e.span().map_or(0, |s| s.start), e.message().trim()))?;
        if let Some(key) = table.keys().find(|k| !matches!(k.as_str(), "containers" | "directives")) {
            let offset = text.find(key.as_str()).unwrap_or(0);
            return Err(at(offset, &format!("unknown key `{key}` (expected `containers` or `directives`)")));
        }
        let containers = match table.remove("containers") {
            None => BTreeMap::new(),
            Some(value) => value.try_into().map_err(|e: toml::de::Error| {
                let offset = text.find("containers").unwrap_or(0);
                at(offset, &format!("containers: {}", e.message().trim()))
            })?,
        };
        let mut directives = Vec::new();
        for (index, directive) in spanned.directives.into_iter().enumerate() {
            let offset = directive.span().start;
            let what = |message: String| at(offset, &format!("directive {}: {message}", index + 1));
            let mut fields = directive.into_inner();
            let filter = match fields.remove("filter") {
                None => None,
                Some(toml::Value::String(text)) => {
                    Some(filter::parse(&text, language).map_err(|e| what(format!("filter {text:?}: {e}")))?)
                }
                Some(_) => return Err(what("`filter` must be a string".into())),
            };
            let flag = |fields: &mut toml::Table, key: &str| -> Result<Option<bool>, SpecError> {
                match fields.remove(key) {
                    None => Ok(None),
                    Some(toml::Value::Boolean(b)) => Ok(Some(b)),
                    Some(_) => Err(what(format!("`{key}` must be true or false"))),
                }
            };
            let ignore = flag(&mut fields, "ignore")?;
            let include_shared_libraries = flag(&mut fields, "include_shared_libraries")?;
            let timeout = match fields.remove("timeout") {
                None => None,
                Some(toml::Value::Integer(n)) => Some(
                    u32::try_from(n)
                        .map_err(|_| what(format!("`timeout` must be seconds, 0 or more, not {n}")))?,
                ),
                Some(_) => return Err(what("`timeout` must be a number of seconds".into())),
            };
            let container: ContainerSpec =
                toml::Value::Table(fields).try_into().map_err(|e: toml::de::Error| {
                    let mut message = e.message().trim().to_owned();
                    if message.starts_with("unknown field") {
                        message = format!("{message} (or one of {})", DIRECTIVE_KEYS.join(", "));
                    }
                    what(message)
                })?;
            directives.push(Directive { filter, ignore, timeout, include_shared_libraries, container });
        }
        Ok(Self { containers, directives, path: path.map(Path::to_owned) })
    }

    /// Replaces `<name>` in every layer's paths with `variables`' values (`<<` is a literal
    /// `<`); cargo's `<build-dir>` is one. An unknown name is an error.
    pub fn apply_templates(&mut self, variables: &[(&str, String)]) -> Result<(), SpecError> {
        let name =
            self.path.as_ref().map_or_else(|| "the default spec".to_owned(), |p| p.display().to_string());
        let containers =
            self.containers.values_mut().chain(self.directives.iter_mut().map(|d| &mut d.container));
        for container in containers {
            for layer in container.layers.iter_mut().chain(container.added_layers.iter_mut()).flatten() {
                for path in layer_paths(layer) {
                    *path = template(path, variables)
                        .map_err(|e| SpecError(format!("{name}: layer path {path:?}: {e}")))?;
                }
            }
        }
        Ok(())
    }

    /// What the matching directives say about `test` (whose every value is known).
    pub fn settings(&self, test: &dyn Subject) -> TestSettings {
        let mut settings = TestSettings { include_shared_libraries: true, ..TestSettings::default() };
        for directive in &self.directives {
            if let Some(filter) = &directive.filter
                && filter.eval(test) != Some(true)
            {
                continue;
            }
            augment(&mut settings.container, &directive.container);
            if let Some(ignore) = directive.ignore {
                settings.ignore = ignore;
            }
            if let Some(timeout) = directive.timeout {
                settings.timeout = NonZeroU32::new(timeout);
            }
            if let Some(include) = directive.include_shared_libraries {
                settings.include_shared_libraries = include;
            }
        }
        settings
    }
}

#[derive(serde::Deserialize)]
struct Spanned {
    #[serde(default)]
    directives: Vec<toml::Spanned<toml::Table>>,
}

/// Every path a layer names.
fn layer_paths(layer: &mut LayerSpec) -> Vec<&mut String> {
    match layer {
        LayerSpec::Tar { tar } => vec![tar],
        LayerSpec::Glob { glob, .. } => vec![glob],
        LayerSpec::Paths { paths, .. } | LayerSpec::Stubs { stubs: paths } => paths.iter_mut().collect(),
        LayerSpec::SharedLibraryDependencies { binaries, .. } => binaries.iter_mut().collect(),
        LayerSpec::Symlinks { symlinks } => {
            symlinks.iter_mut().flat_map(|s| [&mut s.link, &mut s.target]).collect()
        }
        LayerSpec::Command { .. } | LayerSpec::Tree { .. } => Vec::new(),
    }
}

/// `text` with each `<name>` replaced, and `<<` made `<`.
fn template(text: &str, variables: &[(&str, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('<') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('<') {
            out.push('<');
            rest = after;
            continue;
        }
        let end = rest.find('>').filter(|&end| {
            end > 0 && rest[..end].chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
        let Some(end) = end else {
            out.push('<');
            continue;
        };
        let name = &rest[..end];
        let Some((_, value)) = variables.iter().find(|(n, _)| *n == name) else {
            let known: Vec<String> = variables.iter().map(|(n, _)| format!("<{n}>")).collect();
            return Err(format!(
                "unknown variable `<{name}>` (known: {}; write `<<` for a `<`)",
                known.join(", ")
            ));
        };
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Applies one directive's container fields to the candidate (runners use it to add their
/// own layers and environment to a test's container, as a last directive would).
pub fn augment(candidate: &mut ContainerSpec, directive: &ContainerSpec) {
    if directive.image.is_some() || directive.parent.is_some() {
        *candidate = directive.clone();
        return;
    }
    let inherits = candidate.parent.is_some() || candidate.image.is_some();
    list(
        &mut candidate.layers,
        &mut candidate.added_layers,
        &directive.layers,
        &directive.added_layers,
        inherits,
    );
    let env = |e: &Option<EnvSpecs>| e.as_ref().map(|e| e.0.clone());
    let (mut own, mut added) = (env(&candidate.environment), env(&candidate.added_environment));
    list(&mut own, &mut added, &env(&directive.environment), &env(&directive.added_environment), inherits);
    candidate.environment = own.map(EnvSpecs);
    candidate.added_environment = added.map(EnvSpecs);
    list(
        &mut candidate.mounts,
        &mut candidate.added_mounts,
        &directive.mounts,
        &directive.added_mounts,
        inherits,
    );
    if directive.working_directory.is_some() {
        candidate.working_directory.clone_from(&directive.working_directory);
    }
    macro_rules! scalars {
        ($($field:ident),*) => { $(if directive.$field.is_some() { candidate.$field = directive.$field; })* };
    }
    scalars!(enable_writable_file_system, network, user, group, limits);
    if directive.allow.is_some() {
        candidate.allow.clone_from(&directive.allow);
    }
}

/// Adds what a runner gives every test (its files and variables, and its working directory
/// unless the spec chose one) to the test's container. The items go after what the directives
/// set, or after what the parent gives; where the parent's explicit `use` leaves a field out,
/// they become the container's own.
pub fn add_runner_items(
    container: &mut ContainerSpec,
    layers: Vec<LayerSpec>,
    environment: Vec<EnvironmentSpec>,
    mounts: Vec<MountSpec>,
    working_directory: String,
) {
    let inheritance = container.parent.as_ref().or(container.image.as_ref());
    let inherited = |field: UseField| match inheritance {
        None => false,
        Some(parent) => parent.use_.as_ref().is_none_or(|used| used.contains(&field)),
    };
    let (layers_inherited, environment_inherited) =
        (inherited(UseField::Layers), inherited(UseField::Environment));
    let working_directory_inherited = inherited(UseField::WorkingDirectory);
    list(&mut container.layers, &mut container.added_layers, &None, &Some(layers), layers_inherited);
    if !mounts.is_empty() {
        let inherited = inherited(UseField::Mounts);
        list(&mut container.mounts, &mut container.added_mounts, &None, &Some(mounts), inherited);
    }
    let env = |e: &Option<EnvSpecs>| e.as_ref().map(|e| e.0.clone());
    let (mut own, mut added) = (env(&container.environment), env(&container.added_environment));
    list(&mut own, &mut added, &None, &Some(environment), environment_inherited);
    container.environment = own.map(EnvSpecs);
    container.added_environment = added.map(EnvSpecs);
    if container.working_directory.is_none() && !working_directory_inherited {
        container.working_directory = Some(working_directory);
    }
}

/// Tests that bind or dial localhost pass, and stay hermetic: unless the container sets or
/// inherits a network, each test gets a private loopback.
pub fn default_network(container: &mut ContainerSpec, named: &BTreeMap<String, ContainerSpec>) {
    if maelstrom_client::resolve::network(container, named).is_none() {
        container.network = Some(NetworkMode::Loopback);
    }
}

/// What every test's `/etc/hosts` says: `localhost` is the container's own loopback.
const ETC_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// A layer with the container's `/etc/hosts`, written under `dir` (the runner's state
/// directory) the first time; a runner adds it to every test's container.
pub fn etc_hosts_layer(dir: &Path) -> std::io::Result<LayerSpec> {
    let root = dir.join("etc-hosts");
    let path = root.join("etc/hosts");
    if std::fs::read(&path).ok().as_deref() != Some(ETC_HOSTS.as_bytes()) {
        std::fs::create_dir_all(root.join("etc"))?;
        let temp = root.join(format!("etc/.hosts.{}", std::process::id()));
        std::fs::write(&temp, ETC_HOSTS)?;
        std::fs::rename(&temp, &path)?;
    }
    Ok(LayerSpec::Paths {
        paths: vec![path.display().to_string()],
        prefix: PrefixOptions { strip_prefix: Some(root.display().to_string()), ..PrefixOptions::default() },
    })
}

/// A list field: replaced by the directive's own, or appended to by its `added_*` (which stay
/// `added_*` only while there is a parent to add to).
fn list<T: Clone>(
    own: &mut Option<Vec<T>>,
    added: &mut Option<Vec<T>>,
    directive_own: &Option<Vec<T>>,
    directive_added: &Option<Vec<T>>,
    inherits: bool,
) {
    if let Some(items) = directive_own {
        *own = Some(items.clone());
        *added = None;
    }
    if let Some(items) = directive_added {
        match (own.as_mut(), added.as_mut()) {
            (Some(own), _) => own.extend(items.iter().cloned()),
            (None, Some(added)) => added.extend(items.iter().cloned()),
            (None, None) if inherits => *added = Some(items.clone()),
            (None, None) => *own = Some(items.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Selector;
    use maelstrom_client::spec::{Allowance, ByteCount, LayerSpec, MountSpec, NetworkMode};

    const LANGUAGE: Language = Language {
        simple: &[Selector { name: "test", min: "te" }],
        compound: &[Selector { name: "name", min: "n" }, Selector { name: "package", min: "p" }],
    };

    struct Test(&'static str, &'static str);

    impl Subject for Test {
        fn is(&self, selector: &str) -> Option<bool> {
            Some(selector == "test")
        }
        fn value(&self, selector: &str) -> Option<Option<&str>> {
            Some(Some(if selector == "package" { self.0 } else { self.1 }))
        }
    }

    fn stubs(s: &str) -> LayerSpec {
        LayerSpec::Stubs { stubs: vec![s.into()] }
    }

    #[test]
    fn every_matching_directive_applies_in_order() {
        let text = r#"
[containers.base]
layers = [{ stubs = ["/base/"] }]
network = "loopback"
allow = ["ptrace"]
limits = { memory = "1.5 GiB", cpu_time = 60 }

[[directives]]
layers = [{ stubs = ["/a/"] }]
limits = { processes = 100 }
mounts = [{ type = "tmp", mount_point = "/tmp" }]
environment = { A = "1" }
timeout = 10

[[directives]]
filter = "package.equals(foo)"
added_layers = [{ stubs = ["/b/"] }]
added_environment = { B = "2" }
user = 1000
allow = ["io_uring", "perf_events"]
limits = { memory = 1048576, tmpfs = "64 MiB", open_files = 512 }
ignore = true

[[directives]]
filter = "name.contains(slow)"
timeout = 0
include_shared_libraries = false

[[directives]]
filter = "name.equals(inherits)"
parent = "base"
added_layers = [{ stubs = ["/c/"] }]
"#;
        let spec = SpecFile::parse(text, Some(Path::new("x.toml")), &LANGUAGE).unwrap();
        let foo = spec.settings(&Test("foo", "fast"));
        assert_eq!(foo.container.layers, Some(vec![stubs("/a/"), stubs("/b/")]));
        assert_eq!(foo.container.added_layers, None);
        let env = foo.container.environment.as_ref().unwrap();
        assert_eq!(env.0.iter().flat_map(|e| e.vars.keys()).collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!(foo.container.user, Some(1000));
        assert_eq!(foo.container.allow, Some(vec![Allowance::IoUring, Allowance::PerfEvents]));
        let limits = foo.container.limits.unwrap();
        assert_eq!(limits.memory, Some(ByteCount(1 << 20)));
        assert_eq!(limits.tmpfs, Some(ByteCount(64 << 20)));
        assert_eq!((limits.processes, limits.open_files), (None, Some(512)), "a later table replaces");
        assert_eq!(foo.container.mounts, Some(vec![MountSpec::Tmp { mount_point: "/tmp".into() }]));
        assert!(foo.ignore);
        assert_eq!(foo.timeout, NonZeroU32::new(10));
        assert!(foo.include_shared_libraries);

        let slow = spec.settings(&Test("bar", "slow_one"));
        assert_eq!(slow.container.layers, Some(vec![stubs("/a/")]));
        assert!(!slow.ignore);
        assert_eq!(slow.timeout, None, "0 is no timeout");
        assert!(!slow.include_shared_libraries);

        let inherits = spec.settings(&Test("bar", "inherits"));
        assert_eq!(inherits.container.parent.as_ref().map(|p| p.name.as_str()), Some("base"));
        assert_eq!(inherits.container.layers, None, "a parent replaces the container part");
        assert_eq!(inherits.container.added_layers, Some(vec![stubs("/c/")]));
        assert_eq!(inherits.timeout, NonZeroU32::new(10), "but not the timeout");
        let resolved =
            maelstrom_client::resolve::resolve(&inherits.container, &spec.containers, &|_| None).unwrap();
        assert_eq!(resolved.layers, vec![stubs("/base/"), stubs("/c/")]);
        assert_eq!(resolved.network, NetworkMode::Loopback);
        assert_eq!(resolved.allow, [Allowance::Ptrace], "inherited like the network");
        assert_eq!(resolved.limits.memory, Some(ByteCount(3 << 29)), "and so are the limits");
        assert_eq!(resolved.limits.to_wire().cpu_seconds, 60);
    }

    #[test]
    fn runner_items_follow_the_parents_use() {
        let named = |text: &str| -> BTreeMap<String, ContainerSpec> { toml::from_str(text).unwrap() };
        let containers = named("[base]\nlayers = [{ stubs = [\"/base/\"] }]\nworking_directory = \"/w\"\n");
        let env = || {
            vec![EnvironmentSpec { vars: BTreeMap::from([("V".to_owned(), "1".to_owned())]), extend: true }]
        };
        for (parent, layers, workdir) in [
            // Implicit use: added to the parent's layers; the parent's working directory stays.
            ("parent = \"base\"", vec![stubs("/base/"), stubs("/mine/")], "/w"),
            // An explicit use without environment or working directory: ours are the container's own.
            (
                "parent = { name = \"base\", use = [\"layers\"] }",
                vec![stubs("/base/"), stubs("/mine/")],
                "/pkg",
            ),
            // An explicit use without layers: the parent's layers are not used.
            ("parent = { name = \"base\", use = [\"environment\"] }", vec![stubs("/mine/")], "/pkg"),
            ("layers = [{ stubs = [\"/d/\"] }]", vec![stubs("/d/"), stubs("/mine/")], "/pkg"),
        ] {
            let mut container: ContainerSpec = toml::from_str(parent).unwrap();
            let tmp = MountSpec::Tmp { mount_point: "/mine/tmp".into() };
            add_runner_items(&mut container, vec![stubs("/mine/")], env(), vec![tmp.clone()], "/pkg".into());
            let resolved = maelstrom_client::resolve::resolve(&container, &containers, &|_| None)
                .unwrap_or_else(|e| panic!("{parent}: {e}"));
            assert_eq!(resolved.layers, layers, "{parent}");
            assert_eq!(resolved.mounts, [tmp], "{parent}");
            assert_eq!(resolved.environment, [("V".to_owned(), "1".to_owned())], "{parent}");
            assert_eq!(resolved.working_directory, workdir, "{parent}");
        }
    }

    #[test]
    fn tests_get_a_private_loopback_unless_the_spec_says_otherwise() {
        let named = |text: &str| -> BTreeMap<String, ContainerSpec> { toml::from_str(text).unwrap() };
        let containers = named(
            "[base]\nlayers = [{ stubs = [\"/b/\"] }]\nnetwork = \"local\"\n\
             [plain]\nlayers = [{ stubs = [\"/p/\"] }]\n",
        );
        for (own, network) in [
            ("layers = [{ stubs = [\"/d/\"] }]", NetworkMode::Loopback),
            ("network = \"disabled\"", NetworkMode::Disabled),
            ("network = \"local\"", NetworkMode::Local),
            ("parent = \"base\"", NetworkMode::Local),
            ("parent = { name = \"base\", use = [\"layers\"] }", NetworkMode::Loopback),
            ("parent = \"plain\"", NetworkMode::Loopback),
        ] {
            let mut container: ContainerSpec = toml::from_str(own).unwrap();
            add_runner_items(&mut container, vec![stubs("/mine/")], Vec::new(), Vec::new(), "/pkg".into());
            default_network(&mut container, &containers);
            let resolved = maelstrom_client::resolve::resolve(&container, &containers, &|_| None).unwrap();
            assert_eq!(resolved.network, network, "{own}");
        }
    }

    #[test]
    fn etc_hosts_names_localhost() {
        let dir = tempfile::tempdir().unwrap();
        let layer = etc_hosts_layer(dir.path()).unwrap();
        let LayerSpec::Paths { paths, prefix } = &layer else { panic!("{layer:?}") };
        let text = std::fs::read_to_string(&paths[0]).unwrap();
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"), "{text}");
        assert_eq!(
            Path::new(&paths[0]).strip_prefix(prefix.strip_prefix.as_ref().unwrap()).unwrap(),
            Path::new("etc/hosts")
        );
        assert_eq!(etc_hosts_layer(dir.path()).unwrap(), layer, "written once, the same after");
    }

    #[test]
    fn layer_paths_take_templates() {
        let text = r#"
[[directives]]
layers = [{ paths = ["<build-dir>/tool", "a<<b>"] }, { glob = "<build-dir>/*.so" }]
"#;
        let mut spec = SpecFile::parse(text, None, &LANGUAGE).unwrap();
        spec.apply_templates(&[("build-dir", "/t/debug".into())]).unwrap();
        let layers = spec.directives[0].container.layers.clone().unwrap();
        assert!(matches!(&layers[0], LayerSpec::Paths { paths, .. } if paths == &["/t/debug/tool", "a<b>"]));
        assert!(matches!(&layers[1], LayerSpec::Glob { glob, .. } if glob == "/t/debug/*.so"));
        let mut bad =
            SpecFile::parse("[[directives]]\nlayers = [{ tar = \"<nope>/x.tar\" }]\n", None, &LANGUAGE)
                .unwrap();
        let error = bad.apply_templates(&[("build-dir", "/t".into())]).unwrap_err();
        assert!(error.0.contains("unknown variable `<nope>` (known: <build-dir>"), "{error}");
    }

    #[test]
    fn mistakes_say_where() {
        for (text, says) in [
            ("[[directives]]\nlayrs = []\n", "x.toml:1:1: directive 1: unknown field `layrs`"),
            (
                "[[directives]]\n\n[[directives]]\nfilter = \"nmae.eq(x)\"\n",
                "x.toml:3:1: directive 2: filter \"nmae.eq(x)\": column 1: unknown compound selector",
            ),
            ("[[directives]]\ntimeout = -1\n", "directive 1: `timeout` must be seconds, 0 or more, not -1"),
            ("[[directives]]\nignore = \"yes\"\n", "directive 1: `ignore` must be true or false"),
            ("directivs = []\n", "x.toml:1:1: unknown key `directivs`"),
            ("[[directives]\n", "x.toml:1:"),
        ] {
            let error = SpecFile::parse(text, Some(Path::new("x.toml")), &LANGUAGE).unwrap_err();
            assert!(error.0.contains(says), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_missing_file_means_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let default = "[[directives]]\nlayers = [{ stubs = [\"/d/\"] }]\n";
        let spec = SpecFile::load(&dir.path().join("none.toml"), default, &LANGUAGE).unwrap();
        assert!(spec.path.is_none());
        assert_eq!(spec.settings(&Test("p", "n")).container.layers, Some(vec![stubs("/d/")]));
    }
}
