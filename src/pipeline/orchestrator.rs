//! The pipeline's view of orchestration: intake stores a part, then asks an [`Orchestrator`] to
//! start one execution per new chunk. The engines (Step Functions, the embedded one) implement it.

use async_trait::async_trait;

use crate::domain::BatchId;

/// Failure to start executions; details are for the logs.
#[derive(Debug, thiserror::Error)]
#[error("could not start chunk executions: {0}")]
pub(crate) struct OrchestratorError(pub String);

/// Starts chunk executions. Starting a chunk that was started before is a no-op (or, on
/// at-least-once backends, harmless: every step is idempotent).
#[async_trait]
pub(crate) trait Orchestrator: Send + Sync + 'static {
    /// Starts the executions of `chunks` of `batch_id`.
    async fn start_chunks(
        &self,
        batch_id: &BatchId,
        chunks: &[u64],
    ) -> Result<(), OrchestratorError>;

    /// The batch's limit on chunk executions in flight changed in the store: starts held back
    /// by the old limit may go ahead. Orchestrators that read the limit at every start need
    /// not be told.
    async fn concurrency_changed(&self, _batch_id: &BatchId) {}
}

/// Chunk starts that follow the store rather than the request: on AWS the request table's
/// stream starts a part's chunks once it is stored (see `lambda::stream`), so a request ends
/// as soon as its part is durably stored.
pub(crate) struct StartedByStream;

#[async_trait]
impl Orchestrator for StartedByStream {
    async fn start_chunks(
        &self,
        _batch_id: &BatchId,
        _chunks: &[u64],
    ) -> Result<(), OrchestratorError> {
        Ok(())
    }
}
