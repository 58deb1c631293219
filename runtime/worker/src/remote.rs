//! The cluster worker: one thread, one io_uring, one connection to the broker.
//!
//! A job arrives as a [`Kind::Start`] frame and is read in place. Each of its layers is found
//! in the layer cache, or its artifacts are fetched from the broker, all at once, written to
//! disk through the ring as the chunks arrive, and checked against their digests; a builder
//! thread then turns them into a tree. Once every layer has a tree the job goes to the same
//! [`Executor`] the standalone client uses, and its result goes back to the broker.
//!
//! When the connection drops, every job of it is cancelled and its result discarded (the broker
//! runs it again elsewhere), and the worker reconnects with backoff. A `Stop` from the broker
//! (it is shutting down on an admin's request) ends the worker.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maelstrom_container::{Spec, Zygote};
use maelstrom_uring::{Completion, Done, Ring, Token};
use maelstrom_wire::artifact::{ArchivedManifest, Digest, EntryKind, Hasher, Manifest};
use maelstrom_wire::cluster::{
    self, ArchivedControl, ArchivedJobSpec, Control, Frame, FrameReader, Hello, Kind, LayerKind, LayerRef,
    Outcome, PROTOCOL_VERSION, Role,
};

use crate::cache::{CacheError, LayerCache};
use crate::executor::{Allotment, Executor, ExecutorConfig, ExecutorError, JobId, JobRequest, JobResult};

#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// `host:port`.
    pub broker: String,
    pub slots: usize,
    /// Holds the layer cache (`layers/`) and artifacts being fetched (`artifacts/`).
    pub cache_root: PathBuf,
    pub cache_bytes_max: u64,
    pub output_bytes_max: usize,
    /// What each job gets unless its spec asks otherwise.
    pub allotment: Allotment,
    /// For the broker's logs.
    pub name: String,
    /// The allowances (as bits) this worker grants jobs from the cluster, as its operator
    /// configured (none by default).
    pub grants: u32,
    pub verbose: bool,
    /// The worker's credentials: the connection is then TLS, and the broker must prove it is
    /// the cluster's.
    pub tls: Option<Arc<maelstrom_tls::rustls::ClientConfig>>,
}

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error("io_uring: {0}")]
    Ring(#[from] maelstrom_uring::RingError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the broker at {broker} refused this worker: {reason}")]
    Refused { broker: String, reason: String },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> WorkerError {
    move |source| WorkerError::Io { what: what.into(), source }
}

/// Reconnection delays: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

const READ_BYTES: usize = 256 << 10;

const WAKE: Token = 0;
const RECONNECT: Token = 1;
const TAG_READ: u64 = 2;
const TAG_WRITE: u64 = 3;
const TAG_FILE: u64 = 4;
/// Time to tell the broker the worker is still here (by connection generation).
const TAG_PING: u64 = 5;
/// A failed session's last words (its alert), written as the connection is dropped: nothing
/// waits for the write, which holds the socket open until it is done.
const TAG_LAST_WORDS: u64 = 6;

fn tagged(tag: u64, n: u64) -> Token {
    (n << 8) | tag
}

/// What other threads hand the loop.
enum Inbound {
    Result(JobResult),
    Built { key: Digest, result: Result<PathBuf, String> },
}

#[derive(Debug)]
struct Inbox {
    items: Mutex<Vec<Inbound>>,
    wake: Arc<OwnedFd>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inbound::Result(r) => write!(f, "Result({})", r.id),
            Inbound::Built { key, .. } => write!(f, "Built({key})"),
        }
    }
}

