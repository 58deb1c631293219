//! Code that runs in a cloned child, between `clone` and `exec` (or `_exit`).
//!
//! The children here share the lane's memory (`CLONE_VM`) while the lane waits for them
//! (`CLONE_VFORK`). So, without exception, the code in this module:
//! - allocates nothing, takes no lock, and cannot panic (no indexing that could fail, no
//!   formatting, no `unwrap`);
//! - calls only async-signal-safe libc functions;
//! - reports a failure by writing a [`Failure`] into its argument block and calling `_exit`.
//!
//! It contains the one interpreter of [`SetupOp`] plans and the entry points the lane clones:
//! the job itself ([`job_main`]), the builder of a template mount namespace
//! ([`template_main`]), and the makers of pooled network and IPC namespaces ([`netns_main`],
//! [`ipcns_main`]).
//!
//! # Safety
//!
//! Every `unsafe` block is a libc call whose pointers come from validated, NUL-terminated
//! archived strings or from buffers on this stack, and whose fds are owned by the argument block.

#![expect(unsafe_code, reason = "this module is one of the two that own raw syscalls")]

use std::ffi::{c_char, c_int, c_long, c_void};
use std::ptr;

use maelstrom_wire::zygote::{ArchivedSetupOp, ArchivedSpawnRequest, FILLABLE_MAX, FsKind, SLOTS_MAX, Step};

use crate::sys::gated;

/// Where a child stopped and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) step: Step,
    pub(crate) errno: i32,
}

type Res<T = ()> = Result<T, Failure>;

fn errno() -> i32 {
    // SAFETY: __errno_location has no preconditions.
    let slot = unsafe { libc::__errno_location() };
    // SAFETY: it returns this thread's errno slot, always valid to read.
    unsafe { *slot }
}

/// Turns a libc return value into a result tagged with `step`.
fn check(ret: libc::c_long, step: Step) -> Res<c_int> {
    if ret < 0 { Err(Failure { step, errno: errno() }) } else { Ok(ret as c_int) }
}

fn close(fd: &mut c_int) {
    if *fd >= 0 {
        // SAFETY: the argument block owns `fd`; it is forgotten right after.
        unsafe { libc::close(*fd) };
        *fd = -1;
    }
}

fn exit(code: c_int) -> ! {
    // SAFETY: _exit ends the process without running any user-space cleanup.
    unsafe { libc::_exit(code) }
}

/// Detached-mount fds held between `CloneTree`/`NewFs` and `Attach`.
#[derive(Debug)]
pub(crate) struct Slots(pub(crate) [c_int; SLOTS_MAX as usize]);

impl Slots {
    pub(crate) fn new() -> Self {
        Self([-1; SLOTS_MAX as usize])
    }

    fn put(&mut self, slot: u8, fd: c_int) {
        if let Some(s) = self.0.get_mut(usize::from(slot)) {
            *s = fd;
        }
    }

    fn take(&mut self, slot: u8) -> c_int {
        match self.0.get_mut(usize::from(slot)) {
            Some(s) => std::mem::replace(s, -1),
            None => -1,
        }
    }
}

/// Fds (`O_PATH`) of the job's fillable filesystems, in the order its ops made them, for its
/// lane to pass on to the worker, which checks at the end whether any was full.
#[derive(Debug)]
pub(crate) struct Fillable {
    pub(crate) fds: [c_int; FILLABLE_MAX],
    pub(crate) len: usize,
}

impl Fillable {
    pub(crate) fn new() -> Self {
        Self { fds: [-1; FILLABLE_MAX], len: 0 }
    }

    fn wants(&self) -> bool {
        self.len < FILLABLE_MAX
    }

    fn push(&mut self, fd: c_int) {
        if let Some(slot) = self.fds.get_mut(self.len) {
            *slot = fd;
            self.len += 1;
        }
    }

    /// Sends the fds to the lane over `sock`, in one datagram that carries `seq`, the spawn's
    /// number: a datagram left by a job killed after sending is told from this job's.
    fn send(&mut self, sock: c_int, seq: u64, step: Step) -> Res {
        let fds = self.fds.get(..self.len).unwrap_or(&[]);
        if fds.is_empty() {
            return Ok(());
        }
        #[repr(C, align(8))]
        struct Control([u8; 64]);
        let mut control = Control([0; 64]);
        let payload = size_of_val(fds) as libc::c_uint;
        let mut seq = seq.to_ne_bytes();
        let mut iov = libc::iovec { iov_base: seq.as_mut_ptr().cast(), iov_len: seq.len() };
        // SAFETY: a zeroed msghdr is a valid empty header; CMSG_SPACE only computes a size,
        // which for FILLABLE_MAX fds fits the 64 bytes of `control`.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        // SAFETY: as above.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as usize;
        // SAFETY: msg_control points at enough room for one header and its fds.
        let header = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
        if header.is_null() {
            return Err(Failure { step, errno: libc::EINVAL });
        }
        // SAFETY: non-null, inside `control`, which lives on this stack.
        let header = unsafe { &mut *header };
        header.cmsg_level = libc::SOL_SOCKET;
        header.cmsg_type = libc::SCM_RIGHTS;
        // SAFETY: CMSG_LEN only computes a size.
        header.cmsg_len = unsafe { libc::CMSG_LEN(payload) } as usize;
        // SAFETY: CMSG_DATA only computes a pointer inside `control`.
        let data = unsafe { libc::CMSG_DATA(header) };
        // SAFETY: `data` has room for the fds (see above); an unaligned byte copy of them.
        unsafe { ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), data, payload as usize) };
        let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
        // SAFETY: `msg` and all it points at live on this stack for the call.
        check(unsafe { libc::sendmsg(sock, &raw const msg, flags) } as c_long, step).map(drop)
    }
}

