//! The cluster protocol: what clients, the broker, workers and admin tools say to each other
//! over TCP.
//!
//! Every message is one frame: an 8-byte header (payload length, kind) and a payload. The
//! length is checked against [`FRAME_PAYLOAD_BYTES_MAX`] before anything is read or allocated.
//! Three payload shapes:
//! - control messages ([`Control`]): one rkyv archive;
//! - jobs ([`Kind::Submit`], [`Kind::Start`]): a job id padded to 16 bytes, then an archived
//!   [`JobSpec`], so the job stays 16-byte aligned in the receive buffer: it is validated and
//!   read in place, and forwarded byte for byte (the broker never rebuilds a job);
//! - artifact chunks ([`Kind::Chunk`]): a fixed [`ChunkHeader`] then raw bytes.
//!
//! A connection starts with [`Hello`] from the connecting side and [`Control::Welcome`] or
//! [`Control::Refused`] from the broker.

use std::fmt;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::DecodeError;
use crate::artifact::Digest;
use crate::zygote::{Device, NetworkMode};

/// Bumped whenever a type in this module changes shape.
pub const PROTOCOL_VERSION: u32 = 9;

/// How often a peer pings, from the broker's `Welcome { ping_ms }`: never more often than
/// every 100 ms, whatever the broker says.
pub fn ping_every(ping_ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(ping_ms.max(100))
}

/// The most slots a worker may have (and say it has in its hello).
pub const WORKER_SLOTS_MAX: u32 = 1000;

/// Bytes of a frame header.
pub const HEADER_BYTES: usize = 8;

/// Largest frame payload: a job with a large environment, or one artifact chunk.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 4 << 20;

/// Artifact bytes per chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Captured output per stream a worker sends back.
pub const OUTPUT_BYTES_MAX: usize = 1 << 20;

/// What a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Control = 1,
    /// Client → broker: a job (id chosen by the client).
    Submit = 2,
    /// Broker → worker: a job (id chosen by the broker).
    Start = 3,
    /// Artifact bytes, either way.
    Chunk = 4,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Kind::Control),
            2 => Some(Kind::Submit),
            3 => Some(Kind::Start),
            4 => Some(Kind::Chunk),
            _ => None,
        }
    }
}

/// A frame header, parsed and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub len: usize,
}

/// Parses and checks a frame header; the length limit is the first thing checked.
pub fn parse_header(bytes: &[u8; HEADER_BYTES]) -> Result<Header, DecodeError> {
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(DecodeError::TooLarge { len, max: FRAME_PAYLOAD_BYTES_MAX });
    }
    let kind = Kind::from_byte(bytes[4]).ok_or_else(|| DecodeError::Invalid {
        what: "frame header",
        reason: format!("unknown kind {}", bytes[4]),
    })?;
    if bytes[5..] != [0, 0, 0] {
        return Err(DecodeError::Invalid {
            what: "frame header",
            reason: "reserved bytes are not zero".into(),
        });
    }
    Ok(Header { kind, len })
}

/// A frame header; the caller has checked `len` against the limit.
fn header(kind: Kind, len: usize) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4] = kind as u8;
    h
}

/// Who is on the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug, Clone, Copy, PartialEq, Eq))]
pub enum Role {
    Client,
    Worker {
        slots: u32,
        /// What it grants jobs from the cluster beyond the default sandbox: allowances as bits
        /// ([`Allowance::bit`](crate::zygote::Allowance::bit)), as its operator configured.
        grants: u32,
    },
    Admin,
}

/// The first message of every connection.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub struct Hello {
    pub version: u32,
    pub role: Role,
    /// For logs: a hostname or program name.
    pub name: String,
}

/// How a layer's artifact is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug, Clone, Copy, PartialEq, Eq, Hash))]
pub enum LayerKind {
    /// A tar archive.
    Tar,
    /// An encoded [`crate::artifact::Manifest`]; its files are artifacts too.
    Manifest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug, Clone, Copy, PartialEq, Eq, Hash))]
pub struct LayerRef {
    pub kind: LayerKind,
    pub digest: Digest,
}

impl LayerRef {
    /// The key of the layer's tree in a layer cache: distinct for each kind, so a tar and a
    /// manifest with the same bytes never share a tree.
    pub fn tree_key(&self) -> Digest {
        let tag: &[u8; 9] = match self.kind {
            LayerKind::Manifest => b"manifest:",
            LayerKind::Tar => b"tar:\0\0\0\0\0",
        };
        let mut bytes = [0u8; 41];
        bytes[..9].copy_from_slice(tag);
        bytes[9..].copy_from_slice(&self.digest.0);
        Digest::of(&bytes)
    }
}

