//! The binary as an AWS Lambda function: role dispatch and what every role shares.
//!
//! One artifact is deployed to four functions. Each process serves one role, named by the
//! function's Handler property (`_HANDLER`; `BATCH_MANAGER_HANDLER` overrides it):
//! - `init`: API Gateway's `POST /stateMachineInit` and `POST /runrequests` ([`api`]), which
//!   only store parts; the request table's stream and a schedule, which start chunk
//!   executions within each batch's limit ([`stream`]);
//! - `task1`, `task2`, `update`: the state machine's Task states ([`steps`]).
//!
//! A task role whose `TASK1_JOB_QUEUE` and `TASK1_JOB_DEFINITION` (or `TASK2_...`) are set runs
//! its task as an AWS Batch job (`TASK_TIMEOUT_SECONDS` bounds each attempt, default 3600;
//! `JOB_POLL_INTERVAL_SECONDS` is the first wait between polls, default 5); `init` takes run
//! requests when task 2's are set, and reads batches by reference (`itemsUri`) from the buckets
//! `ITEMS_BUCKETS` lists, and no others.
//!
//! Completion callbacks: `CALLBACK_SECRET` (init only) signs them, and without it `init`
//! refuses batches naming a callback URL; `COMPLETION_EVENTS=true` (every role that can end a
//! batch) gives every batch's terminal transition an outbox record, which `init` also puts as
//! a `Batch Finished` event on the default EventBridge bus. Callbacks go only to public
//! addresses unless `CALLBACK_ALLOW_PRIVATE_NETWORKS=true`, and, when `CALLBACK_ALLOWED_HOSTS`
//! lists hosts, only to those (init).
//!
//! Settings are read once from the environment ([`LambdaSettings`]); the SDK configuration,
//! clients, store and steps are built once per process, before the first poll of the Runtime
//! API, and borrowed by every invocation. Nothing at init touches the network: the SDK
//! connects on first use. An unknown role or a missing setting is reported to the Runtime
//! API's init error endpoint, and the process exits.

pub(crate) mod api;
pub(crate) mod steps;
pub(crate) mod stream;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::Diagnostic;

use crate::app::{build_job_runners, JobConfig};
use crate::callbacks::{CallbackSettings, Deliverer, EventSink, SigningSecret};
use crate::engine::stepfunctions::{self, StepFunctionsOrchestrator};
use crate::items_uri::s3::{BucketPolicy, ObjectReader};
use crate::pipeline::job_steps::DEFAULT_JOB_DEADLINE;
use crate::pipeline::jobs::FIRST_POLL_INTERVAL;
use crate::pipeline::{Intake, StartedByStream, Steps, Tasks};
use crate::store::dynamo::{DynamoStore, DynamoTables};
use crate::store::BatchStore;
use stream::ChunkStarter;

pub(crate) use steps::StepRole;

/// Set by Lambda in every function's environment; its presence selects the Lambda roles.
pub(crate) const RUNTIME_API_VAR: &str = "AWS_LAMBDA_RUNTIME_API";
/// The function's Handler property, as Lambda passes it.
pub(crate) const HANDLER_VAR: &str = "_HANDLER";
/// Overrides [`HANDLER_VAR`].
pub(crate) const HANDLER_OVERRIDE_VAR: &str = "BATCH_MANAGER_HANDLER";
/// The stack's batch table.
pub(crate) const BATCH_TABLE_VAR: &str = "BATCH_TABLE";
/// The stack's request table.
pub(crate) const REQUEST_TABLE_VAR: &str = "REQUEST_TABLE";
/// The chunk state machine; only `init` starts executions.
pub(crate) const STATE_MACHINE_ARN_VAR: &str = "STATE_MACHINE_ARN";
/// The buckets `init` may read items objects from (comma-separated).
pub(crate) const ITEMS_BUCKETS_VAR: &str = "ITEMS_BUCKETS";

/// Chunk executions in flight at once for a batch that names no limit.
pub(crate) const DEFAULT_MAX_CONCURRENCY_VAR: &str = "DEFAULT_MAX_CONCURRENCY";
/// [`DEFAULT_MAX_CONCURRENCY_VAR`] when unset.
pub(crate) const DEFAULT_MAX_CONCURRENCY: u32 = 100;

/// Seconds a chunk-start claim may stay unconfirmed before its chunks are started again.
pub(crate) const START_CLAIM_TIMEOUT_VAR: &str = "START_CLAIM_TIMEOUT_SECONDS";

