// The isolation probe: a static program that runs inside a container and reports, from the
// inside, what the container lets it see and do. It depends on nothing but std and libc, so a
// layer holding this one file is a complete root.
//
//   probe report [--outside-pid PID] [--host-port PORT]   facts, one `key=value` per line
//   probe serve PORT       connect to 127.0.0.1:PORT and to the abstract unix socket
//                          @probe-PORT, then listen on both; report all four; exit
//   probe hold PORT        listen on both, print "listening", and sleep forever
//   probe timewait PORT    connect to itself on PORT and close first, leaving TIME_WAIT
//   probe ipc-leave        create a System V shm segment, semaphore set and message queue,
//                          and a POSIX message queue /probe, and leave them all behind
//   probe ipc-look         count what of those it can see (needs /proc)
//   probe ipc-churn        create and remove one System V object of each kind
//   probe ipc-first        create one System V object of each kind and report its id
//   probe net-touch        send a datagram to 127.0.0.1 and make an IPv6 flow label that
//                          lingers a minute after its socket closes
//   probe ls DIR           the sorted entries of DIR
//   probe cat FILE         the contents of FILE
//   probe lock FILE MS [MARKER]
//                          take an exclusive flock on FILE without waiting; report `lock=ok`
//                          or `lock=<errno>`; once held, write MARKER (if given) and hold the
//                          lock MS milliseconds
//   probe write FILE TEXT  write TEXT to FILE; report ok or the errno
//   probe exit CODE        exit with CODE
//   probe segfault         die of SIGSEGV
//   probe spew BYTES       write BYTES bytes to stdout
//   probe stderr TEXT      write TEXT to stderr
//   probe stdin            read stdin to its end and print how many bytes came
//   probe say MS TEXT      sleep MS milliseconds, then print TEXT
//   probe hang             sleep forever
//   probe undying          clear the parent-death signal, start a child `probe hang`,
//                          and become `probe hang` too
//   probe orphan           leave a child sleeping forever, then exit 0
//   probe forkbomb CAP [retry]
//                          fork children that sleep until a fork fails or CAP succeeded;
//                          report how many and the errno (children die with the job); with
//                          `retry`, a failed fork is tried again, 2000 times at most, 1 ms apart
//   probe hog MIB          allocate and touch memory 1 MiB at a time, MIB at most; report how
//                          many MiB it held
//   probe fill FILE MIB    write FILE 1 MiB at a time until a write fails or MIB were written;
//                          report the MiB written and the errno (exit 1 if a write failed)
//   probe fds CAP          open /dev/null until it fails or CAP are open; report how many and
//                          the errno (if an open failed: say why on stderr, as a program
//                          would, and exit 1)
//   probe spin SECONDS     burn CPU for SECONDS of wall time at most; report `spun`
//   probe ns               report the network and IPC namespaces it is in (`net`, `ipc`; needs
//                          /proc)
//   probe try WHAT...      try each of: userns, netns, io_uring, ptrace, fsopen, userfaultfd,
//                          clone3, statmount, perf; report `WHAT=ok` or `WHAT=<errno>`;
//                          and `caps=<CapEff>`
//   probe deny WHAT -- PROGRAM ARGS...
//                          run PROGRAM under a seccomp filter that makes io_uring_setup
//                          (WHAT=io_uring) or the creation of user namespaces (WHAT=userns)
//                          fail with EPERM, as on hosts that disable them
//
// Errors are reported as the errno number, so the tests compare them exactly.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::time::Duration;

extern "C" {
    fn getuid() -> u32;
    fn getgid() -> u32;
    fn gethostname(name: *mut u8, len: usize) -> i32;
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    fn syscall(number: i64, ...) -> i64;
    fn kill(pid: i32, signal: i32) -> i32;
    fn fork() -> i32;
    fn clock_gettime(clock: i32, time: *mut [i64; 2]) -> i32;
    fn flock(fd: i32, operation: i32) -> i32;
    fn __errno_location() -> *mut i32;
    fn getrlimit(resource: i32, limit: *mut [u64; 2]) -> i32;
    fn shmget(key: i32, size: usize, flags: i32) -> i32;
    fn semget(key: i32, count: i32, flags: i32) -> i32;
    fn msgget(key: i32, flags: i32) -> i32;
    fn prctl(option: i32, ...) -> i32;
    fn shmctl(id: i32, command: i32, buf: *mut u8) -> i32;
    fn semctl(id: i32, number: i32, command: i32, ...) -> i32;
    fn msgctl(id: i32, command: i32, buf: *mut u8) -> i32;
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const u8, len: u32) -> i32;
}