/// A fixed buffer for building NUL-terminated strings without allocating.
struct StackString {
    bytes: [u8; 4096],
    len: usize,
}

impl StackString {
    fn new() -> Self {
        Self { bytes: [0; 4096], len: 0 }
    }

    fn push(&mut self, b: &[u8]) -> bool {
        let Some(room) = self.bytes.get_mut(self.len..self.len + b.len()) else { return false };
        room.copy_from_slice(b);
        self.len += b.len();
        true
    }

    /// Appends `b` escaping the characters overlayfs option parsing treats specially.
    fn push_escaped(&mut self, b: &[u8]) -> bool {
        b.iter()
            .all(|&c| if matches!(c, b',' | b':' | b'\\') { self.push(&[b'\\', c]) } else { self.push(&[c]) })
    }

    fn push_int(&mut self, n: impl Into<u64>) -> bool {
        let mut n: u64 = n.into();
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            if let Some(d) = digits.get_mut(i) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        match digits.get(i..) {
            Some(d) => self.push(d),
            None => false,
        }
    }

    /// NUL-terminates and returns the string, or `None` if it did not fit.
    fn finish(&mut self) -> Option<*const c_char> {
        if self.push(&[0]) { Some(self.bytes.as_ptr().cast()) } else { None }
    }
}

fn fs_name(kind: FsKind) -> *const c_char {
    match kind {
        FsKind::Proc => c"proc".as_ptr(),
        FsKind::Sys => c"sysfs".as_ptr(),
        FsKind::Tmp => c"tmpfs".as_ptr(),
        FsKind::Mqueue => c"mqueue".as_ptr(),
        FsKind::Devpts => c"devpts".as_ptr(),
    }
}

fn mount_attributes(kind: FsKind) -> u64 {
    match kind {
        FsKind::Proc | FsKind::Mqueue => {
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC
        }
        FsKind::Sys => {
            libc::MOUNT_ATTR_NOSUID
                | libc::MOUNT_ATTR_NODEV
                | libc::MOUNT_ATTR_NOEXEC
                | libc::MOUNT_ATTR_RDONLY
        }
        FsKind::Tmp => libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        FsKind::Devpts => libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC,
    }
}

fn mount_flags(kind: FsKind) -> libc::c_ulong {
    let attributes = mount_attributes(kind);
    let mut flags = 0;
    for (attribute, flag) in [
        (libc::MOUNT_ATTR_NOSUID, libc::MS_NOSUID),
        (libc::MOUNT_ATTR_NODEV, libc::MS_NODEV),
        (libc::MOUNT_ATTR_NOEXEC, libc::MS_NOEXEC),
        (libc::MOUNT_ATTR_RDONLY, libc::MS_RDONLY),
    ] {
        if attributes & attribute != 0 {
            flags |= flag;
        }
    }
    flags
}

/// Mount options for a new filesystem of `kind`; `tmpfs_bytes` (if not 0) sizes a tmpfs.
fn mount_data(kind: FsKind, tmpfs_bytes: u64, out: &mut StackString) -> *const c_void {
    let data: &[u8] = match kind {
        FsKind::Tmp => b"mode=1777",
        FsKind::Devpts => b"newinstance,ptmxmode=0666,mode=0620",
        _ => return ptr::null(),
    };
    let sized = kind == FsKind::Tmp && tmpfs_bytes != 0;
    let ok = out.push(data) && (!sized || (out.push(b",size=") && out.push_int(tmpfs_bytes)));
    // A size too long to write cannot happen (20 digits); unsized is the kernel's default.
    match out.finish() {
        Some(data) if ok => data.cast(),
        _ => ptr::null(),
    }
}

/// Creates a detached filesystem of `kind` with the new mount API and returns its mount fd;
/// `tmpfs_bytes` (if not 0) sizes a tmpfs.
fn new_fs(kind: FsKind, tmpfs_bytes: u64, step: Step) -> Res<c_int> {
    // SAFETY: fsopen takes a NUL-terminated literal and flags.
    let mut fs = check(
        unsafe { gated(libc::SYS_fsopen, [fs_name(kind) as c_long, libc::FSOPEN_CLOEXEC.into(), 0, 0, 0]) },
        step,
    )?;
    let mut sized = Ok(0);
    if kind == FsKind::Tmp && tmpfs_bytes != 0 {
        let mut size = StackString::new();
        sized = match size.push_int(tmpfs_bytes).then(|| size.finish()).flatten() {
            Some(value) => check(
                // SAFETY: FSCONFIG_SET_STRING takes a NUL-terminated key and value, both live here.
                unsafe {
                    gated(
                        libc::SYS_fsconfig,
                        [
                            fs.into(),
                            libc::FSCONFIG_SET_STRING.into(),
                            c"size".as_ptr() as c_long,
                            value as c_long,
                            0,
                        ],
                    )
                },
                step,
            ),
            None => Err(Failure { step, errno: libc::E2BIG }),
        };
    }
    let created = sized.and_then(|_| {
        check(
            // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
            unsafe { gated(libc::SYS_fsconfig, [fs.into(), libc::FSCONFIG_CMD_CREATE.into(), 0, 0, 0]) },
            step,
        )
    });
    let mounted = created.and_then(|_| {
        // SAFETY: fsmount takes the fs context fd and flag words.
        check(
            unsafe {
                gated(
                    libc::SYS_fsmount,
                    [fs.into(), libc::FSMOUNT_CLOEXEC.into(), mount_attributes(kind) as c_long, 0, 0],
                )
            },
            step,
        )
    });
    close(&mut fs);
    mounted
}

