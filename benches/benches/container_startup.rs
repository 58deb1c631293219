//! Criterion bench: spawn → exec → exit → reaped of a static trivial binary through the zygote,
//! per network mode, beside the floor (posix_spawn + wait of the same binary) in the same run.

use criterion::Criterion;
use maelstrom_benches::{Mounts, TrivialContainer};
use maelstrom_container::{NetworkMode, Zygote, ZygoteConfig};

fn main() {
    // The zygote must fork before criterion (or anything) starts a thread.
    let zygote = Zygote::start(ZygoteConfig { lanes: 1, cgroups: None }).expect("start the zygote");
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("container_startup");
    let floor = TrivialContainer::new(NetworkMode::Local, Mounts::None, false).expect("trivial container");
    group.bench_function("floor_posix_spawn", |b| b.iter(|| floor.floor_once().expect("spawn")));
    for (name, network) in [
        ("disabled", NetworkMode::Disabled),
        ("loopback", NetworkMode::Loopback),
        ("local", NetworkMode::Local),
    ] {
        for mounts in [Mounts::None, Mounts::Typical] {
            let bench = TrivialContainer::new(network, mounts, false).expect("trivial container");
            let id = format!("zygote_{name}_{}", if mounts == Mounts::None { "bare" } else { "typical" });
            group.bench_function(id, |b| b.iter(|| bench.container_once(&zygote).expect("container")));
        }
    }
    group.finish();
    criterion.final_summary();
}