const IPC_RMID: i32 = 0;

#[repr(C)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

const fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_EPERM: u32 = 0x0005_0000 | 1;
const IO_URING_SETUP: u32 = 425;
#[cfg(target_arch = "x86_64")]
const UNSHARE: u32 = 272;
#[cfg(target_arch = "aarch64")]
const UNSHARE: u32 = 97;
const CLONE_NEWUSER: u32 = 0x1000_0000;

fn deny(what: &str, command: &[String]) -> ! {
    let filter: Vec<SockFilter> = match what {
        "io_uring" => vec![
            bpf(LD_W_ABS, 0, 0, 0),
            bpf(JEQ_K, 1, 0, IO_URING_SETUP),
            bpf(RET_K, 0, 0, RET_ALLOW),
            bpf(RET_K, 0, 0, RET_EPERM),
        ],
        "userns" => vec![
            bpf(LD_W_ABS, 0, 0, 0),
            bpf(JEQ_K, 0, 2, UNSHARE),
            bpf(LD_W_ABS, 0, 0, 16),
            bpf(JSET_K, 1, 0, CLONE_NEWUSER),
            bpf(RET_K, 0, 0, RET_ALLOW),
            bpf(RET_K, 0, 0, RET_EPERM),
        ],
        other => {
            eprintln!("probe: deny what? {other:?}");
            std::process::exit(2);
        }
    };
    let program = SockFprog { len: filter.len() as u16, filter: filter.as_ptr() };
    unsafe {
        assert_eq!(prctl(38, 1i64, 0i64, 0i64, 0i64), 0, "PR_SET_NO_NEW_PRIVS");
        assert_eq!(prctl(22, 2i64, &program as *const SockFprog, 0i64, 0i64), 0, "PR_SET_SECCOMP");
    }
    let error = std::os::unix::process::CommandExt::exec(std::process::Command::new(&command[0]).args(&command[1..]));
    eprintln!("probe: exec {}: {error}", command[0]);
    std::process::exit(127);
}

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const UNSHARE: i64 = 272;
    pub const PTRACE: i64 = 101;
    pub const USERFAULTFD: i64 = 323;
    pub const PERF_EVENT_OPEN: i64 = 298;
    pub const CAPGET: i64 = 125;
}
#[cfg(target_arch = "aarch64")]
mod nr {
    pub const UNSHARE: i64 = 97;
    pub const PTRACE: i64 = 117;
    pub const USERFAULTFD: i64 = 282;
    pub const PERF_EVENT_OPEN: i64 = 241;
    pub const CAPGET: i64 = 90;
}

extern "C" {
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn close(fd: i32) -> i32;
    fn _exit(code: i32) -> !;
}

/// Tries what a default sandbox refuses; `ok` or the errno, one line each.
fn try_each(whats: &[String]) {
    let result = |ret: i64| if ret >= 0 { "ok".to_string() } else { errno().to_string() };
    let fd_result = |ret: i64| {
        if ret >= 0 {
            unsafe { close(ret as i32) };
        }
        result(ret)
    };
    for what in whats {
        let outcome = unsafe {
            match what.as_str() {
                "userns" => result(syscall(nr::UNSHARE, 0x1000_0000i64)),
                "netns" => result(syscall(nr::UNSHARE, 0x4000_0000i64)),
                "io_uring" => {
                    let mut params = [0u8; 120];
                    fd_result(syscall(425, 1i64, params.as_mut_ptr()))
                }
                "ptrace" => {
                    let child = fork();
                    if child == 0 {
                        let ret = syscall(nr::PTRACE, 0i64, 0i64, 0i64, 0i64);
                        _exit(if ret == 0 { 0 } else { errno() });
                    }
                    let mut status = 0;
                    waitpid(child, &mut status, 0);
                    let code = (status >> 8) & 0xff;
                    if code == 0 { "ok".into() } else { code.to_string() }
                }
                "fsopen" => fd_result(syscall(430, c"tmpfs".as_ptr(), 0i64)),
                "userfaultfd" => fd_result(syscall(nr::USERFAULTFD, 0o2000001i64)),
                "clone3" => result(syscall(435, 0i64, 0i64)),
                "statmount" => result(syscall(457, 0i64, 0i64, 0i64, 0i64)),
                "perf" => fd_result(syscall(nr::PERF_EVENT_OPEN, 0i64, 0i64, -1i64, -1i64, 0i64)),
                other => {
                    eprintln!("probe: try what? {other:?}");
                    std::process::exit(2);
                }
            }
        };
        println!("{what}={outcome}");
    }
    // capget, v3: effective sets of the two 32-bit halves.
    let header = [0x2008_0522u32, 0];
    let mut data = [0u32; 6];
    let ret = unsafe { syscall(nr::CAPGET, header.as_ptr(), data.as_mut_ptr()) };
    let caps = if ret == 0 { format!("{:016x}", u64::from(data[3]) << 32 | u64::from(data[0])) } else { errno().to_string() };
    println!("caps={caps}");
}

