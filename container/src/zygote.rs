//! The worker's handle on its zygote lanes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use maelstrom_wire::zygote::{
    self, ArchivedLaneHello, ArchivedSpawnReply, BootStep, LANE_PROTOCOL_VERSION, REPLY_BYTES_MAX,
    SPAWN_REQUEST_BYTES_MAX, SetupOp, SpawnRequest, Step,
};
use rkyv::util::AlignedVec;

use crate::cgroup::JobCgroups;
use crate::job::Job;
use crate::lane::{self, Boot};
use crate::seccomp;
use crate::sys::{self, ExitStatus, Forked};

/// How many lanes to fork, and the cgroups their jobs may start in.
#[derive(Debug)]
pub struct ZygoteConfig {
    /// Lanes clone jobs in parallel; one per core is plenty.
    pub lanes: usize,
    /// Job cgroups (see [`crate::cgroup`]): a request's `cgroup` indexes them.
    pub cgroups: Option<JobCgroups>,
}

impl Default for ZygoteConfig {
    fn default() -> Self {
        Self { lanes: std::thread::available_parallelism().map_or(1, usize::from), cgroups: None }
    }
}

/// A zygote that could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the zygote must be started before any other thread exists, but this process has {threads} \
         threads (call Zygote::start first thing in main)"
    )]
    Threaded { threads: usize },
    #[error("set up the seccomp policy: {0}")]
    Seccomp(String),
    #[error("start zygote lane {lane}: {what}")]
    Io {
        lane: usize,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("start zygote lane {lane}: {step}: {source}{hint}")]
    Boot {
        lane: usize,
        step: BootStep,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("zygote lane {lane} died while starting ({status})")]
    Died { lane: usize, status: String },
}

/// A job that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The job's own setup failed before exec: its spec is at fault, or the host lacks something.
    #[error("{step}{}{what}: {source}", if what.is_empty() { "" } else { ": " })]
    Setup {
        step: Step,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("zygote lane {lane} died ({status})")]
    LaneDied { lane: usize, status: String },
    #[error("zygote lane {lane}: {what}")]
    Io {
        lane: usize,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("zygote lane {lane} rejected the spawn request: {reason}")]
    Rejected { lane: usize, reason: String },
    #[error(
        "spawn request of {len} bytes exceeds the limit of {max} bytes (shorten the arguments or environment)"
    )]
    TooLarge { len: usize, max: usize },
    #[error("encode the spawn request: {0}")]
    Encode(String),
    #[error("create pipes for the job's output")]
    Pipes(#[source] io::Error),
}

impl SpawnError {
    /// Whether the job's spec (rather than the worker) is at fault.
    pub fn is_setup(&self) -> bool {
        matches!(self, SpawnError::Setup { .. })
    }
}

/// One lane, seen from the worker: its socket, and the pidfd that tells when it died.
///
/// [`Zygote::spawn`] drives lanes with blocking calls. An event loop can take the lanes instead
/// ([`Zygote::into_lanes`]) and drive each one itself: send [`encode_request`]'s bytes with the
/// job's stdout and stderr attached, receive one datagram (up to [`REPLY_BYTES_MAX`] bytes, into
/// a 16-byte-aligned buffer) and its fds, and hand them to [`Lane::finish_spawn`]. One request at
/// a time per lane. Dropping a lane ends it.
#[derive(Debug)]
pub struct Lane {
    index: usize,
    pid: libc::pid_t,
    pidfd: OwnedFd,
    sock: OwnedFd,
    request_bytes_max: usize,
    open: bool,
}

