//! The broker's core: a state machine with no I/O. The shell feeds it [`Event`]s and carries
//! out the [`Effect`]s it returns, so a test can drive a whole cluster from one thread, under a
//! seed, with workers vanishing and messages arriving late.
//!
//! A job is *waiting* until every artifact it needs is stored, *queued* until a worker has room,
//! then *running* on one worker until that worker reports it done (it is reported to its client
//! then, once) or disconnects (it is queued again). Scheduling: priority, then longest
//! estimated; among workers with room (at most twice their slots in flight), the one that
//! already holds most of the job's layers, then the least loaded.
//!
//! Artifacts: the broker asks a client only for what no one has stored, and each artifact only
//! once while the ask is pending. Stored artifacts are pinned by the jobs that need them and
//! evicted least recently used, unpinned, above the size bound.

use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use maelstrom_wire::artifact::Digest;
use maelstrom_wire::cluster::{ArchivedJobSpec, ArchivedLayerKind, Control, LayerRef, Outcome, Status};

pub type PeerId = u64;
pub type JobId = u64;

/// A fast hasher for the small integer and digest keys here (they are not attacker-chosen
/// in a way that matters: ids are ours, digests are uniformly random).
#[derive(Debug, Default)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
type Set<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

/// Layers a worker is remembered to hold, at most (the memory is a hint for placement).
const WORKER_LAYERS_MAX: usize = 4096;

/// Jobs a worker may have in flight per slot.
const IN_FLIGHT_PER_SLOT: usize = 2;

/// Jobs one client may have pending at once, unless configured (`client-jobs-max`).
pub const CLIENT_JOBS_MAX_DEFAULT: usize = 1_000_000;

/// What happened.
#[derive(Debug)]
pub enum Event<'a> {
    ClientConnected(PeerId),
    WorkerConnected {
        peer: PeerId,
        slots: u32,
        /// The allowances it grants, as bits.
        grants: u32,
    },
    AdminConnected(PeerId),
    Disconnected(PeerId),
    /// A client's job, validated, read in place; `bytes` is its archived form, forwarded as is.
    Submit {
        peer: PeerId,
        id: u64,
        spec: &'a ArchivedJobSpec,
        bytes: &'a [u8],
    },
    Cancel {
        peer: PeerId,
        id: u64,
    },
    /// A worker finished a job.
    Done {
        peer: PeerId,
        id: JobId,
        outcome: Outcome,
    },
    /// An artifact is now in the store, checked against its digest; for a manifest, the file
    /// digests it names.
    Stored {
        digest: Digest,
        size: u64,
        files: Option<Vec<Digest>>,
        /// The client that uploaded it: it counts against that client's bound.
        from: Option<PeerId>,
    },
    /// A client could not upload an artifact.
    Unavailable {
        peer: PeerId,
        digest: Digest,
        reason: String,
    },
    StatusRequest(PeerId),
    Stop(PeerId),
}

/// What to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    Send {
        peer: PeerId,
        message: Control,
    },
    /// Send a job (its archived bytes) to a worker under the broker's id.
    Start {
        worker: PeerId,
        id: JobId,
        job: Arc<[u8]>,
    },
    /// Ask a client to upload an artifact.
    Want {
        client: PeerId,
        digest: Digest,
        manifest: bool,
    },
    /// Delete an artifact from the store.
    Evict {
        digest: Digest,
    },
    /// The peer broke the protocol: close its connection, logging why.
    Disconnect {
        peer: PeerId,
        reason: String,
    },
    Exit,
}

#[derive(Debug)]
enum State {
    Waiting { missing: u32 },
    Queued,
    Running { worker: PeerId },
}

#[derive(Debug)]
struct Job {
    client: PeerId,
    client_id: u64,
    bytes: Arc<[u8]>,
    priority: i8,
    estimated_ms: u64,
    layers: Vec<LayerRef>,
    pins: Vec<Digest>,
    state: State,
    /// The allowances it asks for, as bits: it runs only on a worker that grants them all.
    needs: u32,
}

#[derive(Debug)]
struct Worker {
    slots: u32,
    /// The allowances it grants, as bits, and how many.
    grants: u32,
    granted: u32,
    /// Its jobs, each with the artifacts it needs (its layers and their files).
    running: Map<JobId, Vec<Digest>>,
    /// How many of its jobs need each artifact: what it may fetch.
    fetchable: Map<Digest, u32>,
    layers: Set<Digest>,
}

#[derive(Debug, Default)]
struct Client {
    jobs: Map<u64, JobId>,
    /// Bytes of the store its uploads hold, and those of uploads under way (reserved when
    /// each was admitted).
    held_bytes: u64,
    uploading: Map<Digest, u64>,
}

#[derive(Debug)]
struct Stored {
    size: u64,
    last_use: u64,
    pins: u32,
    /// The client whose upload it was (peer ids are never reused, so a gone client's is
    /// simply never found).
    uploader: Option<PeerId>,
}

#[derive(Debug)]
struct Wanted {
    from: PeerId,
    manifest: bool,
    jobs: Vec<JobId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ranked {
    priority: i8,
    estimated_ms: u64,
    /// Negated arrival order, so earlier comes first among equals.
    order: std::cmp::Reverse<JobId>,
}

#[derive(Debug)]
pub struct Broker {
    clients: Map<PeerId, Client>,
    workers: Map<PeerId, Worker>,
    admins: Set<PeerId>,
    jobs: Map<JobId, Job>,
    /// Queued jobs that ask for no allowance; and the others, by the allowances they ask for
    /// (as bits): each heap's jobs can go to the same workers, so a look at its top tells
    /// whether any of them can start. (A heap stays once made: there are at most as many as
    /// sets of allowances, and its buffer serves the next jobs.)
    plain: BinaryHeap<Ranked>,
    allowing: Map<u32, BinaryHeap<Ranked>>,
    queued: u64,
    stored: Map<Digest, Stored>,
    manifests: Map<Digest, Vec<Digest>>,
    wanted: Map<Digest, Wanted>,
    stored_bytes: u64,
    stored_bytes_max: u64,
    next_job: JobId,
    clock: u64,
    completed: u64,
    client_jobs_max: usize,
    client_bytes_max: u64,
}

impl Broker {
    /// A broker whose artifact store holds about `stored_bytes_max` bytes.
    pub fn new(stored_bytes_max: u64) -> Self {
        Self {
            clients: Map::default(),
            workers: Map::default(),
            admins: Set::default(),
            jobs: Map::default(),
            plain: BinaryHeap::new(),
            allowing: Map::default(),
            queued: 0,
            stored: Map::default(),
            manifests: Map::default(),
            wanted: Map::default(),
            stored_bytes: 0,
            stored_bytes_max,
            next_job: 1,
            clock: 0,
            completed: 0,
            client_jobs_max: CLIENT_JOBS_MAX_DEFAULT,
            client_bytes_max: stored_bytes_max,
        }
    }

