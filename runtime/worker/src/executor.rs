//! The executor: runs jobs through the zygote's lanes, on one thread, with every socket, pipe,
//! pidfd and timer driven by one io_uring.
//!
//! A job waits in the [`Queue`] until a slot and an idle lane are free. The loop then sends the
//! lane the job's plan with fresh stdout and stderr pipes, and receives the job's pidfd. From
//! there three operations are in flight per job: a read on each pipe (re-armed until end of
//! stream) and a poll on the pidfd; plus a timer when the job has a timeout. The job is
//! finished once it has exited and both pipes are at end of stream; it is then reaped and
//! reported. Every job ends in exactly one [`JobResult`].

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use maelstrom_container::{
    Captured, Completed, Ended, ExitStatus, Job, JobCgroups, Lane, SpawnError, SpawnRequest, Zygote,
};
use maelstrom_uring::{Completion, Done, Ring, RingError, Token};
use maelstrom_wire::cluster::Limit;
use maelstrom_wire::zygote::NO_CGROUP;
use rkyv::util::AlignedVec;

use crate::queue::Queue;

/// Identifies a job within one executor. Must be below 2^60.
pub type JobId = u64;

/// Bytes asked for per read of a job's output.
const OUTPUT_CHUNK_BYTES: usize = 64 << 10;

/// How long to keep reading a job's output after it exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// How far below its CPU time limit a job killed by SIGKILL may seem and still count as killed
/// at it: this, or a fifth of the limit if more. The kernel checks the limit against CPU time
/// charged by the tick (a whole tick to whoever runs at it), which on a busy machine runs
/// ahead of the precise time /proc shows; and /proc counts in hundredths. (Another SIGKILL
/// past four fifths of the limit, the machine's OOM killer's, would be taken for it.)
const CPU_TICK_SLACK: Duration = Duration::from_millis(50);

/// How often a running job's cgroup is asked whether it refused a fork (a fork bomb at its
/// limit would otherwise keep trying, holding all its processes, until its timeout).
const FORKS_EVERY: Duration = Duration::from_millis(250);

/// The highest signal number a timeout warning may name (Linux's SIGRTMAX).
const SIGNAL_MAX: i32 = 64;

/// Submission-queue entries of the ring.
const RING_ENTRIES: u32 = 256;

/// A job to run.
#[derive(Debug)]
pub struct JobRequest {
    pub id: JobId,
    pub spawn: SpawnRequest,
    pub priority: i8,
    pub estimated: Option<Duration>,
    pub timeout: Option<Duration>,
    /// At the timeout, a signal first, and the kill after a grace.
    pub timeout_warning: Option<maelstrom_wire::cluster::TimeoutWarning>,
}

// A lane's reply to a started job carries its fillable filesystems' fds and its pidfd.
const _: () = assert!(maelstrom_wire::zygote::FILLABLE_MAX < maelstrom_uring::MESSAGE_FDS_MAX);

/// Why a job produced no outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The job's spec is at fault: its setup failed before exec (a missing program, a missing
    /// mount point...).
    #[error("{0}")]
    Execution(String),
    /// The worker is at fault.
    #[error("{0}")]
    System(String),
}

/// How one job ended, in the one form every part of the system uses: the cluster's
/// [`Outcome`](maelstrom_wire::cluster::Outcome), whether the job ran here or on a cluster worker.
#[derive(Debug)]
pub struct JobResult {
    pub id: JobId,
    pub outcome: maelstrom_wire::cluster::Outcome,
}

/// A job's end as the sandbox and the executor see it, in the form that travels.
pub fn outcome(result: Result<Completed, JobError>) -> maelstrom_wire::cluster::Outcome {
    use maelstrom_wire::cluster::{Outcome, Output};
    match result {
        Ok(done) => {
            let stdout = Output { bytes: done.stdout.bytes, cut: done.stdout.cut };
            let stderr = Output { bytes: done.stderr.bytes, cut: done.stderr.cut };
            let duration_us = u64::try_from(done.duration.as_micros()).unwrap_or(u64::MAX);
            let (met, usage) = (done.met, done.usage);
            match done.outcome {
                Ended::Exited(code) => Outcome::Exited { code, stdout, stderr, duration_us, met, usage },
                Ended::Signaled(signal) => {
                    Outcome::Signaled { signal, stdout, stderr, duration_us, met, usage }
                }
                Ended::TimedOut => Outcome::TimedOut { stdout, stderr, duration_us, usage },
                Ended::Killed(limit) => Outcome::Killed { limit, stdout, stderr, duration_us, usage },
            }
        }
        Err(JobError::Execution(message)) => Outcome::ExecutionError(message),
        Err(JobError::System(message)) => Outcome::SystemError(message),
    }
}

