//! The broker's shell: one thread, one io_uring, every connection. It parses frames, feeds the
//! [`Broker`] core, carries out its effects, and stores and serves artifacts.
//!
//! A peer that sends anything malformed (a bad header, an oversized frame, bytes that do not
//! validate, a message its role may not send) is logged with the reason and disconnected; no
//! other connection notices.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use maelstrom_uring::{Completion, Done, Ring, Token};
use maelstrom_wire::artifact::{Digest, Hasher, Manifest};
use maelstrom_wire::cluster::{
    self, ArchivedControl, ArchivedRole, CHUNK_BYTES, ChunkHeader, Control, Frame, FrameReader, Kind,
    Outcome, PROTOCOL_VERSION, WORKER_SLOTS_MAX,
};

use crate::core::{Broker, Effect, Event, PeerId};

/// Bytes queued for one connection before the broker stops adding artifact chunks to it.
const OUTGOING_BYTES_HIGH: usize = 8 << 20;

/// Bytes queued for one connection beyond which it is cut off: a peer that does not read
/// what it is sent must not grow the broker's memory without bound.
const OUTGOING_BYTES_MAX: usize = 256 << 20;

/// How long a new connection has to say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

/// How often connections are looked over: for a hello that never came, last words never
/// taken, or a peer gone silent.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// How long to wait before accepting again when out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bytes asked for per read of a connection.
const READ_BYTES: usize = 256 << 10;

/// Connections at once.
const CONNECTIONS_MAX: usize = 4096;

/// Connections from one address (an IPv6 /64) that have not said hello yet, or that are being
/// closed without having said one: a peer on one address cannot hold every connection the
/// broker takes, or keep more than this many handshakes going. An honest peer's hello comes
/// within milliseconds.
const UNGREETED_PER_ADDRESS_MAX: usize = 64;

/// At most one line per this about connections refused at accept; the others are counted.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(5);

const ACCEPT: Token = u64::MAX;
const STOP_DEADLINE: Token = u64::MAX - 1;
const SWEEP: Token = u64::MAX - 2;
const ACCEPT_AGAIN: Token = u64::MAX - 3;

/// How long a connection being closed has to take its last words (see `Conn::closing`), at
/// least: the sweep that ends it runs every [`SWEEP_EVERY`].
const LAST_WORDS_WITHIN: Duration = Duration::from_secs(2);

/// How long a stopping broker waits for its last words to workers.
const STOP_GRACE: Duration = Duration::from_secs(1);

fn token(peer: PeerId, write: bool) -> Token {
    (peer << 1) | u64::from(write)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Worker,
    Admin,
}

struct Upload {
    file: File,
    temp: PathBuf,
    hasher: Hasher,
    received: u64,
    total: u64,
}

struct Serving {
    digest: Digest,
    file: File,
    offset: u64,
    total: u64,
}

struct Conn {
    fd: Arc<OwnedFd>,
    address: SocketAddr,
    role: Option<Role>,
    /// With credentials, every connection is a TLS session.
    tls: Option<maelstrom_tls::Session>,
    reader: FrameReader,
    /// Frames to send, not yet encrypted; their bytes.
    outgoing: VecDeque<Vec<u8>>,
    outgoing_bytes: usize,
    /// Bytes ready for the wire (encrypted, with TLS) and not yet written.
    unsent: Vec<u8>,
    writing: bool,
    /// In [`Server::unflushed`].
    in_unflushed: bool,
    reading: bool,
    uploads: HashMap<Digest, Upload>,
    /// Uploads refused midway (too large): their remaining chunks are dropped.
    discarding: HashSet<Digest>,
    serving: VecDeque<Serving>,
    accepted: Instant,
    /// When the peer last sent anything.
    heard: Instant,
    /// Artifacts refused to this worker so far (the first few are logged).
    refusals: u32,
    /// Being closed, once what is queued for it is written (a refusal's reason, a TLS alert):
    /// since when, and why.
    closing: Option<(Instant, String)>,
}

/// The store's layout version: a store with another layout is left alone, not misread.
const LAYOUT: &str = "v1";

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by maelstrom.\n";

/// Where artifacts live: `v1/blobs/<hex>`, and manifests under `v1/manifests/<hex>` so a
/// restart knows which are which.
#[derive(Debug)]
struct Store {
    root: PathBuf,
    _lock: File,
}