/// mount(2), through the lanes' filter (see [`gated`]).
fn mount(
    source: *const c_char,
    target: *const c_char,
    fstype: *const c_char,
    flags: libc::c_ulong,
    data: *const c_void,
) -> c_long {
    let args = [source as c_long, target as c_long, fstype as c_long, flags as c_long, data as c_long];
    // SAFETY: the caller passes NUL-terminated strings and data (or null) that live for the call.
    unsafe { gated(libc::SYS_mount, args) }
}

fn setns(fd: c_int, nstype: c_int) -> c_long {
    // SAFETY: setns takes an fd the caller owns and a namespace type.
    unsafe { gated(libc::SYS_setns, [fd.into(), nstype.into(), 0, 0, 0]) }
}

fn unshare(flags: c_int) -> c_long {
    // SAFETY: unshare takes flags.
    unsafe { gated(libc::SYS_unshare, [flags.into(), 0, 0, 0, 0]) }
}

/// Clones the tree at `path` as a detached mount, optionally recursive and read-only; always
/// `nosuid`, so no file in a container has set-id or file-capability powers.
fn clone_tree(path: *const c_char, recursive: bool, attributes: u64, step: Step) -> Res<c_int> {
    let attributes = attributes | libc::MOUNT_ATTR_NOSUID;
    let flags = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC
        | if recursive { libc::AT_RECURSIVE as u32 } else { 0 };
    // SAFETY: `path` is NUL-terminated; open_tree takes a dirfd, a path and flags.
    let mut fd = check(
        unsafe { gated(libc::SYS_open_tree, [libc::AT_FDCWD.into(), path as c_long, flags.into(), 0, 0]) },
        step,
    )?;
    let attr = libc::mount_attr { attr_set: attributes, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let at = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `attr` is a live mount_attr of the size passed; the path is an empty literal.
    let set = unsafe {
        gated(
            libc::SYS_mount_setattr,
            [
                fd.into(),
                c"".as_ptr() as c_long,
                at.into(),
                (&raw const attr) as c_long,
                size_of::<libc::mount_attr>() as c_long,
            ],
        )
    };
    if let Err(failure) = check(set, step) {
        close(&mut fd);
        return Err(failure);
    }
    Ok(fd)
}

/// Attaches detached mount `fd` at `target` and closes it.
fn attach(mut fd: c_int, target: *const c_char, step: Step) -> Res {
    // SAFETY: `fd` is a detached mount owned here; `target` is NUL-terminated.
    let moved = unsafe {
        gated(
            libc::SYS_move_mount,
            [
                fd.into(),
                c"".as_ptr() as c_long,
                libc::AT_FDCWD.into(),
                target as c_long,
                libc::MOVE_MOUNT_F_EMPTY_PATH.into(),
            ],
        )
    };
    close(&mut fd);
    check(moved, step).map(drop)
}

fn chdir(path: *const c_char, step: Step) -> Res {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::chdir(path) }.into(), step).map(drop)
}

