//! Network modes, and hermeticity of the pooled network and IPC namespaces: nothing one job
//! leaves behind (a listener, a connection in TIME_WAIT, an IPC object) is visible to the next.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsFd;

use maelstrom_container::{Mount, NetworkMode, Spec};

use crate::{Case, Ctx, Layer, expect_fact, facts, probe, report, run};

pub const CASES: &[(&str, Case)] = &[
    ("network::host_listener_is_unreachable_unless_local", host_listener_is_unreachable_unless_local),
    ("network::lo_is_down_when_disabled_and_up_with_loopback", lo_is_down_when_disabled_and_up_with_loopback),
    ("network::a_listener_is_never_visible_to_the_next_job", a_listener_is_never_visible_to_the_next_job),
    (
        "network::a_running_jobs_listener_is_invisible_to_others",
        a_running_jobs_listener_is_invisible_to_others,
    ),
    ("network::time_wait_is_never_inherited", time_wait_is_never_inherited),
    ("network::ipc_objects_are_never_inherited", ipc_objects_are_never_inherited),
    ("network::namespace_sysctls_are_read_only", namespace_sysctls_are_read_only),
    ("network::system_v_ids_start_afresh_in_every_job", system_v_ids_start_afresh_in_every_job),
    ("network::counters_and_flow_labels_are_never_inherited", counters_and_flow_labels_are_never_inherited),
    ("network::clean_namespaces_are_used_again", clean_namespaces_are_used_again),
];

/// Set in the environment of this binary run to check namespace reuse alone (see below).
pub const REUSE_CHECK: &str = "MAELSTROM_CONTAINER_REUSE_CHECK";

