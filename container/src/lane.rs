//! A zygote lane: the process that clones jobs.
//!
//! A lane is forked by [`crate::Zygote::start`] before the worker starts any thread, and stays
//! single-threaded through its boot (which forks). Its one other thread, started last, checks
//! the namespaces jobs gave back (see `Checks`); the lane's own thread does everything else. The
//! first lane creates the zygote's user namespace (one
//! id mapped: the worker's uid and gid become 0) and a private copy of the host's mount
//! namespace; the others join both. Then each lane loops: receive a spawn request, validate
//! it, find or build its template mount namespace, take a network namespace from the pool,
//! clone the job (`CLONE_VM | CLONE_VFORK`, so the job's setup runs on this memory while the
//! lane waits), and reply with the job's pidfd or the failure as data.
//!
//! The jobs are cloned with `CLONE_PARENT`: they are the worker's children, so the worker waits
//! for them through their pidfds. The lane never reaps a job; it only watches each job's pidfd to
//! learn when its network namespace can go back to the pool.
//!
//! When the worker dies, however it dies, its end of the lane's socket closes: the lane then
//! kills every job it started that still runs (each the init of its own pid namespace, so
//! their children go too) and exits. A job cannot opt out of that the way it can clear its own
//! parent-death signal.

#![expect(unsafe_code, reason = "this module is one of the two that own raw syscalls")]

use std::ffi::c_char;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use maelstrom_wire::zygote::{
    self, Allowance, ArchivedNetworkMode, ArchivedSetupOp, ArchivedSpawnRequest, BootStep, FsKind,
    LANE_PROTOCOL_VERSION, LaneHello, SPAWN_REQUEST_BYTES_MAX, SetupOp, SpawnReply, Step,
};
use rkyv::util::AlignedVec;
use rkyv::vec::ArchivedVec;

use crate::child::{self, Failure, IpcnsArgs, JobArgs, MapLine, NetnsArgs, Slots, TemplateArgs};
use crate::seccomp;
use crate::sys::{self, ChildStack};

/// Template mount namespaces one lane keeps (least recently used go first).
pub(crate) const TEMPLATES_MAX: usize = 32;

/// How often a lane, busy or idle, drops the templates whose sources are gone.
const TEMPLATE_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Bytes read of each file that tells whether a job touched a network namespace (the longest,
/// /proc/net/snmp6, is about 3 KiB; one longer than this counts as touched).
const TRACE_BYTES_MAX: usize = 16 << 10;

/// Idle namespaces one lane keeps per kind (IPC, network with `lo` down, network with `lo` up).
pub(crate) const POOL_IDLE_MAX: usize = 32;

/// The id jobs run as when the worker is real root: the host's nobody.
///
/// An unprivileged worker's jobs run as the worker's own uid, which the kernel trusts with
/// nothing. Real root's uid, though, is trusted by uid alone in places (procfs files such as
/// /proc/sysrq-trigger, every sysctl), so a root worker's jobs must never hold it.
pub(crate) const NOBODY: u32 = 65534;

/// How the lane joins the zygote's namespaces.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Boot {
    /// Create them (the first lane), mapping the worker's `uid` and `gid`.
    Create { uid: u32, gid: u32 },
    /// Join the first lane's. `root`: whether the worker is real root.
    Join { first: libc::pid_t, root: bool },
}

impl Boot {
    fn root(self) -> bool {
        match self {
            Boot::Create { uid, .. } => uid == 0,
            Boot::Join { root, .. } => root,
        }
    }
}

/// Runs a lane in the freshly forked child. Never returns.
pub(crate) fn main(
    sock: OwnedFd,
    boot: Boot,
    worker: libc::pid_t,
    filter: &[seccompiler::sock_filter],
    open: bool,
    cgroups: Vec<[RawFd; 2]>,
) -> ! {
    // A panic must never unwind into the worker's frames this process was forked with (their
    // destructors would run here, in the lane): it ends the lane instead.
    // (A lane that panics kills its jobs on the way out: see `Drop for Lane`.)
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve_lane(&sock, boot, worker, filter, open, cgroups)
    }));
    // SAFETY: ends this lane without running the worker's atexit handlers or destructors.
    unsafe { libc::_exit(served.unwrap_or(3)) }
}

fn serve_lane(
    sock: &OwnedFd,
    boot: Boot,
    worker: libc::pid_t,
    filter: &[seccompiler::sock_filter],
    open: bool,
    cgroups: Vec<[RawFd; 2]>,
) -> i32 {
    match Lane::boot(sock.as_fd(), boot, worker, filter, open, cgroups) {
        Ok(mut lane) => match lane.serve(sock.as_fd()) {
            // The worker closed the socket: it is gone (or dropped this lane, killing it), and
            // so are its jobs, whatever they did to their parent-death signal.
            Ok(()) => {
                lane.kill_jobs();
                0
            }
            // Out of step with a live worker, whose executor still watches these jobs; they go
            // only if the worker went too.
            Err(_) => {
                if lane.worker_gone() {
                    lane.kill_jobs();
                }
                2
            }
        },
        Err((step, error)) => {
            let hello = LaneHello::Failed {
                version: LANE_PROTOCOL_VERSION,
                step,
                errno: error.raw_os_error().unwrap_or(libc::EIO),
            };
            let mut buf = AlignedVec::new();
            if zygote::encode(&hello, &mut buf).is_ok() {
                let _ = sys::send_with_fds(sock.as_fd(), &buf, &[]);
            }
            1
        }
    }
}

/// A pooled network namespace and the fds that tell whether a job left a trace in it.
#[derive(Debug)]
struct Netns {
    ns: OwnedFd,
    sockstat: OwnedFd,
    sockstat6: Option<OwnedFd>,
    /// Files that must read as they did when the namespace was new: `lo`'s traffic counters,
    /// the IPv4 and IPv6 protocol counters, and the IPv6 flow labels.
    traces: Vec<(OwnedFd, Vec<u8>)>,
}

