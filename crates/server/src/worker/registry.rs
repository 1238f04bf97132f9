//! What the worker runs: a handler per job kind.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use ponte_identity::jobs::{Job, JobFailure};

/// Runs one kind of job. Must be idempotent: after a crash the same job may run again, and
/// its effect must still happen once (pass the job id to anything external).
#[async_trait]
pub trait JobHandler: Send + Sync + std::fmt::Debug {
    /// Does the job's work.
    async fn run(&self, job: &Job) -> Result<(), JobFailure>;
}

/// Handlers by job kind.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn JobHandler>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the handler for `kind`.
    pub fn with(mut self, kind: impl Into<String>, handler: Arc<dyn JobHandler>) -> Self {
        self.handlers.insert(kind.into(), handler);
        self
    }

    pub(super) fn get(&self, kind: &str) -> Option<&Arc<dyn JobHandler>> {
        self.handlers.get(kind)
    }
}