#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Jobs running at once.
    pub slots: usize,
    /// Bytes kept of each of a job's stdout and stderr.
    pub output_bytes_max: usize,
    /// The timeout of a job whose spec sets none.
    pub timeout_default: Duration,
    /// The longest timeout a job's spec may set.
    pub timeout_max: Duration,
}

/// [`ExecutorConfig::timeout_default`] unless configured: a job stuck for an hour holds its
/// slot no longer.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(60 * 60);

/// [`ExecutorConfig::timeout_max`] unless configured.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(6 * 60 * 60);

impl ExecutorConfig {
    /// `slots` jobs at once, keeping `output_bytes_max` of each stream, with the default
    /// timeouts.
    pub fn new(slots: usize, output_bytes_max: usize) -> Self {
        Self { slots, output_bytes_max, timeout_default: TIMEOUT_DEFAULT, timeout_max: TIMEOUT_MAX }
    }

    /// The same, with the allotment's timeouts.
    pub fn with_timeouts(self, allotment: &Allotment) -> Self {
        Self { timeout_default: allotment.timeout, timeout_max: allotment.timeout_max, ..self }
    }

    /// The timeout a job runs under, given its spec's.
    pub fn timeout(&self, asked: Option<Duration>) -> Duration {
        asked.unwrap_or(self.timeout_default).min(self.timeout_max)
    }
}

/// What a worker gives each job whose spec does not ask otherwise, and the most one may ask
/// for: resources (its [`Share`](maelstrom_container::Share)) and time.
#[derive(Clone, Debug)]
pub struct Allotment {
    pub share: maelstrom_container::Share,
    pub timeout: Duration,
    pub timeout_max: Duration,
}

impl Allotment {
    /// As configured, for `slots` jobs at once.
    pub fn configured(slots: usize, values: &maelstrom_config::JobValues) -> Self {
        let memory = values.memory.as_ref().map(|(size, _)| size.0);
        Self {
            share: maelstrom_container::Share::of(slots).with_memory(memory),
            timeout: Duration::from_secs(values.timeout.0.0),
            timeout_max: Duration::from_secs(values.timeout_max.0.0),
        }
    }
}

/// The executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error("create the executor's wake-up eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("start the executor thread")]
    Thread(#[source] std::io::Error),
}

enum Command {
    Run(Box<JobRequest>),
    Cancel(JobId),
    Shutdown,
}

/// A handle on the executor thread. Dropping it kills what still runs, reports it, and ends
/// the thread.
#[derive(Debug)]
pub struct Executor {
    commands: Sender<Command>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

/// Called on the executor thread with every result.
pub type ResultSink = Box<dyn FnMut(JobResult) + Send>;

impl Executor {
    /// Takes over the zygote's lanes and starts the executor thread.
    pub fn start(
        zygote: Zygote,
        config: ExecutorConfig,
        on_result: ResultSink,
    ) -> Result<Self, ExecutorError> {
        let wake = Arc::new(maelstrom_container::eventfd().map_err(ExecutorError::EventFd)?);
        let (commands, receiver) = channel();
        let (ready_send, ready) = channel();
        let (lanes, cgroups) = zygote.into_lanes();
        let loop_wake = Arc::clone(&wake);
        let thread = std::thread::Builder::new()
            .name("executor".into())
            .spawn(move || match Ring::new(RING_ENTRIES) {
                Err(e) => {
                    let _ = ready_send.send(Err(e));
                }
                Ok(ring) => {
                    let _ = ready_send.send(Ok(()));
                    EventLoop::new(ring, lanes, cgroups, config, receiver, loop_wake, on_result).run();
                }
            })
            .map_err(ExecutorError::Thread)?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Self { commands, wake, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e.into())
            }
            Err(_) => {
                let _ = thread.join();
                Err(ExecutorError::Thread(std::io::Error::other("the executor thread died while starting")))
            }
        }
    }

    /// Queues a job. Its result comes through the sink.
    pub fn submit(&self, job: JobRequest) {
        self.send(Command::Run(Box::new(job)));
    }

    /// Cancels a job: it is dropped if still waiting, killed if running; either way its result
    /// still comes, as an error or with the signal that killed it.
    pub fn cancel(&self, id: JobId) {
        self.send(Command::Cancel(id));
    }

    fn send(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            // A failed wake-up can only mean the loop is gone; its results say why.
            let _ = maelstrom_container::write_all(self.wake.as_fd(), &1u64.to_ne_bytes());
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const WAKE: Token = u64::MAX;
const LANE_BIT: Token = 1 << 63;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Stdout = 0,
    Stderr = 1,
    Exit = 2,
    Deadline = 3,
    Drain = 4,
    /// The end of a timed-out job's grace after its warning signal.
    Grace = 5,
    /// Time to look whether the job's cgroup refused a fork at its process limit.
    Forks = 6,
}