impl Lane {
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether this is the zygote's open lane, the one that starts the jobs whose specs allow
    /// more than the default sandbox (and only those).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whether this lane is the one to start `request`.
    pub fn serves(&self, request: &SpawnRequest) -> bool {
        self.open != request.allow.is_empty()
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The largest request the lane's socket takes in one datagram (the kernel caps socket
    /// buffers at `net.core.wmem_max` for an unprivileged process).
    pub fn request_bytes_max(&self) -> usize {
        self.request_bytes_max
    }

    /// The `SOCK_SEQPACKET` socket to the lane.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Turns the lane's reply to `request` (and the fds that came with it) into a started job,
    /// or into the reason it did not start.
    pub fn finish_spawn(
        &self,
        request: &SpawnRequest,
        reply: &[u8],
        fds: &mut Vec<OwnedFd>,
    ) -> Result<Job, SpawnError> {
        let pidfd = fds.pop();
        let fillable = std::mem::take(fds);
        let decoded = zygote::decode_reply(reply).map_err(|e| SpawnError::Io {
            lane: self.index,
            what: "decode its reply",
            source: io::Error::other(e.to_string()),
        })?;
        match (decoded, pidfd) {
            (ArchivedSpawnReply::Started { pid }, Some(pidfd)) => {
                let mut job = Job::new(pid.to_native(), pidfd);
                let paths: Vec<String> =
                    request.job.iter().filter_map(SetupOp::fillable).take(zygote::FILLABLE_MAX).collect();
                // Fewer fds than mounts (the job's setup sends all or none): the job runs, and
                // its filesystems are not checked when it ends.
                if paths.len() == fillable.len() {
                    job.fillable = fillable.into_iter().zip(paths).collect();
                }
                if let Some(limit) = request.rlimits.iter().find(|l| l.resource == libc::RLIMIT_NOFILE) {
                    job.open_files = Some((limit.soft, limit.hard));
                }
                Ok(job)
            }
            (ArchivedSpawnReply::Failed { step, errno, pid }, pidfd) => {
                let step = step.native();
                if let (true, Some(pidfd)) = (pid.to_native() != 0, pidfd) {
                    drop(Job::new(pid.to_native(), pidfd));
                }
                Err(SpawnError::Setup {
                    step,
                    what: describe(request, step),
                    source: io::Error::from_raw_os_error(errno.to_native()),
                })
            }
            (ArchivedSpawnReply::Rejected { reason }, _) => {
                Err(SpawnError::Rejected { lane: self.index, reason: reason.as_str().to_owned() })
            }
            (ArchivedSpawnReply::Started { .. }, None) => Err(SpawnError::Io {
                lane: self.index,
                what: "receive the job's pidfd",
                source: io::Error::other("the reply came without it"),
            }),
        }
    }

    /// The error for a lane whose socket closed: waits for the lane and says how it ended.
    pub fn death(&self) -> SpawnError {
        let status = describe_status(sys::waitid_pidfd(self.pidfd.as_fd(), true));
        SpawnError::LaneDied { lane: self.index, status }
    }

    /// Waits for the lane's hello.
    fn greet(
        index: usize,
        pid: libc::pid_t,
        pidfd: OwnedFd,
        sock: OwnedFd,
        request_bytes_max: usize,
        open: bool,
    ) -> Result<Self, StartError> {
        let mut buf = AlignedVec::<16>::with_capacity(REPLY_BYTES_MAX);
        buf.resize(REPLY_BYTES_MAX, 0);
        let mut fds = Vec::new();
        let len = sys::recv_with_fds(sock.as_fd(), &mut buf, &mut fds).map_err(|source| StartError::Io {
            lane: index,
            what: "read its hello",
            source,
        })?;
        if len == 0 {
            let status = describe_status(sys::waitid_pidfd(pidfd.as_fd(), true));
            return Err(StartError::Died { lane: index, status });
        }
        let hello = zygote::decode_hello(&buf[..len]).map_err(|e| StartError::Io {
            lane: index,
            what: "decode its hello",
            source: io::Error::other(e.to_string()),
        })?;
        match hello {
            ArchivedLaneHello::Ready { version, .. } if version.to_native() == LANE_PROTOCOL_VERSION => {}
            ArchivedLaneHello::Ready { version, .. } | ArchivedLaneHello::Failed { version, .. }
                if version.to_native() != LANE_PROTOCOL_VERSION =>
            {
                return Err(StartError::Io {
                    lane: index,
                    what: "check its protocol version",
                    source: io::Error::other(format!(
                        "lane speaks {version}, we speak {LANE_PROTOCOL_VERSION}"
                    )),
                });
            }
            ArchivedLaneHello::Failed { step, errno, .. } => {
                let _ = sys::waitid_pidfd(pidfd.as_fd(), true);
                let step = step.native();
                return Err(StartError::Boot {
                    lane: index,
                    step,
                    source: io::Error::from_raw_os_error(errno.to_native()),
                    hint: boot_hint(step),
                });
            }
            ArchivedLaneHello::Ready { .. } => unreachable!("version checked by the arms above"),
        }
        Ok(Self { index, pid, pidfd, sock, request_bytes_max, open })
    }
}

impl Drop for Lane {
    /// Ends and reaps the lane. Jobs it started are the worker's children and live on until
    /// their [`Job`]s drop.
    fn drop(&mut self) {
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        let _ = sys::waitid_pidfd(self.pidfd.as_fd(), true);
    }
}

/// Encodes `request` into `out` for a lane, refusing one too large to send.
pub fn encode_request(request: &SpawnRequest, out: &mut AlignedVec) -> Result<(), SpawnError> {
    zygote::encode(request, out).map_err(|e| SpawnError::Encode(e.to_string()))?;
    if out.len() > SPAWN_REQUEST_BYTES_MAX {
        return Err(SpawnError::TooLarge { len: out.len(), max: SPAWN_REQUEST_BYTES_MAX });
    }
    Ok(())
}

/// Buffers for the blocking [`Zygote::spawn`] on one lane, and how the lane died, if it did.
#[derive(Debug)]
struct Exchange {
    request: AlignedVec,
    reply: AlignedVec,
    fds: Vec<OwnedFd>,
    died: Option<(usize, String)>,
}

#[derive(Debug)]
struct Slot {
    lane: Lane,
    exchange: Mutex<Exchange>,
}

/// The zygote: lanes, forked before any thread, that clone each job into fresh
/// namespaces inside one long-lived user namespace and hand back its pidfd. Dropping it ends
/// the lanes (jobs already started keep running until their [`Job`]s are dropped).
#[derive(Debug)]
pub struct Zygote {
    slots: Vec<Slot>,
    next: AtomicUsize,
    cgroups: Option<JobCgroups>,
}

impl Zygote {
    /// Forks the lanes. Must run while this process has a single thread.
    #[expect(unsafe_code, reason = "fork: sound because the process is checked to be single-threaded")]
    pub fn start(config: ZygoteConfig) -> Result<Self, StartError> {
        let threads = sys::thread_count().map_err(|source| StartError::Io {
            lane: 0,
            what: "count threads",
            source,
        })?;
        if threads != 1 {
            return Err(StartError::Threaded { threads });
        }
        sys::default_sigchld().map_err(|source| StartError::Io { lane: 0, what: "reset SIGCHLD", source })?;
        let secret = sys::draw_secret().map_err(|e| StartError::Seccomp(format!("draw its secret: {e}")))?;
        let strict = seccomp::program(0, Some(secret));
        let open = seccomp::program(seccomp::all_allowances(), None);
        let worker = sys::getpid();
        let (uid, gid) = (sys::geteuid(), sys::getegid());
        let cgroup_fds = config.cgroups.as_ref().map(JobCgroups::procs_fds).unwrap_or_default();
        let mut lanes: Vec<Lane> = Vec::new();
        // The last lane is the open one.
        let count = config.lanes.max(1) + 1;
        for index in 0..count {
            let is_open = index + 1 == count;
            let io_error = |what| move |source| StartError::Io { lane: index, what, source };
            let (ours, theirs) = sys::seqpacket_pair().map_err(io_error("create its socket"))?;
            let wanted = SPAWN_REQUEST_BYTES_MAX + (64 << 10);
            let sendable =
                sys::set_socket_buffers(ours.as_fd(), wanted).map_err(io_error("size its socket buffers"))?;
            sys::set_socket_buffers(theirs.as_fd(), wanted).map_err(io_error("size its socket buffers"))?;
            let request_bytes_max = sendable.min(SPAWN_REQUEST_BYTES_MAX);
            let boot = match lanes.first() {
                None => Boot::Create { uid, gid },
                Some(first) => Boot::Join { first: first.pid, root: uid == 0 },
            };
            // SAFETY: the thread count was 1 above, and nothing since started a thread.
            match unsafe { sys::fork() }.map_err(io_error("fork"))? {
                Forked::Child => {
                    let mut keep: Vec<RawFd> =
                        cgroup_fds.iter().flatten().copied().filter(|&fd| fd >= 0).collect();
                    keep.push(theirs.as_raw_fd());
                    close_fds_except(&mut keep);
                    if is_open {
                        sys::forget_secret();
                    }
                    let filter = if is_open { &open } else { &strict };
                    lane::main(theirs, boot, worker, filter, is_open, cgroup_fds)
                }
                Forked::Parent { pid } => {
                    drop(theirs);
                    let pidfd = sys::pidfd_open(pid).map_err(io_error("open its pidfd"))?;
                    lanes.push(Lane::greet(index, pid, pidfd, ours, request_bytes_max, is_open)?);
                }
            }
        }
        sys::forget_secret();
        drop(strict);
        let slots = lanes
            .into_iter()
            .map(|lane| {
                let mut reply = AlignedVec::with_capacity(REPLY_BYTES_MAX);
                reply.resize(REPLY_BYTES_MAX, 0);
                let exchange = Exchange { request: AlignedVec::new(), reply, fds: Vec::new(), died: None };
                Slot { lane, exchange: Mutex::new(exchange) }
            })
            .collect();
        Ok(Self { slots, next: AtomicUsize::new(0), cgroups: config.cgroups })
    }

