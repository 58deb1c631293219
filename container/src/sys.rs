//! Safe wrappers for the syscalls the worker side and the lanes make.
//!
//! This module and [`crate::child`] are the only places in the workspace that call `libc` with
//! raw fds. Everything here returns `OwnedFd` or takes `BorrowedFd`; raw fds appear only where
//! they cross into a child's argument block or arrive over `SCM_RIGHTS`.
//!
//! # Safety
//!
//! Each `unsafe` block calls one libc function whose pointer arguments point at live, correctly
//! sized memory owned by the caller for the duration of the call, and whose fd arguments are
//! borrowed from an owner that outlives the call.

#![expect(unsafe_code, reason = "this module is one of the two that own raw syscalls")]

use std::ffi::CStr;
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use maelstrom_wire::cluster::Usage;

pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn cvt_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// Takes ownership of an fd a syscall just returned.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    Ok(adopt(cvt(fd)?))
}

/// Wraps a valid fd that a successful syscall just created for this call.
fn adopt(fd: RawFd) -> OwnedFd {
    debug_assert!(fd >= 0);
    // SAFETY: callers pass only fds the kernel just returned to them, which nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A connected pair of `SOCK_SEQPACKET` unix sockets, close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds socketpair writes.
    cvt(unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    })?;
    Ok((adopt(fds[0]), adopt(fds[1])))
}

/// Sizes both socket buffers so one datagram of `bytes` fits, as far as the kernel allows;
/// returns the largest datagram the socket can then send.
pub fn set_socket_buffers(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: `value` is a live c_int and its size is passed.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    let mut granted: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `granted` and `len` are live and sized for the option.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw mut granted).cast(),
            &raw mut len,
        )
    })?;
    // The kernel refuses a unix datagram above the send buffer less 32 bytes.
    Ok(usize::try_from(granted).unwrap_or(0).saturating_sub(32))
}

/// Most fds one message carries.
pub const MESSAGE_FDS_MAX: usize = 4;

const CMSG_SPACE_FDS: usize = 64;

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_SPACE_FDS]);

