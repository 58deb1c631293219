//! A running job, known by its pidfd: wait, kill, and run to completion with bounded output.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use maelstrom_wire::zygote::SpawnRequest;

use crate::sys::{self, ExitStatus};
use crate::zygote::{SpawnError, Zygote};

/// A started job. It is PID 1 of its own pid namespace, so when it exits every process it
/// started is gone too. Dropping an unreaped `Job` kills and reaps it: no job outlives its
/// handle.
#[derive(Debug)]
pub struct Job {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    /// Once reaped: how it ended, and what it used.
    status: Option<(ExitStatus, Usage)>,
    /// An fd of each of its fillable filesystems (tmpfs mounts, a writable root's changes),
    /// with the path where the job sees it.
    pub(crate) fillable: Vec<(OwnedFd, String)>,
    /// Its open-files limits (soft, hard), if its spawn set them.
    pub(crate) open_files: Option<(u64, u64)>,
}

impl Job {
    pub(crate) fn new(pid: libc::pid_t, pidfd: OwnedFd) -> Self {
        Self { pid, pidfd, status: None, fillable: Vec::new(), open_files: None }
    }

    /// The bounds of its own that a job that ended as `outcome` (after its reap: its writes are
    /// done) and printed `output` had met: none unless its cause is unnamed (it exited non-zero
    /// or by a signal); else its filesystems that are full (no block or no inode free: why its
    /// writes failed with `ENOSPC`), and its open-files limit if it said it ran out.
    pub fn met(&self, outcome: &Ended, output: [&Captured; 2]) -> Vec<Met> {
        if !outcome.cause_unnamed() {
            return Vec::new();
        }
        let mut met = self.full();
        if let Some((soft, hard)) = self.open_files
            && output.iter().any(|c| c.said_emfile)
        {
            met.push(Met::OpenFiles { soft, hard });
        }
        met
    }

    fn full(&self) -> Vec<Met> {
        self.fillable
            .iter()
            .filter_map(|(fd, path)| {
                let stats = sys::fstatfs(fd.as_fd()).ok()?;
                // A filesystem without a bound (size or inodes 0) reports none free of that.
                let no_blocks = stats.f_blocks != 0 && stats.f_bfree == 0;
                let no_inodes = stats.f_files != 0 && stats.f_ffree == 0;
                (no_blocks || no_inodes).then(|| Met::Full {
                    path: path.clone(),
                    bytes: stats.f_blocks.saturating_mul(stats.f_bsize as u64),
                })
            })
            .collect()
    }

    /// The CPU time the job's first process (all its threads) has used: while it runs, or once
    /// it exited but before [`Job::wait`] reaps it.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // `pid (comm) state ppid ...`: utime and stime are fields 14 and 15.
        let after = &stat[stat.rfind(')')? + 1..];
        let ticks: u64 =
            after.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
        // The kernel reports in USER_HZ, 100 on every Linux architecture.
        Some(Duration::from_millis(ticks * 10))
    }

    /// Lets go of its filesystems (see [`Job::full`]), for the caller to close where it likes:
    /// the last close of a tmpfs frees all its pages, which an event loop should not wait for.
    pub fn detach_filesystems(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fillable).into_iter().map(|(fd, _)| fd).collect()
    }

    /// The job's pid in the worker's pid namespace.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Readable once the job has exited; for an event loop.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Sends `signal` to the job through its pidfd (unless it has been reaped). A job is pid 1
    /// of its namespace: it gets only the signals it handles (and SIGKILL).
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        match sys::pidfd_send_signal(self.pidfd.as_fd(), signal) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }

    /// Sends SIGKILL through the pidfd; the kernel then kills everything in the job's pid
    /// namespace. Killing a job that already exited is not an error.
    pub fn kill(&self) -> io::Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// Waits for the job to exit and reaps it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some((status, _)) = self.status {
            return Ok(status);
        }
        let reaped = sys::waitid_pidfd(self.pidfd.as_fd(), true)?
            .ok_or_else(|| io::Error::other("waitid returned without a status"))?;
        self.status = Some(reaped);
        Ok(reaped.0)
    }

    /// Reaps the job if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = sys::waitid_pidfd(self.pidfd.as_fd(), false)?;
        }
        Ok(self.status.map(|(status, _)| status))
    }

    /// What the job used, all its processes together, once reaped.
    pub fn usage(&self) -> Option<Usage> {
        self.status.map(|(_, usage)| usage)
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.kill();
            let _ = self.wait();
        }
    }
}

