//! The io_uring layer: one [`Ring`] per event loop, with safe operations.
//!
//! Every operation owns what the kernel may touch until its completion arrives: its buffer,
//! its message header and control data, its timespec, and a shared handle on its fd. They live
//! in a slot table keyed by the entry's `user_data`, and come back to the caller in the
//! [`Completion`]. So a caller cannot free or reuse anything the kernel still uses, and
//! dropping the ring cancels and drains whatever is in flight before freeing it.
//!
//! This crate and `container` are the only ones with `unsafe`: here, pushing entries that point
//! into the slot table.

#![expect(unsafe_code, reason = "this crate owns the ring: submission entries hold raw pointers")]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{IoUring, Probe, opcode, squeue, types};

/// What the caller uses to tell completions apart.
pub type Token = u64;

/// The ring could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error(
        "io_uring is unavailable (check the sysctl kernel.io_uring_disabled: 0 allows it; and that no \
         seccomp profile, such as a container runtime's default, blocks io_uring_setup)"
    )]
    Setup(#[source] io::Error),
    #[error("io_uring lacks {0} (the kernel is too old: 5.11 or later is needed)")]
    Missing(&'static str),
}

/// Most fds one message carries.
pub const MESSAGE_FDS_MAX: usize = 4;
const CMSG_BYTES: usize = 64;

#[repr(C, align(8))]
struct Cmsg([u8; CMSG_BYTES]);

struct SendState {
    header: libc::msghdr,
    iov: libc::iovec,
    cmsg: Cmsg,
    bytes: Vec<u8>,
    _fds: Vec<Arc<OwnedFd>>,
}

struct RecvState {
    header: libc::msghdr,
    iov: libc::iovec,
    cmsg: Cmsg,
    buf: Vec<u8>,
}

/// What an in-flight operation keeps alive.
enum Keep {
    Poll,
    Read(Vec<u8>),
    /// Only kept alive: the kernel reads the header, iovec and control data.
    Send {
        _state: Box<SendState>,
    },
    Recv(Box<RecvState>),
    /// Only kept alive: the kernel reads the timespec.
    Timeout {
        _spec: Box<types::Timespec>,
    },
    Write(Vec<u8>),
    Accept,
    Cancel,
}

struct InFlight {
    token: Token,
    /// The entry's `user_data`: the slot's index, and a generation in the high half so a
    /// cancel aimed at an earlier user of the slot can never hit a later one.
    user_data: u64,
    keep: Keep,
    _fd: Option<Arc<OwnedFd>>,
}

impl InFlight {
    /// Its `user_data` is set when it is pushed.
    fn new(token: Token, keep: Keep, fd: Option<Arc<OwnedFd>>) -> Self {
        Self { token, user_data: 0, keep, _fd: fd }
    }
}

/// What came back, with the buffers the operation owned.
#[derive(Debug)]
pub enum Done {
    /// `buf` holds what was read (`result` bytes).
    Read {
        buf: Vec<u8>,
    },
    /// The fd became readable (`result` holds the poll mask).
    Poll,
    /// The message went out (`result` bytes).
    Sent,
    /// A message came in: `buf` holds it, `fds` what was attached. `truncated` when either did
    /// not fit.
    Received {
        buf: Vec<u8>,
        fds: Vec<OwnedFd>,
        truncated: bool,
    },
    /// The timeout fired (`result` is `-ETIME`) or was cancelled (`-ECANCELED`).
    Timeout,
    /// `result` bytes of `buf` went out.
    Written {
        buf: Vec<u8>,
    },
    /// `result` is the accepted connection's fd.
    Accepted,
    Cancel,
}

/// One completion.
#[derive(Debug)]
pub struct Completion {
    pub token: Token,
    /// The syscall-style result: a count or a negated errno.
    pub result: i32,
    pub done: Done,
}

impl Completion {
    /// Takes ownership of the fd an accept returned.
    pub fn take_fd(&self) -> Option<OwnedFd> {
        match self.done {
            // SAFETY: a successful accept's result is a new fd that nothing else owns; this is
            // called once per completion by the event loop that asked for the accept.
            Done::Accepted if self.result >= 0 => Some(unsafe { OwnedFd::from_raw_fd(self.result) }),
            _ => None,
        }
    }

    /// The result as an `io::Result`.
    pub fn io_result(&self) -> io::Result<usize> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as usize)
        }
    }
}

