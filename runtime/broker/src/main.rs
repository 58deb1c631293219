//! `maelstrom-broker`: schedules clients' jobs onto workers and keeps the artifacts they need.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use maelstrom_broker::server::{ServerConfig, serve};
use maelstrom_config::{CommonOptions, LogLevel, Seconds, Size, Source, getenv, option};

const KEYS: &[&str] = &[
    "port",
    "listen",
    "credentials",
    "unauthenticated",
    "http-port",
    "cache-root",
    "cache-size",
    "client-jobs-max",
    "client-bytes-max",
    "idle-timeout",
    "log-level",
];

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
    /// The address to listen on: an IP address (with --port), or ADDRESS:PORT [default:
    /// 127.0.0.1, this machine only]. Any other than a loopback address needs --credentials (or
    /// --unauthenticated).
    #[arg(long, value_name = "ADDRESS")]
    listen: Option<String>,
    /// The broker's credentials (the `broker` directory `maelstrom-admin credentials` made):
    /// every peer must then connect with TLS and a certificate of the cluster's, and may act
    /// only as the role its certificate names.
    #[arg(long, value_name = "DIR")]
    credentials: Option<PathBuf>,
    /// Without credentials, accept connections from other machines all the same: anyone who
    /// can reach the port can run jobs on every worker, act as a worker and receive every job,
    /// or stop the cluster. Only on a network where everyone who can reach it is trusted.
    #[arg(long)]
    unauthenticated: bool,
    /// Port of the web UI (not built; only 0 is accepted).
    #[arg(short = 'H', long, value_name = "PORT")]
    http_port: Option<u64>,
    /// Where artifacts are kept [default: $XDG_CACHE_HOME/maelstrom/broker]
    #[arg(long, value_name = "PATH")]
    cache_root: Option<PathBuf>,
    /// Target size of the artifact store [default: 1 GB]
    #[arg(long, value_name = "SIZE")]
    cache_size: Option<String>,
    /// Jobs one client may have pending at once; a job past that ends at once with an error
    /// that says so [default: 1000000]
    #[arg(long, value_name = "COUNT")]
    client_jobs_max: Option<u64>,
    /// Bytes one client's uploads may hold in the artifact store; an upload past that is
    /// refused, and the jobs that need it fail saying so [default: the cache size]
    #[arg(long, value_name = "SIZE")]
    client_bytes_max: Option<String>,
    /// How long a peer may stay silent after its hello before it is closed; peers ping at a
    /// third of it when they have nothing to say [default: 5 min]
    #[arg(long, value_name = "DURATION")]
    idle_timeout: Option<String>,
}

#[derive(Debug)]
struct Settings {
    port: (u64, Source),
    listen: (String, Source),
    credentials: Option<(PathBuf, Source)>,
    unauthenticated: (bool, Source),
    cache_root: (PathBuf, Source),
    cache_size: (Size, Source),
    client_jobs_max: (u64, Source),
    client_bytes_max: (Size, Source),
    idle_timeout: (Seconds, Source),
    log_level: (LogLevel, Source),
}