/// Default cap on each of stdout and stderr, in bytes.
pub const OUTPUT_BYTES_MAX_DEFAULT: usize = 1 << 20;

/// How long to keep reading output after the job exited, in case a writer lingers.
const DRAIN_AFTER_EXIT_MS: u64 = 1_000;

/// Bounds on one run.
#[derive(Clone, Debug)]
pub struct Limits {
    pub timeout: Option<Duration>,
    /// Bytes kept of each of stdout and stderr; the rest is counted, not kept.
    pub output_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { timeout: None, output_bytes_max: OUTPUT_BYTES_MAX_DEFAULT }
    }
}

/// What one output stream left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// Bytes written past the cap and discarded.
    pub cut: u64,
    /// Whether it said `Too many open files` anywhere, kept or cut.
    pub said_emfile: bool,
    /// Its last bytes, shorter than what is looked for: the text may span two chunks.
    tail: Vec<u8>,
}

/// `Too many open files` without its first letter, which runtimes write either way. (`ENFILE`,
/// the whole system's table full, says `Too many open files in system`, and is taken for it.)
static EMFILE_NEEDLE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"oo many open files"));

impl Captured {
    /// Keeps what fits of `chunk` under `max` bytes in all, and counts the rest as cut.
    pub fn keep(&mut self, chunk: &[u8], max: usize) {
        let room = max.saturating_sub(self.bytes.len()).min(chunk.len());
        self.bytes.extend_from_slice(&chunk[..room]);
        self.cut += (chunk.len() - room) as u64;
        if !self.said_emfile {
            self.look_for_emfile(chunk);
        }
    }

    fn look_for_emfile(&mut self, chunk: &[u8]) {
        let keep = EMFILE_NEEDLE.needle().len() - 1;
        // The last bytes before this chunk, and its first: where the text may straddle them.
        let mut seam = std::mem::take(&mut self.tail);
        seam.extend_from_slice(&chunk[..chunk.len().min(keep)]);
        let found = |bytes: &[u8]| EMFILE_NEEDLE.find(bytes).is_some();
        self.said_emfile = found(&seam) || found(chunk);
        if chunk.len() >= keep {
            seam.clear();
            seam.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            // The whole chunk is in the seam already.
            seam.drain(..seam.len().saturating_sub(keep));
        }
        self.tail = seam;
    }
}

/// How a job ended: the wire's own type, so it is the same everywhere a result travels.
pub use maelstrom_wire::cluster::{Ended, Met, Usage};

/// A finished job.
#[derive(Clone, Debug)]
pub struct Completed {
    pub outcome: Ended,
    pub stdout: Captured,
    pub stderr: Captured,
    /// From the spawn request to the reap.
    pub duration: Duration,
    /// The bounds of its own it had met, if it failed (exited non-zero or by a signal).
    pub met: Vec<Met>,
    pub usage: Usage,
}

impl Zygote {
    /// Runs a job to completion, capturing its output within `limits`.
    pub fn run(&self, request: &SpawnRequest, limits: &Limits) -> Result<Completed, SpawnError> {
        let start = Instant::now();
        let (out_read, out_write) = sys::pipe().map_err(SpawnError::Pipes)?;
        let (err_read, err_write) = sys::pipe().map_err(SpawnError::Pipes)?;
        let job = self.spawn(request, out_write.as_fd(), err_write.as_fd())?;
        drop((out_write, err_write));
        supervise(job, out_read, err_read, limits, start).map_err(SpawnError::Pipes)
    }
}