/// A connected socket whose reads and writes go through a small ring of its own, one at a
/// time: for a thread that waits on one connection (a client's reader or writer), so that it too
/// moves its bytes on io_uring. `Read` and `Write`, like a `TcpStream`.
#[derive(Debug)]
pub struct RingStream {
    ring: Ring,
    fd: Arc<OwnedFd>,
    read_timeout: Option<Duration>,
    buf: Vec<u8>,
}

const STREAM_IO: Token = 1;
const STREAM_TIMEOUT: Token = 2;

impl RingStream {
    /// Takes over `stream` (a clone of a `TcpStream` will do).
    pub fn new(stream: std::net::TcpStream) -> Result<Self, RingError> {
        Ok(Self {
            ring: Ring::new(4)?,
            fd: Arc::new(OwnedFd::from(stream)),
            read_timeout: None,
            buf: Vec::new(),
        })
    }

    /// Reads fail with `TimedOut` after `timeout`; `None` waits for ever.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Waits for the completion of the one operation in flight (`STREAM_IO`), cancelling it if
    /// `timeout` passes first.
    fn complete(&mut self, timeout: Option<Duration>) -> io::Result<Completion> {
        if let Some(after) = timeout {
            self.ring.timeout(STREAM_TIMEOUT, after);
        }
        let mut done = None;
        let mut timed_out = false;
        let mut out = Vec::new();
        while done.is_none() || self.ring.in_flight() > 0 {
            out.clear();
            self.ring.submit_and_wait(1, &mut out)?;
            for completion in out.drain(..) {
                match completion.token {
                    STREAM_IO => done = Some(completion),
                    STREAM_TIMEOUT if completion.result == -libc::ETIME => {
                        timed_out = true;
                        self.ring.cancel(STREAM_IO);
                    }
                    _ => {}
                }
                if done.is_some() && !timed_out {
                    self.ring.cancel(STREAM_TIMEOUT);
                }
            }
        }
        let completion = done.expect("INVARIANT: the loop ends with the operation's completion");
        if timed_out && completion.result == -libc::ECANCELED {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        Ok(completion)
    }
}

impl io::Read for RingStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // Exactly `out.len()` of room: the ring reads up to a buffer's capacity.
        let buf = if self.buf.capacity() == out.len() {
            std::mem::take(&mut self.buf)
        } else {
            Vec::with_capacity(out.len())
        };
        self.ring.read(STREAM_IO, &Arc::clone(&self.fd), buf);
        let completion = self.complete(self.read_timeout)?;
        let n = completion.io_result()?;
        let Done::Read { buf } = completion.done else { return Err(io::Error::other("not a read")) };
        let n = n.min(out.len()).min(buf.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.buf = buf;
        Ok(n)
    }
}

