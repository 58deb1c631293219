//! The seccomp policy jobs run under: an allowlist.
//!
//! - The syscalls programs use ([`allowed`]) pass.
//! - What reaches kernel state no test needs, or widens the kernel's reach for exploits,
//!   fails with `EPERM` unless the job's spec allows it by name ([`Allowance`]): io_uring,
//!   ptrace and its kin, the mount API, `userfaultfd`, keyrings, bpf, perf events, and the
//!   creation of user namespaces (`clone`/`unshare` with `CLONE_NEWUSER`, `setns`; `clone3`,
//!   whose flags a filter cannot read, fails with `ENOSYS` so that libc falls back to `clone`).
//! - Anything else fails with `EPERM` if [`NEVER`] names it (modules, kexec, swap, reboot...)
//!   and with `ENOSYS` otherwise, so syscalls newer than this list look absent and libc falls
//!   back to older ones.
//!
//! A syscall of another architecture's ABI kills the process; on x86_64 the x32 ABI is refused
//! with `ENOSYS`.
//!
//! The filter is installed once in each lane, so jobs inherit it at no cost per job (a filter
//! costs tens of microseconds to load). But a job's own setup, which runs in the job process
//! before its exec, needs the mount API and namespaces, as do the lane's helpers. Those calls
//! pass only if they carry the zygote's secret, a random 64-bit value, in their sixth argument,
//! which none of these syscalls uses (see [`sys::gated`](crate::sys)). A job cannot learn it:
//! it lives only in the lanes' memory, which the job's exec leaves behind, and no job can read
//! a lane's memory (another pid namespace, and ptrace denied).
//!
//! A job whose spec allows something is started by the zygote's open lane, whose filter allows
//! everything the allowlist and the allowances name; the job loads its own filter, with what
//! it may use, at the end of its setup.

use maelstrom_wire::zygote::Allowance;
use seccompiler::sock_filter;

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => { &[$((stringify!($name), libc::$name)),*] };
}