/// The secret completion callbacks are signed with (`init`).
pub(crate) const CALLBACK_SECRET_VAR: &str = "CALLBACK_SECRET";
/// `true`: every batch's end is put as an EventBridge event.
pub(crate) const COMPLETION_EVENTS_VAR: &str = "COMPLETION_EVENTS";
/// `true`: callbacks may go to private and link-local addresses (`init`).
pub(crate) const CALLBACK_PRIVATE_NETWORKS_VAR: &str = "CALLBACK_ALLOW_PRIVATE_NETWORKS";
/// The only hosts callback URLs may name, comma-separated (`init`; any when empty).
pub(crate) const CALLBACK_ALLOWED_HOSTS_VAR: &str = "CALLBACK_ALLOWED_HOSTS";

/// Seconds one attempt's external job may run.
pub(crate) const TASK_TIMEOUT_VAR: &str = "TASK_TIMEOUT_SECONDS";
/// Seconds before the first poll of an external job.
pub(crate) const JOB_POLL_INTERVAL_VAR: &str = "JOB_POLL_INTERVAL_SECONDS";

/// The roles, by the names the Handler property uses.
pub(crate) const ROLE_NAMES: &str = "init, task1, task2, update";

/// Whether this process runs under a Lambda Runtime API.
pub fn is_lambda_environment() -> bool {
    std::env::var_os(RUNTIME_API_VAR).is_some()
}

/// A role this binary serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Init,
    Step(StepRole),
}

impl Role {
    /// Parses a Handler property value.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "init" => Some(Self::Init),
            "task1" => Some(Self::Step(StepRole::Task1)),
            "task2" => Some(Self::Step(StepRole::Task2)),
            "update" => Some(Self::Step(StepRole::Update)),
            _ => None,
        }
    }
}

/// Why a function cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InitError {
    #[error("no role given: set the function's Handler ({HANDLER_VAR}) or {HANDLER_OVERRIDE_VAR} to one of {ROLE_NAMES}")]
    MissingRole,
    #[error("unknown role {given:?}: the function's Handler ({HANDLER_VAR}) or {HANDLER_OVERRIDE_VAR} must be one of {ROLE_NAMES}")]
    UnknownRole { given: String },
    #[error("missing environment variable {0}")]
    MissingSetting(&'static str),
    #[error("environment variable {name}: {rule}")]
    InvalidSetting { name: String, rule: String },
}

impl InitError {
    /// The stable error name reported to the Runtime API.
    pub(crate) fn error_type(&self) -> &'static str {
        match self {
            Self::MissingRole | Self::UnknownRole { .. } => "BatchManager.UnknownRole",
            Self::MissingSetting(_) => "BatchManager.MissingSetting",
            Self::InvalidSetting { .. } => "BatchManager.InvalidSetting",
        }
    }
}

/// What this process serves, with the settings only that role needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RoleSettings {
    Init {
        state_machine_arn: String,
        /// The limit of a batch that names none.
        default_max_concurrency: u32,
        /// How long a chunk-start claim may stay unconfirmed.
        start_claim_timeout: Duration,
    },
    Step(StepRole),
}

/// A function's settings, read once from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LambdaSettings {
    pub role: RoleSettings,
    pub tables: DynamoTables,
    /// External jobs: the deadline and first poll interval (the queues are read by the runner).
    pub jobs: JobConfig,
    /// The buckets `init` may read items objects from (none unless listed).
    pub items_buckets: BucketPolicy,
    /// What completion callbacks are signed with; `None`: callbacks are refused.
    pub callback_secret: Option<SigningSecret>,
    /// Whether every batch's end is put as a completion event.
    pub completion_events: bool,
    /// Whether callbacks may go to private and link-local addresses.
    pub callback_private_networks: bool,
    /// The hosts callback URLs may name.
    pub callback_hosts: crate::callbacks::AllowedHosts,
}

impl LambdaSettings {
    /// Reads the process environment. Empty values count as missing.
    pub(crate) fn from_env() -> Result<Self, InitError> {
        Self::from_lookup(|name| {
            std::env::var_os(name)
                .map(|value| value.to_string_lossy().into_owned())
                .filter(|value| !value.is_empty())
        })
    }