impl io::Write for RingStream {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.ring.write(STREAM_IO, &Arc::clone(&self.fd), bytes.to_vec());
        let completion = self.complete(None)?;
        completion.io_result()
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Makes a TCP connection notice a peer that vanished without closing it (a host that lost
/// power, a partition): keepalive probes after 15 s of silence, every 5 s, 3 times; and data
/// left unacknowledged for 30 s fails the connection. Every cluster connection uses it.
pub fn keep_alive(socket: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let options: [(libc::c_int, libc::c_int, libc::c_int); 5] = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 15),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 30_000),
    ];
    for (level, name, value) in options {
        // SAFETY: `value` is a live c_int and its size is passed.
        let ret = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Connects to a cluster peer at `address` (`host:port`, trying each address it resolves to,
/// each for up to `timeout`), with the settings every cluster connection uses: no Nagle delay,
/// and [`keep_alive`].
pub fn connect(address: &str, timeout: Duration) -> io::Result<std::net::TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
    for resolved in std::net::ToSocketAddrs::to_socket_addrs(address)? {
        match std::net::TcpStream::connect_timeout(&resolved, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                keep_alive(std::os::fd::AsFd::as_fd(&stream))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// An io_uring instance with its in-flight table.
pub struct Ring {
    ring: IoUring,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    unsubmitted: usize,
    generation: u32,
    /// Completions reaped early (to make room while pushing), handed out by the next
    /// [`Ring::submit_and_wait`].
    reaped: Vec<Completion>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("in_flight", &self.in_flight()).finish()
    }
}

impl Ring {
    /// Sets up a ring of `entries` submission slots, and checks that the kernel supports every
    /// operation this crate uses.
    pub fn new(entries: u32) -> Result<Self, RingError> {
        let ring = IoUring::new(entries).map_err(RingError::Setup)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe).map_err(RingError::Setup)?;
        for (code, name) in [
            (opcode::Read::CODE, "IORING_OP_READ"),
            (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
            (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
            (opcode::RecvMsg::CODE, "IORING_OP_RECVMSG"),
            (opcode::Timeout::CODE, "IORING_OP_TIMEOUT"),
            (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
            (opcode::Write::CODE, "IORING_OP_WRITE"),
            (opcode::Accept::CODE, "IORING_OP_ACCEPT"),
        ] {
            if !probe.is_supported(code) {
                return Err(RingError::Missing(name));
            }
        }
        Ok(Self {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            unsubmitted: 0,
            generation: 0,
            reaped: Vec::new(),
        })
    }

    /// Operations submitted (or queued) and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Reads up to `buf`'s spare capacity from `fd` (at the current position).
    pub fn read(&mut self, token: Token, fd: &Arc<OwnedFd>, mut buf: Vec<u8>) {
        buf.clear();
        let len = u32::try_from(buf.capacity()).unwrap_or(u32::MAX);
        let entry =
            opcode::Read::new(types::Fd(fd.as_raw_fd()), buf.as_mut_ptr(), len).offset(u64::MAX).build();
        self.push(entry, InFlight::new(token, Keep::Read(buf), Some(Arc::clone(fd))));
    }

    /// Writes `buf` to `fd` (at the current position); the completion's result says how much
    /// went out, and the buffer comes back.
    pub fn write(&mut self, token: Token, fd: &Arc<OwnedFd>, buf: Vec<u8>) {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let entry = opcode::Write::new(types::Fd(fd.as_raw_fd()), buf.as_ptr(), len).offset(u64::MAX).build();
        self.push(entry, InFlight::new(token, Keep::Write(buf), Some(Arc::clone(fd))));
    }

    /// Writes `buf` to the file `fd` at `offset`, leaving the file position alone (so several
    /// writes to one file can be in flight).
    pub fn write_at(&mut self, token: Token, fd: &Arc<OwnedFd>, buf: Vec<u8>, offset: u64) {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let entry = opcode::Write::new(types::Fd(fd.as_raw_fd()), buf.as_ptr(), len).offset(offset).build();
        self.push(entry, InFlight::new(token, Keep::Write(buf), Some(Arc::clone(fd))));
    }

    /// Accepts one connection on the listening socket `fd`; the result is the new fd
    /// (close-on-exec), which the caller takes with [`Completion::take_fd`].
    pub fn accept(&mut self, token: Token, fd: &Arc<OwnedFd>) {
        let entry =
            opcode::Accept::new(types::Fd(fd.as_raw_fd()), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build();
        self.push(entry, InFlight::new(token, Keep::Accept, Some(Arc::clone(fd))));
    }

    /// Completes once `fd` is readable (for a pidfd: once the process has exited).
    pub fn poll_readable(&mut self, token: Token, fd: &Arc<OwnedFd>) {
        let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), libc::POLLIN as u32).build();
        self.push(entry, InFlight::new(token, Keep::Poll, Some(Arc::clone(fd))));
    }

    /// Sends `bytes` as one message on `sock`, with `fds` attached (`SCM_RIGHTS`).
    pub fn send_with_fds(&mut self, token: Token, sock: &Arc<OwnedFd>, bytes: Vec<u8>, fds: &[Arc<OwnedFd>]) {
        assert!(fds.len() <= MESSAGE_FDS_MAX, "at most {MESSAGE_FDS_MAX} fds per message");
        // SAFETY: an all-zero msghdr is a valid empty header.
        let header: libc::msghdr = unsafe { std::mem::zeroed() };
        let iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        let mut state =
            Box::new(SendState { header, iov, cmsg: Cmsg([0; CMSG_BYTES]), bytes, _fds: fds.to_vec() });
        state.iov = libc::iovec { iov_base: state.bytes.as_mut_ptr().cast(), iov_len: state.bytes.len() };
        state.header.msg_iov = &raw mut state.iov;
        state.header.msg_iovlen = 1;
        if !fds.is_empty() {
            let payload = (fds.len() * size_of::<RawFd>()) as u32;
            // SAFETY: CMSG_SPACE only computes a size.
            let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
            // SAFETY: CMSG_LEN only computes a size.
            let len = unsafe { libc::CMSG_LEN(payload) } as usize;
            assert!(space <= CMSG_BYTES);
            state.header.msg_control = state.cmsg.0.as_mut_ptr().cast();
            state.header.msg_controllen = space;
            // SAFETY: msg_control points at `space` bytes in `state`, room for one header.
            let cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const state.header) };
            // SAFETY: non-null (there is room for a header) and inside `state.cmsg`.
            let cmsg = unsafe { &mut *cmsg };
            cmsg.cmsg_level = libc::SOL_SOCKET;
            cmsg.cmsg_type = libc::SCM_RIGHTS;
            cmsg.cmsg_len = len;
            // SAFETY: the payload area follows the header inside `state.cmsg` (checked above).
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                // SAFETY: `i < fds.len()`, within the payload.
                let slot = unsafe { data.add(i) };
                // SAFETY: `slot` lies inside `state.cmsg`; unaligned writes are allowed.
                unsafe { slot.write_unaligned(fd.as_raw_fd()) };
            }
        }
        let entry = opcode::SendMsg::new(types::Fd(sock.as_raw_fd()), &raw const state.header)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        self.push(entry, InFlight::new(token, Keep::Send { _state: state }, Some(Arc::clone(sock))));
    }

    /// Receives one message of up to `buf`'s capacity from `sock`, with any fds attached.
    pub fn recv_with_fds(&mut self, token: Token, sock: &Arc<OwnedFd>, mut buf: Vec<u8>) {
        buf.clear();
        // SAFETY: an all-zero msghdr is a valid empty header.
        let header: libc::msghdr = unsafe { std::mem::zeroed() };
        let iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        let mut state = Box::new(RecvState { header, iov, cmsg: Cmsg([0; CMSG_BYTES]), buf });
        state.iov = libc::iovec { iov_base: state.buf.as_mut_ptr().cast(), iov_len: state.buf.capacity() };
        state.header.msg_iov = &raw mut state.iov;
        state.header.msg_iovlen = 1;
        state.header.msg_control = state.cmsg.0.as_mut_ptr().cast();
        state.header.msg_controllen = CMSG_BYTES;
        let entry = opcode::RecvMsg::new(types::Fd(sock.as_raw_fd()), &raw mut state.header)
            .flags(libc::MSG_CMSG_CLOEXEC as u32)
            .build();
        self.push(entry, InFlight::new(token, Keep::Recv(state), Some(Arc::clone(sock))));
    }

    /// Completes after `after`.
    pub fn timeout(&mut self, token: Token, after: Duration) {
        let spec = Box::new(types::Timespec::new().sec(after.as_secs()).nsec(after.subsec_nanos()));
        let entry = opcode::Timeout::new(&raw const *spec).build();
        self.push(entry, InFlight::new(token, Keep::Timeout { _spec: spec }, None));
    }

    /// Asks the kernel to cancel every in-flight operation of `token`; each still completes
    /// (with `-ECANCELED` if the cancel won).
    pub fn cancel(&mut self, token: Token) {
        let targets: Vec<u64> = self
            .slots
            .iter()
            .filter_map(|s| s.as_ref().filter(|f| f.token == token && !matches!(f.keep, Keep::Cancel)))
            .map(|f| f.user_data)
            .collect();
        for user_data in targets {
            let entry = opcode::AsyncCancel::new(user_data).build();
            self.push(entry, InFlight::new(token, Keep::Cancel, None));
        }
    }

    /// Submits what was queued, waits for at least `want` completions (0: do not wait), and
    /// appends every available completion to `out`.
    pub fn submit_and_wait(&mut self, want: usize, out: &mut Vec<Completion>) -> io::Result<()> {
        let early = self.reaped.len();
        out.append(&mut self.reaped);
        let want = if early > 0 { 0 } else { want.min(self.in_flight()) };
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // The completion queue is full: reap first, then submit again.
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        self.unsubmitted = 0;
        self.reap(out);
        Ok(())
    }

    /// Moves every completion the kernel has posted into `out`.
    fn reap(&mut self, out: &mut Vec<Completion>) {
        let entries: Vec<(u64, i32)> =
            self.ring.completion().map(|cqe| (cqe.user_data(), cqe.result())).collect();
        for (user_data, result) in entries {
            let index = (user_data & u64::from(u32::MAX)) as usize;
            let Some(slot) = self.slots.get_mut(index) else { continue };
            if slot.as_ref().is_none_or(|f| f.user_data != user_data) {
                continue;
            }
            let Some(in_flight) = slot.take() else { continue };
            self.free.push(index);
            out.push(Completion { token: in_flight.token, result, done: finish(in_flight.keep, result) });
        }
    }

    fn push(&mut self, entry: squeue::Entry, in_flight: InFlight) {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.generation = self.generation.wrapping_add(1);
        let user_data = (u64::from(self.generation) << 32) | index as u64;
        self.slots[index] = Some(InFlight { user_data, ..in_flight });
        let entry = entry.user_data(user_data);
        loop {
            // SAFETY: everything `entry` points at is owned by `self.slots[index]`, which stays
            // put until this entry's completion is reaped (and `Drop` drains before freeing).
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                self.unsubmitted += 1;
                return;
            }
            // The submission queue is full: hand it to the kernel and retry. The kernel refuses
            // (EBUSY) while completions wait to be reaped: reap them first, for later.
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let mut reaped = std::mem::take(&mut self.reaped);
                    self.reap(&mut reaped);
                    self.reaped = reaped;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => panic!("io_uring submit failed: {e}"),
            }
        }
    }
}

