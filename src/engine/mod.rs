//! Orchestration: starting one state machine execution per chunk. Step Functions on AWS, the
//! embedded engine locally; both run `cf-templates/state-machine.asl.json` and implement the
//! pipeline's [`Orchestrator`](crate::pipeline::Orchestrator).

pub mod local;
pub mod stepfunctions;

/// The state machine definition every backend runs.
pub const STATE_MACHINE_DEFINITION: &str =
    include_str!("../../cf-templates/state-machine.asl.json");