/// Sends one datagram with `fds` attached.
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MESSAGE_FDS_MAX);
    let mut iov = libc::iovec { iov_base: bytes.as_ptr().cast_mut().cast(), iov_len: bytes.len() };
    let mut cmsg = CmsgBuf([0; CMSG_SPACE_FDS]);
    // SAFETY: zeroed msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = (fds.len() * size_of::<RawFd>()) as libc::c_uint;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        assert!(space <= CMSG_SPACE_FDS);
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` bytes, enough for one header and its fds.
        let header = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
        // SAFETY: non-null (the buffer holds a header) and inside `cmsg`, which we own.
        let header = unsafe { &mut *header };
        header.cmsg_level = libc::SOL_SOCKET;
        header.cmsg_type = libc::SCM_RIGHTS;
        // SAFETY: CMSG_LEN only computes a size.
        header.cmsg_len = unsafe { libc::CMSG_LEN(payload) } as usize;
        // SAFETY: CMSG_DATA points inside `cmsg`, with room for `fds.len()` RawFds (checked above).
        let data = unsafe { libc::CMSG_DATA(header) }.cast::<RawFd>();
        for (i, fd) in fds.iter().enumerate() {
            // SAFETY: `i < fds.len()`, within the room checked above.
            let slot = unsafe { data.add(i) };
            // SAFETY: `slot` lies inside `cmsg`; an unaligned write is allowed.
            unsafe { slot.write_unaligned(fd.as_raw_fd()) };
        }
    }
    loop {
        // SAFETY: `msg` and everything it points at are live for the call.
        let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
        match cvt_long(sent as libc::c_long) {
            Ok(n) if n as usize == bytes.len() => return Ok(()),
            Ok(n) => return Err(io::Error::other(format!("short datagram: {n} of {} bytes", bytes.len()))),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives one datagram into `buf` (whose capacity bounds it) and the fds attached to it.
/// Returns 0 bytes at end of stream. A datagram or fd list that did not fit is an error.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    fds.clear();
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cmsg = CmsgBuf([0; CMSG_SPACE_FDS]);
    // SAFETY: zeroed msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_SPACE_FDS;
    let n = loop {
        // SAFETY: `msg` and the buffers it points at are live and writable for the call.
        let got = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        match cvt_long(got as libc::c_long) {
            Ok(n) => break n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    // SAFETY: the kernel filled `msg_controllen` bytes of `cmsg`; the CMSG macros walk only those.
    let mut header = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !header.is_null() {
        // SAFETY: non-null headers returned by CMSG_FIRSTHDR/NXTHDR lie inside `cmsg`.
        let h = unsafe { &*header };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) only computes the header size.
            let count = (h.cmsg_len - unsafe { libc::CMSG_LEN(0) } as usize) / size_of::<RawFd>();
            // SAFETY: the payload holds `count` fds written by the kernel.
            let data = unsafe { libc::CMSG_DATA(header) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: `i < count`, inside the payload.
                let slot = unsafe { data.add(i) };
                // SAFETY: the kernel wrote an fd there; an unaligned read is allowed.
                let fd = unsafe { slot.read_unaligned() };
                // Each fd arrived new in this process with the message.
                fds.push(adopt(fd));
            }
        }
        // SAFETY: `header` is a valid header inside `msg`'s control buffer.
        header = unsafe { libc::CMSG_NXTHDR(&raw const msg, header) };
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::other(format!("datagram larger than the {} byte buffer", buf.len())));
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("too many fds attached to one datagram"));
    }
    Ok(n)
}

/// A pipe, both ends close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((adopt(fds[0]), adopt(fds[1])))
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take and return plain ints.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// `read(2)`, retried on EINTR; `Ok(None)` when it would block.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is live and writable for `buf.len()` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match cvt_long(n as libc::c_long) {
            Ok(n) => return Ok(Some(n as usize)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `bytes`, retrying on EINTR and short writes.
pub fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live slice of the length passed.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        match cvt_long(n as libc::c_long) {
            Ok(n) => bytes = &bytes[n as usize..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `pread(2)` at offset 0, for re-reading a generated /proc file through the same fd.
pub fn pread0(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is live and writable for `buf.len()` bytes.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    Ok(cvt_long(n as libc::c_long)? as usize)
}

/// Whether the directory open at `dir` has no entries but `.` and `..` (re-read from the start).
pub fn dir_is_empty(dir: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: lseek takes integers.
    if unsafe { libc::lseek(dir.as_raw_fd(), 0, libc::SEEK_SET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    #[repr(C, align(8))]
    struct Buf([u8; 1024]);
    let mut buf = Buf([0; 1024]);
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, dir.as_raw_fd(), buf.0.as_mut_ptr(), buf.0.len()) };
    let n = cvt_long(n)? as usize;
    let mut offset = 0;
    // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, then the NUL-terminated name.
    while offset + 19 < n {
        let reclen = usize::from(u16::from_ne_bytes([buf.0[offset + 16], buf.0[offset + 17]]));
        let name = &buf.0[offset + 19..(offset + reclen).min(n)];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if name != b"." && name != b".." {
            return Ok(false);
        }
        if reclen == 0 {
            break;
        }
        offset += reclen;
    }
    Ok(true)
}

/// Ends this process the way a job ended: by `signal`, with its default action. Returns only
/// if the signal does not end a process by default.
pub fn die_by_signal(signal: libc::c_int) {
    // SAFETY: SIG_DFL installs no handler; raise sends to this thread.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
    // SAFETY: as above.
    unsafe {
        libc::raise(signal);
    }
}

/// Sends `signal` to `pid`, whatever comes of it (the process may be gone).
pub fn kill(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill takes a pid and a signal number.
    unsafe { libc::kill(pid, signal) };
}

/// Processes walked at most when killing a tree.
const TREE_PROCESSES_MAX: usize = 4096;

/// Kills the process `pid` and every process descended from it (a build tool and the compilers
/// it started). `pid` must be an unreaped child of the caller, so its id cannot be reused. Each
/// process found is stopped first, so none can start another behind the walk; then all die.
pub fn kill_tree(pid: libc::pid_t) {
    let signal = |pid: libc::pid_t, signal| {
        // SAFETY: kill takes a pid and a signal number.
        unsafe { libc::kill(pid, signal) };
    };
    signal(pid, libc::SIGSTOP);
    let mut tree = vec![pid];
    loop {
        let before = tree.len();
        for (child, parent) in processes() {
            if tree.len() < TREE_PROCESSES_MAX && tree.contains(&parent) && !tree.contains(&child) {
                signal(child, libc::SIGSTOP);
                tree.push(child);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    for &member in tree.iter().rev() {
        signal(member, libc::SIGKILL);
    }
}

/// Every process's id and its parent's, from /proc.
fn processes() -> Vec<(libc::pid_t, libc::pid_t)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| {
            let pid: libc::pid_t = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`, where comm may hold spaces and parentheses.
            let after = &stat[stat.rfind(')')? + 1..];
            let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// Makes a FIFO at `path` with permission bits `mode`.
