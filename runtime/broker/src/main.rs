//! `maelstrom-broker`: schedules clients' jobs onto workers and keeps the artifacts they need.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use maelstrom_broker::server::{ServerConfig, serve};
use maelstrom_config::{Config, LogLevel, Size, Source};

const KEYS: &[&str] = &["port", "http-port", "cache-root", "cache-size", "log-level"];

const AFTER_HELP: &str = "Configuration values come, in order of preference, from the command line, from the \
environment (MAELSTROM_BROKER_<NAME>, then MAELSTROM_<NAME>), and from TOML files \
($XDG_CONFIG_HOME/maelstrom/broker/config.toml, then each $XDG_CONFIG_DIRS/maelstrom/broker/config.toml), with \
keys named like the long options.

The broker prints the address it listens on, then serves until `maelstrom-admin stop`, SIGINT or SIGTERM.";

#[derive(Parser, Debug)]
#[command(name = "maelstrom-broker", version, about = "Schedule jobs onto workers.", after_help = AFTER_HELP)]
struct Cli {
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
    /// error, warning, info or debug [default: info]
    #[arg(short = 'L', long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Read only this config file ("-" for none).
    #[arg(short = 'c', long, value_name = "PATH")]
    config_file: Option<String>,
    /// Print the resolved configuration and exit.
    #[arg(short = 'P', long)]
    print_config: bool,
}

#[derive(Debug)]
struct Settings {
    port: (u64, Source),
    cache_root: (PathBuf, Source),
    cache_size: (Size, Source),
    log_level: (LogLevel, Source),
}

fn getenv(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("maelstrom-broker: {}", maelstrom_config::one_line(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config =
        Config::load("maelstrom/broker", "MAELSTROM_BROKER", cli.config_file.as_deref(), KEYS, &getenv)?;
    let size = cli
        .cache_size
        .as_deref()
        .map(|t| {
            <Size as maelstrom_config::Value>::parse(t).map_err(|e| anyhow::anyhow!("--cache-size: {e}"))
        })
        .transpose()?;
    let level = cli
        .log_level
        .as_deref()
        .map(|t| {
            <LogLevel as maelstrom_config::Value>::parse(t).map_err(|e| anyhow::anyhow!("--log-level: {e}"))
        })
        .transpose()?;
    let settings = Settings {
        port: config.get_or("port", cli.port, 0, &getenv)?,
        cache_root: config.get_or(
            "cache-root",
            cli.cache_root.clone(),
            maelstrom_config::cache_dir("maelstrom/broker", &getenv),
            &getenv,
        )?,
        cache_size: config.get_or("cache-size", size, Size(1_000_000_000), &getenv)?,
        log_level: config.get_or("log-level", level, LogLevel::Info, &getenv)?,
    };
    if let Some((port, source)) = config.get::<u64>("http-port", cli.http_port, &getenv)?
        && port != 0
    {
        anyhow::bail!("http-port {port} from {source}: the web UI is not built; leave http-port unset");
    }
    if cli.print_config {
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
