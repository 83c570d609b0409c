//! Intake: stores a batch part and starts its chunks. Shared by gRPC, the local HTTP endpoint
//! and the `init` Lambda.

use std::sync::Arc;

use super::job_steps::JobSettings;
use super::steps::StepError;
use super::{Orchestrator, OrchestratorError, Steps};
use crate::domain::{Batch, BatchId, BatchSize, CallbackUrl, ItemId, NewPart};
use crate::run_request::RunRequest;
use crate::store::{AppendOutcome, BatchStore, ControlOutcome, RedriveOutcome, StoreError};

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
    /// The part's callback URL names a host the server does not call back.
    #[error("host {0} is not among the hosts this server calls back (--callback-allowed-hosts)")]
    CallbackHostNotAllowed(String),
    /// The part names a callback URL, and no signing secret is configured.
    #[error("{CALLBACKS_DISABLED}")]
    CallbacksDisabled,
    #[error("store failure")]
    Store(#[from] StoreError),
    #[error("orchestrator failure")]
    Orchestrator(#[from] OrchestratorError),
}

/// Why a part naming a callback URL is refused when no signing secret is configured.
pub(crate) const CALLBACKS_DISABLED: &str = "callbacks need a signing secret, and none is configured (serve --callback-secret-file or BATCH_MANAGER_CALLBACK_SECRET; the stack's CallbackSecret)";

/// Why a run request was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunRequestError {
    /// Task 2 is the built-in task: nothing would run the request's job.
    #[error("run requests need task 2 to be an external job, and none is configured (a command with --task2-command, or an AWS Batch job queue and definition)")]
    NoExternalJob,
    #[error(transparent)]
    Intake(#[from] IntakeError),
}

/// Stores parts and starts their chunks.
#[derive(Clone)]
pub(crate) struct Intake {
    store: Arc<dyn BatchStore>,
    orchestrator: Arc<dyn Orchestrator>,
    /// The steps whose external jobs run here or are stopped from here (cancel).
    jobs: Option<Steps>,
    /// Whether callbacks can be signed, so parts may name a callback URL.
    callbacks: bool,
    /// The hosts a callback URL may name.
    callback_hosts: crate::callbacks::AllowedHosts,
}

impl Intake {
    pub(crate) fn new(store: Arc<dyn BatchStore>, orchestrator: Arc<dyn Orchestrator>) -> Self {
        Self {
            store,
            orchestrator,
            jobs: None,
            callbacks: false,
            callback_hosts: crate::callbacks::AllowedHosts::default(),
        }
    }

    /// The store parts go to.
    pub(crate) fn store(&self) -> Arc<dyn BatchStore> {
        Arc::clone(&self.store)
    }

    /// This intake, taking parts that name a callback URL when `signing` (a secret is set).
    pub(crate) fn with_callbacks(mut self, signing: bool) -> Self {
        self.callbacks = signing;
        self
    }

    /// This intake, taking only callback URLs whose host `hosts` allows.
    pub(crate) fn with_callback_hosts(mut self, hosts: crate::callbacks::AllowedHosts) -> Self {
        self.callback_hosts = hosts;
        self
    }

    /// Refuses a callback URL when callbacks cannot be signed, or its host is not allowed.
    pub(crate) fn check_callback(
        &self,
        callback_url: Option<&CallbackUrl>,
    ) -> Result<(), IntakeError> {
        let Some(url) = callback_url else {
            return Ok(());
        };
        if !self.callbacks {
            return Err(IntakeError::CallbacksDisabled);
        }
        let host = url.host();
        if !self.callback_hosts.allows(&host) {
            return Err(IntakeError::CallbackHostNotAllowed(host));
        }
        Ok(())
    }

    /// This intake, taking run requests for and stopping the external jobs of `steps`.
    pub(crate) fn with_jobs(mut self, steps: Steps) -> Self {
        self.jobs = Some(steps);
        self
    }

    /// Stops the running external jobs of a batch just cancelled; how many were asked to stop.
    pub(crate) async fn stop_jobs(&self, batch_id: &BatchId) -> Result<usize, StepError> {
        match &self.jobs {
            Some(steps) => steps.stop_batch_jobs(batch_id).await,
            None => Ok(0),
        }
    }

    /// Stores a run request as a batch of one item (its generated ID, also the batch's) with
    /// its labels, and starts it; returns the ID.
    pub(crate) async fn submit_run_request(
        &self,
        request: &RunRequest,
    ) -> Result<BatchId, RunRequestError> {
        if !self.jobs.as_ref().is_some_and(Steps::task2_is_external) {
            return Err(RunRequestError::NoExternalJob);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let batch_id = BatchId::parse(id.clone()).expect("a UUID is a valid batch ID");
        let item = ItemId::parse(id).expect("a UUID is a valid item ID");
        let settings = JobSettings {
            process_name: Some(request.process_name.clone()),
            client_name: Some(request.client_name.clone()),
            timestamp: request.timestamp.clone(),
            stopped: false,
        };
        let json = serde_json::to_string(&settings).expect("job settings serialize");
        self.store
            .put_job_settings(&batch_id, &json)
            .await
            .map_err(IntakeError::Store)?;
        let batch_size = BatchSize::parse(1).expect("1 is a valid batch size");
        let part = NewPart::new(batch_id.clone(), 1, batch_size, 1, vec![item])
            .expect("a part of one item is valid");
        self.submit(&part).await?;
        Ok(batch_id)
    }

    /// Sets a batch's limit on chunk executions in flight; the batch as it stands after, or
    /// None when there is no such batch.
    pub(crate) async fn set_max_concurrency(
        &self,
        batch_id: &BatchId,
        max_concurrency: Option<u32>,
    ) -> Result<Option<Batch>, IntakeError> {
        let batch = self
            .store
            .set_max_concurrency(batch_id, max_concurrency)
            .await?;
        if batch.is_some() {
            self.orchestrator.concurrency_changed(batch_id).await;
        }
        Ok(batch)
    }

    /// Pauses a batch; the orchestrator then holds its starts back.
    pub(crate) async fn pause(&self, batch_id: &BatchId) -> Result<ControlOutcome, IntakeError> {
        let outcome = self.store.pause_batch(batch_id).await?;
        if matches!(outcome, ControlOutcome::Applied(_)) {
            self.orchestrator.concurrency_changed(batch_id).await;
        }
        Ok(outcome)
    }

    /// Resumes a paused batch; the orchestrator then starts what the pause held back.
    pub(crate) async fn resume(&self, batch_id: &BatchId) -> Result<ControlOutcome, IntakeError> {
        let outcome = self.store.resume_batch(batch_id).await?;
        if matches!(outcome, ControlOutcome::Applied(_)) {
            self.orchestrator.concurrency_changed(batch_id).await;
        }
        Ok(outcome)
    }

    /// Redrives an ended batch and starts the chunks that run again.
    pub(crate) async fn redrive(
        &self,
        batch_id: &BatchId,
        include_cancelled: bool,
    ) -> Result<RedriveOutcome, IntakeError> {
        let outcome = self
            .store
            .redrive_batch(batch_id, include_cancelled)
            .await?;
        if let RedriveOutcome::Redriven { chunks, .. } = &outcome {
            self.orchestrator.start_chunks(batch_id, chunks).await?;
        }
        Ok(outcome)
    }

    /// A part that names a limit other than its batch's (a later part, or a repeated first
    /// one) sets it before its chunks start.
    async fn apply_part_limit(
        &self,
        part: &NewPart,
        mut outcome: AppendOutcome,
    ) -> Result<AppendOutcome, IntakeError> {
        let Some(limit) = part.max_concurrency else {
            return Ok(outcome);
        };
        let (AppendOutcome::Created { batch, .. } | AppendOutcome::AlreadyStored { batch, .. }) =
            &mut outcome
        else {
            return Ok(outcome);
        };
        if batch.max_concurrency == Some(limit) || batch.status.is_terminal() {
            return Ok(outcome);
        }
        if let Some(updated) = self
            .set_max_concurrency(&part.batch_id, Some(limit))
            .await?
        {
            *batch = updated;
        }
        Ok(outcome)
    }

    /// A part that names a callback URL other than its batch's sets it.
    async fn apply_part_callback(
        &self,
        part: &NewPart,
        mut outcome: AppendOutcome,
    ) -> Result<AppendOutcome, IntakeError> {
        let Some(url) = &part.callback_url else {
            return Ok(outcome);
        };
        let (AppendOutcome::Created { batch, .. } | AppendOutcome::AlreadyStored { batch, .. }) =
            &mut outcome
        else {
            return Ok(outcome);
        };
        if batch.callback.url.as_ref() == Some(url) {
            return Ok(outcome);
        }
        if let Some(updated) = self.store.set_callback_url(&part.batch_id, url).await? {
            *batch = updated;
        }
        Ok(outcome)
    }

    /// Stores the part and starts its chunks. A part stored before is not stored again; its
    /// chunks that never started are started again (starting is idempotent), so a client
    /// retrying after a failure here loses nothing.
    pub(crate) async fn submit(&self, part: &NewPart) -> Result<Accepted, IntakeError> {
        self.check_callback(part.callback_url.as_ref())?;
        let outcome = self.store.append_part(part).await?;
        let outcome = self.apply_part_limit(part, outcome).await?;
        let outcome = self.apply_part_callback(part, outcome).await?;
        match outcome {
            AppendOutcome::Created { batch, chunks } => {
                tracing::debug!(batch_id = %batch.batch_id, chunks = chunks.len(), "part stored");
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
                tracing::debug!(
                    batch_id = %batch.batch_id,
                    unstarted_chunks = unstarted_chunks.len(),
                    "part stored before"
                );
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