const IPC_CREAT: i32 = 0o1000;
#[cfg(target_arch = "x86_64")]
const SYS_MQ_OPEN: i64 = 240;
#[cfg(target_arch = "aarch64")]
const SYS_MQ_OPEN: i64 = 180;
const O_RDWR: i64 = 2;
const O_CREAT: i64 = 0o100;

const RLIMIT_CORE: i32 = 4;

const F_GETFD: i32 = 1;
#[cfg(target_arch = "x86_64")]
const SYS_KEYCTL: i64 = 250;
#[cfg(target_arch = "aarch64")]
const SYS_KEYCTL: i64 = 219;
const KEYCTL_GET_KEYRING_ID: i64 = 0;
const KEY_SPEC_SESSION_KEYRING: i64 = -3;

fn errno() -> i32 {
    unsafe { *__errno_location() }
}

fn code(e: &io::Error) -> String {
    e.raw_os_error().map_or_else(|| format!("{:?}", e.kind()), |n| n.to_string())
}

fn entries(dir: &str) -> String {
    match std::fs::read_dir(dir) {
        Ok(list) => {
            let mut names: Vec<String> = list.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            names.join(",")
        }
        Err(e) => format!("error:{}", code(&e)),
    }
}

fn writable(dir: &str) -> String {
    let path = format!("{}/.probe-write", dir.trim_end_matches('/'));
    match std::fs::write(&path, b"x") {
        Ok(()) => {
            let _ = std::fs::remove_file(&path);
            "yes".into()
        }
        Err(e) => format!("no:{}", code(&e)),
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn report(args: &[String]) {
    let mut out = String::new();
    let mut fact = |key: &str, value: String| out.push_str(&format!("{key}={value}\n"));
    fact("pid", std::process::id().to_string());
    fact("ppid", std::os::unix::process::parent_id().to_string());
    fact("uid", unsafe { getuid() }.to_string());
    fact("gid", unsafe { getgid() }.to_string());
    let mut name = [0u8; 256];
    unsafe { gethostname(name.as_mut_ptr(), name.len()) };
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    fact("hostname", String::from_utf8_lossy(&name[..end]).into_owned());
    fact("cwd", std::env::current_dir().map_or_else(|e| format!("error:{}", code(&e)), |d| d.display().to_string()));
    let mut env: Vec<String> = std::env::vars_os().map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())).collect();
    env.sort();
    fact("env", env.join("\u{1f}"));
    let fds: Vec<String> = (0..1024).filter(|&fd| unsafe { fcntl(fd, F_GETFD) } >= 0).map(|fd: i32| fd.to_string()).collect();
    fact("fds", fds.join(","));
    fact("root", entries("/"));
    fact("root_writable", writable("/"));
    if std::path::Path::new("/tmp").is_dir() {
        fact("tmp", entries("/tmp"));
        fact("tmp_writable", writable("/tmp"));
        let _ = std::fs::write("/tmp/left-by-probe", b"x");
    }
    let mut limit = [u64::MAX; 2];
    unsafe { getrlimit(RLIMIT_CORE, &mut limit) };
    fact("rlimit_core", format!("{},{}", limit[0], limit[1]));
    for (name, resource) in [("rlimit_nproc", 6), ("rlimit_nofile", 7)] {
        let mut limit = [u64::MAX; 2];
        unsafe { getrlimit(resource, &mut limit) };
        fact(name, format!("{},{}", limit[0], limit[1]));
    }
    if let Ok(sockstat) = std::fs::read_to_string("/proc/net/sockstat") {
        fact("sockstat", sockstat.lines().take(2).collect::<Vec<_>>().join(";"));
    }
    if std::path::Path::new("/proc/self").exists() {
        let pids: Vec<String> = entries("/proc").split(',').filter(|e| e.bytes().all(|b| b.is_ascii_digit())).map(String::from).collect();
        fact("proc_pids", pids.join(","));
    }
    let ret = unsafe { syscall(SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0i64) };
    fact("keyctl", if ret >= 0 { "allowed".into() } else { errno().to_string() });
    if let Some(pid) = flag(args, "--outside-pid") {
        let ret = unsafe { kill(pid.parse().unwrap_or(0), 0) };
        fact("kill_outside", if ret == 0 { "allowed".into() } else { errno().to_string() });
    }
    // Binding 127.0.0.1 succeeds even with lo down; only a connection tells.
    let lo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|listener| {
        let address = listener.local_addr()?;
        TcpStream::connect_timeout(&address, Duration::from_secs(2))
    });
    fact("lo", match lo {
        Ok(_) => "up".into(),
        Err(e) => format!("down:{}", code(&e)),
    });
    if let Some(port) = flag(args, "--host-port") {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port.parse().unwrap_or(1)));
        fact("connect_host", match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
            Ok(_) => "connected".into(),
            Err(e) => code(&e),
        });
    }
    print!("{out}");
}

