//! Orchestration: starting one state machine execution per chunk. Step Functions on AWS, the
//! embedded engine locally; both run `cf-templates/state-machine.asl.json`.

pub mod local;
pub mod stepfunctions;

use async_trait::async_trait;

use crate::domain::BatchId;

/// The state machine definition every backend runs.
pub const STATE_MACHINE_DEFINITION: &str =
    include_str!("../../cf-templates/state-machine.asl.json");

/// Failure to start executions; details are for the logs.
#[derive(Debug, thiserror::Error)]
#[error("could not start chunk executions: {0}")]
pub struct OrchestratorError(pub String);

/// Starts chunk executions. Starting a chunk that was started before is a no-op (or, on
/// at-least-once backends, harmless: every step is idempotent).
#[async_trait]
pub trait Orchestrator: Send + Sync + 'static {
    async fn start_chunks(
        &self,
        batch_id: &BatchId,
        chunks: &[u64],
    ) -> Result<(), OrchestratorError>;
}
