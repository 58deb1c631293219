//! The job and container spec formats, as written in JSON (maelstrom-run's stream) and TOML
//! (the test runners' spec files). Field names, shapes and defaults follow the reference
//! system's, so its users' files parse unchanged. Unknown fields are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// How a job reaches the network, and the devices a `devices` mount can expose: the sandbox's
/// own types, in the spec formats' words (`"loopback"`, `"null"`).
pub use maelstrom_wire::zygote::{Allowance, Device, NetworkMode};

/// A field a container can inherit from its parent (or an image).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UseField {
    Layers,
    EnableWritableFileSystem,
    Environment,
    WorkingDirectory,
    Mounts,
    Network,
    User,
    Group,
    Allow,
    Limits,
}

impl UseField {
    pub const ALL: [UseField; 10] = [
        UseField::Layers,
        UseField::EnableWritableFileSystem,
        UseField::Environment,
        UseField::WorkingDirectory,
        UseField::Mounts,
        UseField::Network,
        UseField::User,
        UseField::Group,
        UseField::Allow,
        UseField::Limits,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UseField::Layers => "layers",
            UseField::EnableWritableFileSystem => "enable_writable_file_system",
            UseField::Environment => "environment",
            UseField::WorkingDirectory => "working_directory",
            UseField::Mounts => "mounts",
            UseField::Network => "network",
            UseField::User => "user",
            UseField::Group => "group",
            UseField::Allow => "allow",
            UseField::Limits => "limits",
        }
    }
}

/// `parent = "name"` or `parent = { name = "...", use = [...] }` (and the same for `image`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Inherit {
    pub name: String,
    /// `None`: implicit, every field not set here.
    #[serde(rename = "use")]
    pub use_: Option<Vec<UseField>>,
}

impl<'de> Deserialize<'de> for Inherit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            name: String,
            #[serde(rename = "use")]
            use_: Option<Vec<UseField>>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Inherit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name, or a table with `name` and optional `use`")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Inherit, E> {
                Ok(Inherit { name: name.to_owned(), use_: None })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Inherit, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Inherit { name: full.name, use_: full.use_ })
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// One element of an environment: variables, replacing or extending what came before.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSpec {
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub extend: bool,
}

/// An environment: a map (shorthand for one extending element) or a list of elements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnvSpecs(pub Vec<EnvironmentSpec>);

impl<'de> Deserialize<'de> for EnvSpecs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvSpecs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of variables, or a list of { vars, extend } tables")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EnvSpecs, A::Error> {
                let vars = BTreeMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EnvSpecs(vec![EnvironmentSpec { vars, extend: true }]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<EnvSpecs, A::Error> {
                Ok(EnvSpecs(Vec::deserialize(de::value::SeqAccessDeserializer::new(seq))?))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// How paths of `glob`, `paths` and `shared_library_dependencies` layers are placed, applied in
/// this order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PrefixOptions {
    pub follow_symlinks: bool,
    pub canonicalize: bool,
    pub strip_prefix: Option<String>,
    pub prepend_prefix: Option<String>,
}

/// A symlink of a `symlinks` layer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SymlinkSpec {
    pub link: String,
    pub target: String,
}