pub fn mkfifo(path: &std::path::Path, mode: u32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `path` is NUL-terminated and live for the call.
    cvt(unsafe { libc::mkfifo(path.as_ptr(), mode) }).map(drop)
}

/// An eventfd (close-on-exec), for waking an event loop from another thread.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes integers.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })
}

/// Opens `path` with `flags | O_CLOEXEC`.
pub fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated and live for the call.
    owned(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// What `fork` returned in this process.
#[derive(Debug)]
pub enum Forked {
    Parent { pid: libc::pid_t },
    Child,
}

/// `fork(2)`.
///
/// # Safety
///
/// The caller must be single-threaded, so that the child does not inherit a lock held by a
/// thread that does not exist in it.
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded.
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent { pid }),
    }
}

/// The number of threads in this process, from /proc/self/task.
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    owned(fd as libc::c_int)
}

pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a null siginfo is allowed and means "as if sent by kill(2)".
    let ret = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0)
    };
    cvt(ret as libc::c_int).map(drop)
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

/// `waitid(P_PIDFD)` for an exited child, with what it used. With `block == false`,
/// `Ok(None)` if it still runs.
pub fn waitid_pidfd(pidfd: BorrowedFd<'_>, block: bool) -> io::Result<Option<(ExitStatus, Usage)>> {
    let flags = libc::WEXITED | if block { 0 } else { libc::WNOHANG };
    loop {
        let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
        let mut usage = MaybeUninit::<libc::rusage>::zeroed();
        // The raw syscall: only it fills in a rusage (the child's, with every descendant it
        // reaped). SAFETY: `info` and `usage` are writable storage of their types.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_waitid,
                libc::P_PIDFD,
                pidfd.as_raw_fd(),
                info.as_mut_ptr(),
                flags,
                usage.as_mut_ptr(),
            )
        };
        match cvt_long(ret) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        // SAFETY: zero-initialised and possibly filled by waitid; all-zero is a valid siginfo_t.
        let info = unsafe { info.assume_init() };
        // SAFETY: si_pid is valid to read for SIGCHLD-style siginfo (and zero when WNOHANG
        // found nothing).
        let pid = unsafe { info.si_pid() };
        // SAFETY: as above, for si_status.
        let status = unsafe { info.si_status() };
        if pid == 0 {
            return Ok(None);
        }
        // SAFETY: zero-initialised, and filled in by the kernel for the reaped child.
        let usage = unsafe { usage.assume_init() };
        let micros = |t: libc::timeval| (t.tv_sec.max(0) as u64) * 1_000_000 + t.tv_usec.max(0) as u64;
        let usage = Usage {
            cpu_us: micros(usage.ru_utime) + micros(usage.ru_stime),
            // In KiB.
            peak_rss_bytes: (usage.ru_maxrss.max(0) as u64).saturating_mul(1024),
        };
        let status = match info.si_code {
            libc::CLD_EXITED => ExitStatus::Exited(status),
            _ => ExitStatus::Signaled(status),
        };
        return Ok(Some((status, usage)));
    }
}

/// `waitpid(pid, 0)` for a lane's own helper children.
pub fn waitpid(pid: libc::pid_t) -> io::Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a writable int.
        match cvt(unsafe { libc::waitpid(pid, &raw mut status, libc::__WALL) }) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(if libc::WIFEXITED(status) {
        ExitStatus::Exited(libc::WEXITSTATUS(status))
    } else {
        ExitStatus::Signaled(libc::WTERMSIG(status))
    })
}

