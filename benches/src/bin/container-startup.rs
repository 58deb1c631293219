//! Load generator for container startup: spawn → exec → exit → reaped through the zygote,
//! beside the floor (posix_spawn + wait of the same static binary) measured in the same run, in
//! alternating blocks so that noise on a shared machine hits both alike.
//!
//! Ends with exactly one line:
//! `container-startup: mode=<m> spawners=<c> p50_us=<n> p99_us=<n> floor_p50_us=<n> ratio=<r> rate_per_s=<n>`

use std::sync::Barrier;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use maelstrom_benches::{Mounts, TrivialContainer};
use maelstrom_container::{JobCgroups, NetworkMode, Share, Zygote, ZygoteConfig};
use maelstrom_wire::zygote::NO_CGROUP;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Disabled,
    Loopback,
    Local,
}

#[derive(Parser, Debug)]
#[command(about = "Measure container startup against posix_spawn in the same run")]
struct Args {
    /// Network mode of the containers.
    #[arg(long, value_enum, default_value = "disabled")]
    mode: Mode,
    /// Containers to start (and floor spawns to make), in total.
    #[arg(long, default_value_t = 4000)]
    count: u64,
    /// Threads spawning at once (one zygote lane each).
    #[arg(long, default_value_t = 1)]
    spawners: usize,
    /// Mounts of the trivial container.
    #[arg(long, value_enum, default_value = "none")]
    mounts: Mounts,
    /// Alternating blocks of floor and container runs.
    #[arg(long, default_value_t = 10)]
    blocks: u64,
    /// Start each container under a worker's limits: rlimits, sized tmpfs mounts, and a job
    /// cgroup per spawner where this process may make them.
    #[arg(long)]
    limits: bool,
    /// A writable root (its changes on a fresh tmpfs, gone with the container).
    #[arg(long)]
    writable: bool,
}

struct Block {
    latencies: Histogram<u64>,
    wall: Duration,
    count: u64,
}

/// Runs `per_spawner` iterations of `once` on each of `spawners` threads at once (`once` is
/// given its spawner's index).
fn block(spawners: usize, per_spawner: u64, once: &(dyn Fn(usize) + Sync)) -> Block {
    let barrier = Barrier::new(spawners);
    let start = Instant::now();
    let histograms: Vec<Histogram<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..spawners)
            .map(|spawner| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
                    barrier.wait();
                    for _ in 0..per_spawner {
                        let t = Instant::now();
                        once(spawner);
                        h.saturating_record(t.elapsed().as_micros() as u64);
                    }
                    h
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("spawner thread")).collect()
    });
    let wall = start.elapsed();
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for h in histograms {
        latencies.add(h).expect("same bounds");
    }
    Block { latencies, wall, count: per_spawner * spawners as u64 }
}

fn main() {
    let args = Args::parse();
    let spawners = args.spawners.max(1);
    let cgroups = if args.limits {
        match JobCgroups::for_slots(spawners, &Share::of(spawners)) {
            Ok(cgroups) => Some(cgroups),
            Err(why) => {
                eprintln!("container-startup: no job cgroups, rlimits and tmpfs sizes only: {why}");
                None
            }
        }
    } else {
        None
    };
    let with_cgroups = cgroups.is_some();
    let zygote = match Zygote::start(ZygoteConfig { lanes: spawners, cgroups }) {
        Ok(z) => z,
        Err(e) => {
            eprintln!("container-startup: cannot start the zygote: {e}");
            std::process::exit(1);
        }
    };
    let network = match args.mode {
        Mode::Disabled => NetworkMode::Disabled,
        Mode::Loopback => NetworkMode::Loopback,
        Mode::Local => NetworkMode::Local,
    };
    let bench = TrivialContainer::new(network, args.mounts, args.writable).unwrap_or_else(|e| {
        eprintln!("container-startup: cannot build the trivial container: {e}");
        std::process::exit(1);
    });
    let share = Share::of(spawners);
    let requests: Vec<_> = (0..spawners)
        .map(|i| match (args.limits, with_cgroups) {
            (false, _) => bench.request.clone(),
            (true, true) => bench.limited(&share, i as u32),
            (true, false) => bench.limited(&share, NO_CGROUP),
        })
        .collect();
    let container = |spawner: usize| {
        bench.spawn_once(&zygote, &requests[spawner]).unwrap_or_else(|e| panic!("container failed: {e}"))
    };
    let floor = |_| bench.floor_once().unwrap_or_else(|e| panic!("floor spawn failed: {e}"));

    // Warm up both paths (templates, pooled network namespaces, page cache).
    block(args.spawners, 50, &container);
    block(args.spawners, 50, &floor);

    let per_spawner = (args.count / args.blocks.max(1) / spawners as u64).max(1);
    let mut totals = [Block::empty(), Block::empty()];
    for _ in 0..args.blocks.max(1) {
        for (total, once) in totals.iter_mut().zip([&floor as &(dyn Fn(usize) + Sync), &container]) {
            total.merge(block(spawners, per_spawner, once));
        }
    }
    let [floor, containers] = totals;
    let p = |b: &Block, q: f64| b.latencies.value_at_quantile(q);
    let rate = |b: &Block| b.count as f64 / b.wall.as_secs_f64();
    eprintln!(
        "floor:      n={} p50={}us p99={}us p999={}us rate={:.0}/s",
        floor.count,
        p(&floor, 0.5),
        p(&floor, 0.99),
        p(&floor, 0.999),
        rate(&floor)
    );
    eprintln!(
        "containers: n={} p50={}us p99={}us p999={}us rate={:.0}/s mounts={:?} writable={}",
        containers.count,
        p(&containers, 0.5),
        p(&containers, 0.99),
        p(&containers, 0.999),
        rate(&containers),
        args.mounts,
        args.writable
    );
    let mode = format!("{:?}", args.mode).to_lowercase();
    println!(
        "container-startup: mode={mode} spawners={spawners} limits={} p50_us={} p99_us={} floor_p50_us={} ratio={:.2} rate_per_s={:.0}",
        match (args.limits, with_cgroups) {
            (false, _) => "off",
            (true, true) => "cgroups",
            (true, false) => "rlimits",
        },
        p(&containers, 0.5),
        p(&containers, 0.99),
        p(&floor, 0.5),
        p(&containers, 0.5) as f64 / p(&floor, 0.5).max(1) as f64,
        rate(&containers)
    );
}

impl Block {
    fn empty() -> Self {
        Block {
            latencies: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            wall: Duration::ZERO,
            count: 0,
        }
    }

    fn merge(&mut self, other: Block) {
        self.latencies.add(other.latencies).expect("same bounds");
        self.wall += other.wall;
        self.count += other.count;
    }
}