    /// Reads settings through `lookup` (a variable's non-empty value, if set).
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, InitError> {
        let name = lookup(HANDLER_OVERRIDE_VAR)
            .or_else(|| lookup(HANDLER_VAR))
            .ok_or(InitError::MissingRole)?;
        let role = Role::from_name(&name).ok_or_else(|| InitError::UnknownRole {
            given: name.clone(),
        })?;
        let required = |var: &'static str| lookup(var).ok_or(InitError::MissingSetting(var));
        let tables = DynamoTables {
            batch_table: required(BATCH_TABLE_VAR)?,
            request_table: required(REQUEST_TABLE_VAR)?,
        };
        let seconds =
            |var: &'static str, default: Duration, range: std::ops::RangeInclusive<u64>| {
                let Some(raw) = lookup(var) else {
                    return Ok(default);
                };
                match raw.trim().parse::<u64>() {
                    Ok(value) if range.contains(&value) => Ok(Duration::from_secs(value)),
                    _ => Err(InitError::InvalidSetting {
                        name: var.to_owned(),
                        rule: format!(
                            "must be a whole number of seconds from {} to {}",
                            range.start(),
                            range.end()
                        ),
                    }),
                }
            };
        let role = match role {
            Role::Init => RoleSettings::Init {
                start_claim_timeout: seconds(
                    START_CLAIM_TIMEOUT_VAR,
                    crate::store::dynamo::STALE_CLAIM,
                    1..=3600,
                )?,
                state_machine_arn: required(STATE_MACHINE_ARN_VAR)?,
                default_max_concurrency: match lookup(DEFAULT_MAX_CONCURRENCY_VAR) {
                    None => DEFAULT_MAX_CONCURRENCY,
                    Some(raw) => raw
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .and_then(|raw| crate::domain::parse_max_concurrency(raw).ok().flatten())
                        .ok_or_else(|| InitError::InvalidSetting {
                            name: DEFAULT_MAX_CONCURRENCY_VAR.to_owned(),
                            rule: format!(
                                "must be a whole number from 1 to {}",
                                crate::domain::MAX_CONCURRENCY_LIMIT
                            ),
                        })?,
                },
            },
            Role::Step(step) => RoleSettings::Step(step),
        };
        let jobs = JobConfig {
            task1_command: None,
            task2_command: None,
            deadline: seconds(TASK_TIMEOUT_VAR, DEFAULT_JOB_DEADLINE, 1..=31_536_000)?,
            first_poll_interval: seconds(JOB_POLL_INTERVAL_VAR, FIRST_POLL_INTERVAL, 1..=60)?,
        };
        let items_buckets =
            BucketPolicy::only_listed(&lookup(ITEMS_BUCKETS_VAR).unwrap_or_default());
        let callback_secret = lookup(CALLBACK_SECRET_VAR)
            .map(|raw| {
                SigningSecret::parse(&raw).map_err(|rule| InitError::InvalidSetting {
                    name: CALLBACK_SECRET_VAR.to_owned(),
                    rule: rule.to_string(),
                })
            })
            .transpose()?;
        let switch = |name: &str| match lookup(name).as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(InitError::InvalidSetting {
                name: name.to_owned(),
                rule: "must be true or false".to_owned(),
            }),
        };
        let completion_events = switch(COMPLETION_EVENTS_VAR)?;
        let callback_private_networks = switch(CALLBACK_PRIVATE_NETWORKS_VAR)?;
        let callback_hosts = crate::callbacks::AllowedHosts::parse(
            &lookup(CALLBACK_ALLOWED_HOSTS_VAR).unwrap_or_default(),
        )
        .map_err(|rule| InitError::InvalidSetting {
            name: CALLBACK_ALLOWED_HOSTS_VAR.to_owned(),
            rule,
        })?;
        Ok(Self {
            role,
            tables,
            jobs,
            items_buckets,
            callback_secret,
            completion_events,
            callback_private_networks,
            callback_hosts,
        })
    }
}

/// Runs this process's role until the Runtime API stops it. The whole of `main` under Lambda.
pub fn main() -> ExitCode {
    lambda_runtime::tracing::init_default_subscriber_with_writer(std::io::stderr);
    // One invocation at a time per process: a single-threaded runtime starts fastest and
    // still overlaps the I/O of one invocation (e.g. concurrent StartExecution calls).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "the function is exiting");
            ExitCode::FAILURE
        }
    }
}