/// fstatfs(2): the filesystem `fd` is on (an `O_PATH` fd will do).
pub fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<libc::statfs> {
    // SAFETY: an all-zero statfs is valid storage.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is borrowed for the call; `stats` is writable.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), &raw mut stats) })?;
    Ok(stats)
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn available_bytes(path: &std::path::Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: all-zero is a valid statvfs.
    let mut buf: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `buf` is writable for the call.
    cvt(unsafe { libc::statvfs(path.as_ptr(), &mut buf) })?;
    Ok(buf.f_bavail.saturating_mul(buf.f_frsize))
}

/// Which file `path` names: device and inode. `None` if it cannot be looked up.
pub fn identity(path: &CStr) -> Option<(u64, u64)> {
    statx_identity(libc::AT_FDCWD, path, 0)
}

/// Opens `path` as an `O_PATH` fd, which keeps its inode (and so its number) from being
/// reused while the fd lives; with the file's [`identity`].
pub fn pin(path: &CStr) -> Option<(OwnedFd, (u64, u64))> {
    let fd = open(path, libc::O_PATH).ok()?;
    let id = statx_identity(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH)?;
    Some((fd, id))
}

fn statx_identity(dir: RawFd, path: &CStr, flags: libc::c_int) -> Option<(u64, u64)> {
    // SAFETY: all-zero is a valid statx.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let flags = flags | libc::AT_STATX_DONT_SYNC;
    // SAFETY: `path` is NUL-terminated and `buf` is writable for the call.
    let ret = unsafe { libc::statx(dir, path.as_ptr(), flags, libc::STATX_INO, &mut buf) };
    (ret == 0).then(|| ((u64::from(buf.stx_dev_major) << 32) | u64::from(buf.stx_dev_minor), buf.stx_ino))
}

/// Polls `fds` for `events`; returns how many are ready. `None` waits forever.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let timeout_ms = match timeout {
        None => -1,
        Some(t) => {
            libc::c_int::try_from(t.as_millis().max(u128::from(!t.is_zero()))).unwrap_or(libc::c_int::MAX)
        }
    };
    loop {
        // SAFETY: `fds` is a live, writable slice of pollfd.
        match cvt(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) }) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Restores the default SIGCHLD disposition, so that exited children stay waitable.
pub fn default_sigchld() -> io::Result<()> {
    // SAFETY: SIG_DFL is a valid disposition; no handler code is installed.
    if unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

pub fn getppid() -> libc::pid_t {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() }
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: getegid has no preconditions.
    unsafe { libc::getegid() }
}

/// The zygote's secret: the sixth argument that lets the sandbox's own mount and namespace
/// calls through the lanes' seccomp filter (see [`crate::seccomp`]). Set once, before the
/// lanes are forked; read by them and by the children that share their memory.
static SECRET: AtomicU64 = AtomicU64::new(0);

/// Draws the secret. Called by the zygote before it forks its lanes.
pub fn draw_secret() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is writable for its length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(if n < 0 { io::Error::last_os_error() } else { io::Error::from_raw_os_error(libc::EIO) });
    }
    let secret = u64::from_ne_bytes(bytes);
    SECRET.store(secret, Ordering::Relaxed);
    Ok(secret)
}

/// Forgets the secret: in the worker once its lanes are forked, and in the open lane, which
/// needs no secret, so that only the strict lanes hold it.
pub fn forget_secret() {
    SECRET.store(0, Ordering::Relaxed);
}

/// Makes syscall `nr` (one of the filter's gated ones, which take at most five arguments) with
/// `args` and the secret as the sixth argument. Returns the raw result, like `libc::syscall`.
///
/// # Safety
/// As for the syscall itself with these arguments.
pub unsafe fn gated(nr: libc::c_long, args: [libc::c_long; 5]) -> libc::c_long {
    let [a, b, c, d, e] = args;
    let secret = SECRET.load(Ordering::Relaxed) as libc::c_long;
    // SAFETY: the caller vouches for the first five; the kernel ignores the sixth.
    unsafe { libc::syscall(nr, a, b, c, d, e, secret) }
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes an integer.
    cvt(unsafe { gated(libc::SYS_unshare, [flags.into(), 0, 0, 0, 0]) } as libc::c_int).map(drop)
}

pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes an fd borrowed for the call and an integer.
    cvt(unsafe { gated(libc::SYS_setns, [fd.as_raw_fd().into(), nstype.into(), 0, 0, 0]) } as libc::c_int)
        .map(drop)
}

/// Makes every mount in this mount namespace private, so nothing propagates to or from the host.
pub fn make_mounts_private() -> io::Result<()> {
    let flags = (libc::MS_REC | libc::MS_PRIVATE) as libc::c_long;
    // SAFETY: the path is a NUL-terminated literal; the other pointers may be null for this call.
    cvt(unsafe { gated(libc::SYS_mount, [0, c"/".as_ptr() as libc::c_long, 0, flags, 0]) } as libc::c_int)
        .map(drop)
}

/// This process's soft and hard limit of `resource` (`u64::MAX`: unlimited).
pub fn getrlimit(resource: libc::__rlimit_resource_t) -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a live rlimit for the kernel to fill.
    cvt(unsafe { libc::getrlimit(resource, &raw mut limit) })?;
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Replaces `target` (0, 1 or 2) with a duplicate of `fd`.
pub fn dup2(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes two integers; `target` is one of the standard fds, owned by the process.
    cvt(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(drop)
}

/// Whether fd `n` is open in this process.
pub fn fd_is_open(n: RawFd) -> bool {
    // SAFETY: F_GETFD on any integer is harmless; a closed fd fails with EBADF.
    unsafe { libc::fcntl(n, libc::F_GETFD) >= 0 }
}

/// Closes fds `first..=last` (ignoring failure: used right after fork, where there is no one to
/// tell).
pub fn close_range(first: libc::c_int, last: libc::c_int) {
    if first > last || first < 0 {
        return;
    }
    // SAFETY: close_range takes integers; it only closes fds of this process, which the caller
    // (a freshly forked child) no longer uses.
    unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, last as libc::c_uint, 0u32) };
}

/// Sets no-new-privileges and installs `filter` on the calling thread; children inherit both.
pub fn install_seccomp(filter: &[seccompiler::sock_filter]) -> io::Result<()> {
    const _: () = assert!(size_of::<seccompiler::sock_filter>() == size_of::<libc::sock_filter>());
    let len = u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    // Both types are the kernel's `struct sock_filter` (size asserted above).
    let program = libc::sock_fprog { len, filter: filter.as_ptr().cast_mut().cast::<libc::sock_filter>() };
    // SAFETY: `program` points at `filter`, alive for the call; the kernel copies it.
    let ret =
        unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &raw const program) };
    cvt(ret as libc::c_int).map(drop)
}