/// One layer of a container's root; the key present selects the kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum LayerSpec {
    Tar {
        tar: String,
    },
    Glob {
        glob: String,
        prefix: PrefixOptions,
    },
    Paths {
        paths: Vec<String>,
        prefix: PrefixOptions,
    },
    Stubs {
        stubs: Vec<String>,
    },
    Symlinks {
        symlinks: Vec<SymlinkSpec>,
    },
    SharedLibraryDependencies {
        binaries: Vec<String>,
        prefix: PrefixOptions,
    },
    /// Parsed for compatibility; building one is refused with a clear error.
    Command {
        command: Vec<String>,
    },
    /// A directory's files and subdirectories, at the same paths, less the subtrees named in
    /// `exclude` (and `.git`). Runners make these (a test's package directory); spec files
    /// cannot name them.
    Tree {
        tree: String,
        exclude: Vec<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayer {
    tar: Option<String>,
    glob: Option<String>,
    paths: Option<Vec<String>>,
    stubs: Option<Vec<String>>,
    symlinks: Option<Vec<SymlinkSpec>>,
    shared_library_dependencies: Option<Vec<String>>,
    command: Option<CommandSpec>,
    follow_symlinks: Option<bool>,
    canonicalize: Option<bool>,
    strip_prefix: Option<String>,
    prepend_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CommandSpec {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for LayerSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawLayer::deserialize(deserializer)?;
        let has_prefix = raw.follow_symlinks.is_some()
            || raw.canonicalize.is_some()
            || raw.strip_prefix.is_some()
            || raw.prepend_prefix.is_some();
        let prefix = PrefixOptions {
            follow_symlinks: raw.follow_symlinks.unwrap_or(false),
            canonicalize: raw.canonicalize.unwrap_or(false),
            strip_prefix: raw.strip_prefix,
            prepend_prefix: raw.prepend_prefix,
        };
        let mut kinds = Vec::new();
        if let Some(tar) = raw.tar {
            kinds.push(("tar", false, LayerSpec::Tar { tar }));
        }
        if let Some(glob) = raw.glob {
            kinds.push(("glob", true, LayerSpec::Glob { glob, prefix: prefix.clone() }));
        }
        if let Some(paths) = raw.paths {
            kinds.push(("paths", true, LayerSpec::Paths { paths, prefix: prefix.clone() }));
        }
        if let Some(stubs) = raw.stubs {
            kinds.push(("stubs", false, LayerSpec::Stubs { stubs }));
        }
        if let Some(symlinks) = raw.symlinks {
            kinds.push(("symlinks", false, LayerSpec::Symlinks { symlinks }));
        }
        if let Some(binaries) = raw.shared_library_dependencies {
            kinds.push((
                "shared_library_dependencies",
                true,
                LayerSpec::SharedLibraryDependencies { binaries, prefix },
            ));
        }
        if let Some(command) = raw.command {
            let command = match command {
                CommandSpec::One(program) => vec![program],
                CommandSpec::Many(argv) => argv,
            };
            kinds.push(("command", false, LayerSpec::Command { command }));
        }
        match kinds.len() {
            0 => Err(de::Error::custom(
                "a layer needs one of `tar`, `glob`, `paths`, `stubs`, `symlinks`, `shared_library_dependencies`",
            )),
            1 => {
                let (name, takes_prefix, spec) = kinds.pop().expect("one");
                if has_prefix && !takes_prefix {
                    return Err(de::Error::custom(format!(
                        "a `{name}` layer takes no prefix options (follow_symlinks, canonicalize, strip_prefix, \
                         prepend_prefix)"
                    )));
                }
                Ok(spec)
            }
            _ => {
                let names: Vec<&str> = kinds.iter().map(|(n, _, _)| *n).collect();
                Err(de::Error::custom(format!(
                    "a layer has exactly one kind, this one has {}",
                    names.join(" and ")
                )))
            }
        }
    }
}

/// How much a job may use, where it differs from the worker's default (its share of what the
/// worker may use). Each field is capped at the worker's maximum. Like `network`, the table is
/// one value: a container's replaces its parent's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Memory, tmpfs pages included: bytes, or a string like `"1.5 GiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteCount>,
    /// Processes and threads at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Seconds of CPU time each process may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<u64>,
    /// The size of each tmpfs, and of a writable root's changes (half the memory by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<ByteCount>,
}

impl LimitsSpec {
    /// The limits as they travel (0: the worker's default).
    pub fn to_wire(self) -> maelstrom_wire::cluster::JobLimits {
        maelstrom_wire::cluster::JobLimits {
            memory_bytes: self.memory.map_or(0, |b| b.0),
            processes: self.processes.unwrap_or(0),
            open_files: self.open_files.unwrap_or(0),
            cpu_seconds: self.cpu_time.unwrap_or(0),
            tmpfs_bytes: self.tmpfs.map_or(0, |b| b.0),
        }
    }
}

/// A number of bytes: an integer, or a string like `"64 MiB"` or `"1.5GB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ByteCount(pub u64);

impl<'de> Deserialize<'de> for ByteCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteCount(n)),
            Raw::Text(text) => text
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| ByteCount(b.as_u64()))
                .map_err(|e| serde::de::Error::custom(format!("bad size {text:?} (try \"64 MiB\"): {e}"))),
        }
    }
}

/// A mount inside the container.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MountSpec {
    Bind {
        mount_point: String,
        local_path: String,
        #[serde(default)]
        read_only: bool,
    },
    Devices {
        devices: Vec<Device>,
    },
    Devpts {
        mount_point: String,
    },
    Mqueue {
        mount_point: String,
    },
    Proc {
        mount_point: String,
    },
    Sys {
        mount_point: String,
    },
    Tmp {
        mount_point: String,
    },
}

macro_rules! container_spec {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* #[serde(default, skip_serializing_if = "Option::is_none")] pub $field: $ty,)*
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub image: Option<Inherit>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub parent: Option<Inherit>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub layers: Option<Vec<LayerSpec>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub added_layers: Option<Vec<LayerSpec>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub environment: Option<EnvSpecs>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub added_environment: Option<EnvSpecs>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub mounts: Option<Vec<MountSpec>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub added_mounts: Option<Vec<MountSpec>>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub working_directory: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub enable_writable_file_system: Option<bool>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub network: Option<NetworkMode>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub user: Option<u32>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub group: Option<u32>,
            /// What jobs may use beyond the default sandbox, by name (ours; not in the
            /// reference's format).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow: Option<Vec<Allowance>>,
            /// How much jobs may use (ours; not in the reference's format).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub limits: Option<LimitsSpec>,
        }
    };
}