/// A syscall by name and number.
pub type Syscall = (&'static str, i64);

/// The syscalls every job may make, on every architecture.
#[rustfmt::skip]
const ALLOWED: &[Syscall] = syscalls![
    SYS_accept, SYS_accept4, SYS_adjtimex, SYS_bind, SYS_brk, SYS_capget, SYS_capset, SYS_chdir,
    SYS_clock_adjtime, SYS_clock_getres, SYS_clock_gettime, SYS_clock_nanosleep, SYS_close,
    SYS_close_range, SYS_connect, SYS_copy_file_range, SYS_dup, SYS_dup3, SYS_epoll_create1,
    SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_pwait2, SYS_eventfd2, SYS_execve, SYS_execveat,
    SYS_exit, SYS_exit_group, SYS_faccessat, SYS_faccessat2, SYS_fadvise64, SYS_fallocate,
    SYS_fchdir, SYS_fchmod, SYS_fchmodat, SYS_fchown, SYS_fchownat, SYS_fcntl, SYS_fdatasync,
    SYS_fgetxattr, SYS_flistxattr, SYS_flock, SYS_fremovexattr, SYS_fsetxattr, SYS_fstat,
    SYS_fstatfs, SYS_fsync, SYS_ftruncate, SYS_futex, SYS_futex_waitv, SYS_get_mempolicy,
    SYS_get_robust_list, SYS_getcpu, SYS_getcwd, SYS_getdents64, SYS_getegid, SYS_geteuid,
    SYS_getgid, SYS_getgroups, SYS_getitimer, SYS_getpeername, SYS_getpgid, SYS_getpid,
    SYS_getppid, SYS_getpriority, SYS_getrandom, SYS_getresgid, SYS_getresuid, SYS_getrusage,
    SYS_getsid, SYS_getsockname, SYS_getsockopt, SYS_gettid, SYS_gettimeofday, SYS_getuid,
    SYS_getxattr, SYS_inotify_add_watch, SYS_inotify_init1, SYS_inotify_rm_watch, SYS_io_cancel,
    SYS_io_destroy, SYS_io_getevents, SYS_io_setup, SYS_io_submit, SYS_ioctl, SYS_ioprio_get,
    SYS_ioprio_set, SYS_kill, SYS_landlock_add_rule, SYS_landlock_create_ruleset,
    SYS_landlock_restrict_self, SYS_lgetxattr, SYS_linkat, SYS_listen, SYS_listxattr,
    SYS_llistxattr, SYS_lremovexattr, SYS_lseek, SYS_lsetxattr, SYS_madvise, SYS_mbind,
    SYS_membarrier, SYS_memfd_create, SYS_memfd_secret, SYS_mincore, SYS_mkdirat, SYS_mknodat,
    SYS_mlock, SYS_mlock2, SYS_mlockall, SYS_mmap, SYS_mprotect, SYS_mq_getsetattr, SYS_mq_notify,
    SYS_mq_open, SYS_mq_timedreceive, SYS_mq_timedsend, SYS_mq_unlink, SYS_mremap, SYS_mseal,
    SYS_msgctl, SYS_msgget, SYS_msgrcv, SYS_msgsnd, SYS_msync, SYS_munlock, SYS_munlockall,
    SYS_munmap, SYS_name_to_handle_at, SYS_nanosleep, SYS_newfstatat, SYS_openat, SYS_openat2,
    SYS_personality, SYS_pidfd_open, SYS_pidfd_send_signal, SYS_pipe2, SYS_pkey_alloc,
    SYS_pkey_free, SYS_pkey_mprotect, SYS_ppoll, SYS_prctl, SYS_pread64, SYS_preadv, SYS_preadv2,
    SYS_prlimit64, SYS_process_mrelease, SYS_pselect6, SYS_pwrite64, SYS_pwritev, SYS_pwritev2,
    SYS_read, SYS_readahead, SYS_readlinkat, SYS_readv, SYS_recvfrom, SYS_recvmmsg, SYS_recvmsg,
    SYS_remap_file_pages, SYS_removexattr, SYS_renameat2, SYS_restart_syscall, SYS_rseq,
    SYS_rt_sigaction, SYS_rt_sigpending, SYS_rt_sigprocmask, SYS_rt_sigqueueinfo,
    SYS_rt_sigreturn, SYS_rt_sigsuspend, SYS_rt_sigtimedwait, SYS_rt_tgsigqueueinfo,
    SYS_sched_get_priority_max, SYS_sched_get_priority_min, SYS_sched_getaffinity,
    SYS_sched_getattr, SYS_sched_getparam, SYS_sched_getscheduler, SYS_sched_rr_get_interval,
    SYS_sched_setaffinity, SYS_sched_setattr, SYS_sched_setparam, SYS_sched_setscheduler,
    SYS_sched_yield, SYS_seccomp, SYS_semctl, SYS_semget, SYS_semop, SYS_semtimedop,
    SYS_sendfile, SYS_sendmmsg, SYS_sendmsg, SYS_sendto, SYS_set_mempolicy, SYS_set_robust_list,
    SYS_set_tid_address, SYS_setdomainname, SYS_setfsgid, SYS_setfsuid, SYS_setgid,
    SYS_setgroups, SYS_sethostname, SYS_setitimer, SYS_setpgid, SYS_setpriority, SYS_setregid,
    SYS_setresgid, SYS_setresuid, SYS_setreuid, SYS_setsid, SYS_setsockopt, SYS_setuid,
    SYS_setxattr, SYS_shmat, SYS_shmctl, SYS_shmdt, SYS_shmget, SYS_shutdown, SYS_sigaltstack,
    SYS_signalfd4, SYS_socket, SYS_socketpair, SYS_splice, SYS_statfs, SYS_statx, SYS_symlinkat,
    SYS_sync, SYS_syncfs, SYS_sysinfo, SYS_tee, SYS_tgkill, SYS_timer_create, SYS_timer_delete,
    SYS_timer_getoverrun, SYS_timer_gettime, SYS_timer_settime, SYS_timerfd_create,
    SYS_timerfd_gettime, SYS_timerfd_settime, SYS_times, SYS_tkill, SYS_truncate, SYS_umask,
    SYS_uname, SYS_unlinkat, SYS_utimensat, SYS_vmsplice, SYS_wait4, SYS_waitid, SYS_write,
    SYS_writev,
];

/// The x86_64 syscalls that newer architectures replaced with the ones above.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const ALLOWED_LEGACY: &[Syscall] = syscalls![
    SYS_access, SYS_alarm, SYS_arch_prctl, SYS_chmod, SYS_chown, SYS_creat, SYS_dup2,
    SYS_epoll_create, SYS_epoll_wait, SYS_eventfd, SYS_fork, SYS_futimesat,
    SYS_get_thread_area, SYS_getdents, SYS_getpgrp, SYS_getrlimit, SYS_inotify_init, SYS_lchown,
    SYS_link, SYS_lstat, SYS_mkdir, SYS_mknod, SYS_open, SYS_pause, SYS_pipe, SYS_poll,
    SYS_readlink, SYS_rename, SYS_renameat, SYS_rmdir, SYS_select, SYS_set_thread_area,
    SYS_setrlimit, SYS_signalfd, SYS_stat, SYS_symlink, SYS_sync_file_range, SYS_time, SYS_unlink,
    SYS_utime, SYS_utimes, SYS_vfork,
];
/// The aarch64 syscalls this version of the libc crate has no constant for.
#[cfg(target_arch = "aarch64")]
const ALLOWED_LEGACY: &[Syscall] = &[("renameat", 38), ("sync_file_range", 84), ("io_pgetevents", 292)];

