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
use maelstrom_container::{NetworkMode, Zygote, ZygoteConfig};

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
}

struct Block {
    latencies: Histogram<u64>,
    wall: Duration,
    count: u64,
}

/// Runs `per_spawner` iterations of `once` on each of `spawners` threads at once.
fn block(spawners: usize, per_spawner: u64, once: &(dyn Fn() + Sync)) -> Block {
    let barrier = Barrier::new(spawners);
    let start = Instant::now();
    let histograms: Vec<Histogram<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..spawners)
            .map(|_| {
                s.spawn(|| {
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
                    barrier.wait();
                    for _ in 0..per_spawner {
                        let t = Instant::now();
                        once();
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
    let zygote = match Zygote::start(ZygoteConfig { lanes: args.spawners.max(1) }) {
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
    let bench = TrivialContainer::new(network, args.mounts).unwrap_or_else(|e| {
        eprintln!("container-startup: cannot build the trivial container: {e}");
        std::process::exit(1);
    });
    let container = || bench.container_once(&zygote).unwrap_or_else(|e| panic!("container failed: {e}"));
    let floor = || bench.floor_once().unwrap_or_else(|e| panic!("floor spawn failed: {e}"));

    // Warm up both paths (templates, pooled network namespaces, page cache).
    block(args.spawners, 50, &container);
    block(args.spawners, 50, &floor);

    let spawners = args.spawners.max(1);
    let per_spawner = (args.count / args.blocks.max(1) / spawners as u64).max(1);
    let mut totals = [Block::empty(), Block::empty()];
    for _ in 0..args.blocks.max(1) {
        for (total, once) in totals.iter_mut().zip([&floor as &(dyn Fn() + Sync), &container]) {
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
        "containers: n={} p50={}us p99={}us p999={}us rate={:.0}/s mounts={:?}",
        containers.count,
        p(&containers, 0.5),
        p(&containers, 0.99),
        p(&containers, 0.999),
        rate(&containers),
        args.mounts
    );
    let mode = format!("{:?}", args.mode).to_lowercase();
    println!(
        "container-startup: mode={mode} spawners={spawners} p50_us={} p99_us={} floor_p50_us={} ratio={:.2} rate_per_s={:.0}",
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