/// Stack memory for a `CLONE_VM` child, with a guard page below it.
#[derive(Debug)]
pub struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    pub const BYTES: usize = 256 << 10;
    const GUARD_BYTES: usize = 4096;

    pub fn new() -> io::Result<Self> {
        let len = Self::BYTES + Self::GUARD_BYTES;
        // SAFETY: an anonymous private mapping with no address hint.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the first page lies inside the mapping just made.
        if unsafe { libc::mprotect(base, Self::GUARD_BYTES, libc::PROT_NONE) } != 0 {
            let error = io::Error::last_os_error();
            // SAFETY: unmapping the mapping just made, which nothing else references.
            unsafe { libc::munmap(base, len) };
            return Err(error);
        }
        Ok(Self { base, len })
    }

    /// The initial stack pointer (stacks grow down on every architecture we build for).
    pub fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is how clone expects the stack.
        unsafe { self.base.cast::<u8>().add(self.len) }.cast()
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` and no child runs on it once its owner drops it.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Clones a child that runs `entry(arg)` on `stack`. With `CLONE_PIDFD` in `flags`, `pidfd`
/// receives the child's pidfd.
///
/// # Safety
///
/// `entry` must be safe to run on `stack` with `arg` under `flags`: with `CLONE_VM` it shares
/// this process's memory, so it must not allocate, take locks, or unwind, and `arg` must stay
/// valid until the child has exec'd or exited (`CLONE_VFORK` guarantees that on return).
pub unsafe fn clone(
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack: &ChildStack,
    flags: libc::c_int,
    arg: *mut libc::c_void,
    pidfd: &mut RawFd,
) -> io::Result<libc::pid_t> {
    // SAFETY: the caller guarantees `entry`, `stack` and `arg` suit `flags`; `pidfd` is a live
    // int the kernel writes to under CLONE_PIDFD.
    cvt(unsafe { libc::clone(entry, stack.top(), flags, arg, std::ptr::from_mut(pidfd)) })
}

/// Starts `path` with no arguments, no environment, and stdio on `/dev/null` via
/// `posix_spawn`, and waits for it: the unisolated floor the startup benches compare against.
pub fn posix_spawn_wait(path: &CStr, devnull: BorrowedFd<'_>) -> io::Result<ExitStatus> {
    let mut actions = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
    // SAFETY: `actions` is storage for one file-actions object, initialised here.
    let ret = unsafe { libc::posix_spawn_file_actions_init(actions.as_mut_ptr()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    for target in 0..3 {
        // SAFETY: `actions` was initialised above; both fds are plain integers.
        unsafe { libc::posix_spawn_file_actions_adddup2(actions.as_mut_ptr(), devnull.as_raw_fd(), target) };
    }
    let argv = [path.as_ptr().cast_mut(), std::ptr::null_mut()];
    let envp = [std::ptr::null_mut()];
    let mut pid = 0;
    // SAFETY: every pointer is live for the call; argv and envp are null-terminated arrays.
    let ret = unsafe {
        libc::posix_spawn(
            &raw mut pid,
            path.as_ptr(),
            actions.as_ptr(),
            std::ptr::null(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    // SAFETY: destroys the object initialised above, once.
    unsafe { libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    let mut status = 0;
    // SAFETY: `status` is a writable int; `pid` is our child.
    cvt(unsafe { libc::waitpid(pid, &raw mut status, 0) })?;
    Ok(if libc::WIFEXITED(status) {
        ExitStatus::Exited(libc::WEXITSTATUS(status))
    } else {
        ExitStatus::Signaled(libc::WTERMSIG(status))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn fds_travel_with_datagrams() {
        let (a, b) = seqpacket_pair().unwrap();
        let (r, w) = pipe().unwrap();
        send_with_fds(a.as_fd(), b"hello", &[r.as_fd(), w.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 2);
        drop(a);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap(), 0);
    }

    #[test]
    fn empty_directories_are_told_apart() {
        let dir = tempfile_dir();
        let fd = open(
            &std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
        .unwrap();
        assert!(dir_is_empty(fd.as_fd()).unwrap());
        std::fs::write(dir.join("q"), b"").unwrap();
        assert!(!dir_is_empty(fd.as_fd()).unwrap());
        std::fs::remove_file(dir.join("q")).unwrap();
        assert!(dir_is_empty(fd.as_fd()).unwrap());
        std::fs::remove_dir(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("maelstrom-sys-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn oversized_datagram_is_an_error() {
        let (a, b) = seqpacket_pair().unwrap();
        send_with_fds(a.as_fd(), &[7; 64], &[]).unwrap();
        let mut buf = [0u8; 16];
        let err = recv_with_fds(b.as_fd(), &mut buf, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn kill_tree_ends_the_descendants_too() {
        // A shell with two sleeping children, like cargo with its compilers.
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 100 & sleep 100 & echo started; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(shell.stdout.take().unwrap()), &mut line)
            .unwrap();
        let pid = shell.id() as libc::pid_t;
        let children: Vec<libc::pid_t> =
            processes().into_iter().filter(|(_, p)| *p == pid).map(|(c, _)| c).collect();
        assert_eq!(children.len(), 2, "{children:?}");
        kill_tree(pid);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&shell.wait().unwrap()),
            Some(libc::SIGKILL)
        );
        // The orphans are reaped by whoever adopted them; until then they are zombies.
        let alive = |child: &libc::pid_t| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while children.iter().any(alive) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!children.iter().any(alive), "a child outlived the tree: {children:?}");
    }
}