/// Syscalls newer than the libc crate's constants, with the numbers every architecture shares.
const ALLOWED_NEW: &[Syscall] = &[
    ("cachestat", 451),
    ("fchmodat2", 452),
    ("map_shadow_stack", 453),
    ("futex_wake", 454),
    ("futex_wait", 455),
    ("futex_requeue", 456),
];

/// Refused with `EPERM` to every job, whatever its spec: state the kernel does not namespace.
#[rustfmt::skip]
pub const NEVER: &[Syscall] = syscalls![
    SYS_acct, SYS_delete_module, SYS_finit_module, SYS_init_module, SYS_kexec_file_load,
    SYS_kexec_load, SYS_open_by_handle_at, SYS_quotactl, SYS_reboot, SYS_swapoff, SYS_swapon,
    SYS_syslog, SYS_vhangup, SYS_chroot, SYS_settimeofday, SYS_clock_settime,
];

/// The syscalls an allowance opens (beyond `clone`/`unshare` flags for user namespaces).
pub fn opened_by(allowance: Allowance) -> &'static [Syscall] {
    match allowance {
        Allowance::Capabilities => &[],
        Allowance::UserNamespaces => syscalls![SYS_setns],
        Allowance::IoUring => syscalls![SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register],
        Allowance::Ptrace => syscalls![
            SYS_ptrace,
            SYS_process_vm_readv,
            SYS_process_vm_writev,
            SYS_kcmp,
            SYS_pidfd_getfd,
            SYS_process_madvise
        ],
        Allowance::Mount => syscalls![
            SYS_mount,
            SYS_umount2,
            SYS_pivot_root,
            SYS_fsopen,
            SYS_fsconfig,
            SYS_fsmount,
            SYS_fspick,
            SYS_move_mount,
            SYS_open_tree,
            SYS_mount_setattr
        ],
        Allowance::Userfaultfd => syscalls![SYS_userfaultfd],
        Allowance::Keyrings => syscalls![SYS_add_key, SYS_request_key, SYS_keyctl],
        Allowance::Bpf => syscalls![SYS_bpf],
        Allowance::PerfEvents => syscalls![SYS_perf_event_open],
    }
}

/// The syscalls a job's setup and the lane's helpers make, which pass with the secret.
const GATED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_unshare,
];

/// Every syscall a job may make unconditionally.
pub fn allowed() -> impl Iterator<Item = Syscall> {
    ALLOWED.iter().chain(ALLOWED_LEGACY).chain(ALLOWED_NEW).copied()
}

/// A set of allowances, one bit each ([`Allowance::bit`]).
pub type Allowances = u32;