    /// The same, with each client's uploads allowed to hold at most `max` bytes of the store
    /// (the store's size unless set): an upload past that is refused, and its jobs fail saying
    /// so.
    pub fn with_client_bytes_max(mut self, max: u64) -> Self {
        self.client_bytes_max = max;
        self
    }

    /// The same, with each client allowed `max` pending jobs at once: a job past that ends at
    /// once with an error that says so.
    pub fn with_client_jobs_max(mut self, max: usize) -> Self {
        self.client_jobs_max = max;
        self
    }

    /// Whether `worker` may fetch the artifact `digest`: only what a job assigned to it needs
    /// (its layers, and the files its manifests name).
    pub fn may_fetch(&self, worker: PeerId, digest: &Digest) -> bool {
        self.workers.get(&worker).is_some_and(|w| w.fetchable.contains_key(digest))
    }

    /// Records an artifact found in the store at startup.
    pub fn preload(&mut self, digest: Digest, size: u64, files: Option<Vec<Digest>>) {
        self.stored_bytes += size;
        self.stored.insert(digest, Stored { size, last_use: 0, pins: 0, uploader: None });
        if let Some(files) = files {
            self.manifests.insert(digest, files);
        }
    }

    /// Handles one event, appending what to do to `effects`.
    pub fn handle(&mut self, event: Event<'_>, effects: &mut Vec<Effect>) {
        self.clock += 1;
        match event {
            Event::ClientConnected(peer) => {
                self.clients.insert(peer, Client::default());
            }
            Event::WorkerConnected { peer, slots, grants } => {
                self.workers.insert(
                    peer,
                    Worker {
                        slots: slots.max(1),
                        grants,
                        granted: grants.count_ones(),
                        running: Map::default(),
                        fetchable: Map::default(),
                        layers: Set::default(),
                    },
                );
            }
            Event::AdminConnected(peer) => {
                self.admins.insert(peer);
            }
            Event::Disconnected(peer) => self.disconnected(peer, effects),
            Event::Submit { peer, id, spec, bytes } => self.submit(peer, id, spec, bytes, effects),
            Event::Cancel { peer, id } => self.cancel(peer, id, effects),
            Event::Done { peer, id, outcome } => self.done(peer, id, outcome, effects),
            Event::Stored { digest, size, files, from } => self.stored(digest, size, files, from, effects),
            Event::Unavailable { peer, digest, reason } => self.unavailable(peer, digest, &reason, effects),
            Event::StatusRequest(peer) => {
                effects.push(Effect::Send { peer, message: Control::Status(self.status()) })
            }
            Event::Stop(_) => effects.push(Effect::Exit),
        }
        self.dispatch(effects);
    }

    pub fn status(&self) -> Status {
        Status {
            workers: self.workers.len() as u32,
            slots: self.workers.values().map(|w| w.slots).fold(0, u32::saturating_add),
            clients: self.clients.len() as u32,
            queued: self.queued,
            running: self.workers.values().map(|w| w.running.len() as u64).sum(),
            completed: self.completed,
            artifacts: self.stored.len() as u64,
            artifact_bytes: self.stored_bytes,
        }
    }

    fn submit(
        &mut self,
        peer: PeerId,
        id: u64,
        spec: &ArchivedJobSpec,
        bytes: &[u8],
        effects: &mut Vec<Effect>,
    ) {
        let Some(client) = self.clients.get(&peer) else { return };
        if client.jobs.contains_key(&id) {
            // Its result could not be told from the first one's.
            let reason = format!("job id {id} was reused while that job is pending");
            effects.push(Effect::Disconnect { peer, reason });
            return;
        }
        if client.jobs.len() >= self.client_jobs_max {
            let outcome = Outcome::SystemError(format!(
                "the broker holds {} pending jobs of this client, its bound (client-jobs-max); \
                 submit more as these finish",
                client.jobs.len()
            ));
            effects.push(Effect::Send { peer, message: Control::Done { id, outcome } });
            return;
        }
        let job_id = self.next_job;
        self.next_job += 1;
        let layers: Vec<LayerRef> = spec
            .layers
            .iter()
            .map(|l| LayerRef {
                kind: match l.kind {
                    ArchivedLayerKind::Tar => maelstrom_wire::cluster::LayerKind::Tar,
                    ArchivedLayerKind::Manifest => maelstrom_wire::cluster::LayerKind::Manifest,
                },
                digest: Digest(l.digest.0),
            })
            .collect();
        let mut job = Job {
            client: peer,
            client_id: id,
            bytes: Arc::from(bytes),
            priority: spec.priority,
            estimated_ms: spec.estimated_ms.to_native(),
            layers: Vec::new(),
            pins: Vec::new(),
            state: State::Waiting { missing: 0 },
            needs: maelstrom_wire::zygote::allowance_bits(spec.allow.iter()),
        };
        let mut missing = 0;
        for layer in &layers {
            let manifest = layer.kind == maelstrom_wire::cluster::LayerKind::Manifest;
            missing += self.need(job_id, &mut job, peer, layer.digest, manifest, effects);
            if manifest && let Some(files) = self.manifests.get(&layer.digest).cloned() {
                for file in files {
                    missing += self.need(job_id, &mut job, peer, file, false, effects);
                }
            }
        }
        job.layers = layers;
        job.state = if missing == 0 { State::Queued } else { State::Waiting { missing } };
        if missing == 0 {
            self.enqueue(job_id, &job);
        }
        self.jobs.insert(job_id, job);
        if let Some(client) = self.clients.get_mut(&peer) {
            client.jobs.insert(id, job_id);
        }
    }

    /// Pins `digest` for the job if stored; otherwise records the job as waiting for it, asking
    /// the client the first time. Returns 1 if the job must wait for it.
    fn need(
        &mut self,
        job_id: JobId,
        job: &mut Job,
        client: PeerId,
        digest: Digest,
        manifest: bool,
        effects: &mut Vec<Effect>,
    ) -> u32 {
        if let Some(stored) = self.stored.get_mut(&digest) {
            stored.pins += 1;
            stored.last_use = self.clock;
            job.pins.push(digest);
            return 0;
        }
        match self.wanted.entry(digest) {
            Entry::Occupied(mut wanted) => wanted.get_mut().jobs.push(job_id),
            Entry::Vacant(vacant) => {
                vacant.insert(Wanted { from: client, manifest, jobs: vec![job_id] });
                effects.push(Effect::Want { client, digest, manifest });
            }
        }
        1
    }

    /// Queues job `job_id` in the queue of what it asks for.
    fn enqueue(&mut self, job_id: JobId, job: &Job) {
        let ranked = Ranked {
            priority: job.priority,
            estimated_ms: job.estimated_ms,
            order: std::cmp::Reverse(job_id),
        };
        match job.needs {
            0 => self.plain.push(ranked),
            needs => self.allowing.entry(needs).or_default().push(ranked),
        }
        self.queued += 1;
    }