/// A job that leaves no trace gives its network and IPC namespaces back for the next job, which
/// is what makes them cheap: checked off the lane's way, or by the lane itself when it needs
/// one. Run in a process of its own, with a zygote of its own, so no other test's jobs take
/// them.
fn clean_namespaces_are_used_again(_: &Ctx) -> anyhow::Result<()> {
    let out = std::process::Command::new(std::env::current_exe()?).env(REUSE_CHECK, "1").output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The other half of [`clean_namespaces_are_used_again`], first thing in `main`.
pub fn reuse_check() -> anyhow::Result<()> {
    let zygote =
        maelstrom_container::Zygote::start(maelstrom_container::ZygoteConfig { lanes: 1, cgroups: None })?;
    let own = Ctx { zygote };
    let layer = Layer::new();
    let mut spec = probe(&layer, &["ns"]);
    spec.mounts = vec![Mount::Proc { target: "/proc".into() }];
    const JOBS: usize = 4;
    let (mut nets, mut ipcs) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for _ in 0..JOBS {
        let facts = report(&own, &spec)?;
        nets.insert(facts.get("net").cloned().unwrap_or_default());
        ipcs.insert(facts.get("ipc").cloned().unwrap_or_default());
    }
    anyhow::ensure!(nets.len() < JOBS, "no network namespace was used again: {nets:?}");
    // Before Linux 5.19 (or without checkpoint/restore) the System V id cursors are not kept per
    // namespace, and an IPC namespace serves one job only.
    let per_namespace_ids = std::fs::read_to_string("/proc/sys/kernel/osrelease").is_ok_and(|release| {
        let mut numbers = release.split(['.', '-']).map(|n| n.trim().parse::<u32>().unwrap_or(0));
        (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (5, 19)
    }) && std::path::Path::new("/proc/sys/kernel/shm_next_id").exists();
    anyhow::ensure!(!per_namespace_ids || ipcs.len() < JOBS, "no IPC namespace was used again: {ipcs:?}");
    Ok(())
}

fn with_network(mut spec: Spec, network: NetworkMode) -> Spec {
    spec.network = network;
    spec
}

fn host_listener_is_unreachable_unless_local(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port().to_string();
    let spec = probe(&layer, &["report", "--host-port", &port]);
    let expected = [
        (NetworkMode::Disabled, libc::ENETUNREACH.to_string()),
        (NetworkMode::Loopback, libc::ECONNREFUSED.to_string()),
        (NetworkMode::Local, "connected".to_string()),
    ];
    for (network, outcome) in expected {
        let facts = report(ctx, &with_network(spec.clone(), network))?;
        expect_fact(&facts, "connect_host", &outcome)
            .map_err(|e| e.context(format!("network {network:?}")))?;
    }
    Ok(())
}

fn lo_is_down_when_disabled_and_up_with_loopback(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let spec = probe(&layer, &["report"]);
    expect_fact(
        &report(ctx, &with_network(spec.clone(), NetworkMode::Disabled))?,
        "lo",
        &format!("down:{}", libc::ENETUNREACH),
    )?;
    expect_fact(&report(ctx, &with_network(spec, NetworkMode::Loopback))?, "lo", "up")
}

fn serve_facts(
    ctx: &Ctx,
    layer: &Layer,
    port: u16,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let done = run(ctx, &with_network(probe(layer, &["serve", &port.to_string()]), NetworkMode::Loopback))?;
    Ok(facts(&done.stdout.bytes))
}

fn expect_nothing_listening(facts: &std::collections::BTreeMap<String, String>) -> anyhow::Result<()> {
    let refused = libc::ECONNREFUSED.to_string();
    expect_fact(facts, "connect", &refused)?;
    expect_fact(facts, "listen", "ok")?;
    expect_fact(facts, "unix_connect", &refused)?;
    expect_fact(facts, "unix_listen", "ok")
}

fn a_listener_is_never_visible_to_the_next_job(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    // Each job listens on the port and exits; namespaces are pooled, so later jobs often get
    // the very namespace an earlier one listened in.
    for round in 0..20 {
        expect_nothing_listening(&serve_facts(ctx, &layer, 4000)?)
            .map_err(|e| e.context(format!("round {round}")))?;
    }
    Ok(())
}

fn a_running_jobs_listener_is_invisible_to_others(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let hold =
        maelstrom_container::compile(&with_network(probe(&layer, &["hold", "4001"]), NetworkMode::Loopback))?;
    let (read, write) = maelstrom_container::pipe()?;
    let devnull = std::fs::File::options().write(true).open("/dev/null")?;
    let mut holder = ctx.zygote.spawn(&hold, write.as_fd(), devnull.as_fd())?;
    drop(write);
    let mut lines = BufReader::new(std::fs::File::from(read)).lines();
    let mut told = Vec::new();
    for line in lines.by_ref() {
        let line = line?;
        let done = line == "listening";
        told.push(line);
        if done {
            break;
        }
    }
    anyhow::ensure!(told == ["tcp=true", "unix=true", "listening"], "holder said {told:?}");
    for _ in 0..4 {
        expect_nothing_listening(&serve_facts(ctx, &layer, 4001)?)?;
    }
    holder.kill()?;
    holder.wait()?;
    Ok(())
}

fn time_wait_is_never_inherited(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let mut leave = with_network(probe(&layer, &["timewait", "4002"]), NetworkMode::Loopback);
    leave.mounts = vec![Mount::Proc { target: "/proc".into() }];
    let look = Spec { arguments: vec!["report".into()], ..leave.clone() };
    for round in 0..4 {
        let done = run(ctx, &leave)?;
        anyhow::ensure!(
            done.stdout.bytes == b"closed\n",
            "round {round}: {:?}",
            String::from_utf8_lossy(&done.stdout.bytes)
        );
        let facts = report(ctx, &look)?;
        let sockstat = facts.get("sockstat").cloned().unwrap_or_default();
        anyhow::ensure!(
            sockstat.contains(";TCP: inuse 0 ") && sockstat.contains(" tw 0 "),
            "round {round}: a new job's network is not empty: {sockstat}"
        );
    }
    Ok(())
}

fn ipc_objects_are_never_inherited(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let mut leave = probe(&layer, &["ipc-leave"]);
    leave.mounts = vec![Mount::Proc { target: "/proc".into() }];
    let look = Spec { arguments: vec!["ipc-look".into()], ..leave.clone() };
    for round in 0..4 {
        let left = facts(&run(ctx, &leave)?.stdout.bytes);
        for kind in ["shm", "sem", "msg", "mq"] {
            expect_fact(&left, kind, "true")
                .map_err(|e| e.context(format!("round {round}: could not leave {kind}")))?;
        }
        let seen = facts(&run(ctx, &look)?.stdout.bytes);
        for kind in ["shm", "sem", "msg"] {
            expect_fact(&seen, kind, "0").map_err(|e| e.context(format!("round {round}")))?;
        }
        expect_fact(&seen, "mq", &libc::ENOENT.to_string())
            .map_err(|e| e.context(format!("round {round}")))?;
    }
    Ok(())
}

/// Runs `first` twice, then `then` twice, so that each of the test zygote's two lanes runs a
/// `then` after a `first`, and returns the `then`s' stdout.
fn after(ctx: &Ctx, first: &Spec, then: &Spec) -> anyhow::Result<Vec<String>> {
    for _ in 0..2 {
        run(ctx, first)?;
    }
    (0..2).map(|_| Ok(String::from_utf8_lossy(&run(ctx, then)?.stdout.bytes).into_owned())).collect()
}

/// A job that made and removed System V objects leaves nothing listed, but the kernel's id
/// cursor moved: the next job's first ids must still be those of a new namespace.
fn system_v_ids_start_afresh_in_every_job(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    let churn = probe(&layer, &["ipc-churn"]);
    let first = probe(&layer, &["ipc-first"]);
    for round in 0..3 {
        for seen in after(ctx, &churn, &first)? {
            anyhow::ensure!(seen == "shm_id=0\nsem_id=0\nmsg_id=0\n", "round {round}: {seen:?}");
        }
    }
    Ok(())
}

/// Traffic on `lo` and a lingering IPv6 flow label are traces of a job in its network namespace:
/// the next job must see neither.
fn counters_and_flow_labels_are_never_inherited(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    for network in [NetworkMode::Loopback, NetworkMode::Disabled] {
        let mut touch = with_network(probe(&layer, &["net-touch"]), network);
        touch.mounts = vec![Mount::Proc { target: "/proc".into() }];
        let touched = facts(&run(ctx, &touch)?.stdout.bytes);
        expect_fact(&touched, "flowlabel", "made").map_err(|e| e.context(format!("network {network:?}")))?;
        let udp =
            if network == NetworkMode::Loopback { "sent".to_owned() } else { libc::ENETUNREACH.to_string() };
        expect_fact(&touched, "udp", &udp).map_err(|e| e.context(format!("network {network:?}")))?;
        let cat = |file: &str| Spec { arguments: vec!["cat".into(), file.into()], ..touch.clone() };
        for labels in after(ctx, &touch, &cat("/proc/net/ip6_flowlabel"))? {
            anyhow::ensure!(
                labels.lines().count() == 1,
                "network {network:?}: a flow label was inherited:\n{labels}"
            );
        }
        for snmp in after(ctx, &touch, &cat("/proc/net/snmp"))? {
            for (row, counter) in [("Ip:", "OutNoRoutes"), ("Udp:", "OutDatagrams")] {
                let value = snmp_counter(&snmp, row, counter);
                anyhow::ensure!(
                    value == Some(0),
                    "network {network:?}: {row} {counter} was inherited: {value:?}"
                );
            }
        }
        for dev in after(ctx, &touch, &cat("/proc/net/dev"))? {
            let lo = dev.lines().find(|l| l.trim_start().starts_with("lo:")).unwrap_or_default().to_owned();
            let counters: Vec<&str> = lo.split_whitespace().skip(1).collect();
            anyhow::ensure!(
                counters.len() == 16 && counters.iter().all(|c| *c == "0"),
                "network {network:?}: lo's counters were inherited: {lo:?}"
            );
        }
    }
    Ok(())
}

/// A counter of `/proc/net/snmp`: `row` is a header line of names then a line of values.
fn snmp_counter(snmp: &str, row: &str, counter: &str) -> Option<u64> {
    let mut rows = snmp.lines().filter(|l| l.starts_with(row));
    let (names, values) = (rows.next()?, rows.next()?);
    let at = names.split_whitespace().position(|n| n == counter)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

fn namespace_sysctls_are_read_only(ctx: &Ctx) -> anyhow::Result<()> {
    let layer = Layer::new();
    for (network, sysctl) in [
        (NetworkMode::Loopback, "/proc/sys/net/ipv4/ip_local_port_range"),
        (NetworkMode::Disabled, "/proc/sys/kernel/msgmax"),
    ] {
        let mut spec = with_network(probe(&layer, &["write", sysctl, "2000 3000"]), network);
        spec.mounts = vec![Mount::Proc { target: "/proc".into() }];
        let done = run(ctx, &spec)?;
        let said = String::from_utf8_lossy(&done.stdout.bytes).trim().to_owned();
        anyhow::ensure!(said.starts_with("error:"), "a job could write {sysctl}: {said}");
    }
    Ok(())
}
