//! The external job runners a server gives its tasks: a command on this machine
//! (`--task1-command`, `--task2-command`), or AWS Batch (`TASK1_JOB_QUEUE` and
//! `TASK1_JOB_DEFINITION`, likewise for task 2) when no command is given.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::pipeline::job_steps::DEFAULT_JOB_DEADLINE;
use crate::pipeline::jobs::aws_batch::{AwsBatchRunner, AwsBatchSettings, DESCRIBE_JOBS_LIMIT};
use crate::pipeline::jobs::batched_polls::BatchedPolls;
use crate::pipeline::jobs::command::{CommandLine, CommandOptions, CommandRunner, ProcessSlots};
use crate::pipeline::jobs::{JobRunner, TaskName, FIRST_POLL_INTERVAL};
use crate::pipeline::JobRunners;

/// How a server's tasks run as external jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    /// Task 1's command line, if task 1 runs as a command.
    pub task1_command: Option<String>,
    /// Task 2's command line, if task 2 runs as a command.
    pub task2_command: Option<String>,
    /// How long one attempt's job may run.
    pub deadline: Duration,
    /// The first wait between two polls of a job.
    pub first_poll_interval: Duration,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            task1_command: None,
            task2_command: None,
            deadline: DEFAULT_JOB_DEADLINE,
            first_poll_interval: FIRST_POLL_INTERVAL,
        }
    }
}

/// The runners built for a server, and the command runners to stop when it stops.
pub(crate) struct BuiltRunners {
    pub runners: JobRunners,
    pub commands: Vec<Arc<CommandRunner>>,
}

impl BuiltRunners {
    /// Stops every command still running (SIGTERM, then SIGKILL after its grace).
    pub(crate) async fn shutdown(&self) {
        for runner in &self.commands {
            runner.shutdown().await;
        }
    }
}

/// Builds the runners `config` and the environment ask for; `concurrency` bounds the commands
/// running at once (both tasks together), and above 1 gathers the polls of AWS Batch jobs. AWS Batch clients use `sdk_config`, or the default
/// configuration from the environment when none is given.
pub(crate) async fn build(
    config: &JobConfig,
    concurrency: usize,
    sdk_config: Option<&aws_config::SdkConfig>,
) -> anyhow::Result<BuiltRunners> {
    let slots = ProcessSlots::new(concurrency);
    let mut built = BuiltRunners {
        runners: JobRunners {
            task1: None,
            task2: None,
            deadline: config.deadline,
            first_poll_interval: config.first_poll_interval,
        },
        commands: Vec::new(),
    };
    let mut sdk_config = sdk_config.cloned();
    for (task, command) in [
        (TaskName::Task1, &config.task1_command),
        (TaskName::Task2, &config.task2_command),
    ] {
        let runner: Option<Arc<dyn JobRunner>> = match command {
            Some(raw) => {
                let line =
                    CommandLine::parse(raw).with_context(|| format!("--{task}-command {raw:?}"))?;
                tracing::info!(%task, program = %line.program().display(), "the task runs as a command");
                let runner = Arc::new(CommandRunner::new(
                    line,
                    slots.clone(),
                    CommandOptions::default(),
                ));
                built.commands.push(Arc::clone(&runner));
                Some(runner)
            }
            None => match AwsBatchSettings::from_env(task)? {
                Some(settings) => {
                    if sdk_config.is_none() {
                        sdk_config = Some(crate::config::aws_sdk_config().await);
                    }
                    let client = aws_sdk_batch::Client::new(sdk_config.as_ref().expect("set"));
                    tracing::info!(%task, job_queue = %settings.job_queue, "the task runs as an AWS Batch job");
                    let runner: Arc<dyn JobRunner> =
                        Arc::new(AwsBatchRunner::new(client, settings));
                    if concurrency > 1 {
                        // Many chunks poll in this one process: one DescribeJobs per 100 jobs.
                        Some(Arc::new(BatchedPolls::new(runner, DESCRIBE_JOBS_LIMIT)))
                    } else {
                        Some(runner)
                    }
                }
                None => None,
            },
        };
        match task {
            TaskName::Task1 => built.runners.task1 = runner,
            TaskName::Task2 => built.runners.task2 = runner,
        }
    }
    Ok(built)
}