/// Collects output until the job exits and its pipes close, enforcing the timeout.
pub fn supervise(
    mut job: Job,
    stdout: OwnedFd,
    stderr: OwnedFd,
    limits: &Limits,
    start: Instant,
) -> io::Result<Completed> {
    sys::set_nonblocking(stdout.as_fd())?;
    sys::set_nonblocking(stderr.as_fd())?;
    let deadline = limits.timeout.map(|t| start + t);
    let mut streams = [(Some(stdout), Captured::default()), (Some(stderr), Captured::default())];
    let mut exited_at: Option<Instant> = None;
    let mut timed_out = false;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let open: Vec<usize> = (0..2).filter(|&i| streams[i].0.is_some()).collect();
        if exited_at.is_some() && open.is_empty() {
            break;
        }
        let mut polls: Vec<libc::pollfd> = open
            .iter()
            .map(|&i| libc::pollfd {
                fd: streams[i].0.as_ref().map_or(-1, AsRawFd::as_raw_fd),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if exited_at.is_none() {
            polls.push(libc::pollfd { fd: job.pidfd().as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        let now = Instant::now();
        let wait = match (exited_at, deadline) {
            (Some(at), _) => {
                Some((at + Duration::from_millis(DRAIN_AFTER_EXIT_MS)).saturating_duration_since(now))
            }
            (None, Some(deadline)) if !timed_out => Some(deadline.saturating_duration_since(now)),
            _ => None,
        };
        let ready = sys::poll(&mut polls, wait)?;
        if ready == 0 {
            if exited_at.is_some() {
                break;
            }
            job.kill()?;
            timed_out = true;
            continue;
        }
        for (slot, poll) in open.iter().zip(&polls) {
            if poll.revents == 0 {
                continue;
            }
            let (fd, captured) = &mut streams[*slot];
            let Some(open_fd) = fd else { continue };
            loop {
                match sys::read(open_fd.as_fd(), &mut chunk)? {
                    Some(0) => {
                        *fd = None;
                        break;
                    }
                    Some(n) => captured.keep(&chunk[..n], limits.output_bytes_max),
                    None => break,
                }
            }
        }
        if exited_at.is_none() && polls.last().is_some_and(|p| p.revents != 0) {
            exited_at = Some(Instant::now());
        }
    }
    let status = job.wait()?;
    let [(_, stdout), (_, stderr)] = streams;
    let outcome = match status {
        _ if timed_out => Ended::TimedOut,
        ExitStatus::Exited(code) => Ended::Exited(code),
        ExitStatus::Signaled(signal) => Ended::Signaled(signal),
    };
    let met = job.met(&outcome, [&stdout, &stderr]);
    let usage = job.usage().unwrap_or_default();
    Ok(Completed { outcome, stdout, stderr, duration: start.elapsed(), met, usage })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_output_is_cut_at_the_limit() {
        let mut c = Captured::default();
        c.keep(b"hello", 8);
        c.keep(b"world", 8);
        assert_eq!(c.bytes, b"hellowor");
        assert_eq!(c.cut, 2);
        c.keep(b"!!!", 8);
        assert_eq!(c.cut, 5);
    }

    #[test]
    fn too_many_open_files_is_seen_in_any_chunking_kept_or_cut() {
        let text = b"lots of output first... open: Too many open files (os error 24)\n";
        for size in [1, 2, 5, 17, 18, 19, 64] {
            let mut c = Captured::default();
            for chunk in text.chunks(size) {
                c.keep(chunk, 4);
            }
            assert!(c.said_emfile, "in chunks of {size}");
        }
        let mut go = Captured::default();
        go.keep(b"open x: too many open files", 1 << 20);
        assert!(go.said_emfile);
        let mut other = Captured::default();
        for chunk in b"Too many open doors; many open files".chunks(3) {
            other.keep(chunk, 1 << 20);
        }
        assert!(!other.said_emfile);
    }
}