fn unix_name(port: u16) -> UnixAddr {
    UnixAddr::from_abstract_name(format!("probe-{port}")).expect("a short abstract name")
}

fn serve(port: u16) {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let connect = match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
        Ok(_) => "connected".into(),
        Err(e) => code(&e),
    };
    let listen = match TcpListener::bind(address) {
        Ok(_listener) => "ok".into(),
        Err(e) => code(&e),
    };
    let unix_connect = match UnixStream::connect_addr(&unix_name(port)) {
        Ok(_) => "connected".into(),
        Err(e) => code(&e),
    };
    let unix_listen = match UnixListener::bind_addr(&unix_name(port)) {
        Ok(_listener) => "ok".into(),
        Err(e) => code(&e),
    };
    println!("connect={connect}\nlisten={listen}\nunix_connect={unix_connect}\nunix_listen={unix_listen}");
}

fn hold(port: u16) -> ! {
    let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
    let unix = UnixListener::bind_addr(&unix_name(port));
    println!("tcp={}\nunix={}", tcp.is_ok(), unix.is_ok());
    println!("listening");
    let _ = io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn timewait(port: u16) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("listen");
    let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    drop(server);
    std::thread::sleep(Duration::from_millis(50));
    drop(client);
    std::thread::sleep(Duration::from_millis(50));
    println!("closed");
}

fn ipc_leave() {
    let shm = unsafe { shmget(0, 4096, IPC_CREAT | 0o600) };
    let sem = unsafe { semget(0, 1, IPC_CREAT | 0o600) };
    let msg = unsafe { msgget(0, IPC_CREAT | 0o600) };
    let mq = unsafe { syscall(SYS_MQ_OPEN, c"probe".as_ptr(), O_RDWR | O_CREAT, 0o600i64, 0i64) };
    println!("shm={}\nsem={}\nmsg={}\nmq={}", shm >= 0, sem >= 0, msg >= 0, mq >= 0);
}

fn ipc_look() {
    for kind in ["shm", "sem", "msg"] {
        let lines = std::fs::read_to_string(format!("/proc/sysvipc/{kind}")).map_or(0, |t| t.lines().count());
        println!("{kind}={}", lines.saturating_sub(1));
    }
    let mq = unsafe { syscall(SYS_MQ_OPEN, c"probe".as_ptr(), O_RDWR, 0i64, 0i64) };
    println!("mq={}", if mq >= 0 { "found".to_string() } else { errno().to_string() });
}