/// A mount of a job. A bind mount (like the host's network) ties a job to the client's machine:
/// such a job never travels, and a cluster worker refuses one.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum Mount {
    /// The host's `source` (absolute) at `target`.
    Bind {
        source: String,
        target: String,
        read_only: bool,
    },
    Devices(Vec<Device>),
    Devpts(String),
    Mqueue(String),
    Proc(String),
    Sys(String),
    Tmp(String),
}

/// At its timeout a job is sent `signal` first, and killed `grace_ms` later: a go test gets
/// SIGQUIT, and dumps its goroutines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug, Clone, Copy))]
pub struct TimeoutWarning {
    pub signal: i32,
    pub grace_ms: u64,
}

/// The longest a warned job may take to end after its warning.
pub const TIMEOUT_GRACE_MS_MAX: u64 = 60_000;

/// What one job may use, where its spec sets it; 0 leaves the worker's default (its share of
/// what the worker itself may use). A worker caps each at its own maximum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug, Clone, Copy))]
pub struct JobLimits {
    /// Memory, tmpfs pages included.
    pub memory_bytes: u64,
    /// Processes and threads at once.
    pub processes: u64,
    pub open_files: u64,
    /// CPU time of each of the job's processes; 0 for none.
    pub cpu_seconds: u64,
    /// Each tmpfs the job mounts, and a writable root's changes.
    pub tmpfs_bytes: u64,
}

/// The limit at which the sandbox stopped a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug, Clone, Copy))]
pub enum Limit {
    /// Its memory (tmpfs pages included) reached `bytes`.
    Memory { bytes: u64 },
    /// It tried to have more than `count` processes at once.
    Processes { count: u64 },
    /// Its processes used `seconds` of CPU time.
    CpuTime { seconds: u64 },
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Memory { bytes } => write!(f, "memory limit {} reached", Bytes(*bytes)),
            Limit::Processes { count } => write!(f, "fork limit {count} reached"),
            Limit::CpuTime { seconds } => write!(f, "CPU time limit {seconds} s reached"),
        }
    }
}

impl fmt::Display for ArchivedLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = match self {
            ArchivedLimit::Memory { bytes } => Limit::Memory { bytes: bytes.to_native() },
            ArchivedLimit::Processes { count } => Limit::Processes { count: count.to_native() },
            ArchivedLimit::CpuTime { seconds } => Limit::CpuTime { seconds: seconds.to_native() },
        };
        limit.fmt(f)
    }
}

/// A bound of its own that a job that failed had met, found when it ended: likely why it
/// failed, though nothing killed it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum Met {
    /// A filesystem of the job's own (a sized tmpfs, or a writable root's changes) was full:
    /// its writes there failed with `ENOSPC`.
    Full {
        /// Where the job saw it: a tmpfs mount's path, or `/` for a writable root.
        path: String,
        bytes: u64,
    },
    /// The job said `Too many open files` (`EMFILE`, its open-files limit): the kernel keeps no
    /// other trace of a refused open. Its limits: the one it started with, and the one it may
    /// raise that to (as Go and Java do).
    OpenFiles { soft: u64, hard: u64 },
}

impl fmt::Display for Met {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Met::Full { path, bytes } => write!(f, "{path} full ({})", Bytes(*bytes)),
            Met::OpenFiles { soft, hard } if soft == hard => {
                write!(f, "open files limit {soft} reached (it said \"{EMFILE_TEXT}\")")
            }
            Met::OpenFiles { soft, hard } => write!(
                f,
                "open files limit {soft} (or {hard}, if it raised it) reached (it said \"{EMFILE_TEXT}\")"
            ),
        }
    }
}

/// What C's `strerror(EMFILE)` says, and so most runtimes (Rust's, Python's), but for its
/// first letter (Go's says `too many`).
pub const EMFILE_TEXT: &str = "Too many open files";

/// A byte count as people read it: `1.5 GiB`, `64 MiB`, `512 B`.
#[derive(Clone, Copy, Debug)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut unit = 0;
        while unit + 1 < UNITS.len() && self.0 >= 1 << (10 * (unit + 1)) {
            unit += 1;
        }
        if unit == 0 {
            return write!(f, "{} B", self.0);
        }
        let whole = self.0 >> (10 * unit);
        let tenths = ((self.0 & ((1 << (10 * unit)) - 1)) * 10) >> (10 * unit);
        if tenths == 0 {
            write!(f, "{whole} {}", UNITS[unit])
        } else {
            write!(f, "{whole}.{tenths} {}", UNITS[unit])
        }
    }
}

