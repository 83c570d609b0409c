//! The pipeline, backend-agnostic: intake (`init`), then per chunk `task1` -> `task2` -> `update`.

pub(crate) mod dispatch;
pub(crate) mod init;
mod intake_uri;
pub mod job_steps;
pub mod jobs;
mod orchestrator;
pub mod steps;
pub mod tasks;

pub(crate) use init::{Accepted, Intake, IntakeError, RunRequestError, CALLBACKS_DISABLED};
pub(crate) use intake_uri::FromUriError;
pub use job_steps::JobRunners;
pub(crate) use orchestrator::{Orchestrator, OrchestratorError, StartedByStream};
pub use steps::Steps;
pub use tasks::{ChunkTask, TaskError, TaskInput, Tasks};