/// Builds the root: an overlay of the layers, mounted over the top layer's path; then moves
/// there.
///
/// Always an overlay, even of one read-only layer (a bind would be cheaper): an overlay is a
/// filesystem of its own, with inodes of its own, so a job's `flock`s and record locks on its
/// root's files are seen by no other job and not by the host. Overlayfs needs two lower layers
/// without an upper one, so a lone layer gets an empty tmpfs below it.
///
/// A writable root's upper layer, and that empty layer, are a fresh tmpfs. Before Linux 6.15
/// overlayfs takes no detached mount as a layer, so the tmpfs is first attached over the top
/// layer's path, and the top layer itself is named through an fd opened before.
///
/// Returns an `O_PATH` fd of a writable root's tmpfs when `keep_upper`, else -1.
fn make_root(
    layers: &[maelstrom_wire::ArchivedCBytes],
    writable: bool,
    tmpfs_bytes: u64,
    keep_upper: bool,
    step: Step,
) -> Res<c_int> {
    let Some((top, rest)) = layers.split_last() else { return Err(Failure { step, errno: libc::EINVAL }) };
    let mut upper = -1;
    let lone = !writable && rest.is_empty();
    let mut options = StackString::new();
    let mut ok = options.push(b"lowerdir=");
    let mut below = -1;
    if writable || lone {
        // SAFETY: `top` is NUL-terminated.
        below = check(
            unsafe { libc::open(top.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) }.into(),
            step,
        )? as c_int;
        let tmpfs = new_fs(FsKind::Tmp, if lone { EMPTY_LAYER_BYTES } else { tmpfs_bytes }, step);
        let attached = tmpfs.and_then(|mut fs| {
            if writable && let Err(failure) = make_upper(fs, top.as_ptr(), step) {
                close(&mut fs);
                return Err(failure);
            }
            if writable && keep_upper {
                // SAFETY: F_DUPFD_CLOEXEC of an fd owned here.
                match check(unsafe { libc::fcntl(fs, libc::F_DUPFD_CLOEXEC, 3) }.into(), step) {
                    Ok(fd) => upper = fd,
                    Err(failure) => {
                        close(&mut fs);
                        return Err(failure);
                    }
                }
            }
            attach(fs, top.as_ptr(), step)
        });
        if let Err(failure) = attached {
            close(&mut below);
            close(&mut upper);
            return Err(failure);
        }
        ok = ok && options.push(b"/proc/self/fd/") && options.push_int(below as u32);
    } else {
        ok = ok && options.push_escaped(top.as_bytes());
    }
    for layer in rest.iter().rev() {
        ok = ok && options.push(b":") && options.push_escaped(layer.as_bytes());
    }
    if lone {
        ok = ok && options.push(b":") && options.push_escaped(top.as_bytes());
    }
    if writable {
        ok = ok
            && options.push(b",upperdir=")
            && options.push_escaped(top.as_bytes())
            && options.push(b"/upper,workdir=")
            && options.push_escaped(top.as_bytes())
            && options.push(b"/work,userxattr");
    }
    let top = top.as_ptr();
    let result = match options.finish() {
        Some(data) if ok => {
            let flags = libc::MS_NOSUID | libc::MS_NODEV | if writable { 0 } else { libc::MS_RDONLY };
            // SAFETY: all strings are NUL-terminated; `data` lives on this stack.
            check(mount(c"overlay".as_ptr(), top, c"overlay".as_ptr(), flags, data.cast()), step).map(drop)
        }
        _ => Err(Failure { step, errno: libc::E2BIG }),
    };
    close(&mut below);
    if let Err(failure) = result.and_then(|()| chdir(top, step)) {
        close(&mut upper);
        return Err(failure);
    }
    Ok(upper)
}

/// The size of the empty layer below a lone read-only one: it never holds a byte.
const EMPTY_LAYER_BYTES: u64 = 4096;

/// Makes the overlay's `upper` and `work` directories in the tmpfs at `upper`. The upper
/// directory is the writable root's root, so it takes the owner and mode of the top layer's.
fn make_upper(upper: c_int, top: *const c_char, step: Step) -> Res {
    for dir in [c"upper", c"work"] {
        // SAFETY: `upper` is the tmpfs mount fd; `dir` is a literal.
        check(unsafe { libc::mkdirat(upper, dir.as_ptr(), 0o755) }.into(), step)?;
    }
    // SAFETY: an all-zero stat is valid storage; `top` is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is writable.
    check(unsafe { libc::stat(top, &raw mut st) }.into(), step)?;
    // SAFETY: literal name under an open directory fd; plain integers.
    check(unsafe { libc::fchownat(upper, c"upper".as_ptr(), st.st_uid, st.st_gid, 0) }.into(), step)?;
    // SAFETY: as above.
    check(unsafe { libc::fchmodat(upper, c"upper".as_ptr(), st.st_mode & 0o7777, 0) }.into(), step).map(drop)
}

fn pivot_root(step: Step) -> Res {
    let dot = c".".as_ptr() as c_long;
    // SAFETY: "." names the current directory for both arguments (the stacked-pivot idiom).
    check(unsafe { gated(libc::SYS_pivot_root, [dot, dot, 0, 0, 0]) }, step)?;
    // SAFETY: detaches the old root, now stacked on ".".
    check(unsafe { gated(libc::SYS_umount2, [dot, libc::MNT_DETACH.into(), 0, 0, 0]) }, step)?;
    chdir(c"/".as_ptr(), step)
}

/// The interpreter: runs `ops` in order. `step(i)` names op `i` in a failure. Each tmpfs they
/// make is of `tmpfs_bytes` (0: the kernel's default size); `fillable`, if given, gets an fd
/// of each filesystem [`ArchivedSetupOp::is_fillable`] names, while it has room.
pub(crate) fn run_ops(
    ops: &[ArchivedSetupOp],
    slots: &mut Slots,
    tmpfs_bytes: u64,
    mut fillable: Option<&mut Fillable>,
    step: fn(u32) -> Step,
) -> Res {
    for (i, op) in ops.iter().enumerate() {
        let step = step(i as u32);
        let keep = op.is_fillable() && fillable.as_deref().is_some_and(Fillable::wants);
        match op {
            ArchivedSetupOp::Root { layers, writable } => {
                let upper = make_root(layers, *writable, tmpfs_bytes, keep, step)?;
                if let (true, Some(fillable)) = (upper >= 0, fillable.as_deref_mut()) {
                    fillable.push(upper);
                }
            }
            ArchivedSetupOp::CloneTree { source, read_only, slot } => {
                let attributes = if *read_only { libc::MOUNT_ATTR_RDONLY } else { 0 };
                slots.put(*slot, clone_tree(source.as_ptr(), true, attributes, step)?);
            }
            ArchivedSetupOp::NewFs { kind, slot } => {
                slots.put(*slot, new_fs(kind.native(), tmpfs_bytes, step)?)
            }
            ArchivedSetupOp::PivotRoot => pivot_root(step)?,
            ArchivedSetupOp::Attach { slot, target } => attach(slots.take(*slot), target.as_ptr(), step)?,
            ArchivedSetupOp::Mount { kind, target } => {
                let kind = kind.native();
                let name = fs_name(kind);
                let mut data = StackString::new();
                let data = mount_data(kind, tmpfs_bytes, &mut data);
                // SAFETY: all strings are NUL-terminated literals, validated archived strings or
                // `data`'s, which lives to the end of this arm.
                check(mount(name, target.as_ptr(), name, mount_flags(kind), data), step)?;
                if let (true, Some(fillable)) = (keep, fillable.as_deref_mut()) {
                    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
                    // SAFETY: `target` is a validated NUL-terminated string.
                    fillable.push(check(unsafe { libc::open(target.as_ptr(), flags) }.into(), step)?);
                }
            }
            ArchivedSetupOp::Hold { source, slot } => {
                slots.put(*slot, clone_tree(source.as_ptr(), true, 0, step)?)
            }
            ArchivedSetupOp::MakeDir { target } => {
                // SAFETY: `target` is a validated NUL-terminated string.
                let ret = unsafe { libc::mkdir(target.as_ptr(), 0o755) };
                if ret == 0 {
                    // Whatever the umask, the job (maybe another uid) must get through it.
                    // SAFETY: as above.
                    check(unsafe { libc::chmod(target.as_ptr(), 0o755) }.into(), step)?;
                } else if errno() != libc::EEXIST {
                    check(ret.into(), step)?;
                }
            }
        }
    }
    Ok(())
}