/// A job as it travels: everything resolved, layers named by artifact.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub struct JobSpec {
    pub program: String,
    pub arguments: Vec<String>,
    pub environment: Vec<(String, String)>,
    /// Bottom first.
    pub layers: Vec<LayerRef>,
    pub mounts: Vec<Mount>,
    /// Trees of the layers that stay visible at their own paths over a tmpfs mount.
    pub keep_visible: Vec<String>,
    pub network: NetworkMode,
    /// What the job may use beyond the default sandbox.
    pub allow: Vec<crate::zygote::Allowance>,
    pub limits: JobLimits,
    pub writable_root: bool,
    pub working_directory: String,
    pub user: u32,
    pub group: u32,
    /// 0: none.
    pub timeout_ms: u64,
    pub timeout_warning: Option<TimeoutWarning>,
    pub priority: i8,
    /// 0: unknown.
    pub estimated_ms: u64,
}

/// Output a job left on one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub struct Output {
    pub bytes: Vec<u8>,
    pub cut: u64,
}

/// What a job that ran used, as the kernel accounts it when the job is reaped: its processes
/// and every descendant reaped before it (a job is the init of its pid namespace, so that is
/// all of them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub struct Usage {
    /// CPU time, user and system, of all its processes together.
    pub cpu_us: u64,
    /// The largest resident set any one of its processes reached (tmpfs pages not included).
    pub peak_rss_bytes: u64,
}

impl Usage {
    pub fn cpu(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.cpu_us)
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum Outcome {
    Exited {
        code: i32,
        stdout: Output,
        stderr: Output,
        duration_us: u64,
        /// The bounds of its own it had met, if it failed.
        met: Vec<Met>,
        usage: Usage,
    },
    Signaled {
        signal: i32,
        stdout: Output,
        stderr: Output,
        duration_us: u64,
        met: Vec<Met>,
        usage: Usage,
    },
    TimedOut {
        stdout: Output,
        stderr: Output,
        duration_us: u64,
        usage: Usage,
    },
    /// The sandbox killed the job at `limit`.
    Killed {
        limit: Limit,
        stdout: Output,
        stderr: Output,
        duration_us: u64,
        usage: Usage,
    },
    /// The job's spec is at fault (its setup failed before exec).
    ExecutionError(String),
    /// The cluster is at fault.
    SystemError(String),
}

/// Everything but jobs and artifact bytes.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum Control {
    Hello(Hello),
    /// The broker takes the peer; the peer says something (a [`Control::Ping`] if nothing
    /// else) at least every `ping_ms`, or is taken for gone.
    Welcome {
        ping_ms: u64,
        /// What the workers connected now grant, each set of allowances (as bits) once: a
        /// client sends the cluster a job only if one of these holds all it asks for, and runs
        /// any other itself.
        grants: Vec<u32>,
    },
    /// Peer → broker: still here.
    Ping,
    /// The broker refuses the connection; it closes after this.
    Refused(String),
    /// Worker → broker, broker → client: a job ended.
    Done {
        id: u64,
        outcome: Outcome,
    },
    /// Client → broker, broker → worker: stop a job (its result still comes, or not at all
    /// if the client is gone).
    Cancel {
        id: u64,
    },
    /// Broker → client: upload this artifact. Worker → broker: send me this artifact.
    Want {
        digest: Digest,
    },
    /// The asked side cannot provide the artifact.
    Unavailable {
        digest: Digest,
        reason: String,
    },
    /// Admin → broker.
    StatusRequest,
    /// Broker → admin.
    Status(Status),
    /// Admin → broker: exit.
    Stop,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub struct Status {
    pub workers: u32,
    pub slots: u32,
    pub clients: u32,
    pub queued: u64,
    pub running: u64,
    pub completed: u64,
    pub artifacts: u64,
    pub artifact_bytes: u64,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Number of workers: {}", self.workers)?;
        writeln!(f, "Number of slots: {}", self.slots)?;
        writeln!(f, "Number of clients: {}", self.clients)?;
        writeln!(f, "Queued jobs: {}", self.queued)?;
        writeln!(f, "Running jobs: {}", self.running)?;
        writeln!(f, "Completed jobs: {}", self.completed)?;
        write!(f, "Artifacts: {} ({} bytes)", self.artifacts, self.artifact_bytes)
    }
}

/// The fixed part of a chunk frame's payload, followed by the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub digest: Digest,
    /// Where these bytes go in the artifact.
    pub offset: u64,
    /// The artifact's whole size.
    pub total: u64,
}

/// Bytes of a chunk header.
pub const CHUNK_HEADER_BYTES: usize = 48;

fn check_len(len: usize) -> Result<(), DecodeError> {
    if len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(DecodeError::TooLarge { len, max: FRAME_PAYLOAD_BYTES_MAX });
    }
    Ok(())
}

/// Appends a control frame to `out`; refuses a message over the frame limit (only a job's
/// result can be that large: see [`Outcome::fit`]).
pub fn encode_control(message: &Control, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let bytes = rkyv::to_bytes::<rancor::Error>(message).expect("INVARIANT: control messages always encode");
    check_len(bytes.len())?;
    out.extend_from_slice(&header(Kind::Control, bytes.len()));
    out.extend_from_slice(&bytes);
    Ok(())
}

