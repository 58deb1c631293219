//! `maelstrom-run`: reads a stream of JSON job specs and runs each job in its own container as
//! soon as it is read, printing each job's output whole when it finishes.
//!
//! Exit code: 0 if every job exited 0; else the first failing job's exit code, or 1 for a job
//! killed by a signal, timed out, or refused. 2 when maelstrom-run itself could not run (bad
//! configuration, no user namespaces, no io_uring). With `--one`, the exit mimics the job's,
//! down to dying of the same signal.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Parser;
use maelstrom_client::client::Client;
use maelstrom_client::local::LocalConfig;
use maelstrom_client::spec::{StreamItem, StreamRequest};
use maelstrom_client::{Allotment, Ended, JobCgroups, JobResult, Ran, Zygote, ZygoteConfig};
use maelstrom_config::{CommonOptions, JOB_KEYS, JobValues, LogLevel, Size, Source, getenv};

const KEYS: &[&str] = &[
    "log-level",
    "cache-root",
    "cache-size",
    "inline-limit",
    "slots",
    "broker",
    "credentials",
    "escape-char",
    "container-image-depot-root",
    "accept-invalid-remote-container-tls-certs",
];

const ABOUT: &str = "Run a stream of JSON job specs, each job in its own container.";

const AFTER_HELP: &str = "Configuration values come, in order of preference, from the command line, from the \
environment (MAELSTROM_RUN_<NAME>, then MAELSTROM_<NAME>, e.g. MAELSTROM_RUN_CACHE_SIZE), and from TOML files \
($XDG_CONFIG_HOME/maelstrom/run/config.toml, then each $XDG_CONFIG_DIRS/maelstrom/run/config.toml), with keys \
named like the long options (cache-size = \"2 GB\").

Exit status: 0 if every job exited 0; else the first failing job's exit code, or 1 for a signal, a timeout or \
an error; 2 if maelstrom-run itself could not run.";

#[derive(Parser, Debug)]
#[command(name = "maelstrom-run", version, about = ABOUT, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    common: CommonOptions,
    /// Read job specs from this file instead of stdin.
    #[arg(short = 'f', long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Run only the first job, and exit the way it did (its code, or its signal).
    #[arg(short = '1', long)]
    one: bool,
    /// Run the first job on a terminal (not supported yet).
    #[arg(short = 't', long, conflicts_with = "one")]
    tty: bool,
    /// Broker address; without one, jobs run on a local worker (standalone mode).
    #[arg(short = 'b', long, value_name = "ADDRESS")]
    broker: Option<String>,
    /// This client's credentials (the `client` directory `maelstrom-admin credentials` made),
    /// for a broker that has its own: the connection is then TLS, each side proving its role.
    #[arg(long, value_name = "DIR")]
    credentials: Option<PathBuf>,
    /// Where layers and digests are cached [default: $XDG_CACHE_HOME/maelstrom/run]
    #[arg(long, value_name = "PATH")]
    cache_root: Option<PathBuf>,
    /// Target size of the layer cache [default: 1 GB]
    #[arg(long, value_name = "SIZE")]
    cache_size: Option<String>,
    /// Bytes kept of each job's stdout and of its stderr [default: 1 MB]
    #[arg(long, value_name = "SIZE")]
    inline_limit: Option<String>,
    /// Jobs run at once [default: the number of CPUs]
    #[arg(long, value_name = "N")]
    slots: Option<u64>,
    /// Escape character for --tty [default: ^]]
    #[arg(long, value_name = "CHAR")]
    escape_char: Option<String>,
    /// Where container images are kept (accepted for compatibility; images are not supported yet).
    #[arg(long, value_name = "PATH")]
    container_image_depot_root: Option<PathBuf>,
    /// Accept invalid registry certificates (accepted for compatibility).
    #[arg(long)]
    accept_invalid_remote_container_tls_certs: bool,
    /// With --one: the program and arguments to run instead of the spec's.
    #[arg(trailing_var_arg = true, value_name = "PROGRAM-AND-ARGUMENTS")]
    program_and_arguments: Vec<String>,
}

#[derive(Debug)]
struct Settings {
    log_level: (LogLevel, Source),
    cache_root: (PathBuf, Source),
    cache_size: (Size, Source),
    inline_limit: (Size, Source),
    slots: (u64, Source),
    jobs: JobValues,
    broker: Option<(String, Source)>,
    credentials: Option<(PathBuf, Source)>,
}

