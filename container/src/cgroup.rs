//! Job cgroups: where the machine lets the worker make them, each running job is in a cgroup
//! of its own, below the worker's own cgroup, that caps its memory (tmpfs pages and kernel
//! memory included) and its processes, and tells afterwards whether it hit either.
//!
//! Today that is cgroup v1's `memory` and `pids` hierarchies, for a worker that may write to
//! its own cgroup in them (root, on a machine like ours). cgroup v2 delegation is not built yet;
//! where nothing is writable, [`JobCgroups::create`] says why, and the rlimits and sized tmpfs
//! mounts of [`crate::plan::Share`] do what they can.
//!
//! Making a cgroup costs about 120 µs and removing one 40 µs, so they are made once, one per
//! slot, and reused: a job's cgroup is empty once the job is reaped (the init of a pid namespace
//! is reaped only after every other process in it), and its counters are read as differences.
//! A job moves itself in, first thing in its setup, through an fd of the cgroup's `cgroup.procs`
//! its lane inherited; then it takes a cgroup namespace rooted there, so it sees no path above.
//!
//! The control files are a few bytes each and never block, so they are read and written with
//! plain syscalls rather than the executor's ring.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sys;

/// The prefix of the directory each worker makes in its own cgroup: `maelstrom-<pid>`.
const PREFIX: &str = "maelstrom-";

/// How long a stale job cgroup's processes get to die before it is left behind.
const STALE_WAIT: Duration = Duration::from_secs(2);

/// Values at or above this in `memory.limit_in_bytes` mean "no limit".
const UNLIMITED_FROM: u64 = 1 << 62;

/// A cgroup v1 controller jobs are confined with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Controller {
    Memory,
    Pids,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
        }
    }
}

/// This process's own cgroup directory in `controller`'s v1 hierarchy, if it is mounted.
fn own_dir(controller: Controller) -> Option<PathBuf> {
    let name = controller.name();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // `id parent major:minor root mount-point options... - type source super-options`
    let (root, mount_point) = mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mut fs = fs.split(' ');
        let is_ours = fs.next() == Some("cgroup") && fs.nth(1)?.split(',').any(|o| o == name);
        let mut fields = mount.split(' ');
        is_ours.then(|| Some((fields.nth(3)?.to_owned(), fields.next()?.to_owned())))?
    })?;
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == name).then_some(path)
    })?;
    let below = own.strip_prefix(root.trim_end_matches('/')).unwrap_or(own);
    Some(Path::new(&mount_point).join(below.trim_start_matches('/')))
}

/// The lowest memory limit on this process's cgroup and its ancestors, v1 or v2, if any.
pub(crate) fn own_memory_limit() -> Option<u64> {
    let number = |path: PathBuf| {
        let text = fs::read_to_string(path).ok()?;
        text.trim().parse::<u64>().ok().filter(|&n| n < UNLIMITED_FROM)
    };
    let mut lowest = None;
    let mut consider = |limit: Option<u64>| {
        if let Some(limit) = limit {
            lowest = Some(lowest.map_or(limit, |l: u64| l.min(limit)));
        }
    };
    if let Some(dir) = own_dir(Controller::Memory) {
        for ancestor in dir.ancestors().take_while(|a| a.join("memory.limit_in_bytes").exists()) {
            consider(number(ancestor.join("memory.limit_in_bytes")));
        }
    }
    if let Some(dir) = own_dir_v2() {
        for ancestor in dir.ancestors().take_while(|a| a.join("cgroup.procs").exists()) {
            consider(number(ancestor.join("memory.max")));
        }
    }
    lowest
}

/// This process's cgroup v2 directory, if the unified hierarchy is mounted.
fn own_dir_v2() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount_point = mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        (fs.split(' ').next() == Some("cgroup2")).then(|| mount.split(' ').nth(4).map(str::to_owned))?
    })?;
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
    Some(Path::new(&mount_point).join(own.trim_start_matches('/')))
}

/// Why a worker has no job cgroups.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// One job cgroup in one controller's hierarchy.
#[derive(Debug)]
struct Part {
    dir: PathBuf,
    /// `cgroup.procs`, inherited by the lanes, written by each job to move itself in.
    procs: OwnedFd,
    /// What tells whether the job hit its limit: `memory.oom_control` or `pids.events`.
    events: OwnedFd,
    /// The events counter after the previous job.
    seen: u64,
    /// The limit written.
    limit: u64,
}

#[derive(Debug)]
struct JobCgroup {
    memory: Option<Part>,
    pids: Option<Part>,
}

/// What a job's cgroup saw, read when the job is reaped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// The memory limit, if the kernel killed one of the job's processes at it.
    pub memory_limit: Option<u64>,
    /// The process limit, if the cgroup refused one of the job's forks at it.
    pub process_limit: Option<u64>,
}

/// The job cgroups of one worker: one per slot, below the worker's own cgroup.
#[derive(Debug)]
pub struct JobCgroups {
    /// `maelstrom-<pid>` in each hierarchy.
    bases: Vec<PathBuf>,
    jobs: Vec<JobCgroup>,
    memory_default: u64,
    processes_default: u64,
}