/// Like [`encode_control`], but a job's result too large for a frame becomes a result that says
/// so, rather than no result at all (a job is never lost). Errs only for another message too
/// large, which only a bug can make.
pub fn encode_control_or_report(message: &Control, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    match encode_control(message, out) {
        Err(e) if matches!(message, Control::Done { .. }) => {
            let Control::Done { id, .. } = message else { return Err(e) };
            let outcome = Outcome::SystemError(format!("the job's result could not be sent: {e}"));
            encode_control(&Control::Done { id: *id, outcome }, out)
        }
        other => other,
    }
}

/// Bytes a result may carry besides its output (error messages are short).
const RESULT_OVERHEAD_BYTES: usize = 64 << 10;

/// How a job that ran ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    /// Killed at a limit.
    Killed(Limit),
}

impl Ended {
    /// A failure whose cause this does not name: a non-zero exit, or a signal (not a timeout or
    /// a limit, which say why).
    pub fn cause_unnamed(self) -> bool {
        matches!(self, Ended::Signaled(_)) || matches!(self, Ended::Exited(code) if code != 0)
    }
}

/// A job that ran: how it ended, what it printed, and how long it took.
#[derive(Clone, Copy, Debug)]
pub struct Ran<'a> {
    pub ended: Ended,
    pub stdout: &'a Output,
    pub stderr: &'a Output,
    pub duration: std::time::Duration,
    /// The bounds of its own a job that failed had met when it ended: likely why it failed.
    pub met: &'a [Met],
    pub usage: Usage,
}

/// Why a job did not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotRun<'a> {
    /// The job's spec is at fault.
    #[error("execution error: {0}")]
    Execution(&'a str),
    /// The system is at fault.
    #[error("system error: {0}")]
    System(&'a str),
}

impl Outcome {
    /// The job as it ran, or why it did not.
    pub fn ran(&self) -> Result<Ran<'_>, NotRun<'_>> {
        let ran = |ended, stdout, stderr, duration_us: &u64, met, usage: &Usage| {
            let duration = std::time::Duration::from_micros(*duration_us);
            Ok(Ran { ended, stdout, stderr, duration, met, usage: *usage })
        };
        match self {
            Outcome::Exited { code, stdout, stderr, duration_us, met, usage } => {
                ran(Ended::Exited(*code), stdout, stderr, duration_us, met, usage)
            }
            Outcome::Signaled { signal, stdout, stderr, duration_us, met, usage } => {
                ran(Ended::Signaled(*signal), stdout, stderr, duration_us, met, usage)
            }
            Outcome::TimedOut { stdout, stderr, duration_us, usage } => {
                ran(Ended::TimedOut, stdout, stderr, duration_us, &[], usage)
            }
            Outcome::Killed { limit, stdout, stderr, duration_us, usage } => {
                ran(Ended::Killed(*limit), stdout, stderr, duration_us, &[], usage)
            }
            Outcome::ExecutionError(message) => Err(NotRun::Execution(message)),
            Outcome::SystemError(message) => Err(NotRun::System(message)),
        }
    }

    /// Cuts the captured output, counting what is cut, so the result fits in a frame.
    pub fn fit(&mut self) {
        let room = FRAME_PAYLOAD_BYTES_MAX - RESULT_OVERHEAD_BYTES;
        let (stdout, stderr) = match self {
            Outcome::Exited { stdout, stderr, .. }
            | Outcome::Signaled { stdout, stderr, .. }
            | Outcome::TimedOut { stdout, stderr, .. }
            | Outcome::Killed { stdout, stderr, .. } => (stdout, stderr),
            Outcome::ExecutionError(message) | Outcome::SystemError(message) => {
                if message.len() > room {
                    let mut end = room;
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    message.truncate(end);
                }
                return;
            }
        };
        if stdout.bytes.len() + stderr.bytes.len() <= room {
            return;
        }
        // Each stream keeps half the room, and whatever the other leaves unused.
        let stderr_keep = stderr.bytes.len().min(room - stdout.bytes.len().min(room / 2));
        let stdout_keep = room - stderr_keep;
        for (output, keep) in [(stdout, stdout_keep), (stderr, stderr_keep)] {
            if output.bytes.len() > keep {
                output.cut += (output.bytes.len() - keep) as u64;
                output.bytes.truncate(keep);
            }
        }
    }
}

/// Encodes a job once, for [`encode_job_frame`].
pub fn encode_job(spec: &JobSpec) -> AlignedVec {
    rkyv::to_bytes::<rancor::Error>(spec).expect("INVARIANT: jobs always encode")
}

/// Encodes a job into `out` (cleared first), reusing its allocation.
pub fn encode_job_into(spec: &JobSpec, out: &mut AlignedVec) {
    out.clear();
    let buffer = std::mem::take(out);
    *out = rkyv::api::high::to_bytes_in::<_, rancor::Error>(spec, buffer)
        .expect("INVARIANT: jobs always encode");
}

/// A job like the ones test runners send (a test binary, its test name, a few environment
/// variables, three manifest layers, the usual mounts): for benches and fuzz seeds.
pub fn typical_job() -> JobSpec {
    JobSpec {
        program: "/usr/bin/my_crate-3c5a61f0be4a1e2d".into(),
        arguments: vec!["--exact".into(), "tests::parses_the_config_file".into(), "--nocapture".into()],
        environment: vec![
            ("HOME".into(), "/root".into()),
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("RUST_BACKTRACE".into(), "1".into()),
            ("CARGO_MANIFEST_DIR".into(), "/work/my_crate".into()),
            ("CARGO_PKG_NAME".into(), "my_crate".into()),
        ],
        layers: vec![
            LayerRef { kind: LayerKind::Manifest, digest: Digest::of(b"binary") },
            LayerRef { kind: LayerKind::Manifest, digest: Digest::of(b"shared libraries") },
            LayerRef { kind: LayerKind::Manifest, digest: Digest::of(b"stubs") },
        ],
        mounts: vec![
            Mount::Tmp("/tmp".into()),
            Mount::Proc("/proc".into()),
            Mount::Devices(vec![Device::Null, Device::Zero, Device::Urandom]),
        ],
        keep_visible: Vec::new(),
        network: NetworkMode::Disabled,
        allow: Vec::new(),
        limits: JobLimits::default(),
        writable_root: false,
        working_directory: "/work/my_crate".into(),
        user: 0,
        group: 0,
        timeout_ms: 60_000,
        timeout_warning: None,
        priority: 0,
        estimated_ms: 40,
    }
}

/// Bytes before the job in a job frame's payload: the id, padded to keep the job aligned.
pub const JOB_PREFIX_BYTES: usize = 16;

/// Appends a job frame (`kind` is Submit or Start) around already-encoded job bytes; refuses a
/// job over the frame limit.
pub fn encode_job_frame(kind: Kind, id: u64, job: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    debug_assert!(matches!(kind, Kind::Submit | Kind::Start));
    check_len(JOB_PREFIX_BYTES + job.len())?;
    out.extend_from_slice(&header(kind, JOB_PREFIX_BYTES + job.len()));
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&[0u8; JOB_PREFIX_BYTES - 8]);
    out.extend_from_slice(job);
    Ok(())
}