impl Store {
    /// Opens the store under `root`, taking its lock: one broker per store.
    fn open(root: &Path) -> anyhow::Result<Self> {
        let versioned = root.join(LAYOUT);
        for sub in ["blobs", "manifests", "tmp"] {
            let dir = versioned.join(sub);
            fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
        }
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            fs::write(&tag, CACHEDIR_TAG).map_err(|e| anyhow::anyhow!("write {}: {e}", tag.display()))?;
        }
        let lock_path = versioned.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| anyhow::anyhow!("open {}: {e}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            anyhow::bail!(
                "another broker is using the cache {}; give this one its own --cache-root",
                root.display()
            );
        }
        for entry in fs::read_dir(versioned.join("tmp"))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(Self { root: versioned, _lock: lock })
    }

    fn path(&self, digest: &Digest, manifest: bool) -> PathBuf {
        self.root.join(if manifest { "manifests" } else { "blobs" }).join(digest.hex())
    }

    fn find(&self, digest: &Digest) -> Option<PathBuf> {
        [true, false].into_iter().map(|m| self.path(digest, m)).find(|p| p.exists())
    }

    /// What the store already holds, for the core.
    fn scan(&self) -> Vec<(Digest, u64, Option<Vec<Digest>>)> {
        let mut found = Vec::new();
        for manifest in [false, true] {
            let dir = self.root.join(if manifest { "manifests" } else { "blobs" });
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let Some(digest) = entry.file_name().to_str().and_then(Digest::from_hex) else { continue };
                let Ok(metadata) = entry.metadata() else { continue };
                let files = if manifest {
                    match fs::read(entry.path()).ok().and_then(|b| manifest_files(&b)) {
                        Some(files) => Some(files),
                        None => continue,
                    }
                } else {
                    None
                };
                found.push((digest, metadata.len(), files));
            }
        }
        found
    }
}

/// The file digests a manifest's bytes name, if they are a valid manifest.
fn manifest_files(bytes: &[u8]) -> Option<Vec<Digest>> {
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(bytes);
    let manifest =
        rkyv::access::<maelstrom_wire::artifact::ArchivedManifest, rkyv::rancor::Error>(&aligned).ok()?;
    let owned: Manifest = rkyv::deserialize::<Manifest, rkyv::rancor::Error>(manifest).ok()?;
    Some(
        owned
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                maelstrom_wire::artifact::EntryKind::File { digest, size, .. } if *size > 0 => Some(*digest),
                _ => None,
            })
            .collect(),
    )
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub store: PathBuf,
    /// How long a peer may stay silent after its hello before it is taken for gone (peers are
    /// told to ping at a third of it).
    pub idle_timeout: Duration,
    /// The broker's credentials: every peer must then speak TLS and prove its role.
    pub tls: Option<Arc<maelstrom_tls::rustls::ServerConfig>>,
    pub store_bytes_max: u64,
    /// Jobs one client may have pending at once.
    pub client_jobs_max: usize,
    /// Bytes one client's uploads may hold in the store.
    pub client_bytes_max: u64,
    pub verbose: bool,
}

/// Serves until an admin says stop.
pub fn serve(listener: TcpListener, config: ServerConfig) -> anyhow::Result<()> {
    let store = Store::open(&config.store)?;
    let mut broker = Broker::new(config.store_bytes_max)
        .with_client_jobs_max(config.client_jobs_max)
        .with_client_bytes_max(config.client_bytes_max);
    for (digest, size, files) in store.scan() {
        broker.preload(digest, size, files);
    }
    raise_fd_limit();
    let mut ring = Ring::new(1024)?;
    let listener = Arc::new(OwnedFd::from(listener));
    ring.accept(ACCEPT, &listener);
    ring.timeout(SWEEP, SWEEP_EVERY);
    let mut server = Server {
        ring,
        broker,
        store,
        conns: HashMap::new(),
        next_peer: 1,
        effects: Vec::new(),
        expect_manifest: HashSet::new(),
        store_bytes_max: config.store_bytes_max,
        exit: false,
        deadline_passed: false,
        verbose: config.verbose,
        tls: config.tls.clone(),
        plaintext: Vec::new(),
        idle_timeout: config.idle_timeout,
        unflushed: Vec::new(),
        refused_quietly: 0,
        refusal_logged: None,
    };
    let mut completions = Vec::new();
    while !(server.exit && (server.drained() || server.deadline_passed)) {
        completions.clear();
        server.ring.submit_and_wait(1, &mut completions)?;
        for completion in completions.drain(..) {
            match completion.token {
                STOP_DEADLINE => server.deadline_passed = true,
                _ if server.exit && matches!(completion.token, ACCEPT | ACCEPT_AGAIN | SWEEP) => {}
                ACCEPT => {
                    let out_of_fds = matches!(-completion.result, libc::EMFILE | libc::ENFILE);
                    server.accepted(&completion);
                    if out_of_fds {
                        // Accepting again at once would fail at once: wait for fds to free up.
                        server.ring.timeout(ACCEPT_AGAIN, ACCEPT_BACKOFF);
                    } else {
                        server.ring.accept(ACCEPT, &listener);
                    }
                }
                ACCEPT_AGAIN => server.ring.accept(ACCEPT, &listener),
                SWEEP => {
                    server.sweep();
                    server.ring.timeout(SWEEP, SWEEP_EVERY);
                }
                _ => server.completed(completion),
            }
        }
        server.flush_round();
    }
    Ok(())
}