impl Inbox {
    fn push(&self, item: Inbound) {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).push(item);
        let _ = maelstrom_container::write_all(self.wake.as_fd(), &1u64.to_ne_bytes());
    }

    fn take(&self) -> Vec<Inbound> {
        std::mem::take(&mut *self.items.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A tree to build on the builder thread.
struct BuildRequest {
    layer: LayerRef,
    /// The artifact itself (a tar archive, or an encoded manifest).
    artifact: PathBuf,
    /// For a manifest: where its files' bytes are.
    blobs: PathBuf,
}

fn builder(cache: Arc<LayerCache>, requests: Receiver<BuildRequest>, inbox: Arc<Inbox>) {
    for request in requests {
        let key = request.layer.tree_key();
        let budget = cache.layer_budget();
        let result = cache
            .get_or_build(&key, |dir| match request.layer.kind {
                LayerKind::Tar => crate::layer::extract_tar(&request.artifact, dir, &budget),
                LayerKind::Manifest => {
                    let manifest = read_manifest(&request.artifact)?;
                    crate::layer::materialize(
                        &manifest,
                        &|digest| Some(request.blobs.join(digest.hex())),
                        dir,
                        &budget,
                    )
                }
            })
            .map_err(|e| e.to_string());
        inbox.push(Inbound::Built { key, result });
    }
}

fn read_manifest(path: &Path) -> Result<Manifest, String> {
    let bytes = fs::read(path).map_err(|e| format!("read manifest {}: {e}", path.display()))?;
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&bytes);
    let archived = rkyv::access::<ArchivedManifest, rkyv::rancor::Error>(&aligned)
        .map_err(|e| format!("manifest {}: {e}", path.display()))?;
    rkyv::deserialize::<Manifest, rkyv::rancor::Error>(archived).map_err(|e| format!("manifest: {e}"))
}

/// The file digests a manifest needs fetched (empty files are made, not fetched).
fn manifest_blobs(manifest: &Manifest) -> Vec<Digest> {
    let mut seen = HashSet::new();
    manifest
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File { digest, size, .. } if *size > 0 && seen.insert(*digest) => Some(*digest),
            _ => None,
        })
        .collect()
}

/// A job waiting for its layers, or running.
struct Job {
    generation: u64,
    layers: Vec<LayerRef>,
    /// Set once every layer has its tree.
    exec: Option<JobId>,
    /// Everything but the layers, converted at arrival.
    spec: Spec,
    priority: i8,
    estimated: Option<Duration>,
    timeout: Option<Duration>,
    timeout_warning: Option<cluster::TimeoutWarning>,
    /// Layers still without a tree.
    missing: usize,
}

/// A layer being prepared: its artifacts fetched, then its tree built.
struct Layer {
    layer: LayerRef,
    /// Broker job ids waiting for it.
    jobs: Vec<u64>,
    /// Artifacts this layer holds a reference on.
    blobs: Vec<Digest>,
    /// Of those, the ones not on disk yet.
    waiting: HashSet<Digest>,
    /// For a manifest: its files are among `blobs`.
    expanded: bool,
    building: bool,
}

/// An artifact being received.
struct Download {
    file: Option<Arc<OwnedFd>>,
    temp: PathBuf,
    hasher: Hasher,
    received: u64,
    total: u64,
    complete: bool,
    writes: u32,
    failed: Option<String>,
    seq: u64,
}

struct Conn {
    fd: Arc<OwnedFd>,
    generation: u64,
    tls: Option<maelstrom_tls::Session>,
    reader: FrameReader,
    /// Frames not yet encrypted, and bytes ready for the wire not yet written.
    outgoing: VecDeque<Vec<u8>>,
    unsent: Vec<u8>,
    writing: bool,
    welcomed: bool,
    /// How often to say it is still here, once welcomed.
    ping: Duration,
}

struct Worker {
    config: RemoteConfig,
    ring: Ring,
    inbox: Arc<Inbox>,
    executor: Executor,
    builds: Sender<BuildRequest>,
    cache: Arc<LayerCache>,
    /// Verified artifacts: `<root>/blobs/<hex>`; being received: `<root>/tmp/`.
    artifacts: PathBuf,
    conn: Option<Conn>,
    generation: u64,
    backoff: Duration,
    /// By the broker's job id.
    jobs: HashMap<u64, Job>,
    /// Executor id → (generation, broker id).
    running: HashMap<JobId, (u64, u64)>,
    next_exec: JobId,
    /// By tree key.
    layers: HashMap<Digest, Layer>,
    /// Trees in use, by key: path and the number of jobs using it.
    trees: HashMap<Digest, (PathBuf, u32)>,
    downloads: HashMap<Digest, Download>,
    download_seqs: HashMap<u64, Digest>,
    next_seq: u64,
    /// Layers holding each artifact.
    blob_refs: HashMap<Digest, u32>,
    stop: bool,
    refused: Option<String>,
    /// Every job's resource limits: its share of this worker's.
    share: maelstrom_container::Share,
}

