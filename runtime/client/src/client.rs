//! One client for either mode: standalone (the embedded worker runs everything) or cluster
//! (a broker's workers run what can travel). Same jobs in, same results out.

use std::collections::BTreeMap;

use maelstrom_container::Zygote;
use maelstrom_worker::{JobId, ResultSink};

use crate::local::{LocalClient, LocalConfig, PrepareError, StartError};
use crate::remote::{Broker, ConnectError, RemoteClient, SharedSinkHandle};
use crate::spec::{ContainerSpec, JobSpec};

#[derive(Debug)]
pub enum Client {
    Local(LocalClient),
    Remote(RemoteClient),
}

/// The client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl Client {
    /// Starts the embedded worker on `zygote` and, with a broker, connects to it. Every result
    /// goes to `sink`.
    pub fn start(
        zygote: Zygote,
        config: LocalConfig,
        broker: Option<&Broker>,
        sink: ResultSink,
    ) -> Result<Self, ClientError> {
        let sink = SharedSinkHandle::new(sink);
        let local = LocalClient::start(zygote, config, sink.local_sink())?;
        Ok(match broker {
            None => Client::Local(local),
            Some(broker) => Client::Remote(RemoteClient::connect(broker, local, sink)?),
        })
    }

    /// Names containers for later jobs.
    pub fn add_containers(&mut self, named: BTreeMap<String, ContainerSpec>) {
        match self {
            Client::Local(c) => c.add_containers(named),
            Client::Remote(c) => c.add_containers(named),
        }
    }

    /// Prepares and sends a job; its result comes through the sink under the returned id.
    pub fn run(&mut self, job: &JobSpec) -> Result<JobId, PrepareError> {
        match self {
            Client::Local(c) => c.run(job),
            Client::Remote(c) => c.run(job),
        }
    }

    /// Writes caches back.
    pub fn save(&mut self) {
        match self {
            Client::Local(c) => c.save(),
            Client::Remote(c) => c.save(),
        }
    }
}