    /// The pids of the lanes (for monitoring, and for tests that kill one).
    pub fn lane_pids(&self) -> Vec<libc::pid_t> {
        self.slots.iter().map(|slot| slot.lane.pid).collect()
    }

    /// The lanes, for an event loop to drive (see [`Lane`]), and the job cgroups their jobs
    /// may start in.
    pub fn into_lanes(self) -> (Vec<Lane>, Option<JobCgroups>) {
        (self.slots.into_iter().map(|slot| slot.lane).collect(), self.cgroups)
    }

    /// Starts a job with `stdout` and `stderr` as its output. Returns once the job has exec'd,
    /// or with the reason its setup failed.
    pub fn spawn(
        &self,
        request: &SpawnRequest,
        stdout: BorrowedFd<'_>,
        stderr: BorrowedFd<'_>,
    ) -> Result<Job, SpawnError> {
        let (lane, mut exchange) = self.pick(request);
        if let Some((lane, status)) = &exchange.died {
            return Err(SpawnError::LaneDied { lane: *lane, status: status.clone() });
        }
        encode_request(request, &mut exchange.request)?;
        if exchange.request.len() > lane.request_bytes_max {
            return Err(SpawnError::TooLarge { len: exchange.request.len(), max: lane.request_bytes_max });
        }
        let Exchange { request: bytes, reply, fds, died } = &mut *exchange;
        let exchanged = sys::send_with_fds(lane.socket(), bytes, &[stdout, stderr])
            .and_then(|()| sys::recv_with_fds(lane.socket(), reply, fds));
        match exchanged {
            Ok(0) => Err(record(died, lane.death())),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {
                Err(record(died, lane.death()))
            }
            Err(source) => Err(SpawnError::Io { lane: lane.index, what: "exchange a spawn request", source }),
            Ok(len) => lane.finish_spawn(request, &reply[..len], fds),
        }
    }