/// Runs the worker until the broker says stop or refuses it.
pub fn serve(zygote: Zygote, config: RemoteConfig) -> Result<(), WorkerError> {
    let cache = Arc::new(LayerCache::open(&config.cache_root.join("layers"), config.cache_bytes_max)?);
    let cache_root = std::path::absolute(&config.cache_root)
        .map_err(io_error(format!("make {} absolute", config.cache_root.display())))?;
    let artifacts = cache_root.join("artifacts");
    // Artifacts are only kept while a tree is built from them: whatever is left is stale.
    let _ = fs::remove_dir_all(&artifacts);
    for sub in ["blobs", "tmp"] {
        let dir = artifacts.join(sub);
        fs::create_dir_all(&dir).map_err(io_error(format!("create {}", dir.display())))?;
    }
    let wake = Arc::new(maelstrom_container::eventfd().map_err(io_error("create an eventfd"))?);
    let inbox = Arc::new(Inbox { items: Mutex::default(), wake: Arc::clone(&wake) });
    let sink_inbox = Arc::clone(&inbox);
    let executor = Executor::start(
        zygote,
        ExecutorConfig::new(config.slots, config.output_bytes_max).with_timeouts(&config.allotment),
        Box::new(move |result| sink_inbox.push(Inbound::Result(result))),
    )?;
    let (builds, requests) = channel();
    let builder_cache = Arc::clone(&cache);
    let builder_inbox = Arc::clone(&inbox);
    std::thread::Builder::new()
        .name("builder".into())
        .spawn(move || builder(builder_cache, requests, builder_inbox))
        .map_err(io_error("start the builder thread"))?;
    let share = config.allotment.share.clone();
    let mut worker = Worker {
        config,
        ring: Ring::new(256)?,
        inbox,
        executor,
        builds,
        cache,
        artifacts,
        conn: None,
        generation: 0,
        backoff: BACKOFF_FIRST,
        jobs: HashMap::new(),
        running: HashMap::new(),
        next_exec: 1,
        layers: HashMap::new(),
        trees: HashMap::new(),
        downloads: HashMap::new(),
        download_seqs: HashMap::new(),
        next_seq: 1,
        blob_refs: HashMap::new(),
        stop: false,
        refused: None,
        share,
    };
    worker.ring.read(WAKE, &wake, Vec::with_capacity(8));
    worker.connect()?;
    let mut completions = Vec::new();
    while !worker.stop {
        completions.clear();
        worker.ring.submit_and_wait(1, &mut completions).map_err(io_error("wait on the io_uring"))?;
        for completion in completions.drain(..) {
            match completion.token {
                WAKE => {
                    worker.ring.read(WAKE, &wake, Vec::with_capacity(8));
                    for item in worker.inbox.take() {
                        worker.inbound(item);
                    }
                }
                RECONNECT => worker.connect()?,
                token => match token & 0xff {
                    TAG_READ => worker.read(token >> 8, completion),
                    TAG_WRITE => worker.written(token >> 8, completion),
                    TAG_FILE => worker.file_written(token >> 8, &completion),
                    TAG_PING => worker.ping(token >> 8),
                    _ => {}
                },
            }
        }
    }
    match worker.refused.take() {
        Some(reason) => Err(WorkerError::Refused { broker: worker.config.broker.clone(), reason }),
        None => Ok(()),
    }
}

impl Worker {
    fn log(&self, message: &str) {
        eprintln!("maelstrom-worker: {message}");
    }