/// Reads the settings, builds what the role needs once, and serves invocations.
pub(crate) async fn run() -> Result<(), lambda_runtime::Error> {
    let settings = match LambdaSettings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            report_init_error(&err).await;
            return Err(err.into());
        }
    };
    let sdk_config = crate::config::aws_sdk_config().await;
    let dynamo = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk_config), settings.tables)
        .with_completion_events(settings.completion_events);
    let store: Arc<dyn BatchStore> = Arc::new(dynamo.clone());
    let runners = match build_job_runners(&settings.jobs, 1, Some(&sdk_config)).await {
        Ok(built) => built.runners,
        Err(err) => {
            let err = InitError::InvalidSetting {
                name: "TASK1_JOB_QUEUE / TASK2_JOB_QUEUE".to_owned(),
                rule: format!("{err:#}"),
            };
            report_init_error(&err).await;
            return Err(err.into());
        }
    };
    let steps = Steps::new(Arc::clone(&store), Tasks::default()).with_jobs(runners);
    match settings.role {
        RoleSettings::Init {
            state_machine_arn,
            default_max_concurrency,
            start_claim_timeout,
        } => {
            let orchestrator = StepFunctionsOrchestrator::new(
                stepfunctions::client(&sdk_config),
                state_machine_arn,
            );
            let callbacks = CallbackSettings {
                secret: settings.callback_secret,
                allow_private_networks: settings.callback_private_networks,
                ..CallbackSettings::default()
            };
            let signing = callbacks.secret.is_some();
            let callback_hosts = settings.callback_hosts;
            let mut deliverer = Deliverer::new(Arc::new(dynamo.clone()), callbacks);
            if settings.completion_events {
                deliverer = deliverer.with_events(EventSink::new(
                    aws_sdk_eventbridge::Client::new(&sdk_config),
                ));
            }
            let starter = ChunkStarter::new(
                dynamo,
                orchestrator,
                default_max_concurrency,
                start_claim_timeout,
            )
            .with_deliverer(deliverer);
            let objects =
                ObjectReader::new(aws_sdk_s3::Client::new(&sdk_config), settings.items_buckets);
            let intake = Intake::new(store, Arc::new(StartedByStream))
                .with_jobs(steps)
                .with_callbacks(signing)
                .with_callback_hosts(callback_hosts);
            api::serve(intake, objects, starter).await
        }
        RoleSettings::Step(role) => steps::serve(role, steps).await,
    }
}

/// Tells the Runtime API why init failed. The `lambda_runtime` crate reports only failures of
/// its own SnapStart hooks there, so a failure before the runtime starts is posted here.
async fn report_init_error(err: &InitError) {
    let diagnostic = Diagnostic {
        error_type: err.error_type().to_owned(),
        error_message: err.to_string(),
    };
    if let Err(failure) = post_init_error(&diagnostic).await {
        tracing::error!(error = %failure, "could not report the init error to the Runtime API");
    }
}