    fn stored(
        &mut self,
        digest: Digest,
        size: u64,
        files: Option<Vec<Digest>>,
        from: Option<PeerId>,
        effects: &mut Vec<Effect>,
    ) {
        if self.stored.contains_key(&digest) {
            return;
        }
        self.stored_bytes += size;
        let uploader = from.and_then(|peer| {
            let client = self.clients.get_mut(&peer)?;
            // Its reservation becomes what it holds.
            client.uploading.remove(&digest);
            client.held_bytes += size;
            Some(peer)
        });
        self.stored.insert(digest, Stored { size, last_use: self.clock, pins: 0, uploader });
        if let Some(files) = &files {
            self.manifests.insert(digest, files.clone());
        }
        let Some(wanted) = self.wanted.remove(&digest) else {
            self.evict(effects);
            return;
        };
        for job_id in wanted.jobs {
            let Some(mut job) = self.jobs.remove(&job_id) else { continue };
            let State::Waiting { mut missing } = job.state else {
                self.jobs.insert(job_id, job);
                continue;
            };
            if let Some(stored) = self.stored.get_mut(&digest) {
                stored.pins += 1;
            }
            job.pins.push(digest);
            missing -= 1;
            if wanted.manifest
                && let Some(files) = &files
            {
                let client = job.client;
                for file in files.clone() {
                    missing += self.need(job_id, &mut job, client, file, false, effects);
                }
            }
            job.state = if missing == 0 { State::Queued } else { State::Waiting { missing } };
            if missing == 0 {
                self.enqueue(job_id, &job);
            }
            self.jobs.insert(job_id, job);
        }
        self.evict(effects);
    }

    /// A client could not upload an artifact: its jobs that need it fail with the reason; if
    /// other clients' jobs need it too, the next of those clients is asked.
    fn unavailable(&mut self, peer: PeerId, digest: Digest, reason: &str, effects: &mut Vec<Effect>) {
        if let Some(client) = self.clients.get_mut(&peer) {
            client.uploading.remove(&digest);
        }
        let Some(mut wanted) = self.wanted.remove(&digest) else { return };
        if wanted.from != peer {
            self.wanted.insert(digest, wanted);
            return;
        }
        let message = format!("artifact {digest} could not be uploaded: {reason}");
        let (theirs, others): (Vec<JobId>, Vec<JobId>) =
            wanted.jobs.iter().partition(|j| self.jobs.get(j).is_some_and(|job| job.client == peer));
        for job_id in theirs {
            if self.jobs.get(&job_id).is_some_and(|job| matches!(job.state, State::Waiting { .. })) {
                self.finish(job_id, Outcome::SystemError(message.clone()), effects);
            }
        }
        wanted.jobs = others;
        self.reask(digest, wanted, effects);
    }

    /// Asks the client of the first job still waiting for `digest`, if there is one.
    fn reask(&mut self, digest: Digest, mut wanted: Wanted, effects: &mut Vec<Effect>) {
        wanted.jobs.retain(|j| self.jobs.get(j).is_some_and(|job| self.clients.contains_key(&job.client)));
        let Some(client) = wanted.jobs.first().and_then(|j| self.jobs.get(j)).map(|j| j.client) else {
            return;
        };
        wanted.from = client;
        effects.push(Effect::Want { client, digest, manifest: wanted.manifest });
        self.wanted.insert(digest, wanted);
    }

    fn cancel(&mut self, peer: PeerId, id: u64, effects: &mut Vec<Effect>) {
        let Some(job_id) = self.clients.get(&peer).and_then(|c| c.jobs.get(&id)).copied() else { return };
        let Some(job) = self.jobs.get(&job_id) else { return };
        match job.state {
            State::Running { worker } => {
                effects.push(Effect::Send { peer: worker, message: Control::Cancel { id: job_id } })
            }
            State::Waiting { .. } | State::Queued => {
                self.finish(job_id, Outcome::SystemError("cancelled".into()), effects);
            }
        }
    }