fn finish(keep: Keep, result: i32) -> Done {
    match keep {
        Keep::Poll => Done::Poll,
        Keep::Read(mut buf) => {
            if result > 0 {
                // SAFETY: the kernel wrote `result` bytes into the spare capacity.
                unsafe { buf.set_len(result as usize) };
            }
            Done::Read { buf }
        }
        Keep::Send { .. } => Done::Sent,
        Keep::Recv(mut state) => {
            let mut fds = Vec::new();
            if result >= 0 {
                // SAFETY: the kernel wrote `result` bytes into the buffer.
                unsafe { state.buf.set_len(result as usize) };
                // SAFETY: the kernel filled `msg_controllen` bytes of the control buffer.
                let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const state.header) };
                while !cmsg.is_null() {
                    // SAFETY: non-null headers from CMSG_FIRSTHDR/NXTHDR lie inside the buffer.
                    let header = unsafe { &*cmsg };
                    if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                        // SAFETY: CMSG_LEN(0) only computes the header size.
                        let count =
                            (header.cmsg_len - unsafe { libc::CMSG_LEN(0) } as usize) / size_of::<RawFd>();
                        // SAFETY: the payload holds `count` fds written by the kernel.
                        let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
                        for i in 0..count {
                            // SAFETY: `i < count`, inside the payload.
                            let slot = unsafe { data.add(i) };
                            // SAFETY: the kernel wrote an fd there; unaligned reads are allowed.
                            let fd = unsafe { slot.read_unaligned() };
                            // SAFETY: each fd arrived new in this process with the message.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                    // SAFETY: `cmsg` is a valid header inside the control buffer.
                    cmsg = unsafe { libc::CMSG_NXTHDR(&raw const state.header, cmsg) };
                }
            }
            let truncated = state.header.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
            Done::Received { buf: std::mem::take(&mut state.buf), fds, truncated }
        }
        Keep::Timeout { .. } => Done::Timeout,
        Keep::Write(buf) => Done::Written { buf },
        Keep::Accept => Done::Accepted,
        Keep::Cancel => Done::Cancel,
    }
}