impl Netns {
    /// Whether no socket, connection in TIME_WAIT, or fragment is left in the namespace, and
    /// no counter moved and no flow label lingers since it was made: a job that used the
    /// network at all leaves it unclean, and it is dropped.
    fn is_clean(&self, scratch: &mut [u8]) -> bool {
        let mut files = vec![&self.sockstat];
        files.extend(&self.sockstat6);
        let no_sockets = files.into_iter().all(|fd| match sys::pread0(fd.as_fd(), scratch) {
            Ok(n) => sockstat_is_clean(&scratch[..n]),
            Err(_) => false,
        });
        no_sockets
            && self.traces.iter().all(|(fd, new)| {
                sys::pread0(fd.as_fd(), scratch).is_ok_and(|n| n < scratch.len() && scratch[..n] == **new)
            })
    }
}

/// Parses a `/proc/net/sockstat{,6}` text: clean when every per-namespace count is zero.
/// (`orphan`, `alloc` and `mem` are global to the host and ignored.)
pub(crate) fn sockstat_is_clean(text: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(text) else { return false };
    text.lines().all(|line| {
        let mut words = line.split_whitespace();
        let _protocol = words.next();
        let mut counts_zero = true;
        while let (Some(key), Some(value)) = (words.next(), words.next()) {
            if matches!(key, "used" | "inuse" | "tw") {
                counts_zero &= value == "0";
            }
        }
        counts_zero
    })
}

/// Namespaces a job gave back: waiting to be checked, or found clean (those that were not
/// are left out).
#[derive(Debug)]
struct Returned {
    ipc: Option<Ipcns>,
    /// With whether `lo` is up.
    net: Option<(Netns, bool)>,
}

impl Returned {
    /// The namespaces that are clean. A namespace with anything left in it (a socket whose
    /// release is deferred, a connection in TIME_WAIT, a System V object or message queue
    /// nobody removed) or any trace of use is dropped instead, so no job ever sees a trace of
    /// another.
    fn clean(self, scratch: &mut [u8]) -> Returned {
        Returned {
            ipc: self.ipc.filter(|ipc| ipc.is_clean(scratch)),
            net: self.net.filter(|(netns, _)| netns.is_clean(scratch)),
        }
    }
}

/// The check of returned namespaces, which reads a few /proc files and takes tens of
/// microseconds per job: done by the lane's checker thread, at idle priority, so that it uses
/// a core nothing else wants. The lane never waits for it: it only ever `try_lock`s the shared
/// state (the idle thread may be preempted holding the lock), keeping what it could not hand
/// over in a backlog of its own; and when a pool a job needs is empty, it checks what is
/// waiting itself (as it must when every core is busy and the checker gets no time).
#[derive(Debug, Default)]
struct Checks {
    state: std::sync::Mutex<CheckState>,
    wake: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct CheckState {
    waiting: Vec<Returned>,
    clean: Vec<Returned>,
}

impl Checks {
    /// Starts the checker thread: after the lane's filter is installed, which the thread then
    /// shares, and after the lane's last `fork`. It shares the lane's memory with the jobs the
    /// lane clones (`CLONE_VM`) while they set up; they touch nothing of its (they allocate
    /// nothing and take no lock).
    fn start(self: &std::sync::Arc<Self>) -> io::Result<()> {
        let checks = std::sync::Arc::clone(self);
        std::thread::Builder::new().name("lane-checker".into()).spawn(move || checks.run()).map(drop)
    }