fn job_token(id: JobId, kind: Kind) -> Token {
    (id << 3) | kind as u64
}

fn lane_token(lane: usize, recv: bool) -> Token {
    LANE_BIT | ((lane as u64) << 1) | u64::from(recv)
}

/// A job whose spawn request is with a lane.
struct Spawning {
    job: JobRequest,
    /// Why the request could not be sent, once its send completed with an error.
    send_failed: Option<std::io::Error>,
    stdout: OwnedFd,
    stderr: OwnedFd,
    started: Instant,
}

struct LaneState {
    lane: Lane,
    sock: Arc<OwnedFd>,
    spawning: Option<Spawning>,
    dead: Option<String>,
}

struct Stream {
    fd: Arc<OwnedFd>,
    open: bool,
    captured: Captured,
}

struct Running {
    job: Job,
    pidfd: Arc<OwnedFd>,
    streams: [Stream; 2],
    exited: bool,
    timed_out: bool,
    started: Instant,
    timers: Vec<Kind>,
    warning: Option<maelstrom_wire::cluster::TimeoutWarning>,
    /// Its job cgroup, or [`NO_CGROUP`].
    cgroup: u32,
    /// Killed because its cgroup refused a fork.
    fork_bomb: bool,
    /// Its processes' CPU time limit (SIGXCPU at it), if any.
    cpu_seconds: Option<u64>,
}

struct EventLoop {
    ring: Ring,
    lanes: Vec<LaneState>,
    /// Waiting jobs: those with the default sandbox, and those whose specs allow more (which
    /// only the open lane starts), so that neither kind waits behind the other's lanes.
    queues: [Queue<JobRequest>; 2],
    running: HashMap<JobId, Running>,
    slots_free: usize,
    /// Job cgroups (one per slot) and those not in use.
    cgroups: Option<JobCgroups>,
    cgroups_free: Vec<u32>,
    config: ExecutorConfig,
    commands: Receiver<Command>,
    wake: Arc<OwnedFd>,
    on_result: ResultSink,
    shutting_down: bool,
    /// Jobs cancelled while a lane was starting them: killed as soon as they start.
    cancelled: HashSet<JobId>,
    buffers: Vec<Vec<u8>>,
    request_bytes: AlignedVec,
    reply_bytes: AlignedVec,
    /// Takes ended jobs' filesystems to close (see [`EventLoop::close_elsewhere`]).
    closer: Option<std::sync::mpsc::Sender<Vec<OwnedFd>>>,
}

impl EventLoop {
    fn new(
        ring: Ring,
        lanes: Vec<Lane>,
        cgroups: Option<JobCgroups>,
        config: ExecutorConfig,
        commands: Receiver<Command>,
        wake: Arc<OwnedFd>,
        on_result: ResultSink,
    ) -> Self {
        let lanes = lanes
            .into_iter()
            .map(|lane| {
                let sock = Arc::new(lane.socket().try_clone_to_owned().expect("dup a lane socket"));
                LaneState { lane, sock, spawning: None, dead: None }
            })
            .collect();
        Self {
            ring,
            lanes,
            queues: [Queue::default(), Queue::default()],
            running: HashMap::new(),
            // Every job gets a cgroup where there are any.
            slots_free: cgroups.as_ref().map_or(usize::MAX, JobCgroups::len).min(config.slots).max(1),
            cgroups_free: (0..cgroups.as_ref().map_or(0, JobCgroups::len) as u32).rev().collect(),
            cgroups,
            config,
            commands,
            wake,
            on_result,
            shutting_down: false,
            cancelled: HashSet::new(),
            buffers: Vec::new(),
            request_bytes: AlignedVec::new(),
            reply_bytes: AlignedVec::new(),
            closer: None,
        }
    }