container_spec! {
    /// A container: the filesystem and environment of a job, maybe inherited from a parent.
    pub struct ContainerSpec {}
}

container_spec! {
    /// One object of maelstrom-run's JSON stream: a job (container fields plus `program`...),
    /// or `{"containers": {...}}`, which names containers for later jobs.
    pub struct StreamItem {
        pub program: Option<String>,
        pub arguments: Option<Vec<String>>,
        /// Seconds; 0 means none.
        pub timeout: Option<u32>,
        pub priority: Option<i8>,
        pub containers: Option<BTreeMap<String, ContainerSpec>>,
    }
}

/// A job, as the client runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    pub container: ContainerSpec,
    pub program: String,
    pub arguments: Vec<String>,
    /// `None` for the worker's default timeout.
    pub timeout: Option<std::num::NonZeroU32>,
    /// What the job is sent at its timeout before it is killed (runners only: a go test's
    /// SIGQUIT).
    pub timeout_warning: Option<maelstrom_wire::cluster::TimeoutWarning>,
    pub priority: i8,
    /// How long it is expected to take (longest first, within a priority).
    pub estimated: Option<std::time::Duration>,
    /// Directories of its layers that stay visible at their own paths under a fresh tmpfs, as
    /// tree layers' roots do (runners only: cargo's build directory, holding a package's
    /// binaries for its integration tests).
    pub keep_visible: Vec<String>,
}

/// What one stream object asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamRequest {
    Containers(BTreeMap<String, ContainerSpec>),
    Job(Box<JobSpec>),
}

impl StreamItem {
    /// Splits the object into what it asks for, refusing mixtures.
    pub fn into_request(self) -> Result<StreamRequest, String> {
        let StreamItem {
            program,
            arguments,
            timeout,
            priority,
            containers,
            image,
            parent,
            layers,
            added_layers,
            environment,
            added_environment,
            mounts,
            added_mounts,
            working_directory,
            enable_writable_file_system,
            network,
            user,
            group,
            allow,
            limits,
        } = self;
        let container = ContainerSpec {
            image,
            parent,
            layers,
            added_layers,
            environment,
            added_environment,
            mounts,
            added_mounts,
            working_directory,
            enable_writable_file_system,
            network,
            user,
            group,
            allow,
            limits,
        };
        if let Some(containers) = containers {
            if program.is_some() || arguments.is_some() || timeout.is_some() || priority.is_some() {
                return Err("an object with `containers` must have no other fields".into());
            }
            if container != ContainerSpec::default() {
                return Err("an object with `containers` must have no other fields".into());
            }
            return Ok(StreamRequest::Containers(containers));
        }
        let program = program.ok_or("missing field `program`")?;
        Ok(StreamRequest::Job(Box::new(JobSpec {
            container,
            program,
            arguments: arguments.unwrap_or_default(),
            timeout: timeout.and_then(std::num::NonZeroU32::new),
            timeout_warning: None,
            priority: priority.unwrap_or(0),
            estimated: None,
            keep_visible: Vec::new(),
        })))
    }
}