    fn done(&mut self, peer: PeerId, id: JobId, outcome: Outcome, effects: &mut Vec<Effect>) {
        let Some(worker) = self.workers.get_mut(&peer) else { return };
        let Some(needed) = worker.running.remove(&id) else {
            // Not this worker's job (any more): a late or duplicate report. Ignore it, so no job
            // is ever reported twice.
            return;
        };
        for digest in needed {
            if let Entry::Occupied(mut count) = worker.fetchable.entry(digest) {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
        match self.jobs.get(&id) {
            Some(job) if matches!(job.state, State::Running { worker } if worker == peer) => {
                self.completed += 1;
                self.finish(id, outcome, effects);
            }
            _ => {}
        }
    }

    /// Ends a job: reports it to its client (if still connected) and releases what it held.
    fn finish(&mut self, job_id: JobId, outcome: Outcome, effects: &mut Vec<Effect>) {
        let Some(job) = self.jobs.remove(&job_id) else { return };
        if matches!(job.state, State::Queued) {
            self.queued -= 1;
        }
        if let Some(client) = self.clients.get_mut(&job.client)
            && client.jobs.get(&job.client_id) == Some(&job_id)
        {
            client.jobs.remove(&job.client_id);
            effects.push(Effect::Send {
                peer: job.client,
                message: Control::Done { id: job.client_id, outcome },
            });
        }
        self.unpin(&job);
    }

    fn unpin(&mut self, job: &Job) {
        for digest in &job.pins {
            if let Some(stored) = self.stored.get_mut(digest) {
                stored.pins = stored.pins.saturating_sub(1);
            }
        }
    }

    fn disconnected(&mut self, peer: PeerId, effects: &mut Vec<Effect>) {
        self.admins.remove(&peer);
        if let Some(worker) = self.workers.remove(&peer) {
            for job_id in worker.running.into_keys() {
                if let Some(mut job) = self.jobs.remove(&job_id) {
                    job.state = State::Queued;
                    self.enqueue(job_id, &job);
                    self.jobs.insert(job_id, job);
                }
            }
        }
        if let Some(client) = self.clients.remove(&peer) {
            for job_id in client.jobs.into_values() {
                let Some(job) = self.jobs.remove(&job_id) else { continue };
                match job.state {
                    State::Running { worker } => {
                        effects.push(Effect::Send { peer: worker, message: Control::Cancel { id: job_id } });
                    }
                    State::Queued => self.queued -= 1,
                    State::Waiting { .. } => {}
                }
                self.unpin(&job);
            }
            // Artifacts this client was asked for: ask another client that needs them.
            let orphaned: Vec<Digest> =
                self.wanted.iter().filter(|(_, w)| w.from == peer).map(|(digest, _)| *digest).collect();
            for digest in orphaned {
                let Some(wanted) = self.wanted.remove(&digest) else { continue };
                self.reask(digest, wanted, effects);
            }
        }
    }

    /// What the workers connected now grant: each set of allowances (as bits) once.
    pub fn grants(&self) -> Vec<u32> {
        let mut sets: Vec<u32> = self.workers.values().map(|worker| worker.grants).collect();
        sets.sort_unstable();
        sets.dedup();
        sets
    }

    /// Starts queued jobs on workers with room, best first. A queue (the jobs asking for the
    /// same allowances) whose best finds no worker waits without holding up the others.
    fn dispatch(&mut self, effects: &mut Vec<Effect>) {
        if self.allowing.values().all(BinaryHeap::is_empty) {
            return self.dispatch_plain(effects);
        }
        // The best job some worker can take goes first, whichever queue it waits in: a job
        // asking for allowances is not passed by worse plain jobs on the workers granting them.
        loop {
            self.drop_ended_tops();
            let mut tops: Vec<(Ranked, u32)> = self.plain.peek().map(|top| (*top, 0)).into_iter().collect();
            tops.extend(self.allowing.iter().filter_map(|(mask, queue)| Some((*queue.peek()?, *mask))));
            tops.sort_unstable_by_key(|&(top, _)| std::cmp::Reverse(top));
            let Some((job_id, mask, worker_id)) = tops
                .iter()
                .find_map(|(top, mask)| Some((top.order.0, *mask, self.pick_worker(top.order.0)?)))
            else {
                return;
            };
            match mask {
                0 => self.plain.pop(),
                mask => self.allowing.get_mut(&mask).and_then(BinaryHeap::pop),
            };
            self.start(job_id, worker_id, effects);
        }
    }

    /// The dispatch while no queued job asks for an allowance.
    fn dispatch_plain(&mut self, effects: &mut Vec<Effect>) {
        while let Some(top) = self.plain.peek() {
            let job_id = top.order.0;
            if !self.jobs.get(&job_id).is_some_and(|job| matches!(job.state, State::Queued)) {
                self.plain.pop();
                continue;
            }
            let Some(worker_id) = self.pick_worker(job_id) else { return };
            self.plain.pop();
            self.start(job_id, worker_id, effects);
        }
    }

    /// Pops from every queue the jobs on top that are no longer queued (cancelled, or ended).
    fn drop_ended_tops(&mut self) {
        let jobs = &self.jobs;
        let ended =
            |top: &Ranked| !jobs.get(&top.order.0).is_some_and(|job| matches!(job.state, State::Queued));
        for queue in std::iter::once(&mut self.plain).chain(self.allowing.values_mut()) {
            while queue.peek().is_some_and(ended) {
                queue.pop();
            }
        }
    }

    /// Starts queued job `job_id` (popped from its queue) on `worker_id`.
    fn start(&mut self, job_id: JobId, worker_id: PeerId, effects: &mut Vec<Effect>) {
        self.queued -= 1;
        let job = self.jobs.get_mut(&job_id).expect("INVARIANT: a queued job is live");
        job.state = State::Running { worker: worker_id };
        let worker = self.workers.get_mut(&worker_id).expect("INVARIANT: picked among the workers");
        // What it pinned is every artifact it needs (its layers, their manifests' files),
        // a digest named twice counted twice, here and when it is done alike.
        let needed = job.pins.clone();
        for digest in &needed {
            *worker.fetchable.entry(*digest).or_default() += 1;
        }
        worker.running.insert(job_id, needed);
        if worker.layers.len() + job.layers.len() > WORKER_LAYERS_MAX {
            worker.layers.clear();
        }
        worker.layers.extend(job.layers.iter().map(|l| l.digest));
        effects.push(Effect::Start { worker: worker_id, id: job_id, job: Arc::clone(&job.bytes) });
    }

    /// Among workers with room that grant what the job asks for, the one holding most of its
    /// layers, then the least loaded, then the one granting least (keeping those that grant
    /// more for the jobs that need it).
    fn pick_worker(&self, job_id: JobId) -> Option<PeerId> {
        use std::cmp::Reverse;
        let job = self.jobs.get(&job_id)?;
        let mut best = None;
        for (&peer, worker) in &self.workers {
            let capacity = worker.slots as usize * IN_FLIGHT_PER_SLOT;
            if worker.running.len() >= capacity || worker.grants & job.needs != job.needs {
                continue;
            }
            let held = job.layers.iter().filter(|l| worker.layers.contains(&l.digest)).count();
            // Load as a fraction of slots, scaled to compare without floats.
            let load = (worker.running.len() as u64 * 1024) / u64::from(worker.slots);
            let rank = (held, Reverse(load), Reverse(worker.granted), Reverse(peer));
            if best.is_none_or(|best| rank > best) {
                best = Some(rank);
            }
        }
        best.map(|(.., Reverse(peer))| peer)
    }

    fn evict(&mut self, effects: &mut Vec<Effect>) {
        if self.stored_bytes <= self.stored_bytes_max {
            return;
        }
        let mut candidates: Vec<(u64, Digest, u64)> = self
            .stored
            .iter()
            .filter(|(_, s)| s.pins == 0)
            .map(|(digest, s)| (s.last_use, *digest, s.size))
            .collect();
        candidates.sort_unstable();
        for (_, digest, _) in candidates {
            if self.stored_bytes <= self.stored_bytes_max {
                break;
            }
            self.remove_stored(digest, effects);
        }
    }

    /// Admits `client`'s upload of `digest` (`bytes` long) if its uploads, held and under way,
    /// stay within its bound (`client-bytes-max`): first making room by evicting what it
    /// uploaded that no job needs now (least recently used first), as the store would anyway.
    /// Reserves the bytes until the upload is stored or given up; else says why not.
    pub fn admit_upload(
        &mut self,
        client: PeerId,
        digest: Digest,
        bytes: u64,
        effects: &mut Vec<Effect>,
    ) -> Result<(), String> {
        let max = self.client_bytes_max;
        let total = |c: &Client| c.held_bytes + c.uploading.values().sum::<u64>();
        let Some(current) = self.clients.get(&client).map(total) else { return Ok(()) };
        if current.saturating_add(bytes) > max {
            let mut own: Vec<(u64, Digest, u64)> = self
                .stored
                .iter()
                .filter(|(_, s)| s.uploader == Some(client) && s.pins == 0)
                .map(|(d, s)| (s.last_use, *d, s.size))
                .collect();
            own.sort_unstable();
            let mut held = current;
            for (_, old, size) in own {
                if held.saturating_add(bytes) <= max {
                    break;
                }
                self.remove_stored(old, effects);
                held = held.saturating_sub(size);
            }
        }
        let Some(state) = self.clients.get_mut(&client) else { return Ok(()) };
        let now = total(state);
        if now.saturating_add(bytes) > max {
            return Err(format!(
                "it has {bytes} bytes, and this client's uploads already hold {now} bytes of the broker's \
                 store (those its pending jobs need), its bound (client-bytes-max) being {max}"
            ));
        }
        state.uploading.insert(digest, bytes);
        Ok(())
    }

    /// Deletes a stored artifact, no longer counted against its uploader.
    fn remove_stored(&mut self, digest: Digest, effects: &mut Vec<Effect>) {
        let Some(stored) = self.stored.remove(&digest) else { return };
        if let Some(client) = stored.uploader.and_then(|peer| self.clients.get_mut(&peer)) {
            client.held_bytes = client.held_bytes.saturating_sub(stored.size);
        }
        self.manifests.remove(&digest);
        self.stored_bytes -= stored.size;
        effects.push(Effect::Evict { digest });
    }

    /// Whether the broker asked `peer` to upload `digest` and still waits for it.
    pub fn is_wanted_from(&self, digest: &Digest, peer: PeerId) -> bool {
        self.wanted.get(digest).is_some_and(|w| w.from == peer)
    }

    /// Whether `digest` is in the store (for serving workers' fetches).
    pub fn has(&self, digest: &Digest) -> bool {
        self.stored.contains_key(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maelstrom_wire::cluster::{JobSpec, LayerKind, Output};
    use maelstrom_wire::zygote::NetworkMode;
    use rkyv::util::AlignedVec;

    fn job(layers: Vec<LayerRef>, priority: i8, estimated_ms: u64) -> AlignedVec {
        maelstrom_wire::cluster::encode_job(&spec(layers, priority, estimated_ms))
    }

    fn spec(layers: Vec<LayerRef>, priority: i8, estimated_ms: u64) -> JobSpec {
        JobSpec {
            program: "/bin/true".into(),
            arguments: vec![],
            environment: vec![],
            layers,
            mounts: vec![],
            keep_visible: vec![],
            network: NetworkMode::Disabled,
            allow: vec![],
            limits: Default::default(),
            writable_root: false,
            working_directory: "/".into(),
            user: 0,
            group: 0,
            timeout_ms: 0,
            timeout_warning: None,
            priority,
            estimated_ms,
        }
    }

    fn submit(broker: &mut Broker, client: PeerId, id: u64, bytes: &AlignedVec, effects: &mut Vec<Effect>) {
        let spec = rkyv::access::<ArchivedJobSpec, rkyv::rancor::Error>(bytes).unwrap();
        broker.handle(Event::Submit { peer: client, id, spec, bytes }, effects);
    }

    fn tar(n: u8) -> LayerRef {
        LayerRef { kind: LayerKind::Tar, digest: Digest::of(&[n]) }
    }

    fn exited() -> Outcome {
        Outcome::Exited {
            code: 0,
            stdout: Output::default(),
            stderr: Output::default(),
            duration_us: 1,
            met: Vec::new(),
            usage: Default::default(),
        }
    }

    fn starts(effects: &[Effect]) -> Vec<(PeerId, JobId)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Start { worker, id, .. } => Some((*worker, *id)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn asks_only_for_missing_artifacts_once_then_runs() {
        let mut b = Broker::new(1 << 30);
        let mut fx = Vec::new();
        b.preload(tar(1).digest, 10, None);
        b.handle(Event::ClientConnected(1), &mut fx);
        b.handle(Event::WorkerConnected { peer: 9, slots: 1, grants: 0 }, &mut fx);
        let bytes = job(vec![tar(1), tar(2)], 0, 0);
        submit(&mut b, 1, 100, &bytes, &mut fx);
        submit(&mut b, 1, 101, &bytes, &mut fx);
        let wants: Vec<_> = fx.iter().filter(|e| matches!(e, Effect::Want { .. })).collect();
        assert_eq!(wants, [&Effect::Want { client: 1, digest: tar(2).digest, manifest: false }]);
        assert!(starts(&fx).is_empty(), "nothing runs before its artifacts are stored");
        fx.clear();
        b.handle(Event::Stored { digest: tar(2).digest, size: 5, files: None, from: None }, &mut fx);
        assert_eq!(starts(&fx).len(), 2, "two in flight on one slot: twice the slots");
    }

    #[test]
    fn manifests_bring_their_files_into_the_wait() {
        let mut b = Broker::new(1 << 30);
        let mut fx = Vec::new();
        b.handle(Event::ClientConnected(1), &mut fx);
        b.handle(Event::WorkerConnected { peer: 9, slots: 1, grants: 0 }, &mut fx);
        let manifest = LayerRef { kind: LayerKind::Manifest, digest: Digest::of(b"m") };
        submit(&mut b, 1, 1, &job(vec![manifest], 0, 0), &mut fx);
        assert_eq!(fx, [Effect::Want { client: 1, digest: manifest.digest, manifest: true }]);
        fx.clear();
        let files = vec![Digest::of(b"f1"), Digest::of(b"f2")];
        b.handle(
            Event::Stored { digest: manifest.digest, size: 1, files: Some(files.clone()), from: None },
            &mut fx,
        );
        assert_eq!(fx.len(), 2, "both files wanted: {fx:?}");
        fx.clear();
        b.handle(Event::Stored { digest: files[0], size: 1, files: None, from: None }, &mut fx);
        assert!(starts(&fx).is_empty());
        b.handle(Event::Stored { digest: files[1], size: 1, files: None, from: None }, &mut fx);
        assert_eq!(starts(&fx).len(), 1);
    }

    #[test]
    fn a_worker_may_fetch_only_what_its_jobs_need() {
        let mut b = Broker::new(1 << 30);
        let mut fx = Vec::new();
        b.handle(Event::ClientConnected(1), &mut fx);
        b.handle(Event::WorkerConnected { peer: 9, slots: 1, grants: 0 }, &mut fx);
        b.handle(Event::WorkerConnected { peer: 8, slots: 1, grants: 0 }, &mut fx);
        let manifest = LayerRef { kind: LayerKind::Manifest, digest: Digest::of(b"m") };
        let file = Digest::of(b"f");
        b.preload(manifest.digest, 1, Some(vec![file]));
        b.preload(file, 1, None);
        b.preload(tar(1).digest, 1, None);
        submit(&mut b, 1, 1, &job(vec![manifest], 0, 0), &mut fx);
        let [(worker, _)] = starts(&fx)[..] else { panic!("one start: {fx:?}") };
        let other = if worker == 9 { 8 } else { 9 };
        for digest in [manifest.digest, file] {
            assert!(b.may_fetch(worker, &digest));
            assert!(!b.may_fetch(other, &digest), "{digest} is not for the other worker");
        }
        assert!(!b.may_fetch(worker, &tar(1).digest), "stored, but no job of this worker's needs it");
        let [(_, id)] = starts(&fx)[..] else { unreachable!() };
        b.handle(Event::Done { peer: worker, id, outcome: exited() }, &mut fx);
        assert!(!b.may_fetch(worker, &file), "not once the job is done");
    }

    #[test]
    fn a_clients_uploads_hold_at_most_its_bound() {
        let mut b = Broker::new(1 << 30).with_client_bytes_max(100);
        let mut fx = Vec::new();
        b.handle(Event::ClientConnected(1), &mut fx);
        b.handle(Event::ClientConnected(2), &mut fx);
        // Pinned by a job waiting for another layer, 60 bytes are held.
        submit(&mut b, 1, 7, &job(vec![tar(1), tar(2)], 0, 0), &mut fx);
        assert!(b.admit_upload(1, tar(1).digest, 60, &mut fx).is_ok());
        b.handle(Event::Stored { digest: tar(1).digest, size: 60, files: None, from: Some(1) }, &mut fx);
        // Uploads under way count too: 30 reserved.
        assert!(b.admit_upload(1, tar(3).digest, 30, &mut fx).is_ok());
        let why = b.admit_upload(1, tar(4).digest, 11, &mut fx).unwrap_err();
        assert!(why.contains("already hold 90 bytes") && why.contains("client-bytes-max"), "{why}");
        assert!(b.admit_upload(2, tar(4).digest, 100, &mut fx).is_ok(), "another client's bound is its own");
        // Given up, the reservation goes.
        b.handle(Event::Unavailable { peer: 1, digest: tar(3).digest, reason: "gone".into() }, &mut fx);
        assert!(b.admit_upload(1, tar(5).digest, 40, &mut fx).is_ok());
        b.handle(Event::Stored { digest: tar(5).digest, size: 40, files: None, from: Some(1) }, &mut fx);
        // What no job needs any more makes room, as the store would evict it anyway.
        fx.clear();
        assert!(b.admit_upload(1, tar(6).digest, 40, &mut fx).is_ok(), "the unpinned 40 are evicted");
        assert_eq!(fx, [Effect::Evict { digest: tar(5).digest }]);
        // The same digest stored twice counts once; a preloaded one counts for no one.
        b.handle(Event::Stored { digest: tar(6).digest, size: 40, files: None, from: Some(1) }, &mut fx);
        b.handle(Event::Stored { digest: tar(6).digest, size: 40, files: None, from: Some(1) }, &mut fx);
        b.preload(tar(8).digest, 500, None);
        fx.clear();
        assert!(b.admit_upload(1, tar(9).digest, 1, &mut fx).is_ok());
        assert_eq!(fx, [Effect::Evict { digest: tar(6).digest }], "the 40 held once, evicted for room");
        let why = b.admit_upload(1, tar(10).digest, 40, &mut fx).unwrap_err();
        assert!(why.contains("already hold 61 bytes"), "60 pinned and 1 reserved: {why}");
    }

    #[test]
    fn a_client_past_its_bound_of_pending_jobs_is_told_so() {
        let mut b = Broker::new(1 << 30).with_client_jobs_max(2);
        let mut fx = Vec::new();
        b.handle(Event::ClientConnected(1), &mut fx);
        for id in 1..=3 {
            submit(&mut b, 1, id, &job(vec![tar(7)], 0, 0), &mut fx);
        }
        let told: Vec<&Effect> = fx.iter().filter(|e| matches!(e, Effect::Send { .. })).collect();
        let [Effect::Send { peer: 1, message: Control::Done { id: 3, outcome: Outcome::SystemError(why) } }] =
            told[..]
        else {
            panic!("one refusal: {fx:?}")
        };
        assert!(why.contains("client-jobs-max"), "{why}");
        assert_eq!(b.status().queued, 0, "the two in bound wait for their artifact");
    }

    /// A job that asks for allowances runs only on a worker that grants them all, and waits
    /// for one without holding up the jobs behind it.
    #[test]
    fn allowances_go_only_to_workers_that_grant_them() {
        use maelstrom_wire::zygote::Allowance;
        let mut b = Broker::new(1 << 30);
        let mut fx = Vec::new();
        b.preload(tar(1).digest, 1, None);
        b.handle(Event::ClientConnected(1), &mut fx);
        b.handle(Event::WorkerConnected { peer: 8, slots: 1, grants: 0 }, &mut fx);
        assert_eq!(b.grants(), [0]);
        let allowing = |allow: Vec<Allowance>, priority| {
            maelstrom_wire::cluster::encode_job(&JobSpec { allow, ..spec(vec![tar(1)], priority, 0) })
        };
        submit(&mut b, 1, 1, &allowing(vec![Allowance::IoUring], 5), &mut fx);
        submit(&mut b, 1, 2, &job(vec![tar(1)], 0, 0), &mut fx);
        assert_eq!(starts(&fx), [(8, 2)], "a plain job passes one no worker grants");
        fx.clear();
        let grants = Allowance::IoUring.bit() | Allowance::Ptrace.bit();
        b.handle(Event::WorkerConnected { peer: 9, slots: 1, grants }, &mut fx);
        assert_eq!(b.grants(), [0, grants]);
        assert_eq!(starts(&fx), [(9, 1)]);
        fx.clear();
        submit(&mut b, 1, 3, &allowing(vec![Allowance::IoUring, Allowance::Bpf], 0), &mut fx);
        assert!(starts(&fx).is_empty(), "no worker grants both");
        // Its worker gone, the job waits for another that grants what it asks.
        b.handle(Event::Disconnected(9), &mut fx);
        assert_eq!(b.grants(), [0]);
        submit(&mut b, 1, 4, &job(vec![tar(1)], -1, 0), &mut fx);
        assert_eq!(starts(&fx), [(8, 4)]);
        fx.clear();
        b.handle(Event::WorkerConnected { peer: 10, slots: 1, grants }, &mut fx);
        assert_eq!(starts(&fx), [(10, 1)], "broker job ids follow the client's here");
        assert_eq!(b.status().queued, 1, "the one asking for bpf still waits");
    }

    /// Priority holds across the queues: a job asking for an allowance is not passed by worse
    /// plain jobs on the worker that grants it.
    #[test]
    fn priority_holds_across_allowances() {
        use maelstrom_wire::zygote::Allowance;
        let mut b = Broker::new(1 << 30);
        let mut fx = Vec::new();
        b.preload(tar(1).digest, 1, None);
        b.handle(Event::ClientConnected(1), &mut fx);
        submit(&mut b, 1, 1, &job(vec![tar(1)], 0, 0), &mut fx);
        submit(&mut b, 1, 2, &job(vec![tar(1)], 0, 0), &mut fx);
        let allowing = JobSpec { allow: vec![Allowance::IoUring], ..spec(vec![tar(1)], 5, 0) };
        submit(&mut b, 1, 3, &maelstrom_wire::cluster::encode_job(&allowing), &mut fx);
        fx.clear();
        b.handle(Event::WorkerConnected { peer: 9, slots: 1, grants: Allowance::IoUring.bit() }, &mut fx);
        assert_eq!(starts(&fx), [(9, 3), (9, 1)], "two in flight on one slot, the best first");
        fx.clear();
        b.handle(Event::Done { peer: 9, id: 3, outcome: exited() }, &mut fx);
        assert_eq!(starts(&fx), [(9, 2)]);
    }

    #[test]
    fn priority_then_longest_estimated_first() {
        let mut b = Broker::new(1 << 30);
        let mut fx = Vec::new();
        b.preload(tar(1).digest, 1, None);
        b.handle(Event::ClientConnected(1), &mut fx);
        for (id, priority, estimated) in [(1, 0, 10), (2, 0, 99), (3, 5, 1), (4, -1, 1000)] {
            submit(&mut b, 1, id, &job(vec![tar(1)], priority, estimated), &mut fx);
        }
        fx.clear();
        b.handle(Event::WorkerConnected { peer: 9, slots: 2, grants: 0 }, &mut fx);
        let order: Vec<JobId> = starts(&fx).into_iter().map(|(_, id)| id).collect();
        assert_eq!(order, [3, 2, 1, 4]);
    }

    #[test]
    fn prefers_the_worker_that_holds_the_layers() {
        let mut b = Broker::new(1 << 30);
        let mut fx = Vec::new();
        for n in 1..=2 {
            b.preload(tar(n).digest, 1, None);
        }
        b.handle(Event::ClientConnected(1), &mut fx);
        b.handle(Event::WorkerConnected { peer: 8, slots: 4, grants: 0 }, &mut fx);
        b.handle(Event::WorkerConnected { peer: 9, slots: 4, grants: 0 }, &mut fx);
        submit(&mut b, 1, 1, &job(vec![tar(1)], 0, 0), &mut fx);
        submit(&mut b, 1, 2, &job(vec![tar(2)], 0, 0), &mut fx);
        let placed = starts(&fx);
        assert_ne!(placed[0].0, placed[1].0, "no affinity yet: spread by load");
        fx.clear();
        for n in [1, 2, 1, 2] {
            submit(&mut b, 1, 10 + u64::from(n), &job(vec![tar(n)], 0, 0), &mut fx);
        }
        for (worker, id) in starts(&fx) {
            let layer = if b.jobs[&id].layers[0] == tar(1) { placed[0].0 } else { placed[1].0 };
            assert_eq!(worker, layer, "job {id} went to the worker without its layer");
        }
    }

    #[test]
    fn a_lost_worker_requeues_and_late_reports_are_ignored() {
        let mut b = Broker::new(1 << 30);
        let mut fx = Vec::new();
        b.preload(tar(1).digest, 1, None);
        b.handle(Event::ClientConnected(1), &mut fx);
        b.handle(Event::WorkerConnected { peer: 8, slots: 1, grants: 0 }, &mut fx);
        submit(&mut b, 1, 7, &job(vec![tar(1)], 0, 0), &mut fx);
        let (_, id) = starts(&fx)[0];
        fx.clear();
        b.handle(Event::Disconnected(8), &mut fx);
        b.handle(Event::Done { peer: 8, id, outcome: exited() }, &mut fx);
        assert!(fx.is_empty(), "a report from a gone worker counts for nothing: {fx:?}");
        b.handle(Event::WorkerConnected { peer: 9, slots: 1, grants: 0 }, &mut fx);
        assert_eq!(starts(&fx), [(9, id)]);
        fx.clear();
        b.handle(Event::Done { peer: 9, id, outcome: exited() }, &mut fx);
        b.handle(Event::Done { peer: 9, id, outcome: exited() }, &mut fx);
        let reports =
            fx.iter().filter(|e| matches!(e, Effect::Send { message: Control::Done { .. }, .. })).count();
        assert_eq!(reports, 1);
    }

    #[test]
    fn a_lost_client_cancels_its_jobs() {
        let mut b = Broker::new(1 << 30);
        let mut fx = Vec::new();
        b.preload(tar(1).digest, 1, None);
        b.handle(Event::ClientConnected(1), &mut fx);
        b.handle(Event::WorkerConnected { peer: 9, slots: 1, grants: 0 }, &mut fx);
        for id in 0..4 {
            submit(&mut b, 1, id, &job(vec![tar(1)], 0, 0), &mut fx);
        }
        let running = starts(&fx);
        assert_eq!(running.len(), 2);
        fx.clear();
        b.handle(Event::Disconnected(1), &mut fx);
        let cancels: Vec<_> =
            fx.iter().filter(|e| matches!(e, Effect::Send { message: Control::Cancel { .. }, .. })).collect();
        assert_eq!(cancels.len(), 2);
        fx.clear();
        for (worker, id) in running {
            b.handle(Event::Done { peer: worker, id, outcome: exited() }, &mut fx);
        }
        assert!(fx.is_empty(), "nothing is sent for a gone client, nothing else starts: {fx:?}");
        assert_eq!(b.status().queued, 0);
    }

    #[test]
    fn a_reused_job_id_disconnects_the_client() {
        let mut b = Broker::new(1 << 30);
        let mut fx = Vec::new();
        b.handle(Event::ClientConnected(1), &mut fx);
        let bytes = job(vec![tar(1)], 0, 0);
        submit(&mut b, 1, 7, &bytes, &mut fx);
        fx.clear();
        submit(&mut b, 1, 7, &bytes, &mut fx);
        assert!(
            matches!(&fx[..], [Effect::Want { .. }, Effect::Disconnect { peer: 1, reason }] if reason.contains("reused"))
                || matches!(&fx[..], [Effect::Disconnect { peer: 1, reason }] if reason.contains("reused")),
            "{fx:?}"
        );
    }

    #[test]
    fn an_artifact_one_client_cannot_upload_is_asked_of_another() {
        let mut b = Broker::new(1 << 30);
        let mut fx = Vec::new();
        b.handle(Event::ClientConnected(1), &mut fx);
        b.handle(Event::ClientConnected(2), &mut fx);
        b.handle(Event::WorkerConnected { peer: 9, slots: 1, grants: 0 }, &mut fx);
        let bytes = job(vec![tar(1)], 0, 0);
        submit(&mut b, 1, 10, &bytes, &mut fx);
        submit(&mut b, 2, 20, &bytes, &mut fx);
        assert_eq!(fx, [Effect::Want { client: 1, digest: tar(1).digest, manifest: false }]);
        fx.clear();
        b.handle(Event::Unavailable { peer: 1, digest: tar(1).digest, reason: "gone".into() }, &mut fx);
        assert!(
            matches!(&fx[0], Effect::Send { peer: 1, message: Control::Done { id: 10, outcome: Outcome::SystemError(m) } } if m.contains("gone")),
            "{fx:?}"
        );
        assert_eq!(fx[1], Effect::Want { client: 2, digest: tar(1).digest, manifest: false });
        fx.clear();
        b.handle(Event::Stored { digest: tar(1).digest, size: 1, files: None, from: None }, &mut fx);
        assert_eq!(starts(&fx).len(), 1, "client 2's job runs");
    }

    #[test]
    fn unpinned_artifacts_are_evicted_least_recently_used_first() {
        let mut b = Broker::new(25);
        let mut fx = Vec::new();
        b.handle(Event::ClientConnected(1), &mut fx);
        for n in 1..=3 {
            b.handle(Event::Stored { digest: tar(n).digest, size: 10, files: None, from: None }, &mut fx);
        }
        assert_eq!(fx, [Effect::Evict { digest: tar(1).digest }]);
        fx.clear();
        submit(&mut b, 1, 1, &job(vec![tar(2)], 0, 0), &mut fx);
        fx.clear();
        b.handle(Event::Stored { digest: tar(4).digest, size: 10, files: None, from: None }, &mut fx);
        assert_eq!(fx, [Effect::Evict { digest: tar(3).digest }], "tar 2 is pinned by a waiting job");
    }

    /// A tiny deterministic random source for the simulation.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// Clients submit jobs; workers come and go (losing whatever they ran); one client
    /// vanishes midway; uploads sometimes fail; every message to a worker, and every report
    /// from one, is delayed by a random number of steps but stays in order per connection.
    /// Every job of a client that stays must be reported to it exactly once (a result, or the
    /// error of a failed upload); nothing is reported twice, nor to a client that left.
    fn simulate(seed: u64) {
        let mut rng = Rng(seed | 1);
        let mut b = Broker::new(1 << 20);
        let mut fx = Vec::new();
        let staying = [1u64, 2];
        let leaving = 3u64;
        let jobs_per_client = 150u64;
        let total = 3 * jobs_per_client;
        for c in [1, 2, 3] {
            b.handle(Event::ClientConnected(c), &mut fx);
        }
        let leave_at = 50 + rng.below(1500);
        let io_uring = maelstrom_wire::zygote::Allowance::IoUring.bit();
        let mut gone = false;
        // In flight to each worker: (deliver at step, job id), FIFO.
        let mut to_worker: Map<PeerId, std::collections::VecDeque<(u64, JobId)>> = Map::default();
        // Running on each worker: (report at step, job id).
        let mut running: Map<PeerId, Vec<(u64, JobId)>> = Map::default();
        let mut reported: Map<(PeerId, u64), u32> = Map::default();
        let mut next_worker = 100u64;
        let mut live_workers: Vec<PeerId> = Vec::new();
        let mut submitted = 0u64;
        let mut step = 0u64;
        let done_staying = |reported: &Map<(PeerId, u64), u32>| {
            staying.iter().all(|c| (0..jobs_per_client).all(|i| reported.contains_key(&(*c, i))))
        };
        while !(submitted == total && done_staying(&reported)) {
            step += 1;
            assert!(step < 500_000, "seed {seed}: stuck with {} reported", reported.len());
            if step == leave_at {
                gone = true;
                b.handle(Event::Disconnected(leaving), &mut fx);
            }
            match rng.below(10) {
                0 if live_workers.len() < 4 => {
                    let peer = next_worker;
                    next_worker += 1;
                    live_workers.push(peer);
                    // Half the workers grant io_uring, which a quarter of the jobs ask for.
                    let grants = if rng.below(2) == 0 { io_uring } else { 0 };
                    b.handle(
                        Event::WorkerConnected { peer, slots: 1 + rng.below(3) as u32, grants },
                        &mut fx,
                    );
                }
                1 if !live_workers.is_empty() && rng.below(8) == 0 => {
                    let peer = live_workers.remove(rng.below(live_workers.len() as u64) as usize);
                    to_worker.remove(&peer);
                    running.remove(&peer);
                    b.handle(Event::Disconnected(peer), &mut fx);
                }
                2 | 3 if submitted < total => {
                    let client = [1, 2, 3][(submitted % 3) as usize];
                    let id = submitted / 3;
                    submitted += 1;
                    if client == leaving && gone {
                        continue;
                    }
                    let layers = vec![tar((submitted % 20) as u8)];
                    let mut spec = spec(layers, (rng.below(3) as i8) - 1, rng.below(100));
                    if rng.below(4) == 0 {
                        spec.allow = vec![maelstrom_wire::zygote::Allowance::IoUring];
                    }
                    let bytes = maelstrom_wire::cluster::encode_job(&spec);
                    submit(&mut b, client, id, &bytes, &mut fx);
                }
                _ => {
                    // A worker takes what has reached it, and reports what is due.
                    let Some(&peer) = live_workers.get(rng.below(live_workers.len().max(1) as u64) as usize)
                    else {
                        continue;
                    };
                    let queue = to_worker.entry(peer).or_default();
                    while queue.front().is_some_and(|(at, _)| *at <= step) {
                        if let Some((_, id)) = queue.pop_front() {
                            running.entry(peer).or_default().push((step + rng.below(20), id));
                        }
                    }
                    let list = running.entry(peer).or_default();
                    if let Some(i) = list.iter().position(|(at, _)| *at <= step) {
                        let (_, id) = list.remove(i);
                        b.handle(Event::Done { peer, id, outcome: exited() }, &mut fx);
                        if rng.below(10) == 0 {
                            b.handle(Event::Done { peer, id, outcome: exited() }, &mut fx);
                        }
                    }
                }
            }
            // Carry out the effects; uploads answer at once (and may cause more effects).
            while !fx.is_empty() {
                for effect in std::mem::take(&mut fx) {
                    match effect {
                        Effect::Want { client, digest, .. } => {
                            assert!(!(gone && client == leaving), "seed {seed}: asked a client that left");
                            if rng.below(10) == 0 {
                                let reason = "could not read it".to_owned();
                                b.handle(Event::Unavailable { peer: client, digest, reason }, &mut fx);
                            } else {
                                b.handle(Event::Stored { digest, size: 1, files: None, from: None }, &mut fx);
                            }
                        }
                        Effect::Start { worker, id, .. } if live_workers.contains(&worker) => {
                            to_worker.entry(worker).or_default().push_back((step + rng.below(30), id));
                        }
                        Effect::Send { peer, message: Control::Done { id, .. } } => {
                            assert!(
                                !(gone && peer == leaving),
                                "seed {seed}: reported to a client that left"
                            );
                            *reported.entry((peer, id)).or_default() += 1;
                        }
                        Effect::Disconnect { reason, .. } => panic!("seed {seed}: {reason}"),
                        _ => {}
                    }
                }
            }
            if live_workers.is_empty() && submitted == total {
                let peer = next_worker;
                next_worker += 1;
                live_workers.push(peer);
                b.handle(Event::WorkerConnected { peer, slots: 2, grants: io_uring }, &mut fx);
            }
        }
        assert!(reported.values().all(|&n| n == 1), "seed {seed}: a job was reported twice");
        assert_eq!(b.status().queued, 0, "seed {seed}");
        assert!(b.jobs.is_empty(), "seed {seed}: jobs were kept: {:?}", b.jobs.keys().collect::<Vec<_>>());
    }

    #[test]
    fn every_job_is_reported_exactly_once_under_faults() {
        for seed in 1..=40 {
            simulate(seed * 7919);
        }
    }
}
