//! Standalone mode: the client with an embedded local worker. Jobs are resolved, their layers
//! built into the local layer cache, planned, and handed to the executor.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use maelstrom_container::{Device, Mount, NetworkMode, Spec, Zygote};
use maelstrom_wire::artifact::Digest;
use maelstrom_worker::cache::{CacheError, LayerCache};
use maelstrom_worker::{Executor, ExecutorConfig, ExecutorError, JobId, JobRequest, ResultSink};

use crate::digests::DigestCache;
use crate::layers::{Built, LayerBuilder};
use crate::resolve::{Resolved, resolve};
use crate::spec::{ContainerSpec, DeviceName, JobSpec, MountSpec, Network};

#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Holds the layer cache (`local-worker/`) and the digest cache.
    pub cache_root: PathBuf,
    pub cache_bytes_max: u64,
    pub slots: usize,
    pub output_bytes_max: usize,
    /// Relative layer paths and bind sources are taken relative to it.
    pub project: PathBuf,
}

/// The client could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Executor(#[from] ExecutorError),
}

/// A job was refused before it ran: its spec is at fault, or its layers could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PrepareError(pub String);

/// A client running jobs on an embedded worker.
#[derive(Debug)]
pub struct LocalClient {
    containers: BTreeMap<String, ContainerSpec>,
    layers: LayerBuilder,
    cache: Arc<LayerCache>,
    trees: HashMap<Digest, PathBuf>,
    executor: Executor,
    project: PathBuf,
    next_id: JobId,
}

impl LocalClient {
    /// Starts the embedded worker on `zygote`; each job's result goes to `sink`.
    pub fn start(zygote: Zygote, config: LocalConfig, sink: ResultSink) -> Result<Self, StartError> {
        let cache =
            Arc::new(LayerCache::open(&config.cache_root.join("local-worker"), config.cache_bytes_max)?);
        let digests = DigestCache::open(&config.cache_root.join("cached-digests"));
        let executor = Executor::start(
            zygote,
            ExecutorConfig { slots: config.slots, output_bytes_max: config.output_bytes_max },
            sink,
        )?;
        Ok(Self {
            containers: BTreeMap::new(),
            layers: LayerBuilder::new(config.project.clone(), digests),
            cache,
            trees: HashMap::new(),
            executor,
            project: config.project,
            next_id: 1,
        })
    }

    /// Names containers for later jobs.
    pub fn add_containers(&mut self, named: BTreeMap<String, ContainerSpec>) {
        self.containers.extend(named);
    }

    /// Prepares and queues a job; its result comes through the sink under the returned id.
    pub fn run(&mut self, job: &JobSpec) -> Result<JobId, PrepareError> {
        let spawn =
            maelstrom_container::compile(&self.prepare(job)?).map_err(|e| PrepareError(e.to_string()))?;
        let id = self.next_id;
        self.next_id += 1;
        let timeout = job.timeout.map(|t| Duration::from_secs(u64::from(t.get())));
        self.executor.submit(JobRequest {
            id,
            spawn,
            priority: job.priority,
            estimated: job.estimated,
            timeout,
        });
        Ok(id)
    }

    /// Resolves a job, builds its layers into the cache, and returns its sandbox spec.
    pub fn prepare(&mut self, job: &JobSpec) -> Result<Spec, PrepareError> {
        let (resolved, built) = self.resolve(job)?;
        let mut layers = Vec::with_capacity(built.len());
        for built in &built {
            layers.push(self.tree(built)?);
        }
        Ok(self.sandbox(job, resolved, layers))
    }

    /// Resolves a job's container and builds its layers' artifacts (not their trees).
    pub fn resolve(&mut self, job: &JobSpec) -> Result<(Resolved, Vec<Arc<Built>>), PrepareError> {
        let resolved = resolve(&job.container, &self.containers, &|name| std::env::var(name).ok())
            .map_err(|e| PrepareError(e.to_string()))?;
        let built = resolved
            .layers
            .iter()
            .map(|layer| self.layers.build(layer).map_err(|e| PrepareError(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((resolved, built))
    }

    fn tree(&mut self, built: &Built) -> Result<PathBuf, PrepareError> {
        let key = built.key();
        if let Some(tree) = self.trees.get(&key) {
            return Ok(tree.clone());
        }
        let tree = self
            .cache
            .get_or_build(&key, |dir| match built {
                Built::Manifest { manifest, sources, .. } => maelstrom_worker::layer::materialize(
                    manifest,
                    &|digest| sources.get(digest).cloned(),
                    dir,
                ),
                Built::Tar { path, .. } => maelstrom_worker::layer::extract_tar(path, dir),
            })
            .map_err(|e| PrepareError(e.to_string()))?;
        self.trees.insert(key, tree.clone());
        Ok(tree)
    }

    fn sandbox(&self, job: &JobSpec, resolved: Resolved, layers: Vec<PathBuf>) -> Spec {
        sandbox(job, resolved, layers, &self.project)
    }

    /// Writes caches back (the layer cache needs nothing; the digest cache is rewritten).
    pub fn save(&mut self) {
        self.layers.save();
    }

    pub fn executor(&self) -> &Executor {
        &self.executor
    }
}

/// The sandbox spec for a resolved job whose layers' trees are `layers` (bottom first).
pub fn sandbox(job: &JobSpec, resolved: Resolved, layers: Vec<PathBuf>, project: &Path) -> Spec {
    let mut spec = Spec::new(layers, &job.program);
    spec.arguments = job.arguments.iter().map(OsString::from).collect();
    spec.environment = resolved.environment.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    spec.working_directory = PathBuf::from(resolved.working_directory);
    spec.writable_root = resolved.enable_writable_file_system;
    spec.network = match resolved.network {
        Network::Disabled => NetworkMode::Disabled,
        Network::Loopback => NetworkMode::Loopback,
        Network::Local => NetworkMode::Local,
    };
    spec.user = resolved.user;
    spec.group = resolved.group;
    spec.mounts = resolved.mounts.iter().map(|m| mount(m, project)).collect();
    spec
}

fn mount(spec: &MountSpec, project: &Path) -> Mount {
    match spec {
        MountSpec::Bind { mount_point, local_path, read_only } => Mount::Bind {
            source: project.join(local_path),
            target: mount_point.into(),
            read_only: *read_only,
        },
        MountSpec::Devices { devices } => Mount::Devices(devices.iter().map(|d| device(*d)).collect()),
        MountSpec::Devpts { mount_point } => Mount::Devpts { target: mount_point.into() },
        MountSpec::Mqueue { mount_point } => Mount::Mqueue { target: mount_point.into() },
        MountSpec::Proc { mount_point } => Mount::Proc { target: mount_point.into() },
        MountSpec::Sys { mount_point } => Mount::Sys { target: mount_point.into() },
        MountSpec::Tmp { mount_point } => Mount::Tmp { target: mount_point.into() },
    }
}

/// The sandbox's name for a device of a spec.
pub fn device(name: DeviceName) -> Device {
    match name {
        DeviceName::Full => Device::Full,
        DeviceName::Fuse => Device::Fuse,
        DeviceName::Null => Device::Null,
        DeviceName::Random => Device::Random,
        DeviceName::Shm => Device::Shm,
        DeviceName::Tty => Device::Tty,
        DeviceName::Urandom => Device::Urandom,
        DeviceName::Zero => Device::Zero,
    }
}
