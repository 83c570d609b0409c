//! The pipeline, backend-agnostic: intake (`init`), then per chunk `task1` -> `task2` -> `update`.

pub mod dispatch;
pub mod init;
pub mod jobs;
mod orchestrator;
pub mod steps;
pub mod tasks;

pub use init::{Accepted, Intake, IntakeError};
pub use orchestrator::{Orchestrator, OrchestratorError};
pub use steps::{StepError, Steps};
pub use tasks::{ChunkTask, TaskError, TaskInput, Tasks};