fn settings(cli: &Cli, cores: u64) -> anyhow::Result<Settings> {
    let config = cli.common.load("run", "MAELSTROM_RUN", &[KEYS, JOB_KEYS].concat())?;
    let worker =
        config.worker_values(cli.cache_size.as_deref(), cli.inline_limit.as_deref(), cli.slots, cores)?;
    let settings = Settings {
        log_level: cli.common.log_level(&config)?,
        cache_root: config.get_or(
            "cache-root",
            cli.cache_root.clone(),
            maelstrom_config::cache_dir("maelstrom/run", &getenv),
            &getenv,
        )?,
        cache_size: worker.cache_size,
        inline_limit: worker.inline_limit,
        slots: worker.slots,
        jobs: worker.jobs,
        broker: config.get("broker", cli.broker.clone(), &getenv)?,
        credentials: config.get("credentials", cli.credentials.clone(), &getenv)?,
    };
    Ok(settings)
}

enum Event {
    Item { index: usize, request: Result<StreamRequest, String> },
    InputEnded,
    InputBroken(String),
    Done(JobResult),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("maelstrom-run: {}", maelstrom_config::one_line(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = settings(&cli, cores as u64)?;
    if cli.common.print_config {
        println!("{settings:#?}");
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(!cli.tty, "--tty is not supported yet; use --one for a single job");
    anyhow::ensure!(
        cli.one || cli.program_and_arguments.is_empty(),
        "a program and arguments on the command line need --one"
    );
    let slots = settings.slots.0 as usize;
    let lanes = if cli.one { 1 } else { slots.min(cores) };
    // The zygote forks before any thread exists; everything threaded comes after.
    let allotment = Allotment::configured(slots, &settings.jobs);
    let cgroups = match JobCgroups::for_slots(slots, &allotment.share) {
        Ok(cgroups) => Some(cgroups),
        Err(why) => {
            if settings.log_level.0 >= LogLevel::Debug {
                eprintln!("maelstrom-run: jobs' memory and processes are limited by rlimits only: {why}");
            }
            None
        }
    };
    let zygote = Zygote::start(ZygoteConfig { lanes, cgroups })?;
    let (events, inbox) = channel();
    let sink_events = events.clone();
    let sink = Box::new(move |result: JobResult| {
        let _ = sink_events.send(Event::Done(result));
    });
    let project = std::env::current_dir().context("read the current directory")?;
    let config = LocalConfig {
        cache_root: settings.cache_root.0.clone(),
        cache_bytes_max: settings.cache_size.0.0,
        slots,
        output_bytes_max: usize::try_from(settings.inline_limit.0.0).unwrap_or(usize::MAX),
        allotment,
        project,
    };
    let broker =
        maelstrom_client::Broker::from_settings(settings.broker.as_ref(), settings.credentials.as_ref())
            .map_err(anyhow::Error::msg)?;
    let mut client =
        Client::start(zygote, config, broker.as_ref(), sink).with_context(|| match &settings.broker {
            Some((_, source)) => format!("broker from {source}"),
            None => "start the local worker".to_owned(),
        })?;

    let (input, name): (Box<dyn Read + Send>, String) = match &cli.file {
        Some(path) => (
            Box::new(std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?),
            path.display().to_string(),
        ),
        None => (Box::new(io::stdin()), "stdin".to_owned()),
    };
    let one = cli.one;
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || read_stream(input, &name, one, &events))
        .context("start the input thread")?;

    let mut pending: HashMap<u64, usize> = HashMap::new();
    let mut input_done = false;
    let mut exit = Exit::default();
    let debug = settings.log_level.0 >= LogLevel::Debug;
    while !(input_done && pending.is_empty()) {
        let Ok(event) = inbox.recv() else { break };
        match event {
            Event::Item { request: Ok(StreamRequest::Containers(named)), .. } => client.add_containers(named),
            Event::Item { index, request: Ok(StreamRequest::Job(mut job)) } => {
                if let Some((program, arguments)) = cli.program_and_arguments.split_first() {
                    job.program = program.clone();
                    job.arguments = arguments.to_vec();
                }
                match client.run(&job) {
                    Ok(id) => {
                        pending.insert(id, index);
                    }
                    Err(e) => {
                        eprintln!("job {index}: error: {e}");
                        exit.fail(1);
                        exit.one_outcome.get_or_insert(None);
                    }
                }
            }
            Event::Item { request: Err(message), .. } => {
                eprintln!("maelstrom-run: {message}");
                exit.fail(1);
            }
            Event::InputBroken(message) => {
                eprintln!("maelstrom-run: {message}");
                exit.fail(1);
                input_done = true;
            }
            Event::InputEnded => input_done = true,
            Event::Done(result) => {
                let Some(index) = pending.remove(&result.id) else { continue };
                report(index, &result, &mut exit, debug);
            }
        }
    }
    client.save();
    drop(client);
    let _ = io::stdout().flush();
    if one {
        return Ok(exit.as_one());
    }
    Ok(ExitCode::from(exit.code))
}

#[derive(Default)]
struct Exit {
    code: u8,
    /// With --one: how the job ended (`None` inside: it never ran).
    one_outcome: Option<Option<Ended>>,
}

impl Exit {
    fn fail(&mut self, code: u8) {
        if self.code == 0 {
            self.code = code.max(1);
        }
    }

    fn as_one(&self) -> ExitCode {
        match self.one_outcome {
            Some(Some(Ended::Exited(code))) => ExitCode::from(code as u8),
            Some(Some(Ended::Signaled(signal))) => {
                maelstrom_client::die_by_signal(signal);
                ExitCode::from(1)
            }
            _ => ExitCode::from(self.code.max(1)),
        }
    }
}

fn report(index: usize, result: &JobResult, exit: &mut Exit, debug: bool) {
    match result.outcome.ran() {
        Ok(Ran { ended, stdout, stderr: err, duration, met, usage }) => {
            let _ = io::stdout().lock().write_all(&stdout.bytes);
            let _ = io::stdout().flush();
            let mut stderr = io::stderr().lock();
            let _ = stderr.write_all(&err.bytes);
            match ended {
                Ended::Exited(0) => {}
                Ended::Exited(code) => {
                    let _ = writeln!(stderr, "job {index}: exited with code {code}");
                    exit.fail(code as u8);
                }
                Ended::Signaled(signal) => {
                    let _ = writeln!(stderr, "job {index}: killed by signal {signal}");
                    exit.fail(1);
                }
                Ended::TimedOut => {
                    let _ = writeln!(stderr, "job {index}: timed out");
                    exit.fail(1);
                }
                Ended::Killed(limit) => {
                    let _ = writeln!(stderr, "job {index}: killed: {limit}");
                    exit.fail(1);
                }
            }
            for met in met {
                let _ = writeln!(stderr, "job {index}: {met}");
            }
            for (name, captured) in [("stdout", stdout), ("stderr", err)] {
                if captured.cut > 0 {
                    let _ = writeln!(stderr, "job {index}: {name} truncated, {} bytes lost", captured.cut);
                }
            }
            if debug {
                let (cpu, rss) = (usage.cpu(), usage.peak_rss_bytes as f64 / f64::from(1 << 20));
                let _ =
                    writeln!(stderr, "job {index}: took {duration:?}, CPU {cpu:?}, peak RSS {rss:.1} MiB");
            }
            exit.one_outcome.get_or_insert(Some(ended));
        }
        Err(why) => {
            eprintln!("job {index}: {why}");
            exit.fail(1);
            exit.one_outcome.get_or_insert(None);
        }
    }
}

/// Counts line starts as bytes go by, so a position in the stream can be told as line:column.
struct Counting<R> {
    inner: R,
    offset: u64,
    line_starts: Arc<Mutex<Vec<u64>>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut starts = self.line_starts.lock().unwrap_or_else(|p| p.into_inner());
        for (i, byte) in buf[..n].iter().enumerate() {
            if *byte == b'\n' {
                starts.push(self.offset + i as u64 + 1);
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}

fn read_stream(input: Box<dyn Read + Send>, name: &str, one: bool, events: &Sender<Event>) {
    let line_starts = Arc::new(Mutex::new(vec![0u64]));
    let reader = BufReader::new(Counting { inner: input, offset: 0, line_starts: Arc::clone(&line_starts) });
    let mut stream = serde_json::Deserializer::from_reader(reader).into_iter::<StreamItem>();
    let position = |offset: u64| {
        let starts = line_starts.lock().unwrap_or_else(|p| p.into_inner());
        let line = starts.partition_point(|&s| s <= offset);
        let start = starts[line.saturating_sub(1)];
        (line, offset - start + 1)
    };
    let mut index = 0;
    loop {
        match stream.next() {
            None => break,
            Some(Ok(item)) => {
                index += 1;
                let (line, column) = position(stream.byte_offset().saturating_sub(1) as u64);
                let request = item.into_request().map_err(|e| format!("{name}:{line}:{column}: {e}"));
                if events.send(Event::Item { index, request }).is_err() || one {
                    break;
                }
            }
            Some(Err(e)) => {
                let text = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                let message = text.strip_suffix(&suffix).unwrap_or(&text);
                let _ =
                    events.send(Event::InputBroken(format!("{name}:{}:{}: {message}", e.line(), e.column())));
                return;
            }
        }
    }
    let _ = events.send(Event::InputEnded);
}