    /// The shared state, if no one holds it.
    fn try_state(&self) -> Option<std::sync::MutexGuard<'_, CheckState>> {
        match self.state.try_lock() {
            Ok(state) => Some(state),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn run(&self) {
        let idle = libc::sched_param { sched_priority: 0 };
        // SAFETY: this thread's own policy; `idle` is a live sched_param. If refused, the
        // checker merely competes at the default priority.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const idle) };
        let mut scratch = vec![0; TRACE_BYTES_MAX];
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let Some(returned) = state.waiting.pop() else {
                state = self.wake.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            };
            drop(state);
            let clean = returned.clean(&mut scratch);
            state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if clean.ipc.is_some() || clean.net.is_some() {
                state.clean.push(clean);
            }
        }
    }
}

/// A pooled IPC namespace and the fds that tell whether a job used it.
#[derive(Debug)]
struct Ipcns {
    ns: OwnedFd,
    /// /proc/sys/kernel/{shm,sem,msg}_next_id, as seen from inside: 0 until the namespace's
    /// first System V object of that kind (see [`child::ipcns_main`]). `None` where the kernel
    /// does not offer them per namespace (before 5.19, or without checkpoint/restore): such a
    /// namespace serves one job only.
    next_ids: Option<[OwnedFd; 3]>,
    /// The root of its mqueue filesystem.
    mqueue: OwnedFd,
}

impl Ipcns {
    /// Whether no job ever made a System V object here, and no POSIX message queue is left.
    /// One that made and removed objects is not clean either: the kernel's id cursor moved, so
    /// the next job's first id would tell.
    fn is_clean(&self, scratch: &mut [u8]) -> bool {
        // A sysctl read allocates (and clears) a kernel buffer as large as the read asked for.
        let scratch = &mut scratch[..32];
        let untouched =
            |fd: &OwnedFd| sys::pread0(fd.as_fd(), scratch).is_ok_and(|n| scratch[..n] == *b"0\n");
        self.next_ids.as_ref().is_some_and(|ids| ids.iter().all(untouched))
            && sys::dir_is_empty(self.mqueue.as_fd()).unwrap_or(false)
    }
}

/// The namespaces a running job borrowed from the pools.
#[derive(Debug)]
struct Borrowed {
    ipc: Ipcns,
    /// With whether `lo` is up.
    net: Option<(Netns, bool)>,
    /// The template the job's mounts are a copy of (its [`Template::id`]).
    template: Option<u64>,
}

#[derive(Debug)]
struct Busy {
    job: OwnedFd,
    borrowed: Borrowed,
}

#[derive(Debug)]
struct Template {
    ops: Vec<SetupOp>,
    /// The identity (device, inode) of each host path the template mounts, as it was before
    /// the build, and an `O_PATH` fd on each that keeps its inode number from being reused. A
    /// template whose layer was evicted (and perhaps rebuilt at the same path), or whose bind
    /// source was made anew, would show the old files: it is dropped instead.
    sources: Vec<Option<(u64, u64)>>,
    _pins: Vec<OwnedFd>,
    mount_ns: OwnedFd,
    last_used: u64,
    /// Unique in this lane.
    id: u64,
    /// Whether a running job's mounts are a copy of this template's. A copy shares the
    /// template's filesystems (its root overlay included), and with them the inodes that file
    /// locks live on, so a template serves one running job at a time: jobs running at once
    /// never see each other's locks.
    in_use: bool,
}

/// The host paths `ops` mount, in order.
fn source_paths(ops: &[SetupOp]) -> impl Iterator<Item = &std::ffi::CStr> {
    ops.iter().flat_map(|op| {
        let paths: &[maelstrom_wire::CBytes] = match op {
            SetupOp::Root { layers, .. } => layers,
            SetupOp::CloneTree { source, .. } | SetupOp::Hold { source, .. } => std::slice::from_ref(source),
            SetupOp::NewFs { .. }
            | SetupOp::PivotRoot
            | SetupOp::Attach { .. }
            | SetupOp::Mount { .. }
            | SetupOp::MakeDir { .. } => &[],
        };
        paths.iter().map(|p| p.as_c_str())
    })
}

/// Whether the host paths `ops` mount still name the files they named at the build.
fn sources_unchanged(t: &Template) -> bool {
    source_paths(&t.ops).map(sys::identity).eq(t.sources.iter().copied())
}

#[derive(Debug)]
struct Lane {
    /// The zygote-namespace uid and gid jobs run as: 0 (the worker's own ids) or [`NOBODY`].
    job_id: u32,
    devnull: OwnedFd,
    worker_pidfd: OwnedFd,
    netns_owner: OwnedFd,
    stack: ChildStack,
    templates: Vec<Template>,
    clock: u64,
    swept: std::time::Instant,
    idle_net: [Vec<Netns>; 2],
    idle_ipc: Vec<Ipcns>,
    busy: Vec<Busy>,
    /// The namespaces of ended jobs, checked by the lane's checker thread or, when a pool is
    /// empty, by the lane itself; and those not yet handed over to the checker.
    checks: std::sync::Arc<Checks>,
    backlog: Vec<Returned>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    scratch: Vec<u8>,
    /// The open lane: its jobs may be allowed more than the default policy, and load their own
    /// filters, compiled here once per set of allowances.
    open: bool,
    /// The first lane (which made the zygote's namespaces): the one a first job goes to.
    first: bool,
    filters: Vec<(seccomp::Allowances, Vec<seccompiler::sock_filter>)>,
    /// Each job cgroup's `cgroup.procs` fds (memory, pids; -1 for none), inherited from the
    /// worker: a request's `cgroup` indexes them.
    cgroups: Vec<[RawFd; 2]>,
    /// A job's setup sends the fds of its fillable filesystems to the first; the lane takes
    /// them from the second (non-blocking) and passes them on with the job's pidfd.
    fillable: (OwnedFd, OwnedFd),
    /// Spawns so far: each job's fillable fds come with its number.
    spawned: u64,
}

type BootResult<T> = Result<T, (BootStep, io::Error)>;

fn at(step: BootStep) -> impl FnOnce(io::Error) -> (BootStep, io::Error) {
    move |e| (step, e)
}

impl Lane {
    fn boot(
        sock: BorrowedFd<'_>,
        boot: Boot,
        worker: libc::pid_t,
        filter: &[seccompiler::sock_filter],
        open: bool,
        cgroups: Vec<[RawFd; 2]>,
    ) -> BootResult<Self> {
        // No parent-death signal: when the worker dies its end of the socket closes, and the
        // lane, seeing that, kills the jobs it started before it exits.
        if sys::getppid() != worker {
            return Err((BootStep::WatchWorker, io::Error::from_raw_os_error(libc::ESRCH)));
        }
        let worker_pidfd = sys::pidfd_open(worker).map_err(at(BootStep::WatchWorker))?;
        match boot {
            Boot::Create { uid, gid } => {
                // Real root may map more than itself: root stays root (to reach any layer or bind
                // source), and nobody is mapped for the jobs. Anyone else maps just themselves.
                let maps = if boot.root() {
                    let map = format!("0 0 1\n{NOBODY} {NOBODY} 1\n");
                    Maps { uid: map.clone(), gid: map, deny_setgroups: false }
                } else {
                    Maps { uid: format!("0 {uid} 1\n"), gid: format!("0 {gid} 1\n"), deny_setgroups: true }
                };
                let (user, mnt) = new_user_namespace(&maps, true).map_err(at(BootStep::UserNamespace))?;
                let mnt = mnt.expect("asked for a mount namespace");
                sys::setns(user.as_fd(), libc::CLONE_NEWUSER).map_err(at(BootStep::JoinUserNamespace))?;
                sys::setns(mnt.as_fd(), libc::CLONE_NEWNS).map_err(at(BootStep::JoinMountNamespace))?;
                sys::make_mounts_private().map_err(at(BootStep::PrivateMounts))?;
            }
            Boot::Join { first, .. } => {
                let open = |ns: &str, step| {
                    let path = std::ffi::CString::new(format!("/proc/{first}/ns/{ns}")).expect("no NUL");
                    sys::open(&path, libc::O_RDONLY).map_err(at(step))
                };
                let user = open("user", BootStep::JoinUserNamespace)?;
                let mnt = open("mnt", BootStep::JoinMountNamespace)?;
                sys::setns(user.as_fd(), libc::CLONE_NEWUSER).map_err(at(BootStep::JoinUserNamespace))?;
                sys::setns(mnt.as_fd(), libc::CLONE_NEWNS).map_err(at(BootStep::JoinMountNamespace))?;
            }
        }
        let devnull = sys::open(c"/dev/null", libc::O_RDWR).map_err(at(BootStep::OpenDevNull))?;
        // Jobs get their stdio by dup2 onto 0-2; keep those slots from being reused by our fds.
        sys::dup2(devnull.as_fd(), 0).map_err(at(BootStep::OpenDevNull))?;
        for fd in [1, 2] {
            if !sys::fd_is_open(fd) {
                sys::dup2(devnull.as_fd(), fd).map_err(at(BootStep::OpenDevNull))?;
            }
        }
        let stack = ChildStack::new().map_err(at(BootStep::ChildStack))?;
        let fillable = sys::seqpacket_pair().map_err(at(BootStep::Protocol))?;
        sys::set_nonblocking(fillable.1.as_fd()).map_err(at(BootStep::Protocol))?;
        let job_id = if boot.root() { NOBODY } else { 0 };
        let mut lane = Lane {
            job_id,
            devnull,
            worker_pidfd,
            netns_owner: sys::open(c"/dev/null", libc::O_RDONLY).map_err(at(BootStep::OpenDevNull))?,
            stack,
            templates: Vec::new(),
            clock: 0,
            swept: std::time::Instant::now(),
            idle_net: [Vec::new(), Vec::new()],
            idle_ipc: Vec::new(),
            busy: Vec::new(),
            checks: std::sync::Arc::default(),
            backlog: Vec::new(),
            argv: Vec::new(),
            envp: Vec::new(),
            scratch: vec![0; TRACE_BYTES_MAX],
            open,
            first: matches!(boot, Boot::Create { .. }),
            filters: Vec::new(),
            cgroups,
            fillable,
            spawned: 0,
        };
        // The owner of the pooled network and IPC namespaces maps only `1 → job_id`. Jobs can
        // join what it owns but hold no capability there; its root maps to no one, so sysctls
        // there belong to nobody a job could be; and its one id is the jobs' own, so they can
        // still create message queues in it.
        let owner_map = format!("1 {job_id} 1\n");
        let owner = Maps { uid: owner_map.clone(), gid: owner_map, deny_setgroups: false };
        lane.netns_owner = new_user_namespace(&owner, false).map_err(at(BootStep::NetworkOwner))?.0;
        // Installed once here, the filter is inherited by every job: no job pays to load it.
        sys::install_seccomp(filter).map_err(at(BootStep::Seccomp))?;
        lane.checks.start().map_err(at(BootStep::Checker))?;
        let hello = LaneHello::Ready { version: LANE_PROTOCOL_VERSION, pid: sys::getpid() };
        let mut buf = AlignedVec::new();
        zygote::encode(&hello, &mut buf)
            .map_err(|e| (BootStep::Protocol, io::Error::other(e.to_string())))?;
        sys::send_with_fds(sock, &buf, &[]).map_err(at(BootStep::Protocol))?;
        Ok(lane)
    }