fn main() -> ExitCode {
    maelstrom_config::exit_code("maelstrom-broker", run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.common.load("broker", "MAELSTROM_BROKER", KEYS)?;
    let size = option::<Size>(cli.cache_size.as_deref(), "cache-size")?;
    let client_bytes = option::<Size>(cli.client_bytes_max.as_deref(), "client-bytes-max")?;
    let mut settings = Settings {
        port: config.get_or("port", cli.port, 0, &getenv)?,
        listen: config.get_or("listen", cli.listen.clone(), Ipv4Addr::LOCALHOST.to_string(), &getenv)?,
        credentials: config.get("credentials", cli.credentials.clone(), &getenv)?,
        unauthenticated: config.get_or(
            "unauthenticated",
            cli.unauthenticated.then_some(true),
            false,
            &getenv,
        )?,
        cache_root: config.get_or(
            "cache-root",
            cli.cache_root.clone(),
            maelstrom_config::cache_dir("maelstrom/broker", &getenv),
            &getenv,
        )?,
        cache_size: config.get_or("cache-size", size, Size(1_000_000_000), &getenv)?,
        client_bytes_max: (Size(0), Source::Default),
        idle_timeout: config.get_or(
            "idle-timeout",
            option::<Seconds>(cli.idle_timeout.as_deref(), "idle-timeout")?,
            Seconds(300),
            &getenv,
        )?,
        client_jobs_max: config.get_or(
            "client-jobs-max",
            cli.client_jobs_max,
            maelstrom_broker::core::CLIENT_JOBS_MAX_DEFAULT as u64,
            &getenv,
        )?,
        log_level: cli.common.log_level(&config)?,
    };
    if let Some((port, source)) = config.get::<u64>("http-port", cli.http_port, &getenv)?
        && port != 0
    {
        anyhow::bail!("http-port {port} from {source}: the web UI is not built; leave http-port unset");
    }
    let cache_size = settings.cache_size.0;
    settings.client_bytes_max = config.get_or("client-bytes-max", client_bytes, cache_size, &getenv)?;
    let (Seconds(idle), source) = &settings.idle_timeout;
    anyhow::ensure!(*idle >= 1, "idle-timeout from {source}: must be at least 1 s");
    let (client_jobs_max, source) = &settings.client_jobs_max;
    anyhow::ensure!(*client_jobs_max >= 1, "client-jobs-max from {source}: must be at least 1");
    if cli.common.print_config {
        println!("{settings:#?}");
        return Ok(());
    }
    let tls = match &settings.credentials {
        Some((dir, source)) => Some(
            maelstrom_tls::Credentials::load(dir, maelstrom_tls::Role::Broker)
                .and_then(|c| c.server())
                .map_err(|e| anyhow::anyhow!("credentials from {source}: {e}"))?,
        ),
        None => None,
    };
    let address = listen_address(&settings)?;
    let listener = TcpListener::bind(address).map_err(|e| anyhow::anyhow!("listen on {address}: {e}"))?;
    let address = listener.local_addr()?;
    println!("maelstrom-broker: listening on {address}");
    if !address.ip().to_canonical().is_loopback() && tls.is_none() {
        println!(
            "maelstrom-broker: warning: listening unauthenticated on {address}: anyone who can reach it \
             can run jobs on every worker, receive every job, and stop the cluster"
        );
    }
    serve(
        listener,
        ServerConfig {
            store: settings.cache_root.0,
            tls,
            store_bytes_max: settings.cache_size.0.0,
            client_jobs_max: usize::try_from(settings.client_jobs_max.0).unwrap_or(usize::MAX),
            client_bytes_max: settings.client_bytes_max.0.0,
            idle_timeout: std::time::Duration::from_secs(settings.idle_timeout.0.0),
            verbose: settings.log_level.0 >= LogLevel::Debug,
        },
    )
}

/// Where to listen: `listen` (an address, or an address and port) with `port`. Without
/// credentials, only a loopback address unless `unauthenticated` says otherwise.
fn listen_address(settings: &Settings) -> anyhow::Result<SocketAddr> {
    let (port, port_source) = &settings.port;
    let port = u16::try_from(*port)
        .map_err(|_| anyhow::anyhow!("port from {port_source}: {port} is not a TCP port"))?;
    let (listen, source) = &settings.listen;
    let address = match (listen.parse::<SocketAddr>(), listen.parse::<IpAddr>()) {
        (Ok(_), _) if *port_source != Source::Default => anyhow::bail!(
            "listen from {source} ({listen}) and port from {port_source} both give a port: give it once"
        ),
        (Ok(address), _) => address,
        (_, Ok(ip)) => SocketAddr::new(ip, port),
        _ => anyhow::bail!(
            "listen from {source}: {listen:?} is not an IP address or ADDRESS:PORT (try 127.0.0.1, \
             0.0.0.0, :: or [::1]:9000)"
        ),
    };
    let (unauthenticated, _) = settings.unauthenticated;
    if !address.ip().to_canonical().is_loopback() && !unauthenticated && settings.credentials.is_none() {
        anyhow::bail!(
            "listen from {source}: {address} is reachable from other machines, and without \
             credentials the broker authenticates no one; give it --credentials (make them with \
             `maelstrom-admin credentials DIR`), listen on 127.0.0.1 (the default), or add \
             --unauthenticated on a network where everyone who can reach it is trusted"
        );
    }
    Ok(address)
}