/// Appends a chunk frame (`data` at most [`CHUNK_BYTES`], so it always fits).
pub fn encode_chunk(chunk: &ChunkHeader, data: &[u8], out: &mut Vec<u8>) {
    debug_assert!(data.len() <= CHUNK_BYTES);
    out.extend_from_slice(&header(Kind::Chunk, CHUNK_HEADER_BYTES + data.len()));
    out.extend_from_slice(&chunk.digest.0);
    out.extend_from_slice(&chunk.offset.to_le_bytes());
    out.extend_from_slice(&chunk.total.to_le_bytes());
    out.extend_from_slice(data);
}

/// A received frame payload, validated.
#[derive(Debug)]
pub enum Frame<'a> {
    Control(&'a ArchivedControl),
    /// The job id, the job (read in place), and its raw bytes for forwarding.
    Job {
        kind: Kind,
        id: u64,
        spec: &'a ArchivedJobSpec,
        bytes: &'a [u8],
    },
    Chunk {
        header: ChunkHeader,
        data: &'a [u8],
    },
}

/// Validates a payload of `kind`. `payload` must start 16-byte aligned ([`FrameReader`] keeps
/// each payload at the start of an aligned buffer).
pub fn decode(kind: Kind, payload: &[u8]) -> Result<Frame<'_>, DecodeError> {
    if payload.len() > FRAME_PAYLOAD_BYTES_MAX {
        return Err(DecodeError::TooLarge { len: payload.len(), max: FRAME_PAYLOAD_BYTES_MAX });
    }
    match kind {
        Kind::Control => Ok(Frame::Control(access::<ArchivedControl>(payload, "control message")?)),
        Kind::Submit | Kind::Start => {
            let (prefix, job) = payload.split_at_checked(JOB_PREFIX_BYTES).ok_or_else(|| {
                DecodeError::Invalid { what: "job frame", reason: "shorter than its job id".into() }
            })?;
            let id = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
            let spec = access::<ArchivedJobSpec>(job, "job")?;
            check_job(spec).map_err(|reason| DecodeError::Semantic { what: "job", reason })?;
            Ok(Frame::Job { kind, id, spec, bytes: job })
        }
        Kind::Chunk => {
            let (head, data) = payload.split_at_checked(CHUNK_HEADER_BYTES).ok_or_else(|| {
                DecodeError::Invalid { what: "chunk frame", reason: "shorter than its header".into() }
            })?;
            let digest = Digest(head[..32].try_into().expect("32 bytes"));
            let offset = u64::from_le_bytes(head[32..40].try_into().expect("8 bytes"));
            let total = u64::from_le_bytes(head[40..48].try_into().expect("8 bytes"));
            if offset.checked_add(data.len() as u64).is_none_or(|end| end > total) {
                return Err(DecodeError::Semantic {
                    what: "chunk",
                    reason: format!("bytes {offset}+{} run past the artifact's {total}", data.len()),
                });
            }
            Ok(Frame::Chunk { header: ChunkHeader { digest, offset, total }, data })
        }
    }
}