    fn run(mut self) {
        self.arm_wake();
        let mut completions = Vec::new();
        loop {
            self.take_commands();
            self.dispatch();
            if self.shutting_down
                && self.running.is_empty()
                && self.lanes.iter().all(|l| l.spawning.is_none())
            {
                break;
            }
            completions.clear();
            if let Err(e) = self.ring.submit_and_wait(1, &mut completions) {
                let why = format!("the executor's io_uring failed: {e}");
                self.fail_everything(&why);
                self.refuse_until_shutdown(&why);
                break;
            }
            for completion in completions.drain(..) {
                self.handle(completion);
            }
        }
    }

    /// After a fatal failure: every job still submitted gets its result, an error, so none is
    /// ever lost.
    fn refuse_until_shutdown(&mut self, why: &str) {
        while let Ok(command) = self.commands.recv() {
            match command {
                Command::Run(job) => self.report(job.id, Err(JobError::System(why.to_owned()))),
                Command::Cancel(_) => {}
                Command::Shutdown => return,
            }
        }
    }

    fn arm_wake(&mut self) {
        self.ring.read(WAKE, &self.wake, Vec::with_capacity(8));
    }

    fn take_commands(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Run(job)) => {
                    if self.shutting_down {
                        self.report(job.id, Err(JobError::System("the worker is shutting down".into())));
                    } else {
                        let kind = usize::from(!job.spawn.allow.is_empty());
                        self.queues[kind].push(job.priority, job.estimated, *job);
                    }
                }
                Ok(Command::Cancel(id)) => self.cancel(id),
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => self.shut_down(),
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    fn cancel(&mut self, id: JobId) {
        let removed: Vec<JobRequest> =
            self.queues.iter_mut().flat_map(|q| q.remove_where(|job| job.id == id)).collect();
        for job in removed {
            self.report(job.id, Err(JobError::System("cancelled".into())));
        }
        if let Some(running) = self.running.get(&id) {
            let _ = running.job.kill();
        }
        if self.lanes.iter().any(|l| l.spawning.as_ref().is_some_and(|s| s.job.id == id)) {
            self.cancelled.insert(id);
        }
    }

    fn shut_down(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        for job in self.take_all_waiting() {
            self.report(job.id, Err(JobError::System("the worker is shutting down".into())));
        }
        for running in self.running.values() {
            let _ = running.job.kill();
        }
    }

    fn fail_everything(&mut self, why: &str) {
        for job in self.take_all_waiting() {
            self.report(job.id, Err(JobError::System(why.to_owned())));
        }
        let spawning: Vec<JobId> =
            self.lanes.iter_mut().filter_map(|l| l.spawning.take()).map(|s| s.job.id).collect();
        let running: Vec<JobId> = self.running.keys().copied().collect();
        for id in spawning.into_iter().chain(running) {
            self.running.remove(&id);
            self.report(id, Err(JobError::System(why.to_owned())));
        }
    }

    /// Starts waiting jobs while slots and lanes allow.
    fn dispatch(&mut self) {
        while self.slots_free > 0 {
            // Of the kinds with a job waiting and a lane free to start it, the one whose next
            // job ranks higher; the default kind on a tie.
            let mut best: Option<(usize, usize)> = None;
            for kind in 0..2 {
                if self.queues[kind].is_empty() {
                    continue;
                }
                let open = kind == 1;
                let serving = |l: &LaneState| l.lane.is_open() == open;
                if self.lanes.iter().filter(|l| serving(l)).all(|l| l.dead.is_some()) {
                    // No lane of this kind is left: its jobs cannot start, and say why.
                    let why = self.lanes.iter().filter(|l| serving(l)).find_map(|l| l.dead.clone());
                    let why = why.unwrap_or_else(|| "no zygote lane can start this job".to_owned());
                    for job in self.queues[kind].remove_where(|_| true) {
                        self.report(job.id, Err(JobError::System(why.clone())));
                    }
                    continue;
                }
                let free =
                    self.lanes.iter().position(|l| serving(l) && l.dead.is_none() && l.spawning.is_none());
                let Some(lane) = free else { continue };
                let rank = |kind: usize| {
                    self.queues[kind].peek().map(|j| (j.priority, j.estimated.unwrap_or_default()))
                };
                if best.is_none_or(|(other, _)| rank(kind) > rank(other)) {
                    best = Some((kind, lane));
                }
            }
            let Some((kind, lane)) = best else { return };
            let job = self.queues[kind].pop().expect("peeked above");
            self.slots_free -= 1;
            if let Err(error) = self.send_to_lane(lane, job) {
                self.slots_free += 1;
                let (id, error) = error;
                self.report(id, Err(error));
            }
        }
    }

