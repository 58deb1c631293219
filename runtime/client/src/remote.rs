//! Cluster mode: jobs go to a broker, which runs them on its workers. Jobs that need the
//! client's machine (bind mounts, the host's network) run on the embedded local worker, as in
//! standalone mode; either way results come through the same sink, in the same form.
//!
//! Three threads besides the caller's: a writer (frames out, in order), a reader (results and
//! the broker's requests for artifacts), and an uploader (artifacts, chunk by chunk, each
//! checked against its digest before it is sent).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};

use maelstrom_uring::RingStream;

/// A stream whose reads and writes go through a ring of its own (made in the thread that uses
/// it).
fn ring_io(stream: TcpStream) -> io::Result<RingStream> {
    RingStream::new(stream).map_err(|e| io::Error::other(e.to_string()))
}
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maelstrom_wire::artifact::{Digest, Hasher};
use maelstrom_wire::cluster::{
    self, ArchivedControl, CHUNK_BYTES, ChunkHeader, Control, Frame, FrameReader, Hello, Kind, LayerRef,
    Outcome, PROTOCOL_VERSION, Role,
};
use maelstrom_worker::{JobId, JobResult, ResultSink};

use crate::layers::Built;
use crate::local::{LocalClient, PrepareError, wire_job};
use crate::resolve::Resolved;
use crate::spec::{ContainerSpec, JobSpec, MountSpec, NetworkMode};

/// Ids of jobs sent to the broker start here; lower ids are the local worker's.
const REMOTE_IDS: JobId = 1 << 48;

/// How long a broker has to answer hello.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

/// Frames queued for the writer before a sender waits.
const WRITER_QUEUE: usize = 256;

/// Why the client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to the broker at {broker}: {source}")]
    Io {
        broker: String,
        #[source]
        source: io::Error,
    },
    #[error("the broker at {broker} refused this client: {reason}")]
    Refused { broker: String, reason: String },
}

/// Where an artifact's bytes come from.
#[derive(Clone, Debug)]
enum Source {
    Bytes(Arc<Vec<u8>>),
    File(PathBuf),
}

#[derive(Debug, Default)]
struct Shared {
    artifacts: HashMap<Digest, Source>,
    /// Jobs sent and not yet reported.
    pending: HashSet<JobId>,
    /// Set once the connection is gone: later jobs fail at once with it.
    lost: Option<String>,
}

type SharedSink = Arc<Mutex<ResultSink>>;

fn deliver(sink: &SharedSink, result: JobResult) {
    let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
    sink(result);
}

/// The connection's TLS session, if it has one: shared by the thread that writes and the one
/// that reads. Whoever encrypts or decrypts also writes what that produced, under the lock, so
/// records reach the wire in the order the session made them.
type Tls = Arc<Mutex<Option<maelstrom_tls::Session>>>;

/// Takes bytes read from the broker: with TLS, decrypts them into `plaintext` (and writes what
/// the session has to say back) and returns that; else returns them as they are.
fn received<'a>(
    tls: &Tls,
    stream: &mut impl Write,
    bytes: &'a [u8],
    plaintext: &'a mut Vec<u8>,
) -> io::Result<&'a [u8]> {
    let mut tls = tls.lock().unwrap_or_else(|p| p.into_inner());
    let Some(session) = tls.as_mut() else { return Ok(bytes) };
    plaintext.clear();
    let result = session.receive(bytes, plaintext);
    let mut out = Vec::new();
    session.pending(&mut out);
    if !out.is_empty() {
        stream.write_all(&out)?;
    }
    result.map_err(io::Error::other)?;
    Ok(plaintext)
}

/// Writes `plaintext` to the broker, encrypted with TLS.
fn send(tls: &Tls, stream: &mut impl Write, plaintext: &[u8]) -> io::Result<()> {
    let mut tls = tls.lock().unwrap_or_else(|p| p.into_inner());
    match tls.as_mut() {
        Some(session) => {
            let mut out = Vec::with_capacity(plaintext.len() + 256);
            let sent = session.send(plaintext, &mut out);
            stream.write_all(&out)?;
            sent
        }
        None => stream.write_all(plaintext),
    }
}