impl JobCgroups {
    /// Makes `count` job cgroups below this process's own, each limited to `memory_bytes` and
    /// `processes` by default; first removes what dead workers left behind. Errs, saying why,
    /// when neither hierarchy can be written.
    pub fn create(count: usize, memory_bytes: u64, processes: u64) -> Result<Self, Unavailable> {
        let mut bases = Vec::new();
        let mut made: [Vec<Part>; 2] = [Vec::new(), Vec::new()];
        let mut why = Vec::new();
        for (controller, parts) in [Controller::Memory, Controller::Pids].into_iter().zip(&mut made) {
            let limit = match controller {
                Controller::Memory => memory_bytes,
                Controller::Pids => processes,
            };
            match make_parts(controller, count, limit) {
                Ok((base, new)) => {
                    bases.push(base);
                    *parts = new;
                }
                Err(e) => why.push(format!("{}: {e}", controller.name())),
            }
        }
        if bases.is_empty() {
            return Err(Unavailable(format!(
                "no cgroup v1 hierarchy this worker may write to ({}); cgroup v2 delegation is not \
                 supported yet",
                why.join("; ")
            )));
        }
        let [memory, pids] = made;
        let mut memory = memory.into_iter();
        let mut pids = pids.into_iter();
        let jobs = (0..count).map(|_| JobCgroup { memory: memory.next(), pids: pids.next() }).collect();
        Ok(Self { bases, jobs, memory_default: memory_bytes, processes_default: processes })
    }

    /// A job cgroup for each of `slots` jobs, each limited to `share` (see
    /// [`Share::of`](crate::Share::of)).
    pub fn for_slots(slots: usize, share: &crate::Share) -> Result<Self, Unavailable> {
        Self::create(slots, share.memory_bytes, share.processes.unwrap_or(share.processes_max))
    }

    /// Job cgroups there are.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Whether jobs' memory is limited.
    pub fn limits_memory(&self) -> bool {
        self.jobs.first().is_some_and(|j| j.memory.is_some())
    }

    /// Whether jobs' processes are limited (beyond their rlimit).
    pub fn limits_processes(&self) -> bool {
        self.jobs.first().is_some_and(|j| j.pids.is_some())
    }

    /// The `cgroup.procs` fds of each job cgroup (memory, then pids; -1 where there is none),
    /// for the lanes to inherit.
    pub(crate) fn procs_fds(&self) -> Vec<[RawFd; 2]> {
        let fd = |part: &Option<Part>| part.as_ref().map_or(-1, |p| p.procs.as_raw_fd());
        self.jobs.iter().map(|job| [fd(&job.memory), fd(&job.pids)]).collect()
    }

    /// Whether job cgroup `index` refused a fork at its limit since the last
    /// [`JobCgroups::settle`]. (cgroup v1 does not notify pollers of `pids.events`, so the
    /// executor looks now and then.)
    pub fn refused_forks(&self, index: usize) -> bool {
        let Some(part) = self.jobs.get(index).and_then(|j| j.pids.as_ref()) else { return false };
        read_counter(&part.events, "max") > part.seen
    }

    /// Sets job cgroup `index`'s limits for its next job: `memory_bytes` and `processes`, or
    /// the defaults where 0.
    pub fn prepare(&mut self, index: usize, memory_bytes: u64, processes: u64) -> io::Result<()> {
        let Some(job) = self.jobs.get_mut(index) else { return Err(io::Error::other("no such job cgroup")) };
        let memory_bytes = if memory_bytes == 0 { self.memory_default } else { memory_bytes };
        let processes = if processes == 0 { self.processes_default } else { processes };
        if let Some(part) = job.memory.as_mut().filter(|p| p.limit != memory_bytes) {
            set_memory_limit(&part.dir, part.limit, memory_bytes)?;
            part.limit = memory_bytes;
        }
        if let Some(part) = job.pids.as_mut().filter(|p| p.limit != processes) {
            fs::write(part.dir.join("pids.max"), processes.to_string())?;
            part.limit = processes;
        }
        Ok(())
    }

    /// Reads what job cgroup `index` saw since the previous call: whether its job hit a limit.
    pub fn settle(&mut self, index: usize) -> Settled {
        let Some(job) = self.jobs.get_mut(index) else { return Settled::default() };
        let mut settled = Settled::default();
        if let Some(part) = &mut job.memory
            && part.advanced("oom_kill")
        {
            settled.memory_limit = Some(part.limit);
        }
        if let Some(part) = &mut job.pids
            && part.advanced("max")
        {
            settled.process_limit = Some(part.limit);
        }
        settled
    }
}

impl Part {
    /// Whether the events counter `key` grew since the last look.
    fn advanced(&mut self, key: &str) -> bool {
        let now = read_counter(&self.events, key);
        let grew = now > self.seen;
        self.seen = now;
        grew
    }
}

impl Drop for JobCgroups {
    fn drop(&mut self) {
        for job in self.jobs.drain(..) {
            for part in [job.memory, job.pids].into_iter().flatten() {
                let _ = fs::remove_dir(&part.dir);
            }
        }
        for base in &self.bases {
            let _ = fs::remove_dir(base);
        }
    }
}