/// A line for `/proc/<pid>/{uid,gid}_map`, formatted by the lane.
#[derive(Debug)]
pub(crate) struct MapLine {
    pub(crate) bytes: [u8; 40],
    pub(crate) len: usize,
}

impl MapLine {
    /// `"<inside> <outside> 1\n"`: maps one id of the job's user namespace onto one of the
    /// zygote's.
    pub(crate) fn new(inside: u32, outside: u32) -> Self {
        let mut s = StackString::new();
        let ok = s.push_int(inside) && s.push(b" ") && s.push_int(outside) && s.push(b" 1\n");
        debug_assert!(ok);
        let mut bytes = [0; 40];
        let len = s.len.min(bytes.len());
        bytes[..len].copy_from_slice(&s.bytes[..len]);
        Self { bytes, len }
    }
}

/// Everything a job child needs, prepared by the lane before the clone.
#[derive(Debug)]
pub(crate) struct JobArgs<'a> {
    pub(crate) request: &'a ArchivedSpawnRequest,
    /// A template mount namespace to join, or -1 to build the root from the lane's namespace.
    pub(crate) template_fd: c_int,
    /// A network namespace to join, or -1 to keep the lane's (the host's).
    pub(crate) netns_fd: c_int,
    /// A fresh or scrubbed IPC namespace to join.
    pub(crate) ipcns_fd: c_int,
    pub(crate) stdin_fd: c_int,
    pub(crate) stdout_fd: c_int,
    pub(crate) stderr_fd: c_int,
    /// A pidfd of the worker: the job must not outlive it.
    pub(crate) worker_pidfd: c_int,
    /// The zygote-namespace id to become before entering the job's own user namespace, when
    /// not the zygote's root (see `lane::NOBODY`).
    pub(crate) drop_to: Option<u32>,
    pub(crate) uid_map: MapLine,
    pub(crate) gid_map: MapLine,
    pub(crate) argv: *const *const c_char,
    pub(crate) envp: *const *const c_char,
    pub(crate) slots: Slots,
    /// Keep root's capabilities in the job's user namespace (the spec allows them).
    pub(crate) keep_capabilities: bool,
    /// A seccomp filter to load last (the open lane's jobs), else none: the lane's is enough.
    pub(crate) filter: Option<&'a [seccompiler::sock_filter]>,
    /// `cgroup.procs` of the job's cgroup in each v1 hierarchy (memory, pids), or -1.
    pub(crate) cgroup_fds: [c_int; 2],
    /// The lane's end of the socket that takes `fillable`'s fds, and this spawn's number.
    pub(crate) fillable_sock: c_int,
    pub(crate) fillable_seq: u64,
    pub(crate) fillable: Fillable,
    pub(crate) failure: Option<Failure>,
}

