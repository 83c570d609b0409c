//! Intake: stores a batch part and starts its chunks. Shared by gRPC, the local HTTP endpoint
//! and the `init` Lambda.

use std::sync::Arc;

use super::{Orchestrator, OrchestratorError};
use crate::domain::{Batch, NewPart};
use crate::store::{AppendOutcome, BatchStore, StoreError};

/// A part accepted: the batch as it stands, and whether this call stored the part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub batch: Batch,
    pub created: bool,
}

/// Why a part was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IntakeError {
    /// The batch or part exists with other content.
    #[error("{0}")]
    Conflict(String),
    /// The batch cannot take the part.
    #[error("{0}")]
    Rejected(String),
    #[error("store failure")]
    Store(#[from] StoreError),
    #[error("orchestrator failure")]
    Orchestrator(#[from] OrchestratorError),
}

/// Stores parts and starts their chunks.
#[derive(Clone)]
pub(crate) struct Intake {
    store: Arc<dyn BatchStore>,
    orchestrator: Arc<dyn Orchestrator>,
}

impl Intake {
    pub(crate) fn new(store: Arc<dyn BatchStore>, orchestrator: Arc<dyn Orchestrator>) -> Self {
        Self {
            store,
            orchestrator,
        }
    }

    /// Stores the part and starts its chunks. A part stored before is not stored again; its
    /// chunks that never started are started again (starting is idempotent), so a client
    /// retrying after a failure here loses nothing.
    pub(crate) async fn submit(&self, part: &NewPart) -> Result<Accepted, IntakeError> {
        match self.store.append_part(part).await? {
            AppendOutcome::Created { batch, chunks } => {
                self.orchestrator
                    .start_chunks(&batch.batch_id, &chunks)
                    .await?;
                Ok(Accepted {
                    batch,
                    created: true,
                })
            }
            AppendOutcome::AlreadyStored {
                batch,
                unstarted_chunks,
            } => {
                if !unstarted_chunks.is_empty() {
                    self.orchestrator
                        .start_chunks(&batch.batch_id, &unstarted_chunks)
                        .await?;
                }
                Ok(Accepted {
                    batch,
                    created: false,
                })
            }
            AppendOutcome::Conflict(reason) => Err(IntakeError::Conflict(reason)),
            AppendOutcome::Rejected(reason) => Err(IntakeError::Rejected(reason)),
        }
    }
}