/// The spec format's file-system paths are plain strings; this is how they become paths.
pub fn path_of(s: &str) -> PathBuf {
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<StreamRequest, String> {
        let item: StreamItem = serde_json::from_str(json).map_err(|e| e.to_string())?;
        item.into_request()
    }

    fn job(json: &str) -> JobSpec {
        match parse(json).unwrap() {
            StreamRequest::Job(job) => *job,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_full_job_parses() {
        let job = job(r#"{
            "program": "/bin/echo", "arguments": ["hi"], "timeout": 5, "priority": -2,
            "layers": [
                {"tar": "base.tar"},
                {"glob": "src/**", "strip_prefix": "src/", "prepend_prefix": "/app/"},
                {"paths": ["/bin/echo"], "follow_symlinks": true, "canonicalize": true},
                {"stubs": ["/dev/{null,zero}", "/tmp/"]},
                {"symlinks": [{"link": "/bin/sh", "target": "busybox"}]},
                {"shared_library_dependencies": ["/bin/echo"]}
            ],
            "environment": {"A": "1"},
            "mounts": [
                {"type": "bind", "mount_point": "/data", "local_path": "data", "read_only": true},
                {"type": "devices", "devices": ["null", "zero", "shm"]},
                {"type": "devpts", "mount_point": "/dev/pts"},
                {"type": "mqueue", "mount_point": "/dev/mqueue"},
                {"type": "proc", "mount_point": "/proc"},
                {"type": "sys", "mount_point": "/sys"},
                {"type": "tmp", "mount_point": "/tmp"}
            ],
            "network": "loopback", "enable_writable_file_system": true,
            "working_directory": "/app", "user": 1000, "group": 1000
        }"#);
        assert_eq!(job.program, "/bin/echo");
        assert_eq!(job.timeout.map(|t| t.get()), Some(5));
        assert_eq!(job.priority, -2);
        let layers = job.container.layers.unwrap();
        assert_eq!(layers.len(), 6);
        assert!(
            matches!(&layers[1], LayerSpec::Glob { prefix, .. } if prefix.strip_prefix.as_deref() == Some("src/"))
        );
        assert_eq!(job.container.mounts.unwrap().len(), 7);
        assert_eq!(
            job.container.environment.unwrap().0,
            vec![EnvironmentSpec { vars: [("A".to_string(), "1".to_string())].into(), extend: true }]
        );
    }

    #[test]
    fn zero_timeout_means_none() {
        assert_eq!(job(r#"{"program": "x", "timeout": 0}"#).timeout, None);
    }

    #[test]
    fn environment_list_form_and_parents() {
        let job = job(r#"{"program": "x", "parent": {"name": "base", "use": ["layers", "environment"]},
            "added_environment": [{"vars": {"B": "$prev{B:-1}"}, "extend": false}]}"#);
        let parent = job.container.parent.unwrap();
        assert_eq!(parent.name, "base");
        assert_eq!(parent.use_, Some(vec![UseField::Layers, UseField::Environment]));
        assert!(!job.container.added_environment.unwrap().0[0].extend);
        let job2 = self::job(r#"{"program": "x", "parent": "base"}"#);
        assert_eq!(job2.container.parent.unwrap().use_, None);
    }

    #[test]
    fn containers_objects_name_containers() {
        match parse(r#"{"containers": {"base": {"layers": [{"stubs": ["/tmp/"]}], "network": "local"}}}"#)
            .unwrap()
        {
            StreamRequest::Containers(map) => assert_eq!(map["base"].network, Some(NetworkMode::Local)),
            other => panic!("{other:?}"),
        }
        let error = parse(r#"{"containers": {}, "program": "x"}"#).unwrap_err();
        assert!(error.contains("no other fields"), "{error}");
    }

    #[test]
    fn mistakes_are_named_with_their_place() {
        let cases = [
            (r#"{"program": "x", "bogus": 1}"#, "unknown field `bogus`"),
            (r#"{"program": "x", "layers": [{"tar": "a", "glob": "b"}]}"#, "exactly one kind"),
            (
                r#"{"program": "x", "layers": [{"stubs": ["a"], "canonicalize": true}]}"#,
                "takes no prefix options",
            ),
            (r#"{"program": "x", "layers": [{}]}"#, "a layer needs one of"),
            (
                r#"{"program": "x", "mounts": [{"type": "nfs", "mount_point": "/a"}]}"#,
                "unknown variant `nfs`",
            ),
            (
                r#"{"program": "x", "mounts": [{"type": "tmp", "mount_point": "/a", "size": 1}]}"#,
                "unknown field `size`",
            ),
            (r#"{"program": "x", "network": "wifi"}"#, "unknown variant `wifi`"),
            (
                r#"{"program": "x", "mounts": [{"type": "devices", "devices": ["sda"]}]}"#,
                "unknown variant `sda`",
            ),
            (r#"{"arguments": []}"#, "missing field `program`"),
            (r#"{"program": "x", "parent": {"name": "a", "use": ["nope"]}}"#, "unknown variant `nope`"),
        ];
        for (json, expected) in cases {
            let error = parse(json).unwrap_err();
            assert!(error.contains(expected), "{json}: {error:?} should contain {expected:?}");
        }
        let error = parse("{\"program\": \"x\",\n  \"bogus\": 1}").unwrap_err();
        assert!(error.contains("line 2 column"), "{error}");
    }

    #[test]
    fn the_same_types_read_toml() {
        let spec: ContainerSpec = toml::from_str(
            r#"
            layers = [{ stubs = ["/tmp/"] }, { paths = ["a"], prepend_prefix = "/x/" }]
            environment = { PATH = "/bin" }
            mounts = [{ type = "proc", mount_point = "/proc" }]
            parent = { name = "p", use = ["mounts"] }
            "#,
        )
        .unwrap();
        assert_eq!(spec.layers.unwrap().len(), 2);
        assert_eq!(spec.parent.unwrap().use_, Some(vec![UseField::Mounts]));
    }
}
