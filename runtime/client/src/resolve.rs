//! Resolving a container through its parents, and evaluating its environment.
//!
//! The rules follow the reference system: a scalar field takes the first value found walking up
//! the chain, stopping at a parent whose `use` lacks the field; a list field replaces, or with
//! `added_*` appends to, the parent's. A parent named without `use` passes on every field the
//! child does not set itself; naming a field in an explicit `use` and setting it too is an
//! error (use `added_*`).

use std::collections::BTreeMap;

use crate::spec::{
    Allowance, ContainerSpec, EnvironmentSpec, Inherit, LayerSpec, LimitsSpec, MountSpec, NetworkMode,
    UseField,
};

/// A container after inheritance, with defaults applied and its environment evaluated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub layers: Vec<LayerSpec>,
    /// Name-sorted.
    pub environment: Vec<(String, String)>,
    pub mounts: Vec<MountSpec>,
    pub working_directory: String,
    pub enable_writable_file_system: bool,
    pub network: NetworkMode,
    pub user: u32,
    pub group: u32,
    /// Sorted, without repeats.
    pub allow: Vec<Allowance>,
    pub limits: LimitsSpec,
}

/// Why a container cannot be resolved. The message is meant for a person.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResolveError(pub String);

fn error<T>(message: impl Into<String>) -> Result<T, ResolveError> {
    Err(ResolveError(message.into()))
}

#[derive(Default)]
struct Fields {
    layers: Vec<LayerSpec>,
    environment: Vec<EnvironmentSpec>,
    mounts: Vec<MountSpec>,
    working_directory: Option<String>,
    enable_writable_file_system: Option<bool>,
    network: Option<NetworkMode>,
    user: Option<u32>,
    group: Option<u32>,
    allow: Option<Vec<Allowance>>,
    limits: Option<LimitsSpec>,
}

/// Which fields `spec` sets plainly (not through `added_*`).
fn sets(spec: &ContainerSpec, field: UseField) -> bool {
    match field {
        UseField::Layers => spec.layers.is_some(),
        UseField::Environment => spec.environment.is_some(),
        UseField::Mounts => spec.mounts.is_some(),
        UseField::WorkingDirectory => spec.working_directory.is_some(),
        UseField::EnableWritableFileSystem => spec.enable_writable_file_system.is_some(),
        UseField::Network => spec.network.is_some(),
        UseField::User => spec.user.is_some(),
        UseField::Group => spec.group.is_some(),
        UseField::Allow => spec.allow.is_some(),
        UseField::Limits => spec.limits.is_some(),
    }
}

fn adds(spec: &ContainerSpec, field: UseField) -> bool {
    match field {
        UseField::Layers => spec.added_layers.is_some(),
        UseField::Environment => spec.added_environment.is_some(),
        UseField::Mounts => spec.added_mounts.is_some(),
        _ => false,
    }
}

/// Checks one container on its own and returns which fields it takes from its parent.
fn check(spec: &ContainerSpec, what: &str) -> Result<Vec<UseField>, ResolveError> {
    if let Some(image) = &spec.image {
        return error(format!(
            "{what}: container images (`image = \"{}\"`) are not supported yet; build the root from layers instead",
            image.name
        ));
    }
    for field in [UseField::Layers, UseField::Environment, UseField::Mounts] {
        if sets(spec, field) && adds(spec, field) {
            let name = field.name();
            return error(format!("{what}: cannot set both `{name}` and `added_{name}`"));
        }
    }
    let Some(parent) = &spec.parent else {
        if let Some(field) = UseField::ALL.iter().find(|f| adds(spec, **f)) {
            return error(format!("{what}: `added_{}` needs a `parent` to add to", field.name()));
        }
        return Ok(Vec::new());
    };
    let used = match &parent.use_ {
        None => UseField::ALL.iter().copied().filter(|f| !sets(spec, *f)).collect(),
        Some(explicit) => {
            if let Some(field) = explicit.iter().find(|f| sets(spec, **f)) {
                let name = field.name();
                let hint = if matches!(field, UseField::Layers | UseField::Environment | UseField::Mounts) {
                    format!(" (try `added_{name}` instead)")
                } else {
                    String::new()
                };
                return error(format!(
                    "{what}: field `{name}` cannot be set if `parent` with an explicit `use` of `{name}` is also \
                     specified{hint}"
                ));
            }
            explicit.clone()
        }
    };
    if let Some(field) = UseField::ALL.iter().find(|f| adds(spec, **f) && !used.contains(f)) {
        let name = field.name();
        return error(format!("{what}: `added_{name}` needs the parent's `use` to include `{name}`"));
    }
    Ok(used)
}