struct Server {
    ring: Ring,
    broker: Broker,
    store: Store,
    conns: HashMap<PeerId, Conn>,
    next_peer: PeerId,
    effects: Vec<Effect>,
    expect_manifest: HashSet<Digest>,
    store_bytes_max: u64,
    exit: bool,
    deadline_passed: bool,
    verbose: bool,
    tls: Option<Arc<maelstrom_tls::rustls::ServerConfig>>,
    /// Scratch for what a TLS read carried.
    plaintext: Vec<u8>,
    idle_timeout: Duration,
    /// Connections refused at accept since the last line that said so, and when that was.
    refused_quietly: u64,
    refusal_logged: Option<Instant>,
    /// Connections with something queued since the last flush: flushed once each, after the
    /// loop has handled every completion it reaped, so that what one round of events sends a
    /// peer goes in one write (and, with TLS, one record).
    unflushed: Vec<PeerId>,
}

impl Server {
    /// Whether nothing is left to send to workers (so a stopping broker can exit).
    fn drained(&self) -> bool {
        self.conns
            .values()
            .filter(|c| c.role == Some(Role::Worker))
            .all(|c| !c.writing && c.outgoing.is_empty() && c.unsent.is_empty())
    }

    /// Closes the connections that are done for: no hello in time, last words not taken in
    /// time, or nothing heard for the idle timeout.
    fn sweep(&mut self) {
        let idle = self.idle_timeout;
        let done: Vec<(PeerId, String)> = self
            .conns
            .iter()
            .filter_map(|(peer, c)| {
                let why = match &c.closing {
                    Some((at, why)) => (at.elapsed() > LAST_WORDS_WITHIN).then(|| why.clone()),
                    None if c.role.is_none() => (c.accepted.elapsed() > HELLO_WITHIN)
                        .then(|| format!("no hello within {} s", HELLO_WITHIN.as_secs())),
                    None => (c.heard.elapsed() > idle).then(|| {
                        format!(
                            "nothing heard for {} s (a peer pings every {} ms when it has nothing to say)",
                            idle.as_secs(),
                            (idle / 3).as_millis()
                        )
                    }),
                };
                why.map(|why| (*peer, why))
            })
            .collect();
        for (peer, why) in done {
            self.close(peer, &why, true);
        }
        self.apply_effects();
        // Refusals counted quietly are told once the flood is over too.
        if self.refused_quietly > 0
            && self.refusal_logged.is_some_and(|at| at.elapsed() >= REFUSALS_LOGGED_EVERY)
        {
            let count = std::mem::take(&mut self.refused_quietly);
            self.log(&format!("{count} more connections refused at accept since the last such line"));
            self.refusal_logged = Some(Instant::now());
        }
    }

    /// Closes a connection the peer broke, once what is queued for it is written: the reason
    /// it was refused, or the TLS alert that says why. It reads no more meanwhile, and its
    /// role's part in the cluster ends at once.
    fn close_after_last_words(&mut self, peer: PeerId, why: &str) {
        self.flush(peer);
        let Some(conn) = self.conns.get_mut(&peer) else { return };
        if !conn.writing && conn.unsent.is_empty() && conn.outgoing.is_empty() {
            self.close(peer, why, true);
            return;
        }
        conn.closing = Some((Instant::now(), why.to_owned()));
        conn.serving.clear();
        if conn.role.take().is_some() {
            self.broker.handle(Event::Disconnected(peer), &mut self.effects);
        }
        self.ring.cancel(token(peer, false));
    }

    /// Says why a connection was refused as it was accepted (it is closed as the stream is
    /// dropped), in one line per [`REFUSALS_LOGGED_EVERY`] at most: a flood of connections
    /// does not flood the log.
    fn refuse_at_accept(&mut self, address: SocketAddr, why: &str) {
        if self.refusal_logged.is_some_and(|at| at.elapsed() < REFUSALS_LOGGED_EVERY) {
            self.refused_quietly += 1;
            return;
        }
        let more = match std::mem::take(&mut self.refused_quietly) {
            0 => String::new(),
            n => format!(" ({n} more refused since the last such line)"),
        };
        self.log(&format!("{address}: refused: {why}{more}"));
        self.refusal_logged = Some(Instant::now());
    }

    fn log(&self, message: &str) {
        eprintln!("maelstrom-broker: {message}");
    }