    fn take_all_waiting(&mut self) -> Vec<JobRequest> {
        self.queues.iter_mut().flat_map(|q| q.remove_where(|_| true)).collect()
    }

    fn send_to_lane(&mut self, index: usize, mut job: JobRequest) -> Result<(), (JobId, JobError)> {
        let system = |what: &str, e: std::io::Error| JobError::System(format!("{what}: {e}"));
        if let Err(error) = self.take_cgroup(&mut job.spawn) {
            return Err((
                job.id,
                system(
                    "set the limits of the job's cgroup (a lower memory limit than the memory earlier jobs left charged to it?)",
                    error,
                ),
            ));
        }
        if let Err(e) = maelstrom_container::encode_request(&job.spawn, &mut self.request_bytes) {
            self.give_back_cgroup(job.spawn.cgroup);
            return Err((job.id, JobError::Execution(e.to_string())));
        }
        let (len, max) = (self.request_bytes.len(), self.lanes[index].lane.request_bytes_max());
        if len > max {
            let why = format!(
                "the job's spec takes {len} bytes, more than the {max} a lane's socket takes \
                 (shorten its arguments or environment, or raise net.core.wmem_max)"
            );
            self.give_back_cgroup(job.spawn.cgroup);
            return Err((job.id, JobError::Execution(why)));
        }
        let pipes = maelstrom_container::pipe().and_then(|out| Ok((out, maelstrom_container::pipe()?)));
        let ((out_read, out_write), (err_read, err_write)) = match pipes {
            Ok(pipes) => pipes,
            Err(e) => {
                self.give_back_cgroup(job.spawn.cgroup);
                return Err((job.id, system("create a pipe", e)));
            }
        };
        let lane = &mut self.lanes[index];
        let fds = [Arc::new(out_write), Arc::new(err_write)];
        self.ring.send_with_fds(lane_token(index, false), &lane.sock, self.request_bytes.to_vec(), &fds);
        self.ring.recv_with_fds(
            lane_token(index, true),
            &lane.sock,
            Vec::with_capacity(maelstrom_container::REPLY_BYTES_MAX),
        );
        lane.spawning = Some(Spawning {
            job,
            send_failed: None,
            stdout: out_read,
            stderr: err_read,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Puts the job in a free job cgroup, if there are any, under its limits. Its process
    /// limit moves from its rlimit to the cgroup, which can tell when a fork was refused; the
    /// rlimit stays one above, as a backstop.
    fn take_cgroup(&mut self, spawn: &mut SpawnRequest) -> std::io::Result<()> {
        spawn.cgroup = NO_CGROUP;
        let Some(cgroups) = self.cgroups.as_mut() else { return Ok(()) };
        // There is one per slot, so one is free whenever a slot is.
        let Some(index) = self.cgroups_free.pop() else {
            return Err(std::io::Error::other("no job cgroup is free (a bug: one per slot)"));
        };
        let mut processes = 0;
        if cgroups.limits_processes() {
            for limit in spawn.rlimits.iter_mut().filter(|l| l.resource == libc::RLIMIT_NPROC) {
                processes = limit.soft;
                limit.soft = limit.soft.saturating_add(1);
                limit.hard = limit.hard.max(limit.soft);
            }
        }
        if let Err(error) = cgroups.prepare(index as usize, spawn.memory_bytes, processes) {
            self.cgroups_free.push(index);
            return Err(error);
        }
        spawn.cgroup = index;
        Ok(())
    }

    /// Returns a job cgroup to the free list once its job is gone (or never started), with what
    /// it saw.
    fn give_back_cgroup(&mut self, index: u32) -> maelstrom_container::Settled {
        match self.cgroups.as_mut() {
            Some(cgroups) if index != NO_CGROUP => {
                self.cgroups_free.push(index);
                cgroups.settle(index as usize)
            }
            _ => maelstrom_container::Settled::default(),
        }
    }

    fn handle(&mut self, completion: Completion) {
        let token = completion.token;
        if token == WAKE {
            self.arm_wake();
        } else if token & LANE_BIT != 0 {
            let lane = ((token & !LANE_BIT) >> 1) as usize;
            if token & 1 == 1 {
                self.lane_replied(lane, completion);
            } else if completion.result < 0
                && let Some(spawning) = self.lanes.get_mut(lane).and_then(|l| l.spawning.as_mut())
            {
                // The lane never got the request: stop waiting for its reply.
                spawning.send_failed = Some(std::io::Error::from_raw_os_error(-completion.result));
                self.ring.cancel(lane_token(lane, true));
            }
        } else {
            let id = token >> 3;
            let kind = match token & 7 {
                0 => Kind::Stdout,
                1 => Kind::Stderr,
                2 => Kind::Exit,
                3 => Kind::Deadline,
                4 => Kind::Drain,
                5 => Kind::Grace,
                6 => Kind::Forks,
                _ => return,
            };
            self.job_event(id, kind, completion);
        }
    }

    fn lane_replied(&mut self, index: usize, completion: Completion) {
        let Some(lane_state) = self.lanes.get_mut(index) else { return };
        let Some(spawning) = lane_state.spawning.take() else { return };
        let Spawning { job, send_failed, stdout, stderr, started } = spawning;
        let gone = |errno: i32| matches!(errno, libc::EPIPE | libc::ECONNRESET);
        // Whether the lane surely started no process for this job: the request never reached
        // it, or the job's own setup failed (that child is reaped with its `Job`).
        let never_sent = send_failed.is_some();
        let outcome = match (completion.done, send_failed) {
            (Done::Received { buf, mut fds, truncated }, None) if completion.result > 0 && !truncated => {
                self.reply_bytes.clear();
                self.reply_bytes.extend_from_slice(&buf);
                lane_state.lane.finish_spawn(&job.spawn, &self.reply_bytes, &mut fds)
            }
            // The lane is alive but did not take the request.
            (_, Some(error)) if !error.raw_os_error().is_some_and(gone) => {
                Err(SpawnError::Io { lane: index, what: "send it a spawn request", source: error })
            }
            // The lane closed its socket: it died, and says how.
            (_, Some(_)) => Err(self.lane_died(index)),
            _ if completion.result == 0 || gone(-completion.result) => Err(self.lane_died(index)),
            // Anything else leaves the lane's protocol out of step: it is not used again.
            (Done::Received { truncated: true, .. }, None) => {
                Err(self.lane_broken(index, "its reply was truncated"))
            }
            _ => {
                let error = std::io::Error::from_raw_os_error(-completion.result);
                Err(self.lane_broken(index, &format!("receive its reply: {error}")))
            }
        };
        match outcome {
            Ok(started_job) => self.watch(job, started_job, stdout, stderr, started),
            Err(error) => {
                // A job whose setup failed may have moved into its cgroup: `finish_spawn` has
                // reaped it, so the cgroup is empty again. But a lane that died or fell out of
                // step may have started the job and lost its pidfd: that cgroup may hold a
                // process nobody watches, so it is never used again, and its slot goes with it.
                let reusable = never_sent
                    || matches!(
                        error,
                        SpawnError::Setup { .. }
                            | SpawnError::TooLarge { .. }
                            | SpawnError::Encode(_)
                            | SpawnError::Pipes(_)
                    );
                if reusable || job.spawn.cgroup == NO_CGROUP {
                    self.give_back_cgroup(job.spawn.cgroup);
                    self.slots_free += 1;
                }
                let error = match error {
                    SpawnError::Setup { .. } | SpawnError::TooLarge { .. } => {
                        JobError::Execution(error.to_string())
                    }
                    other => JobError::System(other.to_string()),
                };
                self.report(job.id, Err(error));
            }
        }
    }

    fn lane_died(&mut self, index: usize) -> SpawnError {
        let lane = &mut self.lanes[index];
        let death = lane.lane.death();
        lane.dead = Some(death.to_string());
        death
    }

    fn lane_broken(&mut self, index: usize, why: &str) -> SpawnError {
        let lane = &mut self.lanes[index];
        let message = format!("zygote lane {index} is out of step: {why}");
        lane.dead = Some(message.clone());
        SpawnError::Rejected { lane: index, reason: message }
    }

    fn watch(&mut self, request: JobRequest, job: Job, stdout: OwnedFd, stderr: OwnedFd, started: Instant) {
        if self.cancelled.remove(&request.id) || self.shutting_down {
            let _ = job.kill();
        }
        let cgroup = request.spawn.cgroup;
        let pidfd = match job.pidfd().try_clone_to_owned() {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                let mut job = job;
                let _ = job.kill();
                let _ = job.wait();
                drop(job);
                self.give_back_cgroup(cgroup);
                self.slots_free += 1;
                self.report(request.id, Err(JobError::System(format!("duplicate the job's pidfd: {e}"))));
                return;
            }
        };
        let id = request.id;
        let streams =
            [stdout, stderr].map(|fd| Stream { fd: Arc::new(fd), open: true, captured: Captured::default() });
        for (stream, kind) in streams.iter().zip([Kind::Stdout, Kind::Stderr]) {
            let buf = self.buffers.pop().unwrap_or_else(|| Vec::with_capacity(OUTPUT_CHUNK_BYTES));
            self.ring.read(job_token(id, kind), &stream.fd, buf);
        }
        self.ring.poll_readable(job_token(id, Kind::Exit), &pidfd);
        let timeout = self.config.timeout(request.timeout);
        self.ring.timeout(job_token(id, Kind::Deadline), timeout.saturating_sub(started.elapsed()));
        let mut timers = vec![Kind::Deadline];
        if cgroup != NO_CGROUP && self.cgroups.as_ref().is_some_and(JobCgroups::limits_processes) {
            self.ring.timeout(job_token(id, Kind::Forks), FORKS_EVERY);
            timers.push(Kind::Forks);
        }
        let cpu_seconds =
            request.spawn.rlimits.iter().find(|l| l.resource == libc::RLIMIT_CPU).map(|l| l.soft);
        let warning = request.timeout_warning;
        self.running.insert(
            id,
            Running {
                job,
                pidfd,
                streams,
                exited: false,
                timed_out: false,
                started,
                timers,
                warning,
                cgroup,
                fork_bomb: false,
                cpu_seconds,
            },
        );
    }

    fn job_event(&mut self, id: JobId, kind: Kind, completion: Completion) {
        let output_bytes_max = self.config.output_bytes_max;
        let Some(running) = self.running.get_mut(&id) else {
            // A late completion of a job already reported (a cancelled timer or read).
            if let Done::Read { buf } = completion.done {
                self.buffers.push(buf);
            }
            return;
        };
        match (kind, completion.done) {
            (Kind::Stdout | Kind::Stderr, Done::Read { buf }) => {
                let stream = &mut running.streams[kind as usize];
                if completion.result > 0 {
                    stream.captured.keep(&buf, output_bytes_max);
                    self.ring.read(job_token(id, kind), &stream.fd, buf);
                } else {
                    stream.open = false;
                    self.buffers.push(buf);
                }
            }
            (Kind::Exit, _) => {
                running.exited = true;
                if running.streams.iter().any(|s| s.open) {
                    self.ring.timeout(job_token(id, Kind::Drain), DRAIN_AFTER_EXIT);
                    running.timers.push(Kind::Drain);
                }
            }
            (Kind::Deadline, _) if completion.result == -libc::ETIME => {
                running.timed_out = true;
                match running.warning {
                    Some(warning)
                        if (1..=SIGNAL_MAX).contains(&warning.signal)
                            && running.job.signal(warning.signal).is_ok() =>
                    {
                        let grace = warning.grace_ms.min(maelstrom_wire::cluster::TIMEOUT_GRACE_MS_MAX);
                        self.ring.timeout(job_token(id, Kind::Grace), Duration::from_millis(grace));
                        running.timers.push(Kind::Grace);
                    }
                    _ => {
                        let _ = running.job.kill();
                    }
                }
            }
            (Kind::Grace, _) if completion.result == -libc::ETIME => {
                let _ = running.job.kill();
            }
            // A fork refused at the limit: a job that forks without bound would keep trying
            // until its timeout, holding every process it may have.
            (Kind::Forks, _) if completion.result == -libc::ETIME && !running.exited => {
                let refused = self.cgroups.as_ref().is_some_and(|c| c.refused_forks(running.cgroup as usize));
                if refused {
                    running.fork_bomb = true;
                    let _ = running.job.kill();
                } else {
                    self.ring.timeout(job_token(id, Kind::Forks), FORKS_EVERY);
                }
            }
            (Kind::Drain, _) if completion.result == -libc::ETIME => {
                for (stream, kind) in running.streams.iter_mut().zip([Kind::Stdout, Kind::Stderr]) {
                    if stream.open {
                        stream.open = false;
                        self.ring.cancel(job_token(id, kind));
                    }
                }
            }
            _ => {}
        }
        self.finish_if_done(id);
    }

    fn finish_if_done(&mut self, id: JobId) {
        let done = self.running.get(&id).is_some_and(|r| r.exited && r.streams.iter().all(|s| !s.open));
        if !done {
            return;
        }
        let Some(mut running) = self.running.remove(&id) else { return };
        for kind in std::mem::take(&mut running.timers) {
            self.ring.cancel(job_token(id, kind));
        }
        self.slots_free += 1;
        // Read before the reap, while the zombie still tells.
        let cpu_used = running.cpu_seconds.and_then(|_| running.job.cpu_time());
        let reaped = running.job.wait();
        // Reaped, the job's pid namespace is empty, and so is its cgroup.
        let settled = self.give_back_cgroup(running.cgroup);
        let result = match reaped {
            Err(e) => Err(JobError::System(format!("reap the job: {e}"))),
            Ok(status) => {
                let cpu = running.cpu_seconds.map(|seconds| Limit::CpuTime { seconds });
                let forks = settled.process_limit.map(|count| Limit::Processes { count });
                let limit = match status {
                    _ if running.fork_bomb => forks,
                    // A job that passed passed, whatever its processes met on the way.
                    ExitStatus::Exited(0) => None,
                    // The init of a pid namespace ignores SIGXCPU: the job dies of the SIGKILL at
                    // the hard limit, which is its soft one.
                    ExitStatus::Signaled(libc::SIGXCPU) => cpu,
                    ExitStatus::Signaled(libc::SIGKILL)
                        if settled.memory_limit.is_none()
                            && cpu_used.zip(running.cpu_seconds).is_some_and(|(used, limit)| {
                                let limit = Duration::from_secs(limit);
                                used + CPU_TICK_SLACK.max(limit / 5) >= limit
                            }) =>
                    {
                        cpu
                    }
                    _ => settled.memory_limit.map(|bytes| Limit::Memory { bytes }).or(forks),
                };
                let outcome = match (status, limit) {
                    _ if running.timed_out => Ended::TimedOut,
                    (_, Some(limit)) => Ended::Killed(limit),
                    (ExitStatus::Exited(code), None) => Ended::Exited(code),
                    (ExitStatus::Signaled(signal), None) => Ended::Signaled(signal),
                };
                let [stdout, stderr] = running.streams.map(|s| s.captured);
                let met = running.job.met(&outcome, [&stdout, &stderr]);
                self.close_elsewhere(running.job.detach_filesystems());
                let duration = running.started.elapsed();
                let usage = running.job.usage().unwrap_or_default();
                Ok(Completed { outcome, stdout, stderr, duration, met, usage })
            }
        };
        drop(running.pidfd);
        self.report(id, result);
    }

    /// Closes `fds` on the closer thread: the last close of a job's tmpfs frees its pages,
    /// which can take a while for a large one.
    fn close_elsewhere(&mut self, fds: Vec<OwnedFd>) {
        if fds.is_empty() {
            return;
        }
        if self.closer.is_none() {
            let (send, receive) = std::sync::mpsc::channel::<Vec<OwnedFd>>();
            let started = std::thread::Builder::new()
                .name("closer".into())
                .spawn(move || receive.into_iter().for_each(drop));
            self.closer = started.ok().map(|_| send);
        }
        // Without the thread (it could not start, or is gone), they close here.
        if let Some(Err(std::sync::mpsc::SendError(fds))) = self.closer.as_ref().map(|c| c.send(fds)) {
            self.closer = None;
            drop(fds);
        }
    }

    fn report(&mut self, id: JobId, result: Result<Completed, JobError>) {
        (self.on_result)(JobResult { id, outcome: outcome(result) });
    }
}