    fn serve(&mut self, sock: BorrowedFd<'_>) -> io::Result<()> {
        // The first lane's only: a first job goes there, and a short run would pay for the
        // others' namespaces for nothing (on two cores, a single job's run spent 1 ms of its 11
        // on them). The others make theirs at their first job.
        if self.first && !self.open {
            self.prewarm();
        }
        // Zeroed by the allocator's fresh pages rather than by a memset: most of it is never
        // touched. u128 gives the 16-byte alignment rkyv needs.
        let mut storage: Vec<u128> = vec![0; SPAWN_REQUEST_BYTES_MAX / 16];
        // SAFETY: the u128s are plain initialised bytes; the slice covers exactly their storage
        // and lives no longer than `storage`.
        let request: &mut [u8] = unsafe {
            std::slice::from_raw_parts_mut(storage.as_mut_ptr().cast::<u8>(), SPAWN_REQUEST_BYTES_MAX)
        };
        let mut reply = AlignedVec::new();
        let mut fds = Vec::new();
        loop {
            self.await_request(sock)?;
            let len = sys::recv_with_fds(sock, request, &mut fds)?;
            if len == 0 {
                return Ok(());
            }
            let (answer, passed) = match zygote::decode_request(&request[..len]) {
                Err(e) => (SpawnReply::Rejected { reason: e.to_string() }, Vec::new()),
                Ok(_) if fds.len() != 2 => {
                    let reason = format!("expected stdout and stderr fds, got {} fds", fds.len());
                    (SpawnReply::Rejected { reason }, Vec::new())
                }
                Ok(req) => self.spawn(req, fds[0].as_fd(), fds[1].as_fd()),
            };
            fds.clear();
            zygote::encode(&answer, &mut reply).map_err(|e| io::Error::other(e.to_string()))?;
            let attached: Vec<BorrowedFd<'_>> = passed.iter().map(AsFd::as_fd).collect();
            sys::send_with_fds(sock, &reply, &attached)?;
        }
    }

