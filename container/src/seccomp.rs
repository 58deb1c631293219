//! The seccomp policy every job runs under, compiled once per zygote.
//!
//! The policy is a deny list: it refuses, with `EPERM`, the syscalls that reach state the
//! kernel does not namespace (keyrings, modules, swap, accounting, the clock of the host's
//! kernel log) or that are classic container escapes (`open_by_handle_at`), and lets everything
//! else through. Namespaces and the job's own user namespace do the rest of the isolation.
//! A syscall of another architecture's ABI kills the process (seccompiler's arch check); on
//! x86_64 the x32 ABI is refused with `ENOSYS`.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// The syscalls the policy denies, with `EPERM`.
pub fn denied_syscalls() -> Vec<(&'static str, i64)> {
    let mut denied = vec![
        ("acct", libc::SYS_acct),
        ("add_key", libc::SYS_add_key),
        ("bpf", libc::SYS_bpf),
        ("delete_module", libc::SYS_delete_module),
        ("finit_module", libc::SYS_finit_module),
        ("init_module", libc::SYS_init_module),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("kexec_load", libc::SYS_kexec_load),
        ("keyctl", libc::SYS_keyctl),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("quotactl", libc::SYS_quotactl),
        ("reboot", libc::SYS_reboot),
        ("request_key", libc::SYS_request_key),
        ("swapoff", libc::SYS_swapoff),
        ("swapon", libc::SYS_swapon),
        ("syslog", libc::SYS_syslog),
        ("vhangup", libc::SYS_vhangup),
    ];
    #[cfg(target_arch = "x86_64")]
    denied.extend([("ioperm", libc::SYS_ioperm), ("iopl", libc::SYS_iopl), ("uselib", libc::SYS_uselib)]);
    denied
}

#[cfg(target_arch = "x86_64")]
const TARGET: seccompiler::TargetArch = seccompiler::TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET: seccompiler::TargetArch = seccompiler::TargetArch::aarch64;

/// Compiles the policy to a BPF program.
pub fn compile() -> Result<BpfProgram, seccompiler::BackendError> {
    let rules = denied_syscalls().into_iter().map(|(_, nr)| (nr, Vec::new())).collect::<BTreeMap<_, _>>();
    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), TARGET)?;
    let mut program: BpfProgram = filter.try_into()?;
    refuse_x32(&mut program);
    Ok(program)
}

/// Inserts, right after seccompiler's architecture check, a refusal of x32 syscall numbers,
/// which would otherwise pass the x86_64 arch check under numbers the deny list does not name.
#[cfg(target_arch = "x86_64")]
fn refuse_x32(program: &mut BpfProgram) {
    use libc::{BPF_ABS, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ERRNO};
    use seccompiler::sock_filter;
    const ARCH_CHECK_LEN: usize = 3;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const NR_OFFSET: u32 = 0;
    let insert = [
        sock_filter { code: (BPF_LD | BPF_W | BPF_ABS) as u16, jt: 0, jf: 0, k: NR_OFFSET },
        sock_filter { code: (BPF_JMP | BPF_JGE | BPF_K) as u16, jt: 0, jf: 1, k: X32_SYSCALL_BIT },
        sock_filter {
            code: (BPF_RET | BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
    ];
    // The rest of the program starts by loading the syscall number itself and only jumps forward
    // within itself, so inserting before it leaves every jump offset valid.
    program.splice(ARCH_CHECK_LEN..ARCH_CHECK_LEN, insert);
}

#[cfg(not(target_arch = "x86_64"))]
fn refuse_x32(_program: &mut BpfProgram) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_compiles_and_fits_a_sock_fprog() {
        let program = compile().unwrap();
        assert!(program.len() > denied_syscalls().len());
        assert!(program.len() < usize::from(u16::MAX));
    }

    #[test]
    fn every_denied_syscall_is_distinct() {
        let denied = denied_syscalls();
        let unique: std::collections::BTreeSet<_> = denied.iter().map(|(_, nr)| nr).collect();
        assert_eq!(unique.len(), denied.len());
    }
}
