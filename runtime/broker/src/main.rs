//! `maelstrom-broker`: schedules clients' jobs onto workers and keeps the artifacts they need.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use maelstrom_broker::server::{ServerConfig, serve};
use maelstrom_config::{CommonOptions, LogLevel, Size, Source, getenv, option};

const KEYS: &[&str] = &["port", "http-port", "cache-root", "cache-size", "log-level"];

const AFTER_HELP: &str = "Configuration values come, in order of preference, from the command line, from the \
environment (MAELSTROM_BROKER_<NAME>, then MAELSTROM_<NAME>), and from TOML files \
($XDG_CONFIG_HOME/maelstrom/broker/config.toml, then each $XDG_CONFIG_DIRS/maelstrom/broker/config.toml), with \
keys named like the long options.

The broker prints the address it listens on, then serves until `maelstrom-admin stop`, SIGINT or SIGTERM.";

#[derive(Parser, Debug)]
#[command(name = "maelstrom-broker", version, about = "Schedule jobs onto workers.", after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    common: CommonOptions,
    /// TCP port for clients, workers and admin tools [default: 0, any free port]
    #[arg(short = 'p', long, value_name = "PORT")]
    port: Option<u64>,
    /// Port of the web UI (not built; only 0 is accepted).
    #[arg(short = 'H', long, value_name = "PORT")]
    http_port: Option<u64>,
    /// Where artifacts are kept [default: $XDG_CACHE_HOME/maelstrom/broker]
    #[arg(long, value_name = "PATH")]
    cache_root: Option<PathBuf>,
    /// Target size of the artifact store [default: 1 GB]
    #[arg(long, value_name = "SIZE")]
    cache_size: Option<String>,
}

#[derive(Debug)]
struct Settings {
    port: (u64, Source),
    cache_root: (PathBuf, Source),
    cache_size: (Size, Source),
    log_level: (LogLevel, Source),
}

fn main() -> ExitCode {
    maelstrom_config::exit_code("maelstrom-broker", run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.common.load("broker", "MAELSTROM_BROKER", KEYS)?;
    let size = option::<Size>(cli.cache_size.as_deref(), "cache-size")?;
    let settings = Settings {
        port: config.get_or("port", cli.port, 0, &getenv)?,
        cache_root: config.get_or(
            "cache-root",
            cli.cache_root.clone(),
            maelstrom_config::cache_dir("maelstrom/broker", &getenv),
            &getenv,
        )?,
        cache_size: config.get_or("cache-size", size, Size(1_000_000_000), &getenv)?,
        log_level: cli.common.log_level(&config)?,
    };
    if let Some((port, source)) = config.get::<u64>("http-port", cli.http_port, &getenv)?
        && port != 0
    {
        anyhow::bail!("http-port {port} from {source}: the web UI is not built; leave http-port unset");
    }
    if cli.common.print_config {
        println!("{settings:#?}");
        return Ok(());
    }
    let (port, source) = &settings.port;
    let port =
        u16::try_from(*port).map_err(|_| anyhow::anyhow!("port from {source}: {port} is not a TCP port"))?;
    // All addresses, IPv6 and IPv4 alike; IPv4 only where the host has no IPv6.
    let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
        .map_err(|e| anyhow::anyhow!("listen on port {port}: {e}"))?;
    let address = listener.local_addr()?;
    println!("maelstrom-broker: listening on {address}");
    serve(
        listener,
        ServerConfig {
            store: settings.cache_root.0,
            store_bytes_max: settings.cache_size.0.0,
            verbose: settings.log_level.0 >= LogLevel::Debug,
        },
    )
}