/// Entry point of a job process. `arg` is a `*mut JobArgs`.
pub(crate) extern "C" fn job_main(arg: *mut c_void) -> c_int {
    // SAFETY: the lane passes a JobArgs that stays alive and untouched until this child execs or
    // exits (CLONE_VFORK).
    let args = unsafe { &mut *arg.cast::<JobArgs<'_>>() };
    if let Err(failure) = job_setup(args) {
        args.failure = Some(failure);
    }
    exit(127)
}

/// Asks to be killed when the parent dies; and if the worker already died, refuses to start.
fn die_with_worker(worker_pidfd: c_int, step: Step) -> Res {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    check(ret.into(), step)?;
    let mut worker = libc::pollfd { fd: worker_pidfd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd, zero timeout.
    if unsafe { libc::poll(&raw mut worker, 1, 0) } != 0 {
        return Err(Failure { step, errno: libc::ESRCH });
    }
    Ok(())
}

fn job_setup(args: &mut JobArgs<'_>) -> Res {
    let prepare = Step::Prepare;
    die_with_worker(args.worker_pidfd, prepare)?;

    // Into the job's cgroup before anything is allocated on its behalf; then a cgroup namespace
    // rooted there, so the job sees no path above its own cgroup.
    for fd in args.cgroup_fds {
        if fd >= 0 {
            // SAFETY: `fd` is an open fd the lane inherited; the buffer is a literal.
            let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            check(written as c_long, Step::Cgroup)?;
        }
    }
    check(unshare(libc::CLONE_NEWCGROUP), Step::Cgroup)?;

    // The user-namespace maps are written through this directory after the pivot hides /proc.
    // SAFETY: literal path, plain flags.
    let mut proc_self = check(
        unsafe { libc::open(c"/proc/self".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) }
            .into(),
        prepare,
    )?;

    if args.netns_fd >= 0 {
        // SAFETY: setns takes an fd owned by the lane and a namespace type.
        check(setns(args.netns_fd, libc::CLONE_NEWNET), Step::JoinNetwork)?;
    }

    // SAFETY: as above.
    check(setns(args.ipcns_fd, libc::CLONE_NEWIPC), Step::JoinIpc)?;

    let request = args.request;
    if args.template_fd >= 0 {
        // SAFETY: as above.
        check(setns(args.template_fd, libc::CLONE_NEWNS), Step::JoinTemplate)?;
    }
    if args.template_fd < 0 || !request.job.is_empty() {
        // SAFETY: unshare takes flags.
        check(unshare(libc::CLONE_NEWNS), Step::UnshareMounts)?;
    }
    let tmpfs_bytes = request.tmpfs_bytes.to_native();
    run_ops(&request.job, &mut args.slots, tmpfs_bytes, Some(&mut args.fillable), |op| Step::Job { op })?;
    args.fillable.send(args.fillable_sock, args.fillable_seq, Step::Prepare)?;

    let hostname = request.hostname.as_bytes();
    // SAFETY: `hostname` is a live slice of the length passed.
    check(unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) }.into(), Step::Hostname)?;
    chdir(request.working_directory.as_ptr(), Step::WorkingDirectory)?;

    // From here on the job holds no capability over its namespaces: it is root, if at all, only
    // in a user namespace of its own.
    let userns = Step::UserNamespace;
    if let Some(id) = args.drop_to {
        // Raw syscalls: the lane has a second thread (its checker), and libc's wrappers would
        // try to change that thread's ids too, which is not this process's to change.
        // SAFETY: setgroups with an empty list, then setres[ug]id and prctl with integers.
        check(unsafe { libc::syscall(libc::SYS_setgroups, 0, ptr::null::<libc::gid_t>()) }, userns)?;
        // SAFETY: as above.
        check(unsafe { libc::syscall(libc::SYS_setresgid, id, id, id) }, userns)?;
        // SAFETY: as above.
        check(unsafe { libc::syscall(libc::SYS_setresuid, id, id, id) }, userns)?;
        // Changing uid made us undumpable, which would put /proc/self out of our reach.
        // SAFETY: as above.
        check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) }.into(), userns)?;
        // Changing uid also cleared the parent-death signal.
        die_with_worker(args.worker_pidfd, userns)?;
    }
    // SAFETY: unshare takes flags.
    check(unshare(libc::CLONE_NEWUSER), userns)?;
    write_at(proc_self, c"setgroups", b"deny", userns)?;
    write_at(proc_self, c"uid_map", args.uid_map.bytes.get(..args.uid_map.len).unwrap_or(&[]), userns)?;
    write_at(proc_self, c"gid_map", args.gid_map.bytes.get(..args.gid_map.len).unwrap_or(&[]), userns)?;
    close(&mut proc_self);

    let stdio = Step::Stdio;
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() }.into(), stdio)?;
    for (fd, target) in [(args.stdin_fd, 0), (args.stdout_fd, 1), (args.stderr_fd, 2)] {
        // SAFETY: dup2 takes two fds; `fd` is owned by the lane, `target` is a standard fd.
        check(unsafe { libc::dup2(fd, target) }.into(), stdio)?;
    }

    for limit in request.rlimits.iter() {
        let value = libc::rlimit { rlim_cur: limit.soft.to_native(), rlim_max: limit.hard.to_native() };
        // SAFETY: `value` is a live rlimit; the resource number was chosen by the planner.
        let ret = unsafe { libc::setrlimit(limit.resource.to_native() as _, &raw const value) };
        check(ret.into(), Step::Rlimit)?;
    }

    // SAFETY: closes every fd above stderr in this child's own fd table.
    check(unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) }, stdio)?;

    if !args.keep_capabilities {
        drop_capabilities()?;
    }
    // No-new-privileges and the lane's seccomp filter are inherited; the open lane's jobs add
    // their own, which allows what their spec asks for and no more.
    if let Some(filter) = args.filter {
        let program =
            libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut().cast() };
        // SAFETY: `program` points at a filter the lane keeps alive until this child execs.
        let ret =
            unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &raw const program) };
        check(ret, Step::Policy)?;
    }
    exec(request, args.argv, args.envp)
}