impl Drop for Ring {
    /// Cancels everything in flight and waits for the kernel to let go of it.
    fn drop(&mut self) {
        let tokens: Vec<Token> = self.slots.iter().flatten().map(|f| f.token).collect();
        for token in tokens {
            self.cancel(token);
        }
        let mut sink = Vec::new();
        while self.in_flight() > 0 {
            sink.clear();
            if self.submit_and_wait(1, &mut sink).is_err() {
                // The kernel no longer answers; leak what it may still touch rather than free it.
                std::mem::forget(std::mem::take(&mut self.slots));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_ring_stream_reads_writes_and_times_out() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let mut stream = RingStream::new(accepted).unwrap();
        stream.write_all(b"over the ring").unwrap();
        let mut got = [0u8; 13];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"over the ring");
        peer.write_all(b"and back").unwrap();
        let mut back = [0u8; 64];
        let n = stream.read(&mut back).unwrap();
        assert_eq!(&back[..n], b"and back");
        stream.set_read_timeout(Some(Duration::from_millis(100)));
        assert_eq!(stream.read(&mut back).unwrap_err().kind(), io::ErrorKind::TimedOut);
        // Still usable after a timeout.
        peer.write_all(b"late").unwrap();
        let n = stream.read(&mut back).unwrap();
        assert_eq!(&back[..n], b"late");
        drop(peer);
        assert_eq!(stream.read(&mut back).unwrap(), 0, "the peer hung up");
    }

    use super::*;

    fn pipe() -> (Arc<OwnedFd>, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two fds.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        (Arc::new(adopt(fds[0])), adopt(fds[1]))
    }

    fn adopt(fd: RawFd) -> OwnedFd {
        // SAFETY: the tests pass only fds a syscall just created, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn complete(ring: &mut Ring) -> Completion {
        complete_n(ring, 1).remove(0)
    }

    fn complete_n(ring: &mut Ring, n: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        while out.len() < n {
            ring.submit_and_wait(1, &mut out).unwrap();
        }
        assert_eq!(out.len(), n, "more completions than expected: {out:?}");
        out
    }

    #[test]
    fn reads_come_back_with_their_buffers() {
        let mut ring = Ring::new(8).unwrap();
        let (read, write) = pipe();
        ring.read(7, &read, Vec::with_capacity(16));
        // SAFETY: writing 5 bytes from a literal.
        unsafe { libc::write(write.as_raw_fd(), b"hello".as_ptr().cast(), 5) };
        let done = complete(&mut ring);
        assert_eq!(done.token, 7);
        assert!(matches!(done.done, Done::Read { ref buf } if buf == b"hello"));
        drop(write);
        ring.read(8, &read, Vec::with_capacity(16));
        assert_eq!(complete(&mut ring).result, 0, "end of stream");
    }

    #[test]
    fn messages_carry_fds_both_ways() {
        let mut ring = Ring::new(8).unwrap();
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two fds.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) }, 0);
        let (a, b) = (Arc::new(adopt(fds[0])), Arc::new(adopt(fds[1])));
        let (attached, _) = pipe();
        ring.send_with_fds(1, &a, b"payload".to_vec(), &[attached]);
        ring.recv_with_fds(2, &b, Vec::with_capacity(64));
        let mut got = complete_n(&mut ring, 2);
        got.sort_by_key(|c| c.token);
        assert!(matches!(got[0].done, Done::Sent));
        match &got[1].done {
            Done::Received { buf, fds, truncated } => {
                assert_eq!(buf, b"payload");
                assert_eq!(fds.len(), 1);
                assert!(!truncated);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timeouts_fire_and_cancels_land() {
        let mut ring = Ring::new(8).unwrap();
        ring.timeout(3, Duration::from_millis(1));
        let done = complete(&mut ring);
        assert_eq!((done.token, done.result), (3, -libc::ETIME));

        let (read, _write) = pipe();
        ring.read(4, &read, Vec::with_capacity(8));
        ring.cancel(4);
        let out = complete_n(&mut ring, 2);
        let read_done = out.iter().find(|c| matches!(c.done, Done::Read { .. })).unwrap();
        assert_eq!(read_done.result, -libc::ECANCELED);
    }

    #[test]
    fn writes_and_accepts() {
        let mut ring = Ring::new(8).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let listener = Arc::new(OwnedFd::from(listener));
        ring.accept(1, &listener);
        let mut client = std::net::TcpStream::connect(address).unwrap();
        let accepted = complete(&mut ring);
        let server = Arc::new(accepted.take_fd().expect("an accepted fd"));
        ring.write(2, &server, b"over the wire".to_vec());
        let written = complete(&mut ring);
        assert_eq!(written.result, 13);
        let mut got = [0u8; 13];
        std::io::Read::read_exact(&mut client, &mut got).unwrap();
        assert_eq!(&got, b"over the wire");
    }

    #[test]
    fn far_more_operations_than_queue_entries_all_complete() {
        let mut ring = Ring::new(4).unwrap();
        let count = 2000u64;
        for token in 0..count {
            ring.timeout(token, Duration::ZERO);
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        while seen.len() < count as usize {
            out.clear();
            ring.submit_and_wait(1, &mut out).unwrap();
            for completion in &out {
                assert!(seen.insert(completion.token), "token {} completed twice", completion.token);
            }
        }
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn dropping_a_ring_with_work_in_flight_is_safe() {
        let mut ring = Ring::new(8).unwrap();
        let (read, _write) = pipe();
        ring.read(1, &read, Vec::with_capacity(8));
        ring.poll_readable(2, &read);
        ring.timeout(3, Duration::from_secs(60));
        let mut out = Vec::new();
        ring.submit_and_wait(0, &mut out).unwrap();
        drop(ring);
    }
}