    /// Of the lanes that serve `request`, a free one if there is one, else the next in turn.
    fn pick(&self, request: &SpawnRequest) -> (&Lane, MutexGuard<'_, Exchange>) {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let serving: Vec<&Slot> = self.slots.iter().filter(|slot| slot.lane.serves(request)).collect();
        let n = serving.len();
        for i in 0..n {
            let slot = serving[(start + i) % n];
            if let Ok(exchange) = slot.exchange.try_lock()
                && exchange.died.is_none()
            {
                return (&slot.lane, exchange);
            }
        }
        // All busy: wait for the first live lane in turn (a dead one only if all are).
        for i in 0..n - 1 {
            let slot = serving[(start + i) % n];
            let exchange = slot.exchange.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if exchange.died.is_none() {
                return (&slot.lane, exchange);
            }
        }
        let slot = serving[(start + n - 1) % n];
        (&slot.lane, slot.exchange.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// Remembers a lane's death so later spawns on it fail the same way at once.
fn record(died: &mut Option<(usize, String)>, death: SpawnError) -> SpawnError {
    if let SpawnError::LaneDied { lane, status } = &death {
        *died = Some((*lane, status.clone()));
    }
    death
}

fn boot_hint(step: BootStep) -> &'static str {
    match step {
        BootStep::UserNamespace => {
            " (unprivileged user namespaces look disabled: set the sysctls kernel.unprivileged_userns_clone=1 \
             and user.max_user_namespaces to a positive number; on Ubuntu 23.10 and later also \
             kernel.apparmor_restrict_unprivileged_userns=0)"
        }
        BootStep::PrivateMounts => " (the kernel refused mounts in a user namespace)",
        _ => "",
    }
}

fn describe_status(status: io::Result<Option<(ExitStatus, crate::job::Usage)>>) -> String {
    match status.map(|reaped| reaped.map(|(status, _)| status)) {
        Ok(Some(ExitStatus::Exited(code))) => format!("exited with code {code}"),
        Ok(Some(ExitStatus::Signaled(signal))) => format!("killed by signal {signal}"),
        Ok(None) => "still running but not answering".to_owned(),
        Err(e) => format!("status unknown: {e}"),
    }
}

/// Closes every fd of this (freshly forked) process above stderr except those in `keep`.
fn close_fds_except(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut first = 3;
    for &fd in keep.iter().filter(|&&fd| fd >= 3) {
        if fd > first {
            sys::close_range(first, fd - 1);
        }
        first = first.max(fd + 1);
    }
    sys::close_range(first, libc::c_int::MAX);
}

/// Names what a failed step was doing, from the request the worker sent.
pub fn describe(request: &SpawnRequest, step: Step) -> String {
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match step {
        Step::Template { op } => describe_op(&request.template, op),
        Step::Job { op } => describe_op(&request.job, op),
        Step::Exec => request.arguments.first().map(|a| lossy(a.as_bytes())).unwrap_or_default(),
        Step::WorkingDirectory => lossy(request.working_directory.as_bytes()),
        Step::Hostname => lossy(request.hostname.as_bytes()),
        _ => String::new(),
    }
}

fn describe_op(ops: &[SetupOp], index: u32) -> String {
    let Some(op) = ops.get(index as usize) else { return String::new() };
    let filled_by = |wanted: u8| {
        ops.iter().find(|op| {
            matches!(op, SetupOp::CloneTree { slot, .. } | SetupOp::NewFs { slot, .. } | SetupOp::Hold { slot, .. }
                if *slot == wanted)
        })
    };
    match op {
        SetupOp::Attach { slot, target } => match filled_by(*slot) {
            Some(SetupOp::CloneTree { source, .. }) => format!("bind {source} at {target}"),
            Some(SetupOp::NewFs { kind, .. }) => format!("mount {} at {target}", kind.name()),
            Some(SetupOp::Hold { source, .. }) => {
                format!("show {source} again over the mount that covers it")
            }
            _ => op.to_string(),
        },
        SetupOp::CloneTree { source, .. } => format!("open {source} for a bind mount"),
        SetupOp::NewFs { kind, .. } => format!("create a {} filesystem", kind.name()),
        SetupOp::PivotRoot => "pivot into the new root".to_owned(),
        SetupOp::Hold { source, .. } => format!("hold {source} to show it again over a later mount"),
        SetupOp::Root { .. } | SetupOp::Mount { .. } | SetupOp::MakeDir { .. } => op.to_string(),
    }
}
