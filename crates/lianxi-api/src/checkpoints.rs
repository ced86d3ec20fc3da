//! The node's signed checkpoints: issued on an interval (by `lianxi serve`)
//! and on demand (`GetCheckpoint` with `fresh`), every one kept in the
//! node-local checkpoint store.

use std::sync::Arc;

use lianxi_log::{CheckpointSigner, Log, StoredCheckpoint};

/// Signs and keeps checkpoints of one log with one key. Cheap to clone.
#[derive(Clone)]
pub struct Checkpointer {
    log: Log,
    signer: Arc<CheckpointSigner>,
    /// One signing at a time, so a checkpoint's number follows its size.
    issuing: Arc<tokio::sync::Mutex<()>>,
}

/// Why a checkpoint could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Log(#[from] lianxi_log::Error),
    #[error(transparent)]
    Sign(#[from] lianxi_log::CheckpointError),
    #[error("the signing task failed: {0}")]
    Task(String),
}

impl Checkpointer {
    pub fn new(log: Log, signer: CheckpointSigner) -> Self {
        Checkpointer {
            log,
            signer: Arc::new(signer),
            issuing: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub fn origin(&self) -> &str {
        self.signer.origin()
    }

    pub fn verifier_key(&self) -> &str {
        self.signer.verifier_key()
    }

    /// Signs a checkpoint of the current tree and keeps it. Unless `always`,
    /// only when the tree has grown since the latest issued checkpoint (or
    /// none was issued); otherwise returns None.
    pub async fn issue(&self, always: bool) -> Result<Option<StoredCheckpoint>, IssueError> {
        let _one = self.issuing.lock().await;
        let log = self.log.clone();
        let signer = self.signer.clone();
        tokio::task::spawn_blocking(move || {
            // Never sign a tree below what the node already vouched for.
            if let Some(behind) = log.behind() {
                return Err(lianxi_log::Error::Unavailable {
                    reason: behind.to_string(),
                }
                .into());
            }
            let cp = log.checkpoint();
            let size = cp.global_sequence;
            let latest = log.latest_checkpoint()?;
            if !always && latest.as_ref().is_some_and(|l| l.size >= size) {
                return Ok(None);
            }
            let root = log.root(size)?;
            log.raise_high_water(&cp)?;
            let note = signer.sign(size, &root)?;
            Ok(Some(log.store_checkpoint(&note, size)?))
        })
        .await
        .map_err(|e| IssueError::Task(e.to_string()))?
    }

    /// The latest issued checkpoint, or one signed now if there is none
    /// (or `fresh`).
    pub async fn current(&self, fresh: bool) -> Result<StoredCheckpoint, IssueError> {
        if !fresh {
            let log = self.log.clone();
            let latest = tokio::task::spawn_blocking(move || log.latest_checkpoint())
                .await
                .map_err(|e| IssueError::Task(e.to_string()))??;
            if let Some(latest) = latest {
                return Ok(latest);
            }
        }
        match self.issue(true).await? {
            Some(c) => Ok(c),
            None => Err(IssueError::Task("no checkpoint was signed".into())),
        }
    }

    /// Signs a checkpoint every `every` while the tree grows, until
    /// `shutdown` turns true. Errors are logged, never fatal: the log itself
    /// is unaffected by a checkpoint that could not be signed.
    pub async fn run(
        self,
        every: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            match self.issue(false).await {
                Ok(Some(c)) => {
                    tracing::info!(number = c.number, tree_size = c.size, "signed a checkpoint")
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot sign a checkpoint"),
            }
        }
    }
}