/// Limits a job must keep that bytecheck cannot express.
fn check_job(job: &ArchivedJobSpec) -> Result<(), String> {
    if job.program.is_empty() {
        return Err("the program is empty".into());
    }
    if job.layers.is_empty() {
        return Err("a job needs at least one layer".into());
    }
    if job.layers.len() > crate::zygote::LAYERS_MAX {
        return Err(format!("{} layers, at most {}", job.layers.len(), crate::zygote::LAYERS_MAX));
    }
    Ok(())
}

fn access<'a, T>(bytes: &'a [u8], what: &'static str) -> Result<&'a T, DecodeError>
where
    T: rkyv::Portable
        + for<'b> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'b, rancor::Error>>,
{
    if !(bytes.as_ptr() as usize).is_multiple_of(16) {
        return Err(DecodeError::Invalid { what, reason: "buffer is not 16-byte aligned".into() });
    }
    rkyv::access::<T, rancor::Error>(bytes).map_err(|e| DecodeError::Invalid { what, reason: e.to_string() })
}

/// A reader's buffer above this size is let go once its frame is handled.
const KEPT_PAYLOAD_BYTES: usize = 1 << 20;

/// Reassembles frames from a byte stream, keeping each payload 16-byte aligned for in-place
/// reading. Bounded: it never holds more than one frame beyond what it was given.
#[derive(Debug, Default)]
pub struct FrameReader {
    pending: Vec<u8>,
    header: Option<Header>,
    payload: AlignedVec,
}

impl FrameReader {
    /// Whether part of a frame has arrived and the rest has not (a peer that hangs up now has
    /// cut a frame short).
    pub fn mid_frame(&self) -> bool {
        self.header.is_some() || !self.pending.is_empty()
    }

