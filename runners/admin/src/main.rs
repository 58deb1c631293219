//! `maelstrom-admin`: asks a broker for its status, or tells it to stop; makes a cluster's
//! credentials.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use maelstrom_config::{CommonOptions, getenv};
use maelstrom_wire::cluster::{self, Control, Frame, FrameReader, Hello, PROTOCOL_VERSION, Role, Status};

const KEYS: &[&str] = &["broker", "credentials", "log-level"];

const AFTER_HELP: &str = "Configuration values come, in order of preference, from the command line, from the \
environment (MAELSTROM_ADMIN_<NAME>, then MAELSTROM_<NAME>), and from TOML files \
($XDG_CONFIG_HOME/maelstrom/admin/config.toml, then each $XDG_CONFIG_DIRS/maelstrom/admin/config.toml).";

#[derive(Parser, Debug)]
#[command(name = "maelstrom-admin", version, about = "Ask a broker for its status, or stop it.", after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    common: CommonOptions,
    /// The broker's address, HOST:PORT.
    #[arg(short = 'b', long, value_name = "ADDRESS")]
    broker: Option<String>,
    /// The admin's credentials (the `admin` directory `maelstrom-admin credentials` made), for
    /// a broker that has its own.
    #[arg(long, value_name = "DIR")]
    credentials: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the broker's workers, slots, clients and jobs.
    #[command(visible_aliases = ["stats", "stat"])]
    Status,
    /// Tell the broker to exit; its workers exit with it.
    #[command(visible_aliases = ["shut-down", "shutdown"])]
    Stop,
    /// Make a new cluster's credentials in DIR: a CA (DIR/ca; keep its key.pem off the
    /// cluster's machines), and one directory for each of broker, worker, client and admin, to
    /// give each program as its --credentials.
    Credentials {
        dir: PathBuf,
        /// How long the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

fn main() -> ExitCode {
    maelstrom_config::exit_code("maelstrom-admin", run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Credentials { dir, days } = &cli.command {
        maelstrom_tls::generate::cluster(dir, maelstrom_tls::generate::Validity::days(*days))?;
        println!(
            "made a cluster's credentials in {}: give each program its own directory, e.g. \
             `maelstrom-broker --credentials {0}/broker`, `maelstrom-worker --credentials {0}/worker`, \
             clients `--credentials {0}/client`, and keep {0}/ca/key.pem off the cluster's machines",
            dir.display()
        );
        return Ok(());
    }
    let config = cli.common.load("admin", "MAELSTROM_ADMIN", KEYS)?;
    cli.common.log_level(&config)?;
    if cli.common.print_config {
        println!("{:#?}", config.get::<String>("broker", cli.broker.clone(), &getenv)?);
        return Ok(());
    }
    let (broker, _) = config.get::<String>("broker", cli.broker.clone(), &getenv)?.ok_or_else(|| {
        anyhow::anyhow!("no broker: give one with --broker HOST:PORT (or MAELSTROM_ADMIN_BROKER)")
    })?;
    let tls = match config.get::<PathBuf>("credentials", cli.credentials.clone(), &getenv)? {
        Some((dir, source)) => Some(
            maelstrom_tls::peer_config(&dir, maelstrom_tls::Role::Admin)
                .map_err(|e| anyhow::anyhow!("credentials from {source}: {e}"))?,
        ),
        None => None,
    };
    let mut conn = Connection::open(&broker, tls.as_ref())?;
    match cli.command {
        Command::Status => {
            conn.send(&Control::StatusRequest)?;
            let status = conn.status()?;
            println!("{status}");
        }
        Command::Stop => {
            conn.send(&Control::Stop)?;
            // The broker closes the connection as it exits.
            conn.wait_closed();
            println!("the broker at {broker} is stopping");
        }
        Command::Credentials { .. } => unreachable!("handled above"),
    }
    Ok(())
}

struct Connection {
    /// Its bytes move on io_uring.
    stream: maelstrom_uring::RingStream,
    tls: Option<maelstrom_tls::Session>,
    reader: FrameReader,
    broker: String,
}

impl Connection {
    fn open(
        broker: &str,
        tls: Option<&std::sync::Arc<maelstrom_tls::rustls::ClientConfig>>,
    ) -> anyhow::Result<Self> {
        let stream = maelstrom_uring::connect(broker, Duration::from_secs(5))
            .map_err(|e| anyhow::anyhow!("connect to the broker at {broker}: {e}"))?;
        let mut stream = maelstrom_uring::RingStream::new(stream)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)));
        let tls = tls.map(maelstrom_tls::Session::client).transpose()?;
        let mut conn = Self { stream, tls, reader: FrameReader::default(), broker: broker.to_owned() };
        let name = format!("maelstrom-admin (pid {})", std::process::id());
        conn.send(&Control::Hello(Hello { version: PROTOCOL_VERSION, role: Role::Admin, name }))?;
        match conn.next()? {
            Control::Welcome { .. } => Ok(conn),
            Control::Refused(reason) => anyhow::bail!("the broker at {broker} refused: {reason}"),
            other => anyhow::bail!("the broker at {broker} answered hello with {other:?}"),
        }
    }

    fn send(&mut self, message: &Control) -> anyhow::Result<()> {
        let mut frame = Vec::new();
        cluster::encode_control(message, &mut frame)?;
        if let Some(tls) = &mut self.tls {
            let mut out = Vec::new();
            tls.send(&frame, &mut out)
                .map_err(|e| anyhow::anyhow!("TLS with the broker at {}: {e}", self.broker))?;
            frame = out;
        }
        self.stream
            .write_all(&frame)
            .map_err(|e| anyhow::anyhow!("write to the broker at {}: {e}", self.broker))
    }

    /// The next control message from the broker.
    fn next(&mut self) -> anyhow::Result<Control> {
        let mut buf = [0u8; 64 << 10];
        loop {
            let n = self
                .stream
                .read(&mut buf)
                .map_err(|e| anyhow::anyhow!("read from the broker at {}: {e}", self.broker))?;
            anyhow::ensure!(n > 0, "the broker at {} closed the connection", self.broker);
            let mut plaintext = Vec::new();
            let bytes = match &mut self.tls {
                Some(tls) => {
                    let received = tls.receive(&buf[..n], &mut plaintext);
                    let mut out = Vec::new();
                    tls.pending(&mut out);
                    self.stream.write_all(&out)?;
                    received.map_err(|e| anyhow::anyhow!("with the broker at {}: {e}", self.broker))?;
                    &plaintext[..]
                }
                None => &buf[..n],
            };
            let mut message = None;
            let mut failure = None;
            self.reader
                .feed(bytes, &mut |kind, payload| {
                    match cluster::decode(kind, payload) {
                        Ok(Frame::Control(control)) => {
                            match rkyv::deserialize::<Control, rkyv::rancor::Error>(control) {
                                Ok(control) => message = Some(control),
                                Err(e) => failure = Some(e.to_string()),
                            }
                        }
                        Ok(_) => failure = Some("not a control message".into()),
                        Err(e) => failure = Some(e.to_string()),
                    }
                    false
                })
                .map_err(|e| anyhow::anyhow!("bad frame from the broker at {}: {e}", self.broker))?;
            if let Some(why) = failure {
                anyhow::bail!("bad message from the broker at {}: {why}", self.broker);
            }
            if let Some(message) = message {
                return Ok(message);
            }
        }
    }

    fn status(&mut self) -> anyhow::Result<Status> {
        match self.next()? {
            Control::Status(status) => Ok(status),
            other => anyhow::bail!("the broker at {} answered a status request with {other:?}", self.broker),
        }
    }

    fn wait_closed(&mut self) {
        let mut buf = [0u8; 4096];
        while matches!(self.stream.read(&mut buf), Ok(n) if n > 0) {}
    }
}