    /// Tries to connect; on failure, tries again after the backoff.
    fn connect(&mut self) -> Result<(), WorkerError> {
        match maelstrom_uring::connect(&self.config.broker, Duration::from_secs(2)) {
            Ok(stream) => {
                let tls = match self.config.tls.as_ref().map(maelstrom_tls::Session::client).transpose() {
                    Ok(tls) => tls,
                    Err(e) => {
                        self.log(&format!("TLS with the broker at {}: {e}", self.config.broker));
                        self.ring.timeout(RECONNECT, self.backoff);
                        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                        return Ok(());
                    }
                };
                self.generation += 1;
                let fd = Arc::new(OwnedFd::from(stream));
                self.conn = Some(Conn {
                    fd: Arc::clone(&fd),
                    generation: self.generation,
                    tls,
                    reader: FrameReader::default(),
                    outgoing: VecDeque::new(),
                    unsent: Vec::new(),
                    writing: false,
                    welcomed: false,
                    ping: Duration::ZERO,
                });
                let slots = u32::try_from(self.config.slots).unwrap_or(u32::MAX);
                let role = Role::Worker { slots, grants: self.config.grants };
                let hello = Hello { version: PROTOCOL_VERSION, role, name: self.config.name.clone() };
                self.send(&Control::Hello(hello));
                self.ring.read(tagged(TAG_READ, self.generation), &fd, Vec::with_capacity(READ_BYTES));
            }
            Err(e) => {
                if self.backoff == BACKOFF_FIRST || self.config.verbose {
                    self.log(&format!("cannot reach the broker at {}: {e}; retrying", self.config.broker));
                }
                self.ring.timeout(RECONNECT, self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
        Ok(())
    }

    /// Tells the broker this worker is still here, and when to do so again; for the
    /// connection of `generation` only (one that is gone takes no more pings).
    fn ping(&mut self, generation: u64) {
        let Some(conn) = self.conn.as_ref().filter(|c| c.generation == generation) else { return };
        let every = conn.ping;
        self.send(&Control::Ping);
        self.ring.timeout(tagged(TAG_PING, generation), every);
    }

    /// The connection is gone: cancel its jobs and reconnect.
    fn disconnected(&mut self, why: &str) {
        let Some(conn) = self.conn.take() else { return };
        self.ring.cancel(tagged(TAG_READ, conn.generation));
        self.ring.cancel(tagged(TAG_WRITE, conn.generation));
        self.ring.cancel(tagged(TAG_PING, conn.generation));
        if conn.welcomed {
            self.log(&format!("lost the broker at {}: {why}; reconnecting", self.config.broker));
        } else {
            self.log(&format!("the broker at {} hung up: {why}; retrying", self.config.broker));
        }
        for (id, job) in std::mem::take(&mut self.jobs) {
            self.drop_job(id, job);
        }
        for (_, download) in std::mem::take(&mut self.downloads) {
            let _ = fs::remove_file(&download.temp);
        }
        self.download_seqs.clear();
        let unbuilt: Vec<Digest> = self.layers.iter().filter(|(_, l)| !l.building).map(|(k, _)| *k).collect();
        for key in unbuilt {
            if let Some(layer) = self.layers.remove(&key) {
                self.unref_blobs(&layer.blobs);
            }
        }
        for layer in self.layers.values_mut() {
            layer.jobs.clear();
        }
        self.ring.timeout(RECONNECT, self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Forgets a job: cancels it if it runs (its result is then discarded) and lets go of its
    /// trees.
    fn drop_job(&mut self, id: u64, job: Job) {
        if let Some(exec) = job.exec {
            self.executor.cancel(exec);
            self.release_trees(&job.layers);
        } else {
            let mut seen = HashSet::new();
            for layer in &job.layers {
                let key = layer.tree_key();
                if !seen.insert(key) {
                    continue;
                }
                if let Some(state) = self.layers.get_mut(&key) {
                    state.jobs.retain(|j| *j != id);
                } else if self.trees.contains_key(&key) {
                    self.release_trees(std::slice::from_ref(layer));
                }
            }
        }
    }

    fn send(&mut self, message: &Control) {
        let mut frame = Vec::new();
        match cluster::encode_control_or_report(message, &mut frame) {
            Ok(()) => self.queue(frame),
            Err(e) => self.log(&format!("a message could not be encoded: {e}")),
        }
    }

    fn queue(&mut self, frame: Vec<u8>) {
        let Some(conn) = self.conn.as_mut() else { return };
        conn.outgoing.push_back(frame);
        self.flush();
    }

    /// Starts a write if none is in flight: what is left of the last, else the next frames
    /// (encrypted, with TLS).
    fn flush(&mut self) {
        let Some(conn) = self.conn.as_mut() else { return };
        if conn.writing {
            return;
        }
        if conn.unsent.is_empty() {
            let Some(mut batch) = conn.outgoing.pop_front() else { return };
            while batch.len() < (64 << 10)
                && let Some(next) = conn.outgoing.pop_front()
            {
                batch.extend_from_slice(&next);
            }
            match &mut conn.tls {
                // A failed session says why on the next read; what it still has to say is sent.
                Some(tls) => drop(tls.send(&batch, &mut conn.unsent)),
                None => conn.unsent = batch,
            }
        }
        if conn.unsent.is_empty() {
            return;
        }
        conn.writing = true;
        let bytes = std::mem::take(&mut conn.unsent);
        self.ring.write(tagged(TAG_WRITE, conn.generation), &conn.fd, bytes);
    }

    fn written(&mut self, generation: u64, completion: Completion) {
        let Some(conn) = self.conn.as_mut().filter(|c| c.generation == generation) else { return };
        conn.writing = false;
        let Done::Written { buf } = completion.done else { return };
        if completion.result < 0 {
            let why = io::Error::from_raw_os_error(-completion.result).to_string();
            self.disconnected(&why);
            return;
        }
        let sent = completion.result as usize;
        if sent < buf.len() {
            // Before anything the session produced meanwhile.
            let mut rest = buf;
            rest.drain(..sent);
            rest.append(&mut conn.unsent);
            conn.unsent = rest;
        }
        self.flush();
    }

    fn read(&mut self, generation: u64, completion: Completion) {
        let Done::Read { buf } = completion.done else { return };
        let Some(conn) = self.conn.as_mut().filter(|c| c.generation == generation) else { return };
        if completion.result <= 0 {
            let why = if completion.result == 0 {
                "connection closed".to_owned()
            } else {
                io::Error::from_raw_os_error(-completion.result).to_string()
            };
            self.disconnected(&why);
            return;
        }
        let mut plaintext = Vec::new();
        if let Some(tls) = &mut conn.tls {
            let received = tls.receive(&buf, &mut plaintext);
            tls.pending(&mut conn.unsent);
            if let Err(e) = received {
                // The alert that says why, so that the broker can say it too.
                if !conn.writing && !conn.unsent.is_empty() {
                    let alert = std::mem::take(&mut conn.unsent);
                    self.ring.write(tagged(TAG_LAST_WORDS, generation), &conn.fd, alert);
                }
                self.disconnected(&e.to_string());
                return;
            }
        }
        let bytes = if conn.tls.is_some() { &plaintext[..] } else { &buf[..] };
        let mut reader = std::mem::take(&mut conn.reader);
        let mut failure = None;
        let fed = reader.feed(bytes, &mut |kind, payload| match self.frame(kind, payload) {
            Ok(()) => !self.stop && self.conn.as_ref().is_some_and(|c| c.generation == generation),
            Err(why) => {
                failure = Some(why);
                false
            }
        });
        let failure = failure.or_else(|| fed.err().map(|e| format!("malformed frame from the broker: {e}")));
        if let Some(why) = failure {
            self.disconnected(&why);
            return;
        }
        let Some(conn) = self.conn.as_mut().filter(|c| c.generation == generation) else { return };
        conn.reader = reader;
        let fd = Arc::clone(&conn.fd);
        self.flush();
        self.ring.read(tagged(TAG_READ, generation), &fd, buf);
    }

    fn frame(&mut self, kind: Kind, payload: &[u8]) -> Result<(), String> {
        let frame = cluster::decode(kind, payload).map_err(|e| format!("bad frame from the broker: {e}"))?;
        match frame {
            Frame::Control(ArchivedControl::Welcome { ping_ms, .. }) => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.welcomed = true;
                    conn.ping = cluster::ping_every(ping_ms.to_native());
                    self.ring.timeout(tagged(TAG_PING, conn.generation), conn.ping);
                }
                self.backoff = BACKOFF_FIRST;
                self.log(&format!("connected to the broker at {}", self.config.broker));
                Ok(())
            }
            Frame::Control(ArchivedControl::Refused(reason)) => {
                self.refused = Some(reason.as_str().to_owned());
                self.stop = true;
                Ok(())
            }
            Frame::Control(ArchivedControl::Stop) => {
                self.log("the broker is shutting down; stopping");
                self.stop = true;
                Ok(())
            }
            Frame::Control(ArchivedControl::Cancel { id }) => {
                self.cancel(id.to_native());
                Ok(())
            }
            Frame::Control(ArchivedControl::Unavailable { digest, reason }) => {
                let digest = Digest(digest.0);
                let why = format!("the broker could not send artifact {digest}: {}", reason.as_str());
                self.artifact_failed(digest, &why);
                Ok(())
            }
            Frame::Job { kind: Kind::Start, id, spec, .. } => {
                self.start(id, spec);
                Ok(())
            }
            Frame::Chunk { header, data } => self.chunk(header, data),
            _ => Err("the broker sent a message a worker does not take".into()),
        }
    }

    fn start(&mut self, id: u64, job: &ArchivedJobSpec) {
        let origin = crate::sandbox::Origin::Cluster { grants: self.config.grants };
        let spec = match crate::sandbox::sandbox(job, Vec::new(), origin, &self.share) {
            Ok(spec) => spec,
            Err(e) => {
                self.send(&Control::Done { id, outcome: Outcome::ExecutionError(e.to_string()) });
                return;
            }
        };
        let layers: Vec<LayerRef> = job
            .layers
            .iter()
            .map(|l| LayerRef {
                kind: match l.kind {
                    cluster::ArchivedLayerKind::Tar => LayerKind::Tar,
                    cluster::ArchivedLayerKind::Manifest => LayerKind::Manifest,
                },
                digest: Digest(l.digest.0),
            })
            .collect();
        let millis = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        let mut state = Job {
            generation: self.generation,
            layers: layers.clone(),
            exec: None,
            spec,
            priority: job.priority,
            estimated: millis(job.estimated_ms.to_native()),
            timeout: millis(job.timeout_ms.to_native()),
            timeout_warning: job.timeout_warning.as_ref().map(|w| cluster::TimeoutWarning {
                signal: w.signal.to_native(),
                grace_ms: w.grace_ms.to_native(),
            }),
            missing: 0,
        };
        let mut unique = HashSet::new();
        for layer in &layers {
            if !unique.insert(layer.tree_key()) {
                continue;
            }
            match self.tree(layer) {
                Ok(Some(())) => {}
                Ok(None) => {
                    state.missing += 1;
                    self.want_layer(*layer, id);
                }
                Err(e) => {
                    self.release_trees_where(&layers, |l| l != layer && unique.contains(&l.tree_key()));
                    self.send(&Control::Done { id, outcome: Outcome::SystemError(e) });
                    return;
                }
            }
        }
        self.jobs.insert(id, state);
        self.maybe_run(id);
    }

    /// Takes a reference on the layer's tree if it exists.
    fn tree(&mut self, layer: &LayerRef) -> Result<Option<()>, String> {
        let key = layer.tree_key();
        if let Some((_, users)) = self.trees.get_mut(&key) {
            *users += 1;
            return Ok(Some(()));
        }
        if self.layers.contains_key(&key) {
            return Ok(None);
        }
        match self.cache.get(&key) {
            Ok(Some(path)) => {
                self.trees.insert(key, (path, 1));
                Ok(Some(()))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn release_trees(&mut self, layers: &[LayerRef]) {
        self.release_trees_where(layers, |_| true);
    }

    fn release_trees_where(&mut self, layers: &[LayerRef], mut which: impl FnMut(&LayerRef) -> bool) {
        let mut seen = HashSet::new();
        for layer in layers {
            let key = layer.tree_key();
            if !seen.insert(key) || !which(layer) {
                continue;
            }
            if let Some((_, users)) = self.trees.get_mut(&key) {
                *users -= 1;
                if *users == 0 {
                    self.trees.remove(&key);
                    self.cache.release(&key);
                }
            }
        }
    }

    /// Records that job `id` waits for the layer's tree, starting its preparation if needed.
    fn want_layer(&mut self, layer: LayerRef, id: u64) {
        let key = layer.tree_key();
        if let Some(state) = self.layers.get_mut(&key) {
            state.jobs.push(id);
            return;
        }
        self.layers.insert(
            key,
            Layer {
                layer,
                jobs: vec![id],
                blobs: Vec::new(),
                waiting: HashSet::new(),
                expanded: layer.kind == LayerKind::Tar,
                building: false,
            },
        );
        self.need_blob(key, layer.digest);
        self.advance(key);
    }

    /// The layer `key` needs artifact `digest`: takes a reference, and fetches it unless it is
    /// on disk or on its way.
    fn need_blob(&mut self, key: Digest, digest: Digest) {
        let present = self.blob_path(&digest).exists();
        let Some(layer) = self.layers.get_mut(&key) else { return };
        layer.blobs.push(digest);
        *self.blob_refs.entry(digest).or_default() += 1;
        if present {
            return;
        }
        layer.waiting.insert(digest);
        if !self.downloads.contains_key(&digest) {
            let seq = self.next_seq;
            self.next_seq += 1;
            let temp = self.artifacts.join("tmp").join(format!("{}-{seq}", digest.hex()));
            self.downloads.insert(
                digest,
                Download {
                    file: None,
                    temp,
                    hasher: Hasher::default(),
                    received: 0,
                    total: 0,
                    complete: false,
                    writes: 0,
                    failed: None,
                    seq,
                },
            );
            self.download_seqs.insert(seq, digest);
            self.send(&Control::Want { digest });
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.artifacts.join("blobs").join(digest.hex())
    }

    fn unref_blobs(&mut self, blobs: &[Digest]) {
        for digest in blobs {
            if let Some(refs) = self.blob_refs.get_mut(digest) {
                *refs -= 1;
                if *refs == 0 {
                    self.blob_refs.remove(digest);
                    let _ = fs::remove_file(self.blob_path(digest));
                }
            }
        }
    }

    /// Moves a layer on once nothing it waits for is missing: a fetched manifest brings in its
    /// files; with everything on disk, the tree is built.
    fn advance(&mut self, key: Digest) {
        let Some(layer) = self.layers.get(&key) else { return };
        if !layer.waiting.is_empty() || layer.building {
            return;
        }
        let digest = layer.layer.digest;
        if !layer.expanded {
            // The manifest is here: its files next.
            match read_manifest(&self.blob_path(&digest)) {
                Ok(manifest) => {
                    if let Some(layer) = self.layers.get_mut(&key) {
                        layer.expanded = true;
                    }
                    for file in manifest_blobs(&manifest) {
                        self.need_blob(key, file);
                    }
                    return self.advance(key);
                }
                Err(e) => return self.layer_failed(key, &format!("layer {digest}: {e}")),
            }
        }
        let Some(layer) = self.layers.get_mut(&key) else { return };
        layer.building = true;
        let request = BuildRequest {
            layer: layer.layer,
            artifact: self.artifacts.join("blobs").join(digest.hex()),
            blobs: self.artifacts.join("blobs"),
        };
        if self.builds.send(request).is_err() {
            self.layer_failed(key, "the builder thread is gone");
        }
    }

    /// Every job waiting on the layer fails with `why`.
    fn layer_failed(&mut self, key: Digest, why: &str) {
        let Some(layer) = self.layers.remove(&key) else { return };
        self.unref_blobs(&layer.blobs);
        for id in layer.jobs {
            self.fail_job(id, Outcome::ExecutionError(why.to_owned()));
        }
    }

    fn fail_job(&mut self, id: u64, outcome: Outcome) {
        if let Some(job) = self.jobs.remove(&id) {
            self.drop_job(id, job);
            self.send(&Control::Done { id, outcome });
        }
    }

    fn built(&mut self, key: Digest, result: Result<PathBuf, String>) {
        let Some(layer) = self.layers.remove(&key) else {
            // Nobody waits any more (the connection dropped): let the tree go.
            self.cache.release(&key);
            return;
        };
        self.unref_blobs(&layer.blobs);
        let path = match result {
            Ok(path) => path,
            Err(e) => {
                for id in layer.jobs {
                    self.fail_job(id, Outcome::ExecutionError(e.clone()));
                }
                return;
            }
        };
        let live: Vec<u64> = layer.jobs.into_iter().filter(|id| self.jobs.contains_key(id)).collect();
        if live.is_empty() {
            self.cache.release(&key);
            return;
        }
        self.trees.insert(key, (path, live.len() as u32));
        for id in live {
            if let Some(job) = self.jobs.get_mut(&id) {
                job.missing -= 1;
            }
            self.maybe_run(id);
        }
    }

    /// Hands the job to the executor once every layer has its tree.
    fn maybe_run(&mut self, id: u64) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        if job.missing > 0 || job.exec.is_some() {
            return;
        }
        let layers: Vec<PathBuf> =
            job.layers.iter().filter_map(|l| self.trees.get(&l.tree_key()).map(|(p, _)| p.clone())).collect();
        job.spec.layers = layers;
        let spawn = match maelstrom_container::compile(&job.spec) {
            Ok(spawn) => spawn,
            Err(e) => return self.fail_job(id, Outcome::ExecutionError(e.to_string())),
        };
        let exec = self.next_exec;
        self.next_exec += 1;
        job.exec = Some(exec);
        self.running.insert(exec, (job.generation, id));
        let request = JobRequest {
            id: exec,
            spawn,
            priority: job.priority,
            estimated: job.estimated,
            timeout: job.timeout,
            timeout_warning: job.timeout_warning,
        };
        self.executor.submit(request);
    }

    fn cancel(&mut self, id: u64) {
        match self.jobs.get(&id).and_then(|j| j.exec) {
            Some(exec) => self.executor.cancel(exec),
            None => self.fail_job(id, Outcome::SystemError("cancelled".into())),
        }
    }

    fn inbound(&mut self, item: Inbound) {
        match item {
            Inbound::Built { key, result } => self.built(key, result),
            Inbound::Result(result) => {
                let Some((generation, id)) = self.running.remove(&result.id) else { return };
                if generation != self.generation || self.conn.is_none() {
                    return;
                }
                let Some(job) = self.jobs.remove(&id) else { return };
                self.release_trees(&job.layers);
                let mut outcome = result.outcome;
                outcome.fit();
                self.send(&Control::Done { id, outcome });
            }
        }
    }

    fn chunk(&mut self, header: cluster::ChunkHeader, data: &[u8]) -> Result<(), String> {
        let digest = header.digest;
        let Some(download) = self.downloads.get_mut(&digest) else {
            return Err(format!("artifact {digest} came without being asked for"));
        };
        if header.offset != download.received || (download.received > 0 && header.total != download.total) {
            return Err(format!("artifact {digest}: chunk at {} out of order", header.offset));
        }
        if download.file.is_none() {
            let file =
                File::create(&download.temp).map_err(|e| format!("create {}: {e}", download.temp.display()));
            match file {
                Ok(file) => download.file = Some(Arc::new(OwnedFd::from(file))),
                Err(e) => download.failed = Some(e),
            }
            download.total = header.total;
        }
        download.hasher.update(data);
        if let Some(file) = &download.file
            && download.failed.is_none()
            && !data.is_empty()
        {
            download.writes += 1;
            self.ring.write_at(tagged(TAG_FILE, download.seq), file, data.to_vec(), download.received);
        }
        download.received += data.len() as u64;
        if download.received >= download.total {
            download.complete = true;
            self.finish_download(digest);
        }
        Ok(())
    }

    fn file_written(&mut self, seq: u64, completion: &Completion) {
        let Some(digest) = self.download_seqs.get(&seq).copied() else { return };
        let Some(download) = self.downloads.get_mut(&digest) else { return };
        download.writes -= 1;
        let wanted = match &completion.done {
            Done::Written { buf } => buf.len(),
            _ => 0,
        };
        if completion.result < 0 || completion.result as usize != wanted {
            let why = if completion.result < 0 {
                io::Error::from_raw_os_error(-completion.result).to_string()
            } else {
                "short write (is the disk full?)".to_owned()
            };
            download.failed.get_or_insert(format!("write {}: {why}", download.temp.display()));
        }
        self.finish_download(digest);
    }

    /// Once every byte is in and written: checks the digest and moves the artifact into place.
    fn finish_download(&mut self, digest: Digest) {
        let Some(download) = self.downloads.get(&digest) else { return };
        if !download.complete || download.writes > 0 {
            return;
        }
        let download = self.downloads.remove(&digest).expect("just seen");
        self.download_seqs.remove(&download.seq);
        drop(download.file);
        let verdict = if let Some(failed) = download.failed {
            Err(failed)
        } else if download.hasher.finish() != digest {
            Err(format!("artifact {digest} from the broker does not match its digest"))
        } else {
            fs::rename(&download.temp, self.blob_path(&digest))
                .map_err(|e| format!("store artifact {digest}: {e}"))
        };
        match verdict {
            Ok(()) => self.artifact_arrived(digest),
            Err(why) => {
                let _ = fs::remove_file(&download.temp);
                self.artifact_failed_inner(digest, &why);
            }
        }
    }

    fn artifact_arrived(&mut self, digest: Digest) {
        let keys: Vec<Digest> =
            self.layers.iter().filter(|(_, l)| l.waiting.contains(&digest)).map(|(k, _)| *k).collect();
        for key in keys {
            if let Some(layer) = self.layers.get_mut(&key) {
                layer.waiting.remove(&digest);
            }
            self.advance(key);
        }
    }

    fn artifact_failed(&mut self, digest: Digest, why: &str) {
        if let Some(download) = self.downloads.remove(&digest) {
            self.download_seqs.remove(&download.seq);
            let _ = fs::remove_file(&download.temp);
        }
        self.artifact_failed_inner(digest, why);
    }

    fn artifact_failed_inner(&mut self, digest: Digest, why: &str) {
        let keys: Vec<Digest> =
            self.layers.iter().filter(|(_, l)| l.waiting.contains(&digest)).map(|(k, _)| *k).collect();
        for key in keys {
            if let Some(layer) = self.layers.remove(&key) {
                self.unref_blobs(&layer.blobs);
                for id in layer.jobs {
                    self.fail_job(id, Outcome::SystemError(why.to_owned()));
                }
            }
        }
    }
}