/// Where the cluster is, and how to prove this client belongs to it.
#[derive(Clone, Debug)]
pub struct Broker {
    /// `host:port`.
    pub address: String,
    /// The client's credentials, for a broker that has its own.
    pub tls: Option<Arc<maelstrom_tls::rustls::ClientConfig>>,
}

impl Broker {
    /// The broker of a client's settings, if it has one: its address, with the client's
    /// credentials (a `client` directory) when given. Each setting comes with where it came
    /// from, for the error.
    pub fn from_settings(
        address: Option<&(String, impl std::fmt::Display)>,
        credentials: Option<&(std::path::PathBuf, impl std::fmt::Display)>,
    ) -> Result<Option<Self>, String> {
        let Some((address, _)) = address else { return Ok(None) };
        let tls = credentials
            .map(|(dir, source)| {
                maelstrom_tls::peer_config(dir, maelstrom_tls::Role::Client)
                    .map_err(|e| format!("credentials from {source}: {e}"))
            })
            .transpose()?;
        Ok(Some(Self { address: address.clone(), tls }))
    }
}

/// A client that runs jobs on a cluster.
#[derive(Debug)]
pub struct RemoteClient {
    local: LocalClient,
    broker: String,
    frames: SyncSender<Vec<u8>>,
    shared: Arc<Mutex<Shared>>,
    next_id: JobId,
    stream: TcpStream,
    /// What the cluster's workers granted when this client connected: each set of allowances
    /// (as bits) once.
    grants: Vec<u32>,
}