    fn accepted(&mut self, completion: &Completion) {
        let Some(fd) = completion.take_fd() else {
            self.log(&format!("accept failed: {}", io::Error::from_raw_os_error(-completion.result)));
            return;
        };
        let stream = std::net::TcpStream::from(fd);
        let mut address = stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        address.set_ip(address.ip().to_canonical());
        if self.conns.len() >= CONNECTIONS_MAX {
            self.refuse_at_accept(address, &format!("{CONNECTIONS_MAX} connections already"));
            return;
        }
        let source = source_of(address.ip());
        let ungreeted =
            self.conns.values().filter(|c| c.role.is_none() && source_of(c.address.ip()) == source).count();
        if ungreeted >= UNGREETED_PER_ADDRESS_MAX {
            let why = format!("{ungreeted} connections from {source} have not said hello yet");
            self.refuse_at_accept(address, &why);
            return;
        }
        let tls = match self.tls.as_ref().map(maelstrom_tls::Session::server).transpose() {
            Ok(tls) => tls,
            Err(e) => {
                self.log(&format!("{address}: refused: TLS: {e}"));
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = maelstrom_uring::keep_alive(stream.as_fd());
        let peer = self.next_peer;
        self.next_peer += 1;
        let fd = Arc::new(OwnedFd::from(stream));
        self.conns.insert(
            peer,
            Conn {
                fd,
                address,
                role: None,
                tls,
                reader: FrameReader::default(),
                outgoing: VecDeque::new(),
                outgoing_bytes: 0,
                unsent: Vec::new(),
                writing: false,
                in_unflushed: false,
                reading: false,
                uploads: HashMap::new(),
                discarding: HashSet::new(),
                serving: VecDeque::new(),
                accepted: Instant::now(),
                heard: Instant::now(),
                refusals: 0,
                closing: None,
            },
        );
        self.arm_read(peer, Vec::with_capacity(READ_BYTES));
    }

    fn arm_read(&mut self, peer: PeerId, buf: Vec<u8>) {
        if let Some(conn) = self.conns.get_mut(&peer) {
            conn.reading = true;
            self.ring.read(token(peer, false), &conn.fd, buf);
        }
    }

    fn completed(&mut self, completion: Completion) {
        let peer = completion.token >> 1;
        let write = completion.token & 1 == 1;
        if write {
            self.written(peer, completion);
        } else {
            self.read(peer, completion);
        }
        self.apply_effects();
    }

    fn read(&mut self, peer: PeerId, completion: Completion) {
        let Done::Read { buf } = completion.done else { return };
        let Some(conn) = self.conns.get_mut(&peer) else { return };
        conn.reading = false;
        if conn.closing.is_some() {
            return;
        }
        conn.heard = Instant::now();
        if completion.result <= 0 {
            let cut = conn.reader.mid_frame();
            let why = if completion.result < 0 {
                io::Error::from_raw_os_error(-completion.result).to_string()
            } else if cut {
                "connection closed in the middle of a frame".to_owned()
            } else {
                "connection closed".to_owned()
            };
            let loud = conn.role.is_none() || completion.result < 0 || cut;
            self.close(peer, &why, loud);
            return;
        }
        // With TLS, what the bytes carried; the session may have something to say back.
        let mut plaintext = std::mem::take(&mut self.plaintext);
        plaintext.clear();
        if let Some(tls) = &mut conn.tls {
            let received = tls.receive(&buf, &mut plaintext);
            tls.pending(&mut conn.unsent);
            if let Err(e) = received {
                let why = e.to_string();
                self.plaintext = plaintext;
                self.close_after_last_words(peer, &why);
                return;
            }
        }
        let bytes = if conn.tls.is_some() { &plaintext[..] } else { &buf[..] };
        // Each frame is handled in place, from the reader's aligned buffer.
        let mut reader = std::mem::take(&mut conn.reader);
        let mut failure = None;
        let fed = reader.feed(bytes, &mut |kind, payload| match self.frame(peer, kind, payload) {
            Ok(()) => self.conns.contains_key(&peer),
            Err(why) => {
                failure = Some(why);
                false
            }
        });
        self.plaintext = plaintext;
        let failure = failure.or_else(|| fed.err().map(|e| format!("malformed frame: {e}")));
        if let Some(why) = failure {
            self.close_after_last_words(peer, &why);
            return;
        }
        let Some(conn) = self.conns.get_mut(&peer) else { return };
        conn.reader = reader;
        self.flush_later(peer);
        self.arm_read(peer, buf);
    }

    /// Handles one frame; an error closes the connection with that reason.
    fn frame(&mut self, peer: PeerId, kind: Kind, payload: &[u8]) -> Result<(), String> {
        let frame = cluster::decode(kind, payload).map_err(|e| format!("bad frame: {e}"))?;
        let role = self.conns.get(&peer).and_then(|c| c.role);
        match (role, frame) {
            (None, Frame::Control(ArchivedControl::Hello(hello))) => {
                let version = hello.version.to_native();
                if version != PROTOCOL_VERSION {
                    let reason =
                        format!("protocol version {version} is not this broker's {PROTOCOL_VERSION}");
                    self.send(peer, &Control::Refused(reason.clone()));
                    return Err(reason);
                }
                let claimed = match hello.role {
                    ArchivedRole::Client => maelstrom_tls::Role::Client,
                    ArchivedRole::Worker { .. } => maelstrom_tls::Role::Worker,
                    ArchivedRole::Admin => maelstrom_tls::Role::Admin,
                };
                if let Some(tls) = self.conns.get(&peer).and_then(|c| c.tls.as_ref()) {
                    let proven = tls.peer_role();
                    if proven != Some(claimed) {
                        let whose = proven.map_or("no role".to_owned(), |r| format!("the {r} role"));
                        let reason =
                            format!("its certificate is for {whose}: it may not act as the {claimed} role");
                        self.send(peer, &Control::Refused(reason.clone()));
                        return Err(reason);
                    }
                }
                let mut grants_said = String::new();
                let (role, event) = match hello.role {
                    ArchivedRole::Client => (Role::Client, Event::ClientConnected(peer)),
                    ArchivedRole::Worker { slots, .. }
                        if !(1..=WORKER_SLOTS_MAX).contains(&slots.to_native()) =>
                    {
                        let reason =
                            format!("a worker has 1 to {WORKER_SLOTS_MAX} slots, not {}", slots.to_native());
                        self.send(peer, &Control::Refused(reason.clone()));
                        return Err(reason);
                    }
                    ArchivedRole::Worker { slots, grants } => {
                        let grants = grants.to_native();
                        let granted = match maelstrom_wire::zygote::allowances_of(grants) {
                            Ok(granted) => granted,
                            Err(unknown) => {
                                let reason = format!(
                                    "a worker grants allowances this broker does not know (bits {unknown:#x}); run the same version on both"
                                );
                                self.send(peer, &Control::Refused(reason.clone()));
                                return Err(reason);
                            }
                        };
                        let names: Vec<&str> = granted.iter().map(|a| a.name()).collect();
                        if !names.is_empty() {
                            grants_said = format!(", granting {}", names.join(", "));
                        }
                        (Role::Worker, Event::WorkerConnected { peer, slots: slots.to_native(), grants })
                    }
                    ArchivedRole::Admin => (Role::Admin, Event::AdminConnected(peer)),
                };
                if let Some(conn) = self.conns.get_mut(&peer) {
                    conn.role = Some(role);
                    let address = conn.address;
                    if self.verbose || role == Role::Worker {
                        self.log(&format!(
                            "{address}: {role:?} {} connected{grants_said}",
                            hello.name.as_str()
                        ));
                    }
                }
                let ping_ms = u64::try_from((self.idle_timeout / 3).as_millis()).unwrap_or(u64::MAX);
                // What the workers grant counts this one in.
                self.broker.handle(event, &mut self.effects);
                self.send(peer, &Control::Welcome { ping_ms, grants: self.broker.grants() });
                Ok(())
            }
            (None, _) => Err("the first message must be a hello".into()),
            // Any peer may say it is still here.
            (Some(_), Frame::Control(ArchivedControl::Ping)) => Ok(()),
            (Some(Role::Client), Frame::Job { kind: Kind::Submit, id, spec, bytes }) => {
                self.broker.handle(Event::Submit { peer, id, spec, bytes }, &mut self.effects);
                Ok(())
            }
            (Some(Role::Client), Frame::Control(ArchivedControl::Cancel { id })) => {
                self.broker.handle(Event::Cancel { peer, id: id.to_native() }, &mut self.effects);
                Ok(())
            }
            (Some(Role::Client), Frame::Control(ArchivedControl::Unavailable { digest, reason })) => {
                let digest = Digest(digest.0);
                if let Some(conn) = self.conns.get_mut(&peer) {
                    // An upload it gave up on, refused or not, takes no more of its chunks.
                    conn.discarding.remove(&digest);
                    if let Some(upload) = conn.uploads.remove(&digest) {
                        let _ = fs::remove_file(&upload.temp);
                    }
                }
                let event = Event::Unavailable { peer, digest, reason: reason.as_str().to_owned() };
                self.broker.handle(event, &mut self.effects);
                Ok(())
            }
            (Some(Role::Client), Frame::Chunk { header, data }) => self.upload(peer, header, data),
            (Some(Role::Worker), Frame::Control(ArchivedControl::Done { id, outcome })) => {
                let outcome = rkyv::deserialize::<cluster::Outcome, rkyv::rancor::Error>(outcome)
                    .map_err(|e| format!("bad outcome: {e}"))?;
                self.broker.handle(Event::Done { peer, id: id.to_native(), outcome }, &mut self.effects);
                Ok(())
            }
            (Some(Role::Worker), Frame::Control(ArchivedControl::Want { digest })) => {
                let digest = Digest(digest.0);
                if self.broker.may_fetch(peer, &digest) {
                    self.serve_artifact(peer, digest);
                } else {
                    let reason = "no job assigned to this worker needs it".to_owned();
                    if let Some(conn) = self.conns.get_mut(&peer) {
                        conn.refusals += 1;
                        // A few lines say what happens; a flood of them would say no more.
                        if conn.refusals <= 3 {
                            let address = conn.address;
                            self.log(&format!("{address}: artifact {digest} refused to a worker: {reason}"));
                        }
                    }
                    self.send(peer, &Control::Unavailable { digest, reason });
                }
                Ok(())
            }
            (Some(Role::Admin), Frame::Control(ArchivedControl::StatusRequest)) => {
                self.broker.handle(Event::StatusRequest(peer), &mut self.effects);
                Ok(())
            }
            (Some(Role::Admin), Frame::Control(ArchivedControl::Stop)) => {
                self.log("stopping at an admin's request");
                self.broker.handle(Event::Stop(peer), &mut self.effects);
                Ok(())
            }
            (Some(role), frame) => Err(format!("a {role:?} may not send {}", describe(&frame))),
        }
    }

    /// Takes one chunk of an upload. A protocol violation (bytes not asked for, out of order)
    /// closes the connection; an artifact that turns out bad (too large, wrong digest, not a
    /// manifest) fails only the jobs that need it, with the reason.
    fn upload(&mut self, peer: PeerId, header: ChunkHeader, data: &[u8]) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&peer) else { return Ok(()) };
        let digest = header.digest;
        let last = header.offset + data.len() as u64 >= header.total;
        if conn.discarding.contains(&digest) {
            if last {
                conn.discarding.remove(&digest);
            }
            return Ok(());
        }
        if header.offset == 0
            && let Some(stale) = conn.uploads.remove(&digest)
        {
            // The client started over.
            let _ = fs::remove_file(&stale.temp);
        }
        let upload = match conn.uploads.entry(digest) {
            std::collections::hash_map::Entry::Occupied(upload) => upload.into_mut(),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                if !self.broker.is_wanted_from(&digest, peer) {
                    return Err(format!("artifact {digest} was not asked for"));
                }
                if header.offset != 0 {
                    return Err(format!(
                        "artifact {digest}: a chunk at {} came before its start",
                        header.offset
                    ));
                }
                let refused = if header.total > self.store_bytes_max {
                    Err(format!(
                        "it has {} bytes, more than the broker's whole cache ({} bytes; see --cache-size)",
                        header.total, self.store_bytes_max
                    ))
                } else {
                    self.broker.admit_upload(peer, digest, header.total, &mut self.effects)
                };
                if let Err(reason) = refused {
                    if !last {
                        conn.discarding.insert(digest);
                    }
                    self.broker.handle(Event::Unavailable { peer, digest, reason }, &mut self.effects);
                    return Ok(());
                }
                let temp = self.store.root.join("tmp").join(format!("{}-{peer}", digest.hex()));
                let file = File::create(&temp).map_err(|e| format!("store artifact {digest}: {e}"))?;
                vacant.insert(Upload {
                    file,
                    temp,
                    hasher: Hasher::default(),
                    received: 0,
                    total: header.total,
                })
            }
        };
        if header.offset != upload.received || header.total != upload.total {
            return Err(format!(
                "artifact {digest}: chunk at {} of {} but {} of {} bytes received",
                header.offset, header.total, upload.received, upload.total
            ));
        }
        upload
            .file
            .write_all_at(data, upload.received)
            .map_err(|e| format!("store artifact {digest}: {e}"))?;
        upload.hasher.update(data);
        upload.received += data.len() as u64;
        if upload.received < upload.total {
            return Ok(());
        }
        let upload = conn.uploads.remove(&digest).expect("present");
        let address = conn.address;
        let manifest = self.expect_manifest.contains(&digest);
        let checked = if upload.hasher.finish() != digest {
            Err("the bytes uploaded do not match its digest (did the file change?)".to_owned())
        } else if manifest {
            fs::read(&upload.temp)
                .ok()
                .and_then(|b| manifest_files(&b))
                .map(Some)
                .ok_or_else(|| "it is not a valid manifest".to_owned())
        } else {
            Ok(None)
        };
        let files = match checked {
            Ok(files) => files,
            Err(reason) => {
                let _ = fs::remove_file(&upload.temp);
                self.log(&format!("{address}: artifact {digest} refused: {reason}"));
                self.broker.handle(Event::Unavailable { peer, digest, reason }, &mut self.effects);
                return Ok(());
            }
        };
        self.expect_manifest.remove(&digest);
        fs::rename(&upload.temp, self.store.path(&digest, manifest))
            .map_err(|e| format!("store artifact {digest}: {e}"))?;
        let stored = Event::Stored { digest, size: upload.received, files, from: Some(peer) };
        self.broker.handle(stored, &mut self.effects);
        Ok(())
    }

    fn serve_artifact(&mut self, peer: PeerId, digest: Digest) {
        let opened = self.store.find(&digest).and_then(|path| File::open(path).ok());
        let Some(file) = opened else {
            let reason = "not in the broker's store".to_owned();
            self.send(peer, &Control::Unavailable { digest, reason });
            return;
        };
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        if let Some(conn) = self.conns.get_mut(&peer)
            && !conn.serving.iter().any(|s| s.digest == digest)
        {
            conn.serving.push_back(Serving { digest, file, offset: 0, total });
        }
        self.pump(peer);
    }

    /// Queues artifact chunks for `peer` while its outgoing queue is short.
    fn pump(&mut self, peer: PeerId) {
        let Some(conn) = self.conns.get_mut(&peer).filter(|c| c.closing.is_none()) else { return };
        let mut chunk = vec![0u8; CHUNK_BYTES];
        while conn.outgoing_bytes < OUTGOING_BYTES_HIGH
            && let Some(serving) = conn.serving.front_mut()
        {
            let len = ((serving.total - serving.offset) as usize).min(CHUNK_BYTES);
            if let Err(e) = serving.file.read_exact_at(&mut chunk[..len], serving.offset) {
                // Damaged underneath: the jobs that need it fail with the reason.
                let digest = serving.digest;
                conn.serving.pop_front();
                let mut frame = Vec::new();
                let reason = format!("the broker could not read it: {e}");
                cluster::encode_control(&Control::Unavailable { digest, reason }, &mut frame)
                    .expect("INVARIANT: a short message fits a frame");
                conn.outgoing_bytes += frame.len();
                conn.outgoing.push_back(frame);
                continue;
            }
            let header = ChunkHeader { digest: serving.digest, offset: serving.offset, total: serving.total };
            let mut frame = Vec::with_capacity(len + 64);
            cluster::encode_chunk(&header, &chunk[..len], &mut frame);
            serving.offset += len as u64;
            // Round robin: every artifact asked for advances at once, so a small one is not
            // stuck behind a large one.
            let serving = conn.serving.pop_front().expect("front exists");
            if serving.offset < serving.total {
                conn.serving.push_back(serving);
            }
            conn.outgoing_bytes += frame.len();
            conn.outgoing.push_back(frame);
        }
        self.flush_later(peer);
    }

    fn send(&mut self, peer: PeerId, message: &Control) {
        let mut frame = Vec::new();
        match cluster::encode_control_or_report(message, &mut frame) {
            Ok(()) => self.queue(peer, frame),
            Err(e) => self.log(&format!("a message could not be encoded: {e}")),
        }
    }

    fn queue(&mut self, peer: PeerId, frame: Vec<u8>) {
        // A connection being closed takes nothing more: its role's part has ended.
        let Some(conn) = self.conns.get_mut(&peer).filter(|c| c.closing.is_none()) else { return };
        conn.outgoing_bytes += frame.len();
        conn.outgoing.push_back(frame);
        if conn.outgoing_bytes > OUTGOING_BYTES_MAX {
            let why = format!("it does not read what it is sent ({} bytes queued)", conn.outgoing_bytes);
            self.close(peer, &why, true);
            return;
        }
        self.flush_later(peer);
    }

    /// Flushes `peer` once this round of completions is handled.
    fn flush_later(&mut self, peer: PeerId) {
        if let Some(conn) = self.conns.get_mut(&peer)
            && !conn.in_unflushed
        {
            conn.in_unflushed = true;
            self.unflushed.push(peer);
        }
    }

    /// Flushes every connection with something queued; until none has, for a flush may close
    /// a connection, and what that sets off may queue more.
    fn flush_round(&mut self) {
        while !self.unflushed.is_empty() {
            for peer in std::mem::take(&mut self.unflushed) {
                if let Some(conn) = self.conns.get_mut(&peer) {
                    conn.in_unflushed = false;
                    self.flush(peer);
                }
            }
            self.apply_effects();
        }
    }

    /// Starts a write if none is in flight: what is left of the last, else the next frames
    /// (encrypted, with TLS).
    fn flush(&mut self, peer: PeerId) {
        let Some(conn) = self.conns.get_mut(&peer) else { return };
        if conn.writing {
            return;
        }
        if conn.unsent.is_empty() {
            // Coalesce small frames into one write.
            let Some(mut batch) = conn.outgoing.pop_front() else { return };
            while batch.len() < (64 << 10)
                && let Some(next) = conn.outgoing.front()
                && batch.len() + next.len() <= (256 << 10)
            {
                let next = conn.outgoing.pop_front().expect("peeked");
                batch.extend_from_slice(&next);
            }
            conn.outgoing_bytes = conn.outgoing_bytes.saturating_sub(batch.len());
            match &mut conn.tls {
                Some(tls) => {
                    if tls.send(&batch, &mut conn.unsent).is_err() {
                        // The session failed: nothing more can go out on it.
                        conn.outgoing.clear();
                        conn.outgoing_bytes = 0;
                    }
                }
                None => conn.unsent = batch,
            }
        }
        if conn.unsent.is_empty() {
            if let Some((_, why)) = conn.closing.take() {
                self.close(peer, &why, true);
            }
            return;
        }
        conn.writing = true;
        let bytes = std::mem::take(&mut conn.unsent);
        self.ring.write(token(peer, true), &conn.fd, bytes);
    }

    fn written(&mut self, peer: PeerId, completion: Completion) {
        let Done::Written { buf } = completion.done else { return };
        let Some(conn) = self.conns.get_mut(&peer) else { return };
        conn.writing = false;
        if completion.result < 0 {
            let error = io::Error::from_raw_os_error(-completion.result);
            // A connection being closed had its reason; say it, and what ended its last words.
            match conn.closing.take() {
                Some((_, why)) => self.close(peer, &format!("{why} (then, writing to it: {error})"), true),
                None => self.close(peer, &error.to_string(), false),
            }
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
        if conn.serving.is_empty() {
            // At once: a connection being closed (below) goes only once nothing is left.
            self.flush(peer);
        } else {
            self.pump(peer);
        }
        // A connection being closed goes once its last words are out.
        if let Some(conn) = self.conns.get(&peer)
            && let Some((_, why)) = &conn.closing
            && !conn.writing
        {
            let why = why.clone();
            self.close(peer, &why, true);
        }
    }

    fn close(&mut self, peer: PeerId, why: &str, loud: bool) {
        let Some(conn) = self.conns.remove(&peer) else { return };
        for upload in conn.uploads.values() {
            let _ = fs::remove_file(&upload.temp);
        }
        if loud || self.verbose || conn.role == Some(Role::Worker) {
            let role = conn.role.map_or("peer".to_owned(), |r| format!("{r:?}").to_lowercase());
            self.log(&format!("{}: closing {role}: {why}", conn.address));
        }
        self.ring.cancel(token(peer, false));
        self.ring.cancel(token(peer, true));
        if conn.role.is_some() {
            self.broker.handle(Event::Disconnected(peer), &mut self.effects);
        }
    }

    fn apply_effects(&mut self) {
        while !self.effects.is_empty() {
            let effects = std::mem::take(&mut self.effects);
            for effect in effects {
                match effect {
                    Effect::Send { peer, message } => self.send(peer, &message),
                    Effect::Start { worker, id, job } => {
                        let mut frame = Vec::with_capacity(job.len() + 32);
                        // The job came in a frame of the same size, so it fits.
                        match cluster::encode_job_frame(Kind::Start, id, &job, &mut frame) {
                            Ok(()) => self.queue(worker, frame),
                            Err(e) => {
                                let outcome = Outcome::SystemError(format!("the job could not be sent: {e}"));
                                self.broker
                                    .handle(Event::Done { peer: worker, id, outcome }, &mut self.effects);
                            }
                        }
                    }
                    Effect::Disconnect { peer, reason } => self.close(peer, &reason, true),
                    Effect::Want { client, digest, manifest } => {
                        if manifest {
                            self.expect_manifest.insert(digest);
                        }
                        self.send(client, &Control::Want { digest });
                    }
                    Effect::Evict { digest } => {
                        for manifest in [true, false] {
                            let _ = fs::remove_file(self.store.path(&digest, manifest));
                        }
                    }
                    Effect::Exit => {
                        // Workers are told, so they exit rather than reconnect.
                        self.exit = true;
                        let workers: Vec<PeerId> = self
                            .conns
                            .iter()
                            .filter(|(_, c)| c.role == Some(Role::Worker))
                            .map(|(peer, _)| *peer)
                            .collect();
                        for worker in workers {
                            self.send(worker, &Control::Stop);
                        }
                        self.ring.timeout(STOP_DEADLINE, STOP_GRACE);
                    }
                }
            }
        }
    }
}