fn fields(
    spec: &ContainerSpec,
    what: &str,
    named: &BTreeMap<String, ContainerSpec>,
    chain: &mut Vec<String>,
) -> Result<Fields, ResolveError> {
    let used = check(spec, what)?;
    let parent = match &spec.parent {
        None => Fields::default(),
        Some(Inherit { name, .. }) => {
            if chain.contains(name) {
                chain.push(name.clone());
                return error(format!("ancestor loop: {}", chain.join(" -> ")));
            }
            let Some(parent_spec) = named.get(name) else {
                return error(format!(
                    "{what}: no container named `{name}` (define it in a `containers` object first)"
                ));
            };
            chain.push(name.clone());
            let fields = fields(parent_spec, &format!("container `{name}`"), named, chain)?;
            chain.pop();
            fields
        }
    };
    let uses = |field| used.contains(&field);
    let env = |e: &Option<crate::spec::EnvSpecs>| e.as_ref().map(|e| e.0.clone());
    Ok(Fields {
        layers: list(&spec.layers, &spec.added_layers, parent.layers, uses(UseField::Layers)),
        environment: list(
            &env(&spec.environment),
            &env(&spec.added_environment),
            parent.environment,
            uses(UseField::Environment),
        ),
        mounts: list(&spec.mounts, &spec.added_mounts, parent.mounts, uses(UseField::Mounts)),
        working_directory: spec
            .working_directory
            .clone()
            .or_else(|| parent.working_directory.filter(|_| uses(UseField::WorkingDirectory))),
        enable_writable_file_system: spec.enable_writable_file_system.or_else(|| {
            parent.enable_writable_file_system.filter(|_| uses(UseField::EnableWritableFileSystem))
        }),
        network: spec.network.or_else(|| parent.network.filter(|_| uses(UseField::Network))),
        user: spec.user.or_else(|| parent.user.filter(|_| uses(UseField::User))),
        group: spec.group.or_else(|| parent.group.filter(|_| uses(UseField::Group))),
        allow: spec.allow.clone().or_else(|| parent.allow.filter(|_| uses(UseField::Allow))),
        limits: spec.limits.or_else(|| parent.limits.filter(|_| uses(UseField::Limits))),
    })
}

/// A list field: replaced, appended to the parent's, inherited, or empty.
fn list<T: Clone>(own: &Option<Vec<T>>, added: &Option<Vec<T>>, inherited: Vec<T>, uses: bool) -> Vec<T> {
    match (own, added) {
        (Some(own), _) => own.clone(),
        (None, Some(added)) => inherited.into_iter().chain(added.iter().cloned()).collect(),
        (None, None) if uses => inherited,
        (None, None) => Vec::new(),
    }
}

/// The network `spec` sets or inherits through its parents' `use`, if any does (`None`: the
/// default applies). A loop or an unknown parent is left for [`resolve`] to report.
pub fn network(spec: &ContainerSpec, named: &BTreeMap<String, ContainerSpec>) -> Option<NetworkMode> {
    let mut spec = spec;
    for _ in 0..=named.len() {
        if spec.network.is_some() {
            return spec.network;
        }
        let parent = spec.parent.as_ref()?;
        if parent.use_.as_ref().is_some_and(|used| !used.contains(&UseField::Network)) {
            return None;
        }
        spec = named.get(&parent.name)?;
    }
    None
}