impl RemoteClient {
    /// Connects to `broker` (`host:port`) and says hello. `local` runs the jobs that cannot
    /// leave this machine, and must have been started with `sink.local_sink()`: every result,
    /// local or remote, reaches the one sink.
    pub fn connect(
        broker: &Broker,
        local: LocalClient,
        sink: SharedSinkHandle,
    ) -> Result<Self, ConnectError> {
        let Broker { address: broker, tls } = broker;
        let io_error = |source| ConnectError::Io { broker: broker.to_owned(), source };
        let stream = maelstrom_uring::connect(broker, Duration::from_secs(5)).map_err(io_error)?;
        // Its bytes move on io_uring: a ring for the hello here, then one in each of the reader
        // and writer threads (a ring stays in its thread). `stream` itself stays for shutting
        // the connection down.
        let mut reader_stream = ring_io(stream.try_clone().map_err(io_error)?).map_err(io_error)?;
        let session = tls
            .as_ref()
            .map(maelstrom_tls::Session::client)
            .transpose()
            .map_err(|e| io_error(io::Error::other(format!("TLS: {e}"))))?;
        let tls: Tls = Arc::new(Mutex::new(session));
        // A broker that accepts but never answers is not waited for forever.
        reader_stream.set_read_timeout(Some(HELLO_WITHIN));
        let mut hello = Vec::new();
        let name = format!("maelstrom-run (pid {})", std::process::id());
        cluster::encode_control(
            &Control::Hello(Hello { version: PROTOCOL_VERSION, role: Role::Client, name }),
            &mut hello,
        )
        .expect("INVARIANT: a hello fits a frame");
        send(&tls, &mut reader_stream, &hello).map_err(io_error)?;
        let mut reader = FrameReader::default();
        let mut buf = vec![0u8; 64 << 10];
        let mut plaintext = Vec::new();
        let mut answer: Option<Result<(Duration, Vec<u32>), String>> = None;
        while answer.is_none() {
            let n = reader_stream.read(&mut buf).map_err(io_error)?;
            if n == 0 {
                let hint = if tls.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
                    " (a broker with credentials takes only TLS: give this client --credentials; \
                     or it has too many connections waiting for their hello, its log says)"
                } else {
                    " (it has too many connections waiting for their hello, its log says)"
                };
                return Err(io_error(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the broker hung up during hello{hint}"),
                )));
            }
            let bytes = received(&tls, &mut reader_stream, &buf[..n], &mut plaintext).map_err(io_error)?;
            reader
                .feed(bytes, &mut |kind, payload| {
                    answer = Some(match cluster::decode(kind, payload) {
                        Ok(Frame::Control(ArchivedControl::Welcome { ping_ms, grants })) => {
                            let grants = grants.iter().map(|g| g.to_native()).collect();
                            Ok((cluster::ping_every(ping_ms.to_native()), grants))
                        }
                        Ok(Frame::Control(ArchivedControl::Refused(reason))) => {
                            Err(reason.as_str().to_owned())
                        }
                        Ok(_) => Err("the broker answered hello with something else".into()),
                        Err(e) => Err(format!("bad answer to hello: {e}")),
                    });
                    false
                })
                .map_err(|e| io_error(io::Error::other(e.to_string())))?;
        }
        let (ping, grants) = match answer {
            Some(Ok(welcome)) => welcome,
            Some(Err(reason)) => return Err(ConnectError::Refused { broker: broker.to_owned(), reason }),
            None => unreachable!("the loop ends with an answer"),
        };
        // From here the connection may rightly be quiet for as long as jobs run; a broker that
        // vanishes is noticed by keepalive.
        drop(reader_stream);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (frames, outbox) = sync_channel::<Vec<u8>>(WRITER_QUEUE);
        let (uploads, upload_queue) = sync_channel::<Digest>(1024);
        let writer_stream = stream.try_clone().map_err(io_error)?;
        let reader_stream = stream.try_clone().map_err(io_error)?;
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(body).map(|_| ()).map_err(io_error)
        };
        let writer_tls = Arc::clone(&tls);
        spawn("writer", Box::new(move || write_frames(writer_stream, &writer_tls, &outbox, ping)))?;
        let upload_frames = frames.clone();
        let upload_shared = Arc::clone(&shared);
        spawn("uploader", Box::new(move || upload(&upload_queue, &upload_frames, &upload_shared)))?;
        let read_shared = Arc::clone(&shared);
        let read_sink = Arc::clone(&sink.0);
        let read_broker = broker.to_owned();
        spawn(
            "reader",
            Box::new(move || {
                read_results(reader_stream, &tls, reader, &read_shared, &read_sink, &uploads, &read_broker)
            }),
        )?;
        Ok(Self { local, broker: broker.to_owned(), frames, shared, next_id: REMOTE_IDS, stream, grants })
    }

    pub fn add_containers(&mut self, named: BTreeMap<String, ContainerSpec>) {
        self.local.add_containers(named);
    }

    /// Sends a job to the broker, or runs it locally if it needs this machine; its result comes
    /// through the sink under the returned id.
    pub fn run(&mut self, job: &JobSpec) -> Result<JobId, PrepareError> {
        let (resolved, built) = self.local.resolve(job)?;
        if must_run_locally(&resolved, &self.grants) {
            return self.local.run(job);
        }
        let layers: Vec<LayerRef> = built.iter().map(|b| b.layer_ref()).collect();
        let wire = wire_job(job, &resolved, layers, self.local.project());
        let mut frame = Vec::new();
        cluster::encode_job_frame(Kind::Submit, self.next_id, &cluster::encode_job(&wire), &mut frame)
            .map_err(|e| PrepareError(format!("the job is too large to send to a broker: {e}")))?;
        let id = self.next_id;
        self.next_id += 1;
        {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(lost) = &shared.lost {
                return Err(PrepareError(lost.clone()));
            }
            for built in &built {
                register(&mut shared.artifacts, built);
            }
            shared.pending.insert(id);
        }
        if self.frames.send(frame).is_err() {
            // The writer is gone: the reader reports every pending job, this one included.
            let _ = self.stream.shutdown(Shutdown::Both);
        }
        Ok(id)
    }

    /// Writes caches back.
    pub fn save(&mut self) {
        self.local.save();
    }

    pub fn broker(&self) -> &str {
        &self.broker
    }
}