/// Every allowance.
pub fn all_allowances() -> Allowances {
    Allowance::ALL.iter().fold(0, |bits, a| bits | a.bit())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Allow,
    Errno(i32),
    /// `EPERM` if the flags in the first argument ask for a new user namespace.
    NoNewUser,
}

/// Where a jump goes, until the program's layout is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Label {
    Allow,
    Eperm,
    Enosys,
    NoNewUser,
    Gate,
    Dispatch,
}

enum Insn {
    Plain(sock_filter),
    /// `BPF_JA` to a label.
    Jump(Label),
    Mark(Label),
}

const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const fn seccomp_data_arg(index: u32, high: bool) -> u32 {
    16 + 8 * index + if high { 4 } else { 0 }
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

fn stmt(code: u32, k: u32) -> Insn {
    Insn::Plain(sock_filter { code: code as u16, jt: 0, jf: 0, k })
}

fn jump_if(op: u32, k: u32, jt: u8, jf: u8) -> Insn {
    Insn::Plain(sock_filter { code: (libc::BPF_JMP | op | libc::BPF_K) as u16, jt, jf, k })
}

fn load(offset: u32) -> Insn {
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset)
}

fn ret(value: u32) -> Insn {
    stmt(libc::BPF_RET | libc::BPF_K, value)
}

/// Goes to `label` if the loaded word equals `k`, else on.
fn jump_if_equal(k: u32, label: Label, out: &mut Vec<Insn>) {
    out.push(jump_if(libc::BPF_JEQ, k, 0, 1));
    out.push(Insn::Jump(label));
}