/// Reads `key N` from a flat-keyed control file (0 if absent).
fn read_counter(file: &OwnedFd, key: &str) -> u64 {
    let mut buf = [0u8; 512];
    let len = sys::pread0(file.as_fd(), &mut buf).unwrap_or(0);
    let text = std::str::from_utf8(&buf[..len]).unwrap_or("");
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

/// Writes a v1 memory limit and, where there is swap accounting, the same limit on memory and
/// swap together (so a job cannot swap past it). The kernel wants memsw ≥ the limit at every
/// moment, hence the order.
fn set_memory_limit(dir: &Path, old: u64, new: u64) -> io::Result<()> {
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let has_memsw = memsw.exists();
    if has_memsw && new > old {
        fs::write(&memsw, new.to_string())?;
    }
    fs::write(dir.join("memory.limit_in_bytes"), new.to_string())?;
    if has_memsw && new <= old {
        fs::write(&memsw, new.to_string())?;
    }
    Ok(())
}

/// Makes `maelstrom-<pid>/job-<i>` for `count` jobs in `controller`'s hierarchy.
fn make_parts(controller: Controller, count: usize, limit: u64) -> io::Result<(PathBuf, Vec<Part>)> {
    let own = own_dir(controller).ok_or_else(|| io::Error::other("not mounted"))?;
    remove_stale(&own);
    let base = own.join(format!("{PREFIX}{}", sys::getpid()));
    fs::create_dir(&base).map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", base.display())))?;
    let made = (0..count).map(|i| make_part(controller, &base.join(format!("job-{i}")), limit)).collect();
    match made {
        Ok(parts) => Ok((base, parts)),
        Err(e) => {
            remove_tree(&base);
            Err(e)
        }
    }
}

fn make_part(controller: Controller, dir: &Path, limit: u64) -> io::Result<Part> {
    fs::create_dir(dir).map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
    let events = match controller {
        Controller::Memory => {
            set_memory_limit(dir, u64::MAX, limit)?;
            "memory.oom_control"
        }
        Controller::Pids => {
            fs::write(dir.join("pids.max"), limit.to_string())?;
            "pids.events"
        }
    };
    let open = |name: &str, flags| {
        let path = dir.join(name);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
        sys::open(&c, flags | libc::O_CLOEXEC)
    };
    let procs = open("cgroup.procs", libc::O_WRONLY)?;
    let events = open(events, libc::O_RDONLY)?;
    let mut part = Part { dir: dir.to_owned(), procs, events, seen: 0, limit };
    part.advanced(if controller == Controller::Memory { "oom_kill" } else { "max" });
    Ok(part)
}

/// Removes what workers that are gone left in `own`: their job cgroups, killing whatever still
/// runs in them. Only those of this user's workers (or any, for root): another user's are not
/// this worker's to remove, nor can it.
fn remove_stale(own: &Path) {
    let Ok(entries) = fs::read_dir(own) else { return };
    let uid = sys::geteuid();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) =
            name.to_str().and_then(|n| n.strip_prefix(PREFIX)).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let mine = uid == 0 || entry.metadata().is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == uid);
        if mine && !Path::new("/proc").join(pid.to_string()).exists() {
            remove_tree(&entry.path());
        }
    }
}

/// Kills every process in the cgroups below `base` and removes them, then `base`. Returns the
/// removals tried (waiting, while the cgroup is busy, for its processes to go).
fn remove_tree(base: &Path) -> usize {
    let mut tried = 0;
    let jobs: Vec<PathBuf> = fs::read_dir(base)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    let deadline = std::time::Instant::now() + STALE_WAIT;
    for dir in jobs.iter().map(PathBuf::as_path).chain([base]) {
        loop {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<libc::pid_t>().ok()).filter(|&p| p > 0) {
                sys::kill(pid, libc::SIGKILL);
            }
            // Only a cgroup whose processes are still on their way out is worth waiting for.
            tried += 1;
            match fs::remove_dir(dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() <= deadline => {}
                _ => break,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    tried
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What cannot be removed for another reason than busy processes (another user's, not
    /// empty) is tried once, not waited for: a worker starts at once beside such leftovers.
    #[test]
    fn only_busy_cgroups_are_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("maelstrom-4194304");
        fs::create_dir_all(base.join("job-0")).unwrap();
        fs::write(base.join("job-0/left"), "").unwrap();
        assert_eq!(remove_tree(&base), 2, "job-0, then the base, once each");
        assert!(base.join("job-0/left").exists());
    }

    #[test]
    fn counters_are_read_by_key() {
        let dir = std::env::temp_dir().join(format!("cgroup-counter-{}", std::process::id()));
        fs::write(&dir, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        let fd = sys::open(&std::ffi::CString::new(dir.to_str().unwrap()).unwrap(), libc::O_RDONLY).unwrap();
        assert_eq!(read_counter(&fd, "oom_kill"), 3);
        assert_eq!(read_counter(&fd, "oom_kill_disable"), 0);
        assert_eq!(read_counter(&fd, "max"), 0);
        fs::remove_file(dir).unwrap();
    }
}