/// Gives up every capability for good. The job's new user namespace gave it all of them; it
/// keeps none now, and exec gives none back:
/// - the locked "no root" securebit stops exec from handing root the bounding set (cheaper than
///   emptying the bounding set, which is one credential change per capability);
/// - no ambient capabilities can be raised (and there are none);
/// - file capabilities count for nothing: every mount of a container is `nosuid`.
fn drop_capabilities() -> Res {
    let step = Step::Policy;
    const NOROOT: libc::c_ulong = 1 << 0;
    const NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    const NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    let bits = NOROOT | NOROOT_LOCKED | KEEP_CAPS_LOCKED | NO_CAP_AMBIENT_RAISE | NO_CAP_AMBIENT_RAISE_LOCKED;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) }.into(), step)?;
    const VERSION_3: u32 = 0x2008_0522;
    let header = [VERSION_3, 0];
    let data = [0u32; 6];
    // SAFETY: a v3 header for this thread and two zeroed data structs (three u32 each).
    check(unsafe { libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) }, step).map(drop)
}

/// Tries each candidate like execvp: on to the next while it is missing, and reports
/// "permission denied" over "not found" if any candidate was denied.
fn exec(request: &ArchivedSpawnRequest, argv: *const *const c_char, envp: *const *const c_char) -> Res {
    let mut denied = false;
    let mut last = libc::ENOENT;
    for candidate in request.program.iter() {
        // SAFETY: the candidate, argv and envp are NUL-terminated strings and null-terminated
        // pointer arrays built by the lane from the validated request.
        unsafe { libc::execve(candidate.as_ptr(), argv, envp) };
        last = errno();
        match last {
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => break,
        }
    }
    Err(Failure { step: Step::Exec, errno: if denied && last == libc::ENOENT { libc::EACCES } else { last } })
}

fn write_at(dir: c_int, name: &std::ffi::CStr, bytes: &[u8], step: Step) -> Res {
    // SAFETY: `name` is NUL-terminated; `dir` is an open directory fd.
    let mut fd =
        check(unsafe { libc::openat(dir, name.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) }.into(), step)?;
    // SAFETY: `bytes` is a live slice of the length passed.
    let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    close(&mut fd);
    if written != bytes.len() as isize {
        return Err(Failure { step, errno: if written < 0 { errno() } else { libc::EIO } });
    }
    Ok(())
}

/// Inputs and results of a template builder. The builder shares the lane's fd table
/// (`CLONE_FILES`), so every fd it leaves in here belongs to the lane afterwards.
#[derive(Debug)]
pub(crate) struct TemplateArgs<'a> {
    pub(crate) ops: &'a [ArchivedSetupOp],
    pub(crate) slots: Slots,
    pub(crate) ns_dir: c_int,
    /// The template's mount namespace, on success.
    pub(crate) mount_ns: c_int,
    pub(crate) failure: Option<Failure>,
}

/// Entry point of a template builder, cloned into a new mount namespace. `arg` is a
/// `*mut TemplateArgs`.
pub(crate) extern "C" fn template_main(arg: *mut c_void) -> c_int {
    // SAFETY: as for `job_main`.
    let args = unsafe { &mut *arg.cast::<TemplateArgs<'_>>() };
    let builder = Step::Template { op: u32::MAX };
    let result = (|| {
        // SAFETY: literal path, plain flags.
        let ns_dir = unsafe {
            libc::open(c"/proc/thread-self/ns".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        };
        args.ns_dir = check(ns_dir.into(), builder)?;
        run_ops(args.ops, &mut args.slots, 0, None, |op| Step::Template { op })?;
        // SAFETY: `ns_dir` is open; the name is a literal.
        let mount_ns =
            unsafe { libc::openat(args.ns_dir, c"mnt".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        args.mount_ns = check(mount_ns.into(), builder)?;
        close(&mut args.ns_dir);
        Ok(())
    })();
    match result {
        Ok(()) => exit(0),
        Err(failure) => {
            args.failure = Some(failure);
            exit(1)
        }
    }
}

/// Inputs and results of a network-namespace maker (shares the lane's fd table).
#[derive(Debug)]
pub(crate) struct NetnsArgs {
    pub(crate) owner_fd: c_int,
    pub(crate) loopback: bool,
    pub(crate) netns: c_int,
    pub(crate) sockstat: c_int,
    pub(crate) sockstat6: c_int,
    /// /proc/net/{dev,snmp,snmp6,ip6_flowlabel}: counters and flow labels, which must read
    /// as they did when the namespace was new (-1 where IPv6 is off).
    pub(crate) traces: [c_int; 4],
    pub(crate) failure: Option<Failure>,
}

/// Entry point of a network-namespace maker: joins the owner user namespace, unshares a network
/// namespace, brings `lo` up if asked, and leaves fds to the namespace, its socket counts, and
/// its traffic counters and flow labels.
pub(crate) extern "C" fn netns_main(arg: *mut c_void) -> c_int {
    // SAFETY: as for `job_main`.
    let args = unsafe { &mut *arg.cast::<NetnsArgs>() };
    let step = Step::CreateNetwork;
    let result = (|| {
        check(setns(args.owner_fd, libc::CLONE_NEWUSER), step)?;
        // SAFETY: as above.
        check(unshare(libc::CLONE_NEWNET), step)?;
        if args.loopback {
            loopback_up(step)?;
        }
        let open = |path: &std::ffi::CStr| {
            // SAFETY: literal paths, plain flags.
            unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }
        };
        args.netns = check(open(c"/proc/thread-self/ns/net").into(), step)?;
        args.sockstat = check(open(c"/proc/thread-self/net/sockstat").into(), step)?;
        args.sockstat6 = open(c"/proc/thread-self/net/sockstat6");
        let traces = [
            c"/proc/thread-self/net/dev",
            c"/proc/thread-self/net/snmp",
            c"/proc/thread-self/net/snmp6",
            c"/proc/thread-self/net/ip6_flowlabel",
        ];
        for (slot, path) in args.traces.iter_mut().zip(traces) {
            *slot = open(path);
        }
        args.traces[0] = check(args.traces[0].into(), step)?;
        args.traces[1] = check(args.traces[1].into(), step)?;
        Ok(())
    })();
    match result {
        Ok(()) => exit(0),
        Err(failure) => {
            args.failure = Some(failure);
            exit(1)
        }
    }
}

/// Sets `lo` up with `SIOC[GS]IFFLAGS` on a unix socket, which (unlike a netlink socket, freed
/// after an RCU grace period) is gone from the namespace's socket count as soon as it closes.
fn loopback_up(step: Step) -> Res {
    // SAFETY: socket takes integers.
    let mut sock =
        check(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }.into(), step)?;
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as c_char;
    }
    // SAFETY: `request` is a live ifreq naming lo; the kernel fills in its flags.
    let result = check(unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &raw mut request) }.into(), step)
        .and_then(|_| {
            // SAFETY: reading and writing the flags member of the union the kernel just filled.
            unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
            // SAFETY: as above.
            check(unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &raw const request) }.into(), step)
        });
    close(&mut sock);
    result.map(drop)
}

