//! Standalone mode: the client with an embedded local worker. Jobs are resolved, their layers
//! built into the local layer cache, planned, and handed to the executor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use maelstrom_container::{Spec, Zygote};
use maelstrom_wire::artifact::Digest;
use maelstrom_wire::cluster::{self, LayerRef, Mount};
use maelstrom_worker::cache::{CacheError, LayerCache};
use maelstrom_worker::sandbox::{Origin, sandbox};
use maelstrom_worker::{Allotment, Executor, ExecutorConfig, ExecutorError, JobId, JobRequest, ResultSink};

use crate::digests::DigestCache;
use crate::layers::{Built, LayerBuilder};
use crate::resolve::{Resolved, resolve};
use crate::spec::{ContainerSpec, JobSpec, LayerSpec, MountSpec};

#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Holds the layer cache (`local-worker/`) and the digest cache.
    pub cache_root: PathBuf,
    pub cache_bytes_max: u64,
    pub slots: usize,
    pub output_bytes_max: usize,
    /// What each job gets unless its spec asks otherwise.
    pub allotment: Allotment,
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
    /// What each job may use: its share of this machine's.
    share: maelstrom_container::Share,
}

impl LocalClient {
    /// Starts the embedded worker on `zygote`; each job's result goes to `sink`.
    pub fn start(zygote: Zygote, config: LocalConfig, sink: ResultSink) -> Result<Self, StartError> {
        let cache =
            Arc::new(LayerCache::open(&config.cache_root.join("local-worker"), config.cache_bytes_max)?);
        let digests = DigestCache::open(&config.cache_root.join("cached-digests"));
        let executor = Executor::start(
            zygote,
            ExecutorConfig::new(config.slots, config.output_bytes_max).with_timeouts(&config.allotment),
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
            share: config.allotment.share,
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
            timeout_warning: job.timeout_warning,
        });
        Ok(id)
    }

    /// Resolves a job, builds its layers into the cache, and returns its sandbox spec: made by
    /// the worker's own [`sandbox`], from the job as it would travel to a cluster.
    pub fn prepare(&mut self, job: &JobSpec) -> Result<Spec, PrepareError> {
        let (resolved, built) = self.resolve(job)?;
        let mut layers = Vec::with_capacity(built.len());
        for built in &built {
            layers.push(self.tree(built)?);
        }
        let refs = built.iter().map(|b| b.layer_ref()).collect();
        let bytes = cluster::encode_job(&wire_job(job, &resolved, refs, &self.project));
        let archived = rkyv::access::<cluster::ArchivedJobSpec, rkyv::rancor::Error>(&bytes)
            .map_err(|e| PrepareError(format!("the job does not encode: {e}")))?;
        sandbox(archived, layers, Origin::ThisMachine, &self.share).map_err(|e| PrepareError(e.to_string()))
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
        let budget = self.cache.layer_budget();
        let tree = self
            .cache
            .get_or_build(&key, |dir| match built {
                Built::Manifest { manifest, sources, .. } => maelstrom_worker::layer::materialize(
                    manifest,
                    &|digest| sources.get(digest).cloned(),
                    dir,
                    &budget,
                ),
                Built::Tar { path, .. } => maelstrom_worker::layer::extract_tar(path, dir, &budget),
            })
            .map_err(|e| PrepareError(e.to_string()))?;
        self.trees.insert(key, tree.clone());
        Ok(tree)
    }

    /// Writes caches back (the layer cache needs nothing; the digest cache is rewritten).
    pub fn save(&mut self) {
        self.layers.save();
    }

    /// Relative layer paths and bind sources are taken from here.
    pub fn project(&self) -> &Path {
        &self.project
    }

    pub fn executor(&self) -> &Executor {
        &self.executor
    }
}

/// A resolved job in the one form a job has once resolved: as it travels to a cluster, and as
/// the embedded worker takes it. Bind mount sources become absolute (from `project`).
pub fn wire_job(
    job: &JobSpec,
    resolved: &Resolved,
    layers: Vec<LayerRef>,
    project: &Path,
) -> cluster::JobSpec {
    let mounts = resolved
        .mounts
        .iter()
        .map(|mount| match mount {
            MountSpec::Bind { mount_point, local_path, read_only } => Mount::Bind {
                source: project.join(local_path).display().to_string(),
                target: mount_point.clone(),
                read_only: *read_only,
            },
            MountSpec::Devices { devices } => Mount::Devices(devices.clone()),
            MountSpec::Devpts { mount_point } => Mount::Devpts(mount_point.clone()),
            MountSpec::Mqueue { mount_point } => Mount::Mqueue(mount_point.clone()),
            MountSpec::Proc { mount_point } => Mount::Proc(mount_point.clone()),
            MountSpec::Sys { mount_point } => Mount::Sys(mount_point.clone()),
            MountSpec::Tmp { mount_point } => Mount::Tmp(mount_point.clone()),
        })
        .collect();
    // A runner's project tree stays visible at its own path, even under a fresh /tmp; so do the
    // directories the runner names (cargo's build directory, with a package's binaries).
    let mut keep_visible: Vec<String> = resolved
        .layers
        .iter()
        .filter_map(|layer| match layer {
            LayerSpec::Tree { tree, .. } => Some(tree.clone()),
            _ => None,
        })
        .collect();
    for dir in &job.keep_visible {
        if keep_visible.iter().any(|kept| Path::new(dir).starts_with(kept)) {
            continue;
        }
        keep_visible.retain(|kept| !Path::new(kept).starts_with(dir));
        if keep_visible.len() < maelstrom_container::plan::KEEP_VISIBLE_MAX {
            keep_visible.push(dir.clone());
        }
    }
    cluster::JobSpec {
        program: job.program.clone(),
        arguments: job.arguments.clone(),
        environment: resolved.environment.clone(),
        layers,
        mounts,
        keep_visible,
        network: resolved.network,
        allow: resolved.allow.clone(),
        limits: resolved.limits.to_wire(),
        writable_root: resolved.enable_writable_file_system,
        working_directory: resolved.working_directory.clone(),
        user: resolved.user,
        group: resolved.group,
        timeout_ms: job.timeout.map_or(0, |t| u64::from(t.get()) * 1000),
        timeout_warning: job.timeout_warning,
        priority: job.priority,
        estimated_ms: job.estimated.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
    }
}
