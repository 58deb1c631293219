//! `maelstrom-worker`: runs the broker's jobs, each in its own container.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use maelstrom_config::{CommonOptions, JOB_KEYS, JobValues, LogLevel, Size, Source, getenv};
use maelstrom_container::{Zygote, ZygoteConfig};
use maelstrom_worker::Allotment;
use maelstrom_worker::remote::{RemoteConfig, serve};

const KEYS: &[&str] =
    &["broker", "credentials", "slots", "cache-root", "cache-size", "inline-limit", "log-level", "allow"];

const AFTER_HELP: &str = "Configuration values come, in order of preference, from the command line, from the \
environment (MAELSTROM_WORKER_<NAME>, then MAELSTROM_<NAME>), and from TOML files \
($XDG_CONFIG_HOME/maelstrom/worker/config.toml, then each $XDG_CONFIG_DIRS/maelstrom/worker/config.toml), with \
keys named like the long options.

The worker reconnects, with backoff, whenever it loses the broker; it exits when the broker stops at an admin's \
request (`maelstrom-admin stop`), or refuses it.";

#[derive(Parser, Debug)]
#[command(name = "maelstrom-worker", version, about = "Run the broker's jobs.", after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    common: CommonOptions,
    /// The broker's address, HOST:PORT.
    #[arg(short = 'b', long, value_name = "ADDRESS")]
    broker: Option<String>,
    /// The worker's credentials (the `worker` directory `maelstrom-admin credentials` made), for
    /// a broker that has its own: the connection is then TLS, each side proving its role.
    #[arg(long, value_name = "DIR")]
    credentials: Option<PathBuf>,
    /// Jobs run at once [default: the number of CPUs]
    #[arg(long, value_name = "N")]
    slots: Option<u64>,
    /// Where layers are cached [default: $XDG_CACHE_HOME/maelstrom/worker]
    #[arg(long, value_name = "PATH")]
    cache_root: Option<PathBuf>,
    /// Target size of the layer cache [default: 1 GB]
    #[arg(long, value_name = "SIZE")]
    cache_size: Option<String>,
    /// Bytes kept of each job's stdout and of its stderr [default: 1 MB]
    #[arg(long, value_name = "SIZE")]
    inline_limit: Option<String>,
    /// What this worker grants jobs from the cluster beyond the default sandbox, by name
    /// (io_uring, ptrace, user_namespaces, capabilities, mount, userfaultfd, keyrings, bpf,
    /// perf_events), comma-separated; a job that asks for more runs elsewhere [default: none]
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    allow: Option<Vec<String>>,
}

#[derive(Debug)]
struct Settings {
    broker: (String, Source),
    credentials: Option<(PathBuf, Source)>,
    slots: (u64, Source),
    cache_root: (PathBuf, Source),
    cache_size: (Size, Source),
    inline_limit: (Size, Source),
    jobs: JobValues,
    log_level: (LogLevel, Source),
    /// What it grants jobs from the cluster.
    allow: (Vec<maelstrom_container::Allowance>, Source),
}

fn main() -> ExitCode {
    maelstrom_config::exit_code("maelstrom-worker", run(Cli::parse()))
}

fn settings(cli: &Cli, cores: u64) -> anyhow::Result<Settings> {
    let config = cli.common.load("worker", "MAELSTROM_WORKER", &[KEYS, JOB_KEYS].concat())?;
    let broker = config.get("broker", cli.broker.clone(), &getenv)?.ok_or_else(|| {
        anyhow::anyhow!("no broker: give one with --broker HOST:PORT (or MAELSTROM_WORKER_BROKER, or broker = ... in the config file)")
    })?;
    let worker =
        config.worker_values(cli.cache_size.as_deref(), cli.inline_limit.as_deref(), cli.slots, cores)?;
    Ok(Settings {
        broker,
        credentials: config.get("credentials", cli.credentials.clone(), &getenv)?,
        slots: worker.slots,
        cache_root: config.get_or(
            "cache-root",
            cli.cache_root.clone(),
            maelstrom_config::cache_dir("maelstrom/worker", &getenv),
            &getenv,
        )?,
        cache_size: worker.cache_size,
        inline_limit: worker.inline_limit,
        jobs: worker.jobs,
        log_level: cli.common.log_level(&config)?,
        allow: allowances(config.get_or("allow", cli.allow.clone(), Vec::new(), &getenv)?)?,
    })
}

/// The allowances named in `allow` (from `source`).
fn allowances(
    (allow, source): (Vec<String>, Source),
) -> anyhow::Result<(Vec<maelstrom_container::Allowance>, Source)> {
    use maelstrom_container::Allowance;
    let mut granted = Vec::new();
    // From the environment the names are whitespace-separated; commas are taken everywhere.
    for name in allow.iter().flat_map(|n| n.split(',')).map(str::trim).filter(|n| !n.is_empty()) {
        let Some(allowance) = Allowance::ALL.into_iter().find(|a| a.name() == name) else {
            let known: Vec<&str> = Allowance::ALL.iter().map(|a| a.name()).collect();
            anyhow::bail!(
                "allow from {source}: no allowance is named {name:?}; the names are {}",
                known.join(", ")
            );
        };
        if !granted.contains(&allowance) {
            granted.push(allowance);
        }
    }
    Ok((granted, source))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = settings(&cli, cores as u64)?;
    if cli.common.print_config {
        println!("{settings:#?}");
        return Ok(());
    }
    let tls = match &settings.credentials {
        Some((dir, source)) => Some(
            maelstrom_tls::peer_config(dir, maelstrom_tls::Role::Worker)
                .map_err(|e| anyhow::anyhow!("credentials from {source}: {e}"))?,
        ),
        None => None,
    };
    let slots = settings.slots.0 as usize;
    // The zygote forks before any thread exists; everything threaded comes after.
    let allotment = Allotment::configured(slots, &settings.jobs);
    let cgroups = match maelstrom_container::JobCgroups::for_slots(slots, &allotment.share) {
        Ok(cgroups) => Some(cgroups),
        Err(why) => {
            eprintln!(
                "maelstrom-worker: jobs' memory is not limited, and a fork bomb is stopped by its \
                 process rlimit but not named: {why}"
            );
            None
        }
    };
    let zygote = Zygote::start(ZygoteConfig { lanes: slots.min(cores), cgroups })?;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "worker".into(), |h| h.trim().to_owned());
    serve(
        zygote,
        RemoteConfig {
            broker: settings.broker.0,
            slots,
            cache_root: settings.cache_root.0,
            cache_bytes_max: settings.cache_size.0.0,
            output_bytes_max: usize::try_from(settings.inline_limit.0.0).unwrap_or(usize::MAX),
            allotment,
            name: format!("{name} ({} slots)", slots),
            verbose: settings.log_level.0 >= LogLevel::Debug,
            grants: settings.allow.0.iter().fold(0, |bits, a| bits | a.bit()),
            tls,
        },
    )?;
    Ok(())
}