/// Inputs and results of an IPC-namespace maker (shares the lane's fd table).
#[derive(Debug)]
pub(crate) struct IpcnsArgs {
    pub(crate) owner_fd: c_int,
    pub(crate) ipcns: c_int,
    /// /proc/sys/kernel/{shm,sem,msg}_next_id of the new namespace, open for reading and
    /// writing, each set to 0.
    pub(crate) next_ids: [c_int; 3],
    /// The root of the namespace's mqueue filesystem.
    pub(crate) mqueue: c_int,
    pub(crate) failure: Option<Failure>,
}

/// Entry point of an IPC-namespace maker: joins the owner user namespace, unshares an IPC
/// namespace, and leaves fds to it and to what tells whether a job ever used it.
///
/// Each kind of System V object has a `next_id` sysctl: the id the next object of that kind
/// gets, then back to -1. Set to 0 here, where a fresh namespace would give 0 anyway, it
/// stays 0 until a job makes an object of that kind; so a namespace whose three are still 0
/// was never used for System V IPC, and has no id counter or cursor a next job could notice.
pub(crate) extern "C" fn ipcns_main(arg: *mut c_void) -> c_int {
    // SAFETY: as for `job_main`.
    let args = unsafe { &mut *arg.cast::<IpcnsArgs>() };
    let step = Step::CreateIpc;
    let result = (|| {
        // SAFETY: setns and unshare take an fd and flags.
        check(setns(args.owner_fd, libc::CLONE_NEWUSER), step)?;
        // A mount namespace of our own too: mounting the namespace's mqueue filesystem takes
        // privilege over the mount namespace, which the lane's is not.
        check(unshare(libc::CLONE_NEWIPC | libc::CLONE_NEWNS), step)?;
        let open = |path: &std::ffi::CStr, flags: c_int| {
            // SAFETY: literal paths, plain flags.
            unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) }
        };
        args.ipcns = check(open(c"/proc/thread-self/ns/ipc", libc::O_RDONLY).into(), step)?;
        let sysctls = [
            c"/proc/sys/kernel/shm_next_id",
            c"/proc/sys/kernel/sem_next_id",
            c"/proc/sys/kernel/msg_next_id",
        ];
        // Where the kernel does not offer them per namespace, the namespace serves one job.
        for (slot, path) in args.next_ids.iter_mut().zip(sysctls) {
            *slot = open(path, libc::O_RDWR);
            // SAFETY: writes one byte of a literal to the fd just opened (or fails on -1).
            if *slot >= 0 && unsafe { libc::write(*slot, c"0".as_ptr().cast(), 1) } != 1 {
                close(slot);
            }
        }
        let mut mount = new_fs(FsKind::Mqueue, 0, step)?;
        // SAFETY: `mount` is the mqueue mount fd; "." opens its root for reading.
        let root = unsafe {
            libc::openat(mount, c".".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
        };
        close(&mut mount);
        args.mqueue = check(root.into(), step)?;
        Ok(())
    })();
    match result {
        Ok(()) => exit(0),
        Err(failure) => {
            args.failure = Some(failure);
            exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_strings_escape_and_format() {
        let mut s = StackString::new();
        assert!(
            s.push(b"lowerdir=")
                && s.push_escaped(b"/a:b,c\\d")
                && s.push_int(0u32)
                && s.push_int(4_294_967_295u32)
        );
        s.finish().unwrap();
        assert_eq!(&s.bytes[..s.len], b"lowerdir=/a\\:b\\,c\\\\d04294967295\0");
    }

    #[test]
    fn stack_strings_refuse_overflow() {
        let mut s = StackString::new();
        assert!(s.push(&[b'x'; 4096]));
        assert!(!s.push(b"y"));
        assert!(s.finish().is_none());
    }

    #[test]
    fn map_lines_point_at_zygote_root() {
        let line = MapLine::new(1000, 0);
        assert_eq!(&line.bytes[..line.len], b"1000 0 1\n");
        let line = MapLine::new(0, 65534);
        assert_eq!(&line.bytes[..line.len], b"0 65534 1\n");
    }
}