    /// Starts the job; replies with the fds to attach: for a started job, its fillable
    /// filesystems' and then its pidfd; the pidfd alone for one whose setup failed.
    fn spawn(
        &mut self,
        request: &ArchivedSpawnRequest,
        stdout: BorrowedFd<'_>,
        stderr: BorrowedFd<'_>,
    ) -> (SpawnReply, Vec<OwnedFd>) {
        let failed = |f: Failure| (SpawnReply::Failed { step: f.step, errno: f.errno, pid: 0 }, Vec::new());
        self.reclaim();
        let loopback = match request.network {
            ArchivedNetworkMode::Disabled => Some(false),
            ArchivedNetworkMode::Loopback => Some(true),
            ArchivedNetworkMode::Local => None,
        };
        let mut borrowed = match self.borrow(loopback) {
            Ok(borrowed) => borrowed,
            Err(f) => return failed(f),
        };
        let template_fd = if request.template.is_empty() {
            -1
        } else {
            match self.template(&request.template) {
                Ok((fd, id)) => {
                    borrowed.template = Some(id);
                    fd
                }
                Err(f) => {
                    self.give_back(borrowed);
                    return failed(f);
                }
            }
        };

        self.argv.clear();
        self.argv.extend(request.arguments.iter().map(|a| a.as_ptr()));
        self.argv.push(std::ptr::null());
        self.envp.clear();
        self.envp.extend(request.environment.iter().map(|e| e.as_ptr()));
        self.envp.push(std::ptr::null());

        let allowances = zygote::allowance_bits(request.allow.iter());
        let filter = match (self.open, allowances) {
            (false, 0) => None,
            // The worker sends such jobs to the open lane only.
            (false, _) => {
                self.give_back(borrowed);
                return failed(Failure { step: Step::Policy, errno: libc::EPERM });
            }
            (true, allowances) => Some(self.filter(allowances)),
        };
        let filter = filter.map(|index| self.filters[index].1.as_slice());
        let cgroup_fds = match request.cgroup.to_native() {
            zygote::NO_CGROUP => [-1, -1],
            index => match self.cgroups.get(index as usize) {
                Some(fds) => *fds,
                None => {
                    self.give_back(borrowed);
                    return failed(Failure { step: Step::Cgroup, errno: libc::EINVAL });
                }
            },
        };
        let mut args = JobArgs {
            request,
            template_fd,
            netns_fd: borrowed.net.as_ref().map_or(-1, |(n, _)| n.ns.as_raw_fd()),
            ipcns_fd: borrowed.ipc.ns.as_raw_fd(),
            stdin_fd: self.devnull.as_raw_fd(),
            stdout_fd: stdout.as_raw_fd(),
            stderr_fd: stderr.as_raw_fd(),
            worker_pidfd: self.worker_pidfd.as_raw_fd(),
            drop_to: (self.job_id != 0).then_some(self.job_id),
            uid_map: MapLine::new(request.user.to_native(), self.job_id),
            gid_map: MapLine::new(request.group.to_native(), self.job_id),
            argv: self.argv.as_ptr(),
            envp: self.envp.as_ptr(),
            slots: Slots::new(),
            keep_capabilities: allowances & Allowance::Capabilities.bit() != 0,
            filter,
            cgroup_fds,
            fillable_sock: self.fillable.0.as_raw_fd(),
            fillable_seq: self.spawned,
            fillable: child::Fillable::new(),
            failure: None,
        };
        // No CLONE_NEWIPC or CLONE_NEWNET: the job joins pooled ones, which costs far less.
        let flags = libc::CLONE_VM
            | libc::CLONE_VFORK
            | libc::CLONE_PIDFD
            | libc::CLONE_PARENT
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWUTS
            | libc::SIGCHLD;
        let mut pidfd: RawFd = -1;
        // SAFETY: `job_main` follows the child rules (no allocation, locks or unwinding), runs on
        // this lane's child stack, and `args` (with everything it points at) lives on this frame,
        // untouched until the child execs or exits, which CLONE_VFORK waits for.
        let cloned =
            unsafe { sys::clone(child::job_main, &self.stack, flags, (&raw mut args).cast(), &mut pidfd) };
        let pid = match cloned {
            Ok(pid) => pid,
            Err(e) => {
                self.give_back(borrowed);
                return failed(Failure { step: Step::Clone, errno: e.raw_os_error().unwrap_or(libc::EIO) });
            }
        };
        // SAFETY: CLONE_PIDFD stored a new pidfd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        // Only a job with fillable filesystems sends (a datagram a killed one left waits, its
        // number telling it apart, for the next such spawn to drain).
        let mut passed = if request.job.iter().any(ArchivedSetupOp::is_fillable) {
            take_fillable(self.fillable.1.as_fd(), args.fillable_seq)
        } else {
            Vec::new()
        };
        self.spawned += 1;
        // A job the lane cannot watch could neither be killed with the worker nor have its
        // namespaces proven empty: it does not run.
        let reply = match (pidfd.try_clone(), args.failure) {
            (Ok(job), None) => {
                self.busy.push(Busy { job, borrowed });
                SpawnReply::Started { pid }
            }
            (Ok(job), Some(f)) => {
                self.busy.push(Busy { job, borrowed });
                passed.clear();
                SpawnReply::Failed { step: f.step, errno: f.errno, pid }
            }
            (Err(e), _) => {
                let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                self.free_template(borrowed.template);
                passed.clear();
                SpawnReply::Failed { step: Step::Clone, errno: e.raw_os_error().unwrap_or(libc::EMFILE), pid }
            }
        };
        passed.push(pidfd);
        (reply, passed)
    }

    /// The index in `filters` of the open lane's jobs' filter with these allowances.
    fn filter(&mut self, allowances: seccomp::Allowances) -> usize {
        match self.filters.iter().position(|(a, _)| *a == allowances) {
            Some(index) => index,
            None => {
                self.filters.push((allowances, seccomp::program(allowances, None)));
                self.filters.len() - 1
            }
        }
    }