    /// Feeds received bytes; calls `on_frame` with each complete frame. Stops at the first
    /// malformed header (the connection must then be closed).
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        on_frame: &mut dyn FnMut(Kind, &[u8]) -> bool,
    ) -> Result<(), DecodeError> {
        while !bytes.is_empty() {
            match self.header {
                None => {
                    let need = HEADER_BYTES - self.pending.len();
                    let take = need.min(bytes.len());
                    self.pending.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.pending.len() == HEADER_BYTES {
                        let raw: [u8; HEADER_BYTES] = self.pending[..].try_into().expect("8 bytes");
                        self.pending.clear();
                        let header = parse_header(&raw)?;
                        self.payload.clear();
                        self.payload.reserve(header.len);
                        self.header = Some(header);
                    }
                }
                Some(header) => {
                    let need = header.len - self.payload.len();
                    let take = need.min(bytes.len());
                    self.payload.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                }
            }
            if let Some(header) = self.header
                && self.payload.len() == header.len
            {
                self.header = None;
                let more = on_frame(header.kind, &self.payload);
                if self.payload.capacity() > KEPT_PAYLOAD_BYTES {
                    // One large frame must not pin its buffer for the connection's life.
                    self.payload = AlignedVec::new();
                }
                if !more {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8], chunk: usize) -> Vec<(Kind, Vec<u8>)> {
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            reader
                .feed(piece, &mut |kind, payload| {
                    out.push((kind, payload.to_vec()));
                    true
                })
                .unwrap();
        }
        out
    }

    #[test]
    fn every_kind_round_trips_through_a_byte_stream() {
        let job = typical_job();
        let encoded = encode_job(&job);
        let mut stream = Vec::new();
        encode_control(
            &Control::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: Role::Worker { slots: 4, grants: 0 },
                name: "w".into(),
            }),
            &mut stream,
        )
        .unwrap();
        encode_job_frame(Kind::Submit, 77, &encoded, &mut stream).unwrap();
        let chunk = ChunkHeader { digest: Digest::of(b"abc"), offset: 1, total: 3 };
        encode_chunk(&chunk, b"bc", &mut stream);
        encode_control(
            &Control::Done {
                id: 77,
                outcome: Outcome::TimedOut {
                    stdout: Output::default(),
                    stderr: Output { bytes: b"x".to_vec(), cut: 9 },
                    duration_us: 5,
                    usage: Usage { cpu_us: 4, peak_rss_bytes: 1 << 20 },
                },
            },
            &mut stream,
        )
        .unwrap();
        for split in [1, 3, 7, 64, stream.len()] {
            let got = frames(&stream, split);
            assert_eq!(got.len(), 4);
            let mut aligned = AlignedVec::<16>::new();
            for (kind, payload) in &got {
                aligned.clear();
                aligned.extend_from_slice(payload);
                match decode(*kind, &aligned).unwrap() {
                    Frame::Control(ArchivedControl::Hello(h)) => assert_eq!(h.name, "w"),
                    Frame::Job { id, spec, .. } => {
                        assert_eq!(id, 77);
                        assert_eq!(spec, &job);
                        assert_eq!(spec.priority, job.priority);
                    }
                    Frame::Chunk { header, data } => {
                        assert_eq!(header, chunk);
                        assert_eq!(data, b"bc");
                    }
                    Frame::Control(ArchivedControl::Done { id, .. }) => assert_eq!(*id, 77),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn oversized_and_unknown_headers_are_refused_first() {
        let mut big = [0u8; 8];
        big[..4].copy_from_slice(&(FRAME_PAYLOAD_BYTES_MAX as u32 + 1).to_le_bytes());
        big[4] = 1;
        assert!(matches!(parse_header(&big), Err(DecodeError::TooLarge { .. })));
        let mut reader = FrameReader::default();
        let error = reader.feed(&big, &mut |_, _| true).unwrap_err();
        assert!(error.to_string().contains("exceeds the limit"));
        let unknown = [0, 0, 0, 0, 9, 0, 0, 0];
        assert!(parse_header(&unknown).unwrap_err().to_string().contains("unknown kind 9"));
        let reserved = [0, 0, 0, 0, 1, 0, 1, 0];
        assert!(parse_header(&reserved).is_err());
    }

    #[test]
    fn garbage_payloads_are_refused() {
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&[0xEE; 100]);
        assert!(decode(Kind::Control, &aligned).is_err());
        assert!(decode(Kind::Submit, &aligned).is_err());
        assert!(decode(Kind::Submit, &aligned[..4]).is_err());
        let truncated = encode_job(&typical_job());
        let mut frame = Vec::new();
        encode_job_frame(Kind::Submit, 1, &truncated[..truncated.len() / 2], &mut frame).unwrap();
        aligned.clear();
        aligned.extend_from_slice(&frame[HEADER_BYTES..]);
        assert!(decode(Kind::Submit, &aligned).is_err());
        let mut chunk = Vec::new();
        encode_chunk(&ChunkHeader { digest: Digest::of(b""), offset: 5, total: 6 }, b"toolong", &mut chunk);
        aligned.clear();
        aligned.extend_from_slice(&chunk[8..]);
        assert!(decode(Kind::Chunk, &aligned).unwrap_err().to_string().contains("run past"));
    }

    /// Writes valid messages as fuzzing seeds when asked (see fuzz/README.md); otherwise only
    /// checks that they encode.
    #[test]
    fn fuzz_seeds() {
        use crate::artifact::{Entry, EntryKind, Manifest};
        let controls = [
            Control::Hello(Hello {
                version: PROTOCOL_VERSION,
                role: Role::Worker { slots: 8, grants: crate::zygote::Allowance::IoUring.bit() },
                name: "w".into(),
            }),
            Control::Hello(Hello { version: PROTOCOL_VERSION, role: Role::Client, name: "c".into() }),
            Control::Welcome { ping_ms: 60_000, grants: vec![0, 0b101] },
            Control::Ping,
            Control::Refused("version".into()),
            Control::Done {
                id: 3,
                outcome: Outcome::Exited {
                    code: 1,
                    stdout: Output { bytes: b"out".to_vec(), cut: 0 },
                    stderr: Output::default(),
                    duration_us: 10,
                    met: vec![
                        Met::Full { path: "/tmp".into(), bytes: 8 << 20 },
                        Met::OpenFiles { soft: 64, hard: 64 },
                    ],
                    usage: Usage { cpu_us: 9, peak_rss_bytes: 2 << 20 },
                },
            },
            Control::Done { id: 4, outcome: Outcome::SystemError("lost".into()) },
            Control::Cancel { id: 9 },
            Control::Want { digest: Digest::of(b"a") },
            Control::Unavailable { digest: Digest::of(b"a"), reason: "gone".into() },
            Control::StatusRequest,
            Control::Status(Status { workers: 2, slots: 4, ..Status::default() }),
            Control::Stop,
        ];
        let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut stream = Vec::new();
        for control in &controls {
            let mut frame = Vec::new();
            encode_control(control, &mut frame).unwrap();
            seeds.push(("cluster_control", frame[HEADER_BYTES..].to_vec()));
            stream.extend_from_slice(&frame);
        }
        for job in [typical_job(), JobSpec { mounts: vec![], arguments: vec![], ..typical_job() }] {
            let mut frame = Vec::new();
            encode_job_frame(Kind::Submit, 5, &encode_job(&job), &mut frame).unwrap();
            seeds.push(("cluster_job", frame[HEADER_BYTES..].to_vec()));
            stream.extend_from_slice(&frame);
        }
        encode_chunk(&ChunkHeader { digest: Digest::of(b"xyz"), offset: 0, total: 3 }, b"xyz", &mut stream);
        seeds.push(("cluster_stream", stream));
        let manifest = Manifest::from_entries([
            Entry { path: b"/bin".to_vec(), kind: EntryKind::Directory { mode: 0o755 } },
            Entry {
                path: b"/bin/a".to_vec(),
                kind: EntryKind::File { digest: Digest::of(b"a"), size: 1, mode: 0o755 },
            },
            Entry { path: b"/lib".to_vec(), kind: EntryKind::Symlink { target: b"usr/lib".to_vec() } },
        ]);
        seeds.push(("manifest", rkyv::to_bytes::<rancor::Error>(&manifest).unwrap().to_vec()));
        if std::env::var_os("MAELSTROM_WRITE_FUZZ_SEEDS").is_some() {
            crate::write_fuzz_seeds(&seeds);
        }
    }

    #[test]
    fn oversized_messages_are_refused_and_results_fit_once_cut() {
        let big = |n: usize| Output { bytes: vec![b'x'; n], cut: 7 };
        let mut outcome = Outcome::Exited {
            code: 0,
            stdout: big(3 << 20),
            stderr: big(3 << 20),
            duration_us: 1,
            met: Vec::new(),
            usage: Usage::default(),
        };
        let mut frame = Vec::new();
        let done = |outcome: &Outcome| Control::Done { id: 1, outcome: outcome.clone() };
        assert!(matches!(encode_control(&done(&outcome), &mut frame), Err(DecodeError::TooLarge { .. })));
        assert!(frame.is_empty(), "nothing is written for a refused message");
        outcome.fit();
        encode_control(&done(&outcome), &mut frame).unwrap();
        let Outcome::Exited { stdout, stderr, .. } = &outcome else { unreachable!() };
        assert_eq!(stdout.bytes.len(), stderr.bytes.len(), "two large streams share the room");
        assert_eq!(stdout.cut + stdout.bytes.len() as u64, (3 << 20) + 7, "what is cut is counted");
        let mut lopsided = Outcome::TimedOut {
            stdout: big(10),
            stderr: big(5 << 20),
            duration_us: 1,
            usage: Usage::default(),
        };
        lopsided.fit();
        let Outcome::TimedOut { stdout, stderr, .. } = &lopsided else { unreachable!() };
        assert_eq!(stdout.bytes.len(), 10);
        assert!(stderr.bytes.len() > 3 << 20, "a small stream leaves its room to the other");
        let mut frame = Vec::new();
        let too_big = Control::Done {
            id: 4,
            outcome: Outcome::Exited {
                code: 0,
                stdout: big(5 << 20),
                stderr: big(0),
                duration_us: 1,
                met: Vec::new(),
                usage: Usage::default(),
            },
        };
        encode_control_or_report(&too_big, &mut frame).unwrap();
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&frame[HEADER_BYTES..]);
        match decode(Kind::Control, &aligned).unwrap() {
            Frame::Control(ArchivedControl::Done { id, outcome: ArchivedOutcome::SystemError(m) }) => {
                assert_eq!(*id, 4);
                assert!(m.contains("could not be sent"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        let huge = JobSpec { arguments: vec!["y".repeat(5 << 20)], ..typical_job() };
        assert!(encode_job_frame(Kind::Submit, 1, &encode_job(&huge), &mut Vec::new()).is_err());
    }

    #[test]
    fn jobs_without_layers_or_program_are_refused() {
        for broken in
            [JobSpec { layers: vec![], ..typical_job() }, JobSpec { program: String::new(), ..typical_job() }]
        {
            let mut frame = Vec::new();
            encode_job_frame(Kind::Start, 3, &encode_job(&broken), &mut frame).unwrap();
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(&frame[HEADER_BYTES..]);
            assert!(matches!(decode(Kind::Start, &aligned), Err(DecodeError::Semantic { .. })));
        }
    }
}