/// One System V object of each kind, made under a private key: (kind, id or -errno).
fn ipc_make() -> [(&'static str, i32); 3] {
    let id = |n: i32| if n >= 0 { n } else { -errno() };
    unsafe {
        [
            ("shm", id(shmget(0, 4096, IPC_CREAT | 0o600))),
            ("sem", id(semget(0, 1, IPC_CREAT | 0o600))),
            ("msg", id(msgget(0, IPC_CREAT | 0o600))),
        ]
    }
}

fn ipc_remove(made: &[(&str, i32)]) {
    for &(kind, id) in made.iter().filter(|(_, id)| *id >= 0) {
        let removed = unsafe {
            match kind {
                "shm" => shmctl(id, IPC_RMID, std::ptr::null_mut()),
                "sem" => semctl(id, 0, IPC_RMID),
                _ => msgctl(id, IPC_RMID, std::ptr::null_mut()),
            }
        };
        assert_eq!(removed, 0, "remove {kind} {id}: errno {}", errno());
    }
}

fn net_touch() {
    let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|s| s.send_to(b"x", (Ipv4Addr::LOCALHOST, 9)));
    println!("udp={}", udp.map_or_else(|e| code(&e), |_| "sent".into()));
    // struct in6_flowlabel_req: destination ::1, label 0xabcde, action GET, share EXCL,
    // flags CREATE, linger 60 s.
    let mut request = [0u8; 32];
    request[15] = 1;
    request[16..20].copy_from_slice(&0xabcde_u32.to_be_bytes());
    request[21] = 1;
    request[22..24].copy_from_slice(&1u16.to_ne_bytes());
    request[26..28].copy_from_slice(&60u16.to_ne_bytes());
    let fd = unsafe { socket(10, 2, 0) };
    let made = if fd < 0 { -errno() } else { unsafe { setsockopt(fd, 41, 32, request.as_ptr(), 32) } };
    println!("flowlabel={}", if made == 0 { "made".to_string() } else { errno().to_string() });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "report" => report(&args),
        "serve" => serve(arg(1).parse().expect("serve PORT")),
        "hold" => hold(arg(1).parse().expect("hold PORT")),
        "timewait" => timewait(arg(1).parse().expect("timewait PORT")),
        "ls" => println!("{}", entries(&arg(1))),
        "ipc-leave" => ipc_leave(),
        "try" => try_each(args.get(1..).unwrap_or_default()),
        "deny" => deny(&arg(1), args.get(3..).unwrap_or_default()),
        "ipc-look" => ipc_look(),
        "ipc-churn" => {
            let made = ipc_make();
            ipc_remove(&made);
            println!("churned");
        }
        "ipc-first" => {
            let made = ipc_make();
            for (kind, id) in made {
                println!("{kind}_id={id}");
            }
            ipc_remove(&made);
        }
        "net-touch" => net_touch(),
        "ns" => {
            for kind in ["net", "ipc"] {
                let link = std::fs::read_link(format!("/proc/self/ns/{kind}")).expect("read the namespace link");
                println!("{kind}={}", link.display());
            }
        }
        "lock" => {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(arg(1)).expect("open the file to lock");
            const LOCK_EX: i32 = 2;
            const LOCK_NB: i32 = 4;
            if unsafe { flock(file.as_raw_fd(), LOCK_EX | LOCK_NB) } != 0 {
                println!("lock={}", code(&io::Error::last_os_error()));
                return;
            }
            println!("lock=ok");
            if !arg(3).is_empty() {
                std::fs::write(arg(3), "locked").expect("write the marker");
            }
            std::thread::sleep(Duration::from_millis(arg(2).parse().unwrap_or(0)));
        }
        "cat" => match std::fs::read(arg(1)) {
            Ok(bytes) => io::stdout().write_all(&bytes).expect("stdout"),
            Err(e) => println!("error:{}", code(&e)),
        },
        "write" => match std::fs::write(arg(1), arg(2)) {
            Ok(()) => println!("ok"),
            Err(e) => println!("error:{}", code(&e)),
        },
        "owner" => match std::fs::symlink_metadata(arg(1)) {
            Ok(metadata) => println!("{}", std::os::unix::fs::MetadataExt::uid(&metadata)),
            Err(e) => println!("error:{}", code(&e)),
        },
        "mkdir" => match std::fs::create_dir(arg(1)) {
            Ok(()) => println!("ok"),
            Err(e) => println!("error:{}", code(&e)),
        },
        "exit" => std::process::exit(arg(1).parse().expect("exit CODE")),
        "segfault" => unsafe { std::ptr::null_mut::<u8>().write_volatile(1) },
        "spew" => {
            let total: usize = arg(1).parse().expect("spew BYTES");
            let chunk = vec![b'x'; 65536];
            let mut out = io::stdout().lock();
            let mut left = total;
            while left > 0 {
                let n = left.min(chunk.len());
                if out.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
        }
        "stderr" => eprint!("{}", arg(1)),
        "stdin" => {
            let mut bytes = Vec::new();
            let read = io::Read::read_to_end(&mut io::stdin(), &mut bytes);
            println!("{}", read.map_or_else(|e| format!("error:{}", code(&e)), |n| n.to_string()));
        }
        "say" => {
            std::thread::sleep(Duration::from_millis(arg(1).parse().unwrap_or(0)));
            println!("{}", arg(2));
        }
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        "undying" => {
            unsafe { prctl(1, 0i64) };
            let me = "/bin/probe";
            let child = std::process::Command::new(me).args(["hang"]).args(&args[1..]).spawn();
            child.expect("start a child");
            let error = std::os::unix::process::CommandExt::exec(std::process::Command::new(me).args(["hang"]).args(&args[1..]));
            eprintln!("probe: exec myself: {error}");
            std::process::exit(127);
        }
        "forkbomb" => {
            let cap: u32 = arg(1).parse().expect("forkbomb CAP");
            let mut retries = if arg(2) == "retry" { 2000 } else { 0 };
            let mut forked = 0;
            let mut failed = "none".to_string();
            while forked < cap {
                match unsafe { fork() } {
                    0 => loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    },
                    pid if pid < 0 && retries > 0 => {
                        retries -= 1;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    pid if pid < 0 => {
                        failed = errno().to_string();
                        break;
                    }
                    _ => forked += 1,
                }
            }
            println!("forked={forked}\nerrno={failed}");
        }
        "hog" => {
            let cap: usize = arg(1).parse().expect("hog MIB");
            let mut held: Vec<Vec<u8>> = Vec::new();
            while held.len() < cap {
                // Touched page by page, so the memory is really held.
                held.push(vec![1u8; 1 << 20]);
            }
            println!("hogged={}", held.len());
        }
        "fill" => {
            let cap: usize = arg(2).parse().expect("fill FILE MIB");
            let chunk = vec![b'x'; 1 << 20];
            let mut file = std::fs::File::create(arg(1)).expect("create the file");
            let mut written = 0;
            let mut failed = "none".to_string();
            while written < cap {
                match file.write_all(&chunk) {
                    Ok(()) => written += 1,
                    Err(e) => {
                        failed = code(&e);
                        break;
                    }
                }
            }
            println!("filled={written}\nerrno={failed}");
            if failed != "none" {
                std::process::exit(1);
            }
        }
        "fds" => {
            let cap: usize = arg(1).parse().expect("fds CAP");
            let mut open = Vec::new();
            let mut failed = None;
            while open.len() < cap {
                match std::fs::File::open("/dev/null") {
                    Ok(file) => open.push(file),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let errno = failed.as_ref().map_or("none".to_owned(), code);
            println!("opened={}\nerrno={errno}", open.len());
            if let Some(e) = failed {
                eprintln!("open /dev/null: {e}");
                std::process::exit(1);
            }
        }
        "child-hog" => {
            // A child that holds MIB and spins until it has used MS milliseconds of CPU (however
            // loaded the machine); this process reaps it.
            let (mib, ms): (usize, i64) = (arg(1).parse().expect("child-hog MIB MS"), arg(2).parse().expect("MS"));
            let child = unsafe { fork() };
            if child == 0 {
                let held: Vec<Vec<u8>> = (0..mib).map(|_| vec![1u8; 1 << 20]).collect();
                const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
                let used_ms = || {
                    let mut time = [0i64; 2];
                    unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut time) };
                    time[0] * 1000 + time[1] / 1_000_000
                };
                let mut x = 0u64;
                while used_ms() < ms {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                std::hint::black_box(&held);
                std::process::exit(0);
            }
            let mut status = 0;
            unsafe { waitpid(child, &mut status, 0) };
            println!("reaped");
        }
        "spin" => {
            let until = std::time::Instant::now() + Duration::from_secs(arg(1).parse().expect("spin SECONDS"));
            let mut x = 0u64;
            while std::time::Instant::now() < until {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            println!("spun");
        }
        "orphan" => {
            if unsafe { fork() } == 0 {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            println!("left a child behind");
        }
        other => {
            eprintln!("probe: unknown command {other:?}");
            std::process::exit(2);
        }
    }
}