/// Resolves `spec` against the `named` containers; `env` reads the client's environment for
/// `$env{...}`.
pub fn resolve(
    spec: &ContainerSpec,
    named: &BTreeMap<String, ContainerSpec>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, ResolveError> {
    let fields = fields(spec, "the job", named, &mut Vec::new())?;
    if fields.layers.is_empty() {
        return error("the job has no layers: its root would be empty (add `layers`)");
    }
    Ok(Resolved {
        environment: evaluate(&fields.environment, env)?,
        layers: fields.layers,
        mounts: fields.mounts,
        working_directory: fields.working_directory.unwrap_or_else(|| "/".to_owned()),
        enable_writable_file_system: fields.enable_writable_file_system.unwrap_or(false),
        network: fields.network.unwrap_or(NetworkMode::Disabled),
        user: fields.user.unwrap_or(0),
        group: fields.group.unwrap_or(0),
        allow: {
            let mut allow = fields.allow.unwrap_or_default();
            allow.sort_unstable();
            allow.dedup();
            allow
        },
        limits: fields.limits.unwrap_or_default(),
    })
}

/// Evaluates environment elements in order, each substituted against the map before it.
pub fn evaluate(
    specs: &[EnvironmentSpec],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, ResolveError> {
    let mut candidate: BTreeMap<String, String> = BTreeMap::new();
    for spec in specs {
        let mut next = BTreeMap::new();
        for (name, value) in &spec.vars {
            let value = substitute(value, env, &|var| candidate.get(var).cloned())
                .map_err(|why| ResolveError(format!("environment variable {name}: {why}")))?;
            next.insert(name.clone(), value);
        }
        if spec.extend {
            candidate.extend(next);
        } else {
            candidate = next;
        }
    }
    Ok(candidate.into_iter().collect())
}

/// Looks a variable up: in the client's environment, or in the environment built so far.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Expands `$env{VAR}`, `$prev{VAR}`, their `:-default` forms, and `$$`.
pub fn substitute(
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
    prev: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (source, lookup): (&str, Lookup<'_>) = if let Some(after) = rest.strip_prefix("env{") {
            rest = after;
            ("env", env)
        } else if let Some(after) = rest.strip_prefix("prev{") {
            rest = after;
            ("prev", prev)
        } else {
            return Err(format!(
                "bad `$` in {value:?}: write `$$` for a literal `$`, or `$env{{VAR}}`, `$prev{{VAR}}`"
            ));
        };
        let Some(end) = rest.find('}') else {
            return Err(format!("unclosed `${source}{{` in {value:?}"));
        };
        let inner = &rest[..end];
        rest = &rest[end + 1..];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(found), _) => out.push_str(&found),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(format!("unknown variable `${source}{{{name}}}`")),
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ContainerSpec {
        serde_json::from_str(json).unwrap()
    }

    fn named(json: &str) -> BTreeMap<String, ContainerSpec> {
        serde_json::from_str(json).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/me".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn defaults_apply() {
        let r = resolve(&spec(r#"{"layers": [{"stubs": ["/tmp/"]}]}"#), &BTreeMap::new(), &no_env).unwrap();
        assert_eq!(r.working_directory, "/");
        assert_eq!(r.network, NetworkMode::Disabled);
        assert!(!r.enable_writable_file_system);
        assert_eq!((r.user, r.group), (0, 0));
    }

    #[test]
    fn implicit_use_inherits_everything_not_set() {
        let named = named(
            r#"{"base": {"layers": [{"stubs": ["/a"]}], "network": "loopback", "user": 7,
                "mounts": [{"type": "tmp", "mount_point": "/tmp"}], "environment": {"A": "1"}}}"#,
        );
        let r = resolve(
            &spec(r#"{"parent": "base", "user": 8, "added_layers": [{"stubs": ["/b"]}]}"#),
            &named,
            &no_env,
        )
        .unwrap();
        assert_eq!(r.layers.len(), 2, "added layers append to the parent's");
        assert_eq!(r.network, NetworkMode::Loopback);
        assert_eq!(r.user, 8);
        assert_eq!(r.mounts.len(), 1);
        assert_eq!(r.environment, [("A".into(), "1".into())]);
    }

    #[test]
    fn explicit_use_limits_inheritance() {
        let named = named(r#"{"base": {"layers": [{"stubs": ["/a"]}], "network": "loopback"}}"#);
        let r =
            resolve(&spec(r#"{"parent": {"name": "base", "use": ["layers"]}}"#), &named, &no_env).unwrap();
        assert_eq!(r.network, NetworkMode::Disabled);
        assert_eq!(r.layers.len(), 1);
    }

    #[test]
    fn chains_prepend_each_ancestors_lists() {
        let named = named(
            r#"{"a": {"layers": [{"stubs": ["/a"]}]},
                "b": {"parent": "a", "added_layers": [{"stubs": ["/b"]}]}}"#,
        );
        let r = resolve(&spec(r#"{"parent": "b", "added_layers": [{"stubs": ["/c"]}]}"#), &named, &no_env)
            .unwrap();
        let stubs: Vec<_> = r
            .layers
            .iter()
            .map(|l| match l {
                LayerSpec::Stubs { stubs } => stubs[0].clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(stubs, ["/a", "/b", "/c"]);
    }

    #[test]
    fn inheritance_mistakes_are_explained() {
        let named = named(
            r#"{"base": {"layers": [{"stubs": ["/a"]}]}, "loop1": {"parent": "loop2"}, "loop2": {"parent": "loop1"}}"#,
        );
        let cases = [
            (
                r#"{"parent": {"name": "base", "use": ["layers"]}, "layers": []}"#,
                "field `layers` cannot be set if `parent` with an explicit `use` of `layers` is also specified (try `added_layers` instead)",
            ),
            (
                r#"{"parent": {"name": "base", "use": ["layers"]}, "added_mounts": []}"#,
                "`added_mounts` needs the parent's `use` to include `mounts`",
            ),
            (r#"{"added_layers": [{"stubs": ["/x"]}]}"#, "`added_layers` needs a `parent`"),
            (
                r#"{"parent": "base", "layers": [], "added_layers": []}"#,
                "cannot set both `layers` and `added_layers`",
            ),
            (r#"{"parent": "loop1"}"#, "ancestor loop: loop1 -> loop2 -> loop1"),
            (r#"{"parent": "nope"}"#, "no container named `nope`"),
            (r#"{"image": "docker://alpine", "layers": [{"stubs": ["/a"]}]}"#, "container images"),
            (r#"{"network": "local"}"#, "no layers"),
        ];
        for (json, expected) in cases {
            let error = resolve(&spec(json), &named, &no_env).unwrap_err().to_string();
            assert!(error.contains(expected), "{json}: {error:?} should contain {expected:?}");
        }
    }

    #[test]
    fn environment_substitutes_and_extends_in_order() {
        let specs: Vec<EnvironmentSpec> = serde_json::from_str(
            r#"[
                {"vars": {"A": "1", "HOME": "$env{HOME}", "COST": "$$5"}, "extend": false},
                {"vars": {"A": "$prev{A}-2", "B": "$prev{NONE:-dflt}", "C": "$env{EMPTY:-was-empty}"}, "extend": true}
            ]"#,
        )
        .unwrap();
        let vars = evaluate(&specs, &env).unwrap();
        assert_eq!(
            vars,
            [
                ("A".to_string(), "1-2".to_string()),
                ("B".into(), "dflt".into()),
                ("C".into(), "was-empty".into()),
                ("COST".into(), "$5".into()),
                ("HOME".into(), "/home/me".into())
            ]
        );
        let replaced: Vec<EnvironmentSpec> =
            serde_json::from_str(r#"[{"vars": {"A": "1"}}, {"vars": {"B": "$prev{A}"}, "extend": false}]"#)
                .unwrap();
        assert_eq!(evaluate(&replaced, &env).unwrap(), [("B".to_string(), "1".to_string())]);
    }

    #[test]
    fn bad_substitutions_are_errors() {
        for (value, expected) in [
            ("$env{NOPE}", "unknown variable `$env{NOPE}`"),
            ("$HOME", "bad `$`"),
            ("$env{HOME", "unclosed"),
            ("$prev{X}", "unknown variable `$prev{X}`"),
        ] {
            let error = substitute(value, &env, &no_env).unwrap_err();
            assert!(error.contains(expected), "{value}: {error}");
        }
    }
}