async fn post_init_error(diagnostic: &Diagnostic) -> Result<(), lambda_runtime::Error> {
    let endpoint: lambda_http::http::Uri = std::env::var(RUNTIME_API_VAR)?.parse()?;
    let client = lambda_runtime_api_client::PooledClient::builder()
        .with_endpoint(endpoint)
        .build();
    let request = lambda_http::http::Request::post("/2018-06-01/runtime/init/error")
        .header("lambda-runtime-function-error-type", &diagnostic.error_type)
        .header("content-type", "application/json")
        .body(lambda_runtime_api_client::body::Body::from(
            serde_json::to_vec(diagnostic)?,
        ))?;
    let response = client.call(request).await?;
    if !response.status().is_success() {
        return Err(format!("the Runtime API answered {}", response.status()).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<LambdaSettings, InitError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        LambdaSettings::from_lookup(|name| vars.get(name).cloned().filter(|v| !v.is_empty()))
    }

    const TABLES: [(&str, &str); 2] = [("BATCH_TABLE", "b"), ("REQUEST_TABLE", "r")];

    #[test]
    fn each_role_name_selects_its_role() {
        for (name, role) in [
            ("task1", StepRole::Task1),
            ("task2", StepRole::Task2),
            ("update", StepRole::Update),
        ] {
            let parsed = settings(&[TABLES[0], TABLES[1], ("_HANDLER", name)]).unwrap();
            assert_eq!(parsed.role, RoleSettings::Step(role));
        }
        let init = settings(&[
            TABLES[0],
            TABLES[1],
            ("_HANDLER", "init"),
            ("STATE_MACHINE_ARN", "arn"),
        ])
        .unwrap();
        assert_eq!(
            init.role,
            RoleSettings::Init {
                state_machine_arn: "arn".to_owned(),
                default_max_concurrency: DEFAULT_MAX_CONCURRENCY,
                start_claim_timeout: crate::store::dynamo::STALE_CLAIM,
            }
        );
        assert_eq!(init.tables.batch_table, "b");
        assert_eq!(init.tables.request_table, "r");
    }

    #[test]
    fn items_buckets_lists_the_buckets_init_may_read_and_none_when_unset() {
        let init = |extra: &[(&'static str, &'static str)]| {
            let mut vars = vec![
                TABLES[0],
                TABLES[1],
                ("_HANDLER", "init"),
                ("STATE_MACHINE_ARN", "arn"),
            ];
            vars.extend_from_slice(extra);
            settings(&vars).unwrap().items_buckets
        };
        assert_eq!(init(&[]), BucketPolicy::only_listed(""));
        assert_eq!(
            init(&[("ITEMS_BUCKETS", "ids-a,ids-b")]),
            BucketPolicy::Only(["ids-a".to_owned(), "ids-b".to_owned()].into())
        );
    }

    #[test]
    fn the_override_wins_over_the_handler_property() {
        let parsed = settings(&[
            TABLES[0],
            TABLES[1],
            ("_HANDLER", "bootstrap"),
            ("BATCH_MANAGER_HANDLER", "update"),
        ])
        .unwrap();
        assert_eq!(parsed.role, RoleSettings::Step(StepRole::Update));
    }

    #[test]
    fn an_unknown_or_missing_role_names_the_valid_ones() {
        for vars in [
            vec![TABLES[0], TABLES[1], ("_HANDLER", "Init")],
            vec![TABLES[0], TABLES[1]],
            vec![TABLES[0], TABLES[1], ("_HANDLER", "")],
        ] {
            let err = settings(&vars).unwrap_err();
            assert_eq!(err.error_type(), "BatchManager.UnknownRole");
            assert!(err.to_string().contains(ROLE_NAMES), "{err}");
        }
    }

    #[test]
    fn the_callback_secret_and_completion_events_are_read_and_checked() {
        let init = |extra: &[(&'static str, &'static str)]| {
            let mut vars = vec![
                TABLES[0],
                TABLES[1],
                ("_HANDLER", "init"),
                ("STATE_MACHINE_ARN", "arn"),
            ];
            vars.extend_from_slice(extra);
            settings(&vars)
        };
        let unset = init(&[]).unwrap();
        assert_eq!(unset.callback_secret, None);
        assert!(!unset.completion_events);
        let set = init(&[
            ("CALLBACK_SECRET", "0123456789abcdef"),
            ("COMPLETION_EVENTS", "true"),
        ])
        .unwrap();
        assert!(set.callback_secret.is_some());
        assert!(set.completion_events);
        assert!(!set.callback_private_networks);
        let private = init(&[("CALLBACK_ALLOW_PRIVATE_NETWORKS", "true")]).unwrap();
        assert!(private.callback_private_networks);
        let hosts = init(&[("CALLBACK_ALLOWED_HOSTS", "hooks.example.com,*.corp.example")])
            .unwrap()
            .callback_hosts;
        assert!(hosts.allows("a.corp.example") && !hosts.allows("evil.example"));
        assert!(init(&[("CALLBACK_ALLOWED_HOSTS", "not a host")]).is_err());
        let unclear = init(&[("CALLBACK_ALLOW_PRIVATE_NETWORKS", "yes")]).unwrap_err();
        assert!(unclear
            .to_string()
            .contains("CALLBACK_ALLOW_PRIVATE_NETWORKS"));
        let short = init(&[("CALLBACK_SECRET", "short-secret")]).unwrap_err();
        assert_eq!(short.error_type(), "BatchManager.InvalidSetting");
        assert!(short
            .to_string()
            .starts_with("environment variable CALLBACK_SECRET: "));
        assert!(!short.to_string().contains("short-secret"));
        let events = init(&[("COMPLETION_EVENTS", "yes")]).unwrap_err();
        assert!(events.to_string().contains("COMPLETION_EVENTS"), "{events}");
    }

    #[test]
    fn a_missing_setting_is_named() {
        let err = settings(&[("_HANDLER", "task1"), TABLES[1]]).unwrap_err();
        assert_eq!(err, InitError::MissingSetting("BATCH_TABLE"));
        let err = settings(&[("_HANDLER", "update"), TABLES[0]]).unwrap_err();
        assert_eq!(err, InitError::MissingSetting("REQUEST_TABLE"));
        let err = settings(&[("_HANDLER", "init"), TABLES[0], TABLES[1]]).unwrap_err();
        assert_eq!(err, InitError::MissingSetting("STATE_MACHINE_ARN"));
        assert!(err.to_string().contains("STATE_MACHINE_ARN"));
    }
}