impl Drop for RemoteClient {
    fn drop(&mut self) {
        // Ends the reader, so its thread does not outlive the client.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// The sink shared by the local worker and the connection, made before either.
#[derive(Clone)]
pub struct SharedSinkHandle(SharedSink);

impl std::fmt::Debug for SharedSinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSinkHandle")
    }
}

impl SharedSinkHandle {
    pub fn new(sink: ResultSink) -> Self {
        Self(Arc::new(Mutex::new(sink)))
    }

    /// A sink for the local worker that feeds the shared one.
    pub fn local_sink(&self) -> ResultSink {
        let shared = Arc::clone(&self.0);
        Box::new(move |result| deliver(&shared, result))
    }
}

/// Jobs that need this machine: bind mounts of its files, or its network. And jobs whose spec
/// allows more than the default sandbox and than any one of the cluster's workers grants
/// (`grants`: each worker's set of allowances, as bits): they are the client's own risk.
pub fn must_run_locally(resolved: &Resolved, grants: &[u32]) -> bool {
    let asked = resolved.allow.iter().fold(0, |bits, a| bits | a.bit());
    resolved.network == NetworkMode::Local
        || (asked != 0 && !grants.iter().any(|granted| asked & !granted == 0))
        || resolved.mounts.iter().any(|m| matches!(m, MountSpec::Bind { .. }))
}

/// Remembers where each of a layer's artifacts can be read, for the broker's requests.
fn register(artifacts: &mut HashMap<Digest, Source>, built: &Built) {
    match built {
        Built::Tar { path, digest } => {
            artifacts.entry(*digest).or_insert_with(|| Source::File(path.clone()));
        }
        Built::Manifest { manifest, digest, sources } => {
            artifacts.entry(*digest).or_insert_with(|| {
                let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(manifest)
                    .expect("INVARIANT: a manifest always encodes")
                    .to_vec();
                Source::Bytes(Arc::new(bytes))
            });
            for (file, path) in sources {
                artifacts.entry(*file).or_insert_with(|| Source::File(path.clone()));
            }
        }
    }
}