/// The filter for jobs that may use `allowances`. With `secret`, the [`GATED`] syscalls also
/// pass when their sixth argument is the secret.
pub fn program(allowances: Allowances, secret: Option<u64>) -> Vec<sock_filter> {
    let allows = |a: Allowance| allowances & a.bit() != 0;
    let mut special: Vec<(i64, Action)> = Vec::new();
    for nr in NEVER.iter().map(|&(_, nr)| nr) {
        special.push((nr, Action::Errno(libc::EPERM)));
    }
    for allowance in Allowance::ALL {
        let action = if allows(allowance) { Action::Allow } else { Action::Errno(libc::EPERM) };
        special.extend(opened_by(allowance).iter().map(|&(_, nr)| (nr, action)));
    }
    let user = allows(Allowance::UserNamespaces);
    special.push((libc::SYS_clone, if user { Action::Allow } else { Action::NoNewUser }));
    special.push((libc::SYS_unshare, if user { Action::Allow } else { Action::NoNewUser }));
    special.push((libc::SYS_clone3, if user { Action::Allow } else { Action::Errno(libc::ENOSYS) }));

    let mut out = vec![
        load(SECCOMP_DATA_ARCH),
        jump_if(libc::BPF_JEQ, AUDIT_ARCH, 1, 0),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        load(SECCOMP_DATA_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        out.push(jump_if(libc::BPF_JGE, X32_SYSCALL_BIT, 0, 1));
        out.push(Insn::Jump(Label::Enosys));
    }
    if let Some(secret) = secret {
        for &nr in GATED {
            jump_if_equal(nr as u32, Label::Gate, &mut out);
        }
        out.push(Insn::Jump(Label::Dispatch));
        // Both halves compared at once (xor, or), so the time taken tells nothing about a
        // half-right guess.
        out.push(Insn::Mark(Label::Gate));
        out.push(load(seccomp_data_arg(5, false)));
        out.push(stmt(libc::BPF_ALU | libc::BPF_XOR | libc::BPF_K, secret as u32));
        out.push(stmt(libc::BPF_MISC | libc::BPF_TAX, 0));
        out.push(load(seccomp_data_arg(5, true)));
        out.push(stmt(libc::BPF_ALU | libc::BPF_XOR | libc::BPF_K, (secret >> 32) as u32));
        out.push(stmt(libc::BPF_ALU | libc::BPF_OR | libc::BPF_X, 0));
        out.push(jump_if(libc::BPF_JEQ, 0, 0, 1));
        out.push(Insn::Jump(Label::Allow));
        out.push(load(SECCOMP_DATA_NR));
    }
    out.push(Insn::Mark(Label::Dispatch));
    for &(nr, action) in &special {
        let label = match action {
            Action::Allow => Label::Allow,
            Action::Errno(libc::EPERM) => Label::Eperm,
            Action::Errno(_) => Label::Enosys,
            Action::NoNewUser => Label::NoNewUser,
        };
        jump_if_equal(nr as u32, label, &mut out);
    }
    // The allowlist, as ranges of consecutive numbers, in ascending order.
    let mut numbers: Vec<u32> = allowed().map(|(_, nr)| nr as u32).collect();
    numbers.sort_unstable();
    numbers.dedup();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for nr in numbers {
        match ranges.last_mut() {
            Some((_, high)) if *high + 1 == nr => *high = nr,
            _ => ranges.push((nr, nr)),
        }
    }
    for (low, high) in ranges {
        out.push(jump_if(libc::BPF_JGT, high, 3, 0));
        out.push(jump_if(libc::BPF_JGE, low, 0, 1));
        out.push(Insn::Jump(Label::Allow));
        out.push(Insn::Jump(Label::Enosys));
    }
    out.push(Insn::Jump(Label::Enosys));
    out.push(Insn::Mark(Label::NoNewUser));
    out.push(load(seccomp_data_arg(0, false)));
    out.push(jump_if(libc::BPF_JSET, libc::CLONE_NEWUSER as u32, 0, 1));
    out.push(Insn::Jump(Label::Eperm));
    out.push(Insn::Jump(Label::Allow));
    out.push(Insn::Mark(Label::Enosys));
    out.push(ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    out.push(Insn::Mark(Label::Allow));
    out.push(ret(libc::SECCOMP_RET_ALLOW));
    out.push(Insn::Mark(Label::Eperm));
    out.push(ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32));
    assemble(out)
}

/// Lays the program out and resolves its jumps to labels.
fn assemble(insns: Vec<Insn>) -> Vec<sock_filter> {
    let mut at = Vec::new();
    let mut pc = 0u32;
    for insn in &insns {
        match insn {
            Insn::Mark(label) => at.push((*label, pc)),
            _ => pc += 1,
        }
    }
    let target = |label: Label| {
        at.iter().find(|(l, _)| *l == label).map(|&(_, pc)| pc).expect("every label is marked")
    };
    let mut program = Vec::with_capacity(pc as usize);
    for insn in insns {
        match insn {
            Insn::Plain(filter) => program.push(filter),
            Insn::Jump(label) => {
                let here = program.len() as u32;
                let k = target(label) - here - 1;
                program.push(sock_filter { code: (libc::BPF_JMP | libc::BPF_JA) as u16, jt: 0, jf: 0, k });
            }
            Insn::Mark(_) => {}
        }
    }
    program
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_lists_do_not_overlap() {
        let mut seen = BTreeSet::new();
        let opened = Allowance::ALL.iter().flat_map(|&a| opened_by(a).iter());
        for &(name, nr) in allowed().collect::<Vec<_>>().iter().chain(NEVER).chain(opened) {
            assert!(seen.insert(nr), "{name} is listed twice");
        }
        for nr in [libc::SYS_clone, libc::SYS_clone3, libc::SYS_unshare] {
            assert!(!seen.contains(&nr), "{nr} has its own rule");
        }
    }

    #[test]
    fn programs_fit_a_sock_fprog_and_jump_forward_only() {
        for (allowances, secret) in [(0, Some(0x1234_5678_9abc_def0)), (all_allowances(), None), (0, None)] {
            let program = program(allowances, secret);
            assert!(program.len() < 1024, "{} instructions", program.len());
            let last = program.len() as u32 - 1;
            for (pc, insn) in program.iter().enumerate() {
                let pc = pc as u32;
                if u32::from(insn.code) == libc::BPF_JMP | libc::BPF_JA {
                    assert!(pc + insn.k < last, "jump out of the program at {pc}");
                }
            }
            assert_eq!(u32::from(program[program.len() - 1].code), libc::BPF_RET | libc::BPF_K);
        }
    }
}
