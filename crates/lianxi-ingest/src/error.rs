use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "cannot create or open the JetStream stream: {0}; is nats-server running with JetStream enabled (-js)?"
    )]
    Stream(String),
    #[error("reading the stream: {0}")]
    Consumer(String),
    #[error("writing the log: {0}")]
    Log(#[from] lianxi_log::Error),
    #[error("publishing receipts or answering lookups: {0}")]
    Receipts(String),
    #[error("the log writer task failed: {0}")]
    Task(String),
    #[error("the key store: {0}")]
    Keys(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