/// Writes the frames queued for the broker; with nothing to say for `ping`, says it is still
/// here.
fn write_frames(control: TcpStream, tls: &Tls, outbox: &Receiver<Vec<u8>>, ping: Duration) {
    let Ok(mut stream) = control.try_clone().and_then(ring_io) else {
        let _ = control.shutdown(Shutdown::Both);
        return;
    };
    let mut batch = Vec::new();
    let mut still_here = Vec::new();
    cluster::encode_control(&Control::Ping, &mut still_here).expect("INVARIANT: a ping fits a frame");
    loop {
        let frame = match outbox.recv_timeout(ping) {
            Ok(frame) => frame,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => still_here.clone(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        batch.clear();
        batch.extend_from_slice(&frame);
        while batch.len() < (256 << 10)
            && let Ok(more) = outbox.try_recv()
        {
            batch.extend_from_slice(&more);
        }
        if send(tls, &mut stream, &batch).is_err() {
            let _ = control.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Uploads each artifact the broker asks for. A file is hashed first and sent only if it still
/// matches its digest; otherwise the broker is told why it cannot have it.
fn upload(queue: &Receiver<Digest>, frames: &SyncSender<Vec<u8>>, shared: &Mutex<Shared>) {
    for digest in queue {
        let source = shared.lock().unwrap_or_else(|p| p.into_inner()).artifacts.get(&digest).cloned();
        let sent = match source {
            None => Err("this client does not have it".to_owned()),
            Some(Source::Bytes(bytes)) => {
                send_chunks(digest, &mut io::Cursor::new(&bytes[..]), bytes.len() as u64, frames)
            }
            Some(Source::File(path)) => match std::fs::File::open(&path) {
                // Hashed, then sent, through the one handle: a file replaced meanwhile is not
                // mixed up with its replacement.
                Ok(mut file) => check_file(&mut file, &path, &digest)
                    .and_then(|size| send_chunks(digest, &mut file, size, frames)),
                Err(e) => Err(format!("open {}: {e}", path.display())),
            },
        };
        if let Err(reason) = sent {
            let mut frame = Vec::new();
            cluster::encode_control(&Control::Unavailable { digest, reason }, &mut frame)
                .expect("INVARIANT: a short message fits a frame");
            if frames.send(frame).is_err() {
                return;
            }
        }
    }
}

/// Hashes an open file, checking it still matches `digest`, and rewinds it; returns its size.
fn check_file(file: &mut std::fs::File, path: &std::path::Path, digest: &Digest) -> Result<u64, String> {
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    if hasher.finish() != *digest {
        return Err(format!("{} changed after it was read; run again", path.display()));
    }
    io::Seek::rewind(file).map_err(|e| format!("rewind {}: {e}", path.display()))?;
    Ok(size)
}

fn send_chunks(
    digest: Digest,
    input: &mut dyn Read,
    total: u64,
    frames: &SyncSender<Vec<u8>>,
) -> Result<(), String> {
    let mut offset = 0u64;
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let want = usize::try_from(total - offset).unwrap_or(usize::MAX).min(CHUNK_BYTES);
        input.read_exact(&mut buf[..want]).map_err(|e| format!("read artifact {digest}: {e}"))?;
        let mut frame = Vec::with_capacity(want + 64);
        cluster::encode_chunk(&ChunkHeader { digest, offset, total }, &buf[..want], &mut frame);
        if frames.send(frame).is_err() {
            return Ok(());
        }
        offset += want as u64;
        if offset >= total {
            return Ok(());
        }
    }
}

fn read_results(
    control: TcpStream,
    tls: &Tls,
    mut reader: FrameReader,
    shared: &Mutex<Shared>,
    sink: &SharedSink,
    uploads: &SyncSender<Digest>,
    broker: &str,
) {
    let mut buf = vec![0u8; 256 << 10];
    let mut plaintext = Vec::new();
    let mut stream = control.try_clone().and_then(ring_io);
    let why = loop {
        let stream = match &mut stream {
            Ok(stream) => stream,
            Err(e) => break format!("set up io_uring for the connection: {e}"),
        };
        let n = match stream.read(&mut buf) {
            Ok(0) => break "the broker closed the connection".to_owned(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break e.to_string(),
        };
        let bytes = match received(tls, stream, &buf[..n], &mut plaintext) {
            Ok(bytes) => bytes,
            Err(e) => break e.to_string(),
        };
        let mut failure = None;
        let fed = reader.feed(bytes, &mut |kind, payload| {
            match cluster::decode(kind, payload) {
                Ok(Frame::Control(ArchivedControl::Done { id, outcome })) => {
                    let id = id.to_native();
                    match rkyv::deserialize::<Outcome, rkyv::rancor::Error>(outcome) {
                        Ok(outcome) => {
                            // Reported once: a second result for an id counts for nothing.
                            let taken = shared.lock().unwrap_or_else(|p| p.into_inner()).pending.remove(&id);
                            if taken {
                                deliver(sink, JobResult { id, outcome });
                            }
                        }
                        Err(e) => failure = Some(format!("bad result from the broker: {e}")),
                    }
                }
                Ok(Frame::Control(ArchivedControl::Want { digest })) => {
                    let _ = uploads.send(Digest(digest.0));
                }
                Ok(_) => failure = Some("the broker sent a message a client does not take".to_owned()),
                Err(e) => failure = Some(format!("bad frame from the broker: {e}")),
            }
            failure.is_none()
        });
        if let Some(why) =
            failure.or_else(|| fed.err().map(|e| format!("malformed frame from the broker: {e}")))
        {
            break why;
        }
    };
    // No job is lost: each one still pending ends now, as an error that says why.
    let message = format!("lost the broker at {broker}: {why}");
    let pending: Vec<JobId> = {
        let mut shared = shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.lost = Some(message.clone());
        shared.pending.drain().collect()
    };
    let _ = control.shutdown(Shutdown::Both);
    for id in pending {
        deliver(sink, JobResult { id, outcome: Outcome::SystemError(message.clone()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{StreamItem, StreamRequest};
    use maelstrom_wire::cluster::{ArchivedJobSpec, Mount};
    use maelstrom_worker::sandbox::{Origin, sandbox};
    use std::path::Path;

    fn job(json: &str) -> JobSpec {
        match serde_json::from_str::<StreamItem>(json).unwrap().into_request().unwrap() {
            StreamRequest::Job(job) => *job,
            StreamRequest::Containers(_) => panic!("not a job"),
        }
    }

    /// The cluster's workers take a job's sandbox from the same builder as the embedded one,
    /// but refuse what would reach their own machine.
    #[test]
    fn cluster_workers_refuse_what_reaches_the_host() {
        for (text, why) in [
            (r#"{"program": "x", "layers": [{"tar": "x.tar"}], "network": "local"}"#, "the host's network"),
            (
                r#"{"program": "x", "layers": [{"tar": "x.tar"}], "mounts": [{"type": "bind", "mount_point": "/m", "local_path": "d"}]}"#,
                "a bind mount",
            ),
        ] {
            let job = job(text);
            let resolved = crate::resolve::resolve(&job.container, &BTreeMap::new(), &|_| None).unwrap();
            assert!(must_run_locally(&resolved, &[u32::MAX]), "{text}");
            let bytes = cluster::encode_job(&wire_job(&job, &resolved, vec![], Path::new("/project")));
            let archived = rkyv::access::<ArchivedJobSpec, rkyv::rancor::Error>(&bytes).unwrap();
            let local =
                sandbox(archived, vec!["/l".into()], Origin::ThisMachine, &maelstrom_container::Share::of(1))
                    .unwrap();
            assert!(local.network == maelstrom_container::NetworkMode::Local || !local.mounts.is_empty());
            let error = sandbox(
                archived,
                vec!["/l".into()],
                Origin::Cluster { grants: 0 },
                &maelstrom_container::Share::of(1),
            )
            .unwrap_err()
            .to_string();
            assert!(error.starts_with(why), "{error}");
        }
    }

    /// A job asking for allowances goes to the cluster only if one worker grants them all: two
    /// workers granting one each do not make one that grants both.
    #[test]
    fn jobs_asking_for_allowances_go_only_where_one_worker_grants_them_all() {
        use maelstrom_wire::zygote::Allowance;
        let resolved =
            |text: &str| crate::resolve::resolve(&job(text).container, &BTreeMap::new(), &|_| None).unwrap();
        let plain = resolved(r#"{"program": "x", "layers": [{"tar": "x.tar"}]}"#);
        let both =
            resolved(r#"{"program": "x", "layers": [{"tar": "x.tar"}], "allow": ["io_uring", "bpf"]}"#);
        let (io_uring, bpf) = (Allowance::IoUring.bit(), Allowance::Bpf.bit());
        assert!(!must_run_locally(&plain, &[]), "a plain job waits for the cluster's workers");
        assert!(!must_run_locally(&plain, &[io_uring]));
        assert!(must_run_locally(&both, &[]));
        assert!(must_run_locally(&both, &[0, io_uring, bpf]));
        assert!(!must_run_locally(&both, &[0, io_uring | bpf | Allowance::Ptrace.bit()]));
    }

    #[test]
    fn bind_sources_are_taken_from_the_project_and_trees_are_kept_visible() {
        let job = job(
            r#"{"program": "x", "layers": [{"tar": "x.tar"}], "mounts": [{"type": "bind", "mount_point": "/m", "local_path": "d", "read_only": true}]}"#,
        );
        let mut resolved = crate::resolve::resolve(&job.container, &BTreeMap::new(), &|_| None).unwrap();
        resolved.layers.push(crate::spec::LayerSpec::Tree { tree: "/tmp/work/p".into(), exclude: vec![] });
        let wire = wire_job(&job, &resolved, vec![], Path::new("/project"));
        assert_eq!(
            wire.mounts,
            [Mount::Bind { source: "/project/d".into(), target: "/m".into(), read_only: true }]
        );
        assert_eq!(wire.keep_visible, ["/tmp/work/p"]);
    }
}