    fn worker_gone(&self) -> bool {
        let mut worker =
            [libc::pollfd { fd: self.worker_pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        sys::poll(&mut worker, Some(std::time::Duration::ZERO)).is_ok_and(|n| n > 0)
    }

    /// Kills every job this lane started that may still run. Each is the init of its own pid
    /// namespace, so everything it started dies with it.
    fn kill_jobs(&mut self) {
        for busy in &self.busy {
            let _ = sys::pidfd_send_signal(busy.job.as_fd(), libc::SIGKILL);
        }
    }

    /// A free template mount namespace for `ops`, built if there is none, and marked in use;
    /// with its id.
    fn template(&mut self, ops: &ArchivedVec<ArchivedSetupOp>) -> Result<(RawFd, u64), Failure> {
        self.clock += 1;
        while let Some(i) = self
            .templates
            .iter()
            .position(|t| !t.in_use && ops.len() == t.ops.len() && ops.as_slice() == t.ops.as_slice())
        {
            let t = &mut self.templates[i];
            if sources_unchanged(t) {
                t.last_used = self.clock;
                t.in_use = true;
                return Ok((t.mount_ns.as_raw_fd(), t.id));
            }
            self.templates.swap_remove(i);
        }
        let owned = rkyv::deserialize::<Vec<SetupOp>, rkyv::rancor::Error>(ops)
            .map_err(|_| Failure { step: Step::Template { op: u32::MAX }, errno: libc::EINVAL })?;
        let (pins, sources): (Vec<_>, Vec<_>) = source_paths(&owned)
            .map(|path| sys::pin(path).map_or((None, None), |(fd, id)| (Some(fd), Some(id))))
            .unzip();
        let pins = pins.into_iter().flatten().collect();
        let needs_netns = ops
            .iter()
            .any(|op| matches!(op, ArchivedSetupOp::NewFs { kind, .. } if kind.native() == FsKind::Sys));
        let mut args = TemplateArgs {
            ops: ops.as_slice(),
            slots: Slots::new(),
            ns_dir: -1,
            mount_ns: -1,
            failure: None,
        };
        let flags = libc::CLONE_VM
            | libc::CLONE_VFORK
            | libc::CLONE_FILES
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | if needs_netns { libc::CLONE_NEWNET } else { 0 }
            | libc::SIGCHLD;
        // SAFETY: as in `spawn`; the builder shares our fd table and records every fd it leaves.
        let built = unsafe { self.clone_helper(child::template_main, flags, (&raw mut args).cast()) };
        let leftovers = args.slots.0.iter().copied().chain([args.ns_dir]);
        close_all(leftovers);
        let step = Step::Template { op: u32::MAX };
        built.map_err(|errno| Failure { step, errno })?;
        if let Some(f) = args.failure {
            close_all([args.mount_ns]);
            return Err(f);
        }
        if args.mount_ns < 0 {
            // The builder died before saying how (killed from outside).
            return Err(Failure { step, errno: libc::ECHILD });
        }
        // SAFETY: the builder opened `mount_ns` in our shared fd table and nothing else owns it.
        let mount_ns = unsafe { OwnedFd::from_raw_fd(args.mount_ns) };
        // Past the bound only while every template serves a running job.
        while self.templates.len() >= TEMPLATES_MAX {
            let oldest = (0..self.templates.len())
                .filter(|&i| !self.templates[i].in_use)
                .min_by_key(|&i| self.templates[i].last_used);
            let Some(oldest) = oldest else { break };
            self.templates.swap_remove(oldest);
        }
        let fd = mount_ns.as_raw_fd();
        let id = self.clock;
        self.templates.push(Template {
            ops: owned,
            sources,
            _pins: pins,
            mount_ns,
            last_used: id,
            id,
            in_use: true,
        });
        Ok((fd, id))
    }

    /// The template a job used is free again (its job ended, or never started).
    fn free_template(&mut self, id: Option<u64>) {
        if let Some(t) = id.and_then(|id| self.templates.iter_mut().find(|t| t.id == id)) {
            t.in_use = false;
        }
    }

    /// Clones a helper child that shares our memory and fds, and reaps it.
    ///
    /// # Safety
    ///
    /// As for [`sys::clone`].
    unsafe fn clone_helper(
        &self,
        entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
        flags: libc::c_int,
        arg: *mut libc::c_void,
    ) -> Result<(), i32> {
        let mut unused = -1;
        // SAFETY: forwarded from the caller.
        let pid = unsafe { sys::clone(entry, &self.stack, flags, arg, &mut unused) }
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        sys::waitpid(pid).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        Ok(())
    }

    /// Makes one IPC namespace and one network namespace (the default mode's) ahead of the
    /// first job, while the worker is still busy starting up. Failures are left for the job
    /// that needs the namespace to report.
    fn prewarm(&mut self) {
        if let Ok(ipc) = self.make_ipcns() {
            self.idle_ipc.push(ipc);
        }
        if let Ok(net) = self.make_netns(false) {
            self.idle_net[0].push(net);
        }
    }

    /// Puts the namespaces found clean into the pools; when a pool `loopback` needs is still
    /// empty, checks waiting namespaces here until it is not (or none is left).
    fn refill(&mut self, loopback: Option<bool>) {
        let needs = |lane: &Lane| {
            lane.idle_ipc.is_empty() || loopback.is_some_and(|lo| lane.idle_net[usize::from(lo)].is_empty())
        };
        let checks = std::sync::Arc::clone(&self.checks);
        if let Some(mut state) = checks.try_state() {
            for returned in std::mem::take(&mut state.clean) {
                self.pool(returned);
            }
            if needs(self) {
                self.backlog.append(&mut state.waiting);
            }
        }
        while needs(self)
            && let Some(returned) = self.backlog.pop()
        {
            let clean = returned.clean(&mut self.scratch);
            self.pool(clean);
        }
        self.hand_over();
    }

    /// Hands the backlog to the checker thread, unless it holds the shared state just now.
    fn hand_over(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        if let Some(mut state) = self.checks.try_state() {
            state.waiting.append(&mut self.backlog);
            drop(state);
            self.checks.wake.notify_one();
        }
    }

    fn pool(&mut self, Returned { ipc, net }: Returned) {
        if let Some(ipc) = ipc.filter(|_| self.idle_ipc.len() < POOL_IDLE_MAX) {
            self.idle_ipc.push(ipc);
        }
        if let Some((netns, lo)) = net {
            let idle = &mut self.idle_net[usize::from(lo)];
            if idle.len() < POOL_IDLE_MAX {
                idle.push(netns);
            }
        }
    }

    /// Namespaces for one job: from the pools if any is idle, else made now.
    fn borrow(&mut self, loopback: Option<bool>) -> Result<Borrowed, Failure> {
        self.refill(loopback);
        let net = match loopback {
            None => None,
            Some(lo) => {
                Some((self.idle_net[usize::from(lo)].pop().map_or_else(|| self.make_netns(lo), Ok)?, lo))
            }
        };
        let ipc = self.idle_ipc.pop().map_or_else(|| self.make_ipcns(), Ok)?;
        Ok(Borrowed { ipc, net, template: None })
    }

    fn give_back(&mut self, borrowed: Borrowed) {
        self.free_template(borrowed.template);
        if self.idle_ipc.len() < POOL_IDLE_MAX {
            self.idle_ipc.push(borrowed.ipc);
        }
        if let Some((netns, lo)) = borrowed.net {
            let idle = &mut self.idle_net[usize::from(lo)];
            if idle.len() < POOL_IDLE_MAX {
                idle.push(netns);
            }
        }
    }

    fn make_netns(&self, loopback: bool) -> Result<Netns, Failure> {
        let mut args = NetnsArgs {
            owner_fd: self.netns_owner.as_raw_fd(),
            loopback,
            netns: -1,
            sockstat: -1,
            sockstat6: -1,
            traces: [-1; 4],
            failure: None,
        };
        let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::SIGCHLD;
        // SAFETY: `netns_main` follows the child rules; `args` lives on this frame.
        let built = unsafe { self.clone_helper(child::netns_main, flags, (&raw mut args).cast()) };
        let (ns, sockstat, sockstat6) = (adopt(args.netns), adopt(args.sockstat), adopt(args.sockstat6));
        let traces: Vec<OwnedFd> = args.traces.into_iter().filter_map(adopt).collect();
        built.map_err(|errno| Failure { step: Step::CreateNetwork, errno })?;
        if let Some(f) = args.failure {
            return Err(f);
        }
        let (Some(ns), Some(sockstat)) = (ns, sockstat) else {
            return Err(Failure { step: Step::CreateNetwork, errno: libc::EBADF });
        };
        let mut scratch = vec![0; TRACE_BYTES_MAX];
        let traces = traces
            .into_iter()
            .map(|fd| {
                let n = sys::pread0(fd.as_fd(), &mut scratch).map_err(|e| Failure {
                    step: Step::CreateNetwork,
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                })?;
                Ok((fd, scratch[..n].to_vec()))
            })
            .collect::<Result<_, Failure>>()?;
        Ok(Netns { ns, sockstat, sockstat6, traces })
    }

    fn make_ipcns(&self) -> Result<Ipcns, Failure> {
        let mut args = IpcnsArgs {
            owner_fd: self.netns_owner.as_raw_fd(),
            ipcns: -1,
            next_ids: [-1; 3],
            mqueue: -1,
            failure: None,
        };
        let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::SIGCHLD;
        // SAFETY: `ipcns_main` follows the child rules; `args` lives on this frame.
        let built = unsafe { self.clone_helper(child::ipcns_main, flags, (&raw mut args).cast()) };
        let next_ids = args.next_ids.map(adopt);
        let (ns, mqueue) = (adopt(args.ipcns), adopt(args.mqueue));
        built.map_err(|errno| Failure { step: Step::CreateIpc, errno })?;
        if let Some(f) = args.failure {
            return Err(f);
        }
        let next_ids = match next_ids {
            [Some(shm), Some(sem), Some(msg)] => Some([shm, sem, msg]),
            _ => None,
        };
        match (ns, mqueue) {
            (Some(ns), Some(mqueue)) => Ok(Ipcns { ns, next_ids, mqueue }),
            _ => Err(Failure { step: Step::CreateIpc, errno: libc::EBADF }),
        }
    }

    /// Waits for the next request, and meanwhile hands the namespaces of jobs that end to be
    /// checked (see `Checks`).
    fn await_request(&mut self, sock: BorrowedFd<'_>) -> io::Result<()> {
        loop {
            self.sweep_templates();
            let mut polls = Vec::with_capacity(1 + self.busy.len());
            polls.push(libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            polls.extend(self.watches());
            let wake = (!self.templates.is_empty()).then_some(TEMPLATE_SWEEP_EVERY);
            sys::poll(&mut polls, wake)?;
            self.reclaim_ended(&polls[1..]);
            if polls[0].revents != 0 {
                return Ok(());
            }
        }
    }

    /// Drops, every [`TEMPLATE_SWEEP_EVERY`], the templates whose sources are gone or were
    /// replaced, so that no template keeps an evicted layer's files alive for long, even one
    /// never asked for again.
    fn sweep_templates(&mut self) {
        if self.swept.elapsed() < TEMPLATE_SWEEP_EVERY {
            return;
        }
        self.swept = std::time::Instant::now();
        self.templates.retain(sources_unchanged);
    }

    fn watches(&self) -> impl Iterator<Item = libc::pollfd> + '_ {
        self.busy.iter().map(|b| libc::pollfd { fd: b.job.as_raw_fd(), events: libc::POLLIN, revents: 0 })
    }

    /// Hands the namespaces of jobs that ended since the last look to be checked.
    fn reclaim(&mut self) {
        if self.busy.is_empty() {
            return;
        }
        let mut polls: Vec<libc::pollfd> = self.watches().collect();
        if sys::poll(&mut polls, Some(std::time::Duration::ZERO)).unwrap_or(0) > 0 {
            self.reclaim_ended(&polls);
        }
    }

    /// Frees the templates of the jobs whose entries in `polls` (one per busy job, in order)
    /// say they ended, and hands their namespaces to be checked (see [`Checks`]).
    fn reclaim_ended(&mut self, polls: &[libc::pollfd]) {
        for i in (0..self.busy.len().min(polls.len())).rev() {
            if polls[i].revents == 0 {
                continue;
            }
            let Borrowed { ipc, net, template } = self.busy.swap_remove(i).borrowed;
            self.free_template(template);
            self.backlog.push(Returned { ipc: Some(ipc), net });
        }
        self.hand_over();
    }
}

impl Drop for Lane {
    /// A lane that panics would leave its jobs with no one to kill them when the worker dies:
    /// they die now.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.kill_jobs();
        }
    }
}

// A started job's reply carries its fillable filesystems' fds and its pidfd.
const _: () = assert!(maelstrom_wire::zygote::FILLABLE_MAX < sys::MESSAGE_FDS_MAX);

/// The fds the job of spawn `seq` sent over `sock` (none if its setup failed first). The
/// datagrams before it, left by jobs killed after they sent, are closed, not taken for this
/// job's.
fn take_fillable(sock: BorrowedFd<'_>, seq: u64) -> Vec<OwnedFd> {
    let mut mine = Vec::new();
    let mut fds = Vec::new();
    let mut number = [0u8; 8];
    while let Ok(len) = sys::recv_with_fds(sock, &mut number, &mut fds) {
        if len == number.len() && u64::from_ne_bytes(number) == seq {
            // Ours is the last: a job sends once, before it execs, which the spawn waited for.
            mine = std::mem::take(&mut fds);
            break;
        }
    }
    mine
}

/// The id maps of a new user namespace.
#[derive(Debug)]
struct Maps {
    uid: String,
    gid: String,
    deny_setgroups: bool,
}

/// Makes a user namespace (and a mount namespace it owns, if asked) with `maps`, and returns
/// fds to them.
///
/// A process cannot write privileged maps of a namespace it is inside, so a forked child
/// unshares while this process, still outside, writes the maps; the child then exits and the
/// fds keep the namespaces alive. Used at boot only.
fn new_user_namespace(maps: &Maps, with_mounts: bool) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    let (ready_read, ready_write) = sys::pipe()?;
    let (go_read, go_write) = sys::pipe()?;
    let flags = libc::CLONE_NEWUSER | if with_mounts { libc::CLONE_NEWNS } else { 0 };
    // SAFETY: a lane is single-threaded until the end of its boot (this runs during it).
    match unsafe { sys::fork() }? {
        sys::Forked::Child => {
            drop((ready_read, go_write));
            let status = match sys::unshare(flags) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
            };
            let _ = sys::write_all(ready_write.as_fd(), &status.to_ne_bytes());
            let _ = sys::read(go_read.as_fd(), &mut [0]);
            // SAFETY: leaves the forked copy without running the lane's destructors.
            unsafe { libc::_exit(0) }
        }
        sys::Forked::Parent { pid } => {
            drop((ready_write, go_read));
            let mut status = [0u8; 4];
            let result = match sys::read(ready_read.as_fd(), &mut status) {
                Ok(Some(4)) => match i32::from_ne_bytes(status) {
                    0 => write_maps(pid, maps, with_mounts),
                    errno => Err(io::Error::from_raw_os_error(errno)),
                },
                Ok(_) => Err(io::Error::other("the namespace helper died")),
                Err(e) => Err(e),
            };
            drop(go_write);
            sys::waitpid(pid)?;
            result
        }
    }
}