fn describe(frame: &Frame<'_>) -> &'static str {
    match frame {
        Frame::Control(ArchivedControl::Hello(_)) => "a second hello",
        Frame::Control(ArchivedControl::Done { .. }) => "a job result",
        Frame::Control(ArchivedControl::Want { .. }) => "an artifact request",
        Frame::Control(ArchivedControl::Cancel { .. }) => "a cancel",
        Frame::Control(ArchivedControl::Stop | ArchivedControl::StatusRequest) => "an admin request",
        Frame::Control(_) => "that message",
        Frame::Job { kind: Kind::Start, .. } => "a start",
        Frame::Job { .. } => "a job",
        Frame::Chunk { .. } => "artifact bytes",
    }
}

/// Where a connection comes from, for bounds per peer: its IPv4 address, or its IPv6 /64 (a
/// host usually has a whole one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    V4(std::net::Ipv4Addr),
    V6Prefix(u64),
}

fn source_of(ip: std::net::IpAddr) -> Source {
    match ip {
        std::net::IpAddr::V4(v4) => Source::V4(v4),
        std::net::IpAddr::V6(v6) => Source::V6Prefix((u128::from(v6) >> 64) as u64),
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6Prefix(prefix) => {
                write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(*prefix) << 64))
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit: each connection and each artifact
/// being served or stored holds one.
#[expect(unsafe_code, reason = "getrlimit and setrlimit on a local struct")]
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a live rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == 0 && limit.rlim_cur < limit.rlim_max
    {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) };
    }
}