fn write_maps(pid: libc::pid_t, maps: &Maps, with_mounts: bool) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    if maps.deny_setgroups {
        std::fs::write(format!("/proc/{pid}/setgroups"), "deny")?;
    }
    std::fs::write(format!("/proc/{pid}/uid_map"), &maps.uid)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), &maps.gid)?;
    let open = |ns: &str| {
        let path = std::ffi::CString::new(format!("/proc/{pid}/ns/{ns}")).expect("no NUL");
        sys::open(&path, libc::O_RDONLY)
    };
    Ok((open("user")?, if with_mounts { Some(open("mnt")?) } else { None }))
}

/// Takes ownership of an fd a helper opened in our shared fd table (-1 for none).
fn adopt(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: the helper opened `fd` in our fd table and nothing else owns it.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn close_all(fds: impl IntoIterator<Item = RawFd>) {
    for fd in fds.into_iter().filter(|&fd| fd >= 0) {
        // SAFETY: fds a helper left in our shared table, owned by nothing else.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_fillable_fds_are_told_by_their_spawn_number() {
        let (tx, rx) = sys::seqpacket_pair().unwrap();
        sys::set_nonblocking(rx.as_fd()).unwrap();
        let (stale, mine) =
            (sys::open(c"/", libc::O_PATH).unwrap(), sys::open(c"/tmp", libc::O_PATH).unwrap());
        // One left by the job of spawn 6 (killed after it sent), then spawn 7's own.
        sys::send_with_fds(tx.as_fd(), &6u64.to_ne_bytes(), &[stale.as_fd()]).unwrap();
        sys::send_with_fds(tx.as_fd(), &7u64.to_ne_bytes(), &[mine.as_fd()]).unwrap();
        let got = take_fillable(rx.as_fd(), 7);
        assert_eq!(got.len(), 1);
        let same = |a: &OwnedFd, b: &OwnedFd| {
            let stat = |fd: &OwnedFd| std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
            use std::os::unix::fs::MetadataExt;
            (stat(a).dev(), stat(a).ino()) == (stat(b).dev(), stat(b).ino())
        };
        assert!(same(&got[0], &mine) && !same(&got[0], &stale));
        assert!(take_fillable(rx.as_fd(), 8).is_empty(), "the socket was drained");
    }

    #[test]
    fn sockstat_of_an_empty_namespace_is_clean() {
        let text = b"sockets: used 0\nTCP: inuse 0 orphan 3 tw 0 alloc 9 mem 2\nUDP: inuse 0 mem 0\n\
                     UDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n";
        assert!(sockstat_is_clean(text));
    }

    #[test]
    fn sockets_and_time_wait_are_not_clean() {
        assert!(!sockstat_is_clean(b"sockets: used 1\nTCP: inuse 0 orphan 0 tw 0 alloc 1 mem 0\n"));
        assert!(!sockstat_is_clean(b"sockets: used 0\nTCP: inuse 0 orphan 0 tw 1 alloc 1 mem 0\n"));
        assert!(!sockstat_is_clean(b"TCP6: inuse 2\n"));
        assert!(!sockstat_is_clean(b"\xff"));
    }
}
