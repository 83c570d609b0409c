//! The process's metrics: one registry of counters, gauges and histograms that the engine, the
//! steps, the store and the gRPC layer update, exposed by `serve` as `GET /metrics` (OpenMetrics
//! text) and by the Lambda roles as CloudWatch embedded-metric-format log lines ([`emf`]).
//!
//! The registry is process-wide: a process runs one server (or one Lambda role), and the
//! engine, steps and stores reach it without every constructor taking it. Hot paths touch only
//! atomics: every labelled series they update is created up front and kept as a handle.

pub mod emf;
pub(crate) mod grpc_layer;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::domain::BatchStatus;
use crate::pipeline::dispatch::StepRole;
use crate::store::{BatchStore, ItemTally};

/// The route the metrics are served on.
pub const ROUTE: &str = "/metrics";
/// The content type of the OpenMetrics text the encoder writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabel {
    store: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    service: String,
    method: String,
    code: &'static str,
}

/// Which store a commit went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    /// A SQLite transaction.
    Sqlite,
    /// A DynamoDB write call.
    Dynamo,
}

/// Counts of the items whose outcome was recorded, by outcome.
#[derive(Clone)]
struct ItemCounters {
    succeeded: Counter,
    failed: Counter,
    cancelled: Counter,
}

/// The process's metrics; see the module documentation for the names.
pub struct Metrics {
    registry: Registry,
    batches: Family<StatusLabel, Gauge>,
    items: ItemCounters,
    executions_started: Counter,
    executions_succeeded: Counter,
    executions_failed: Counter,
    executions_in_flight: Gauge,
    executions_waiting: Gauge,
    retries: Family<StateLabel, Counter>,
    step_durations: [Histogram; 3],
    step_errors: [Counter; 3],
    sqlite_commits: Histogram,
    dynamo_writes: Histogram,
    grpc_requests: Family<GrpcLabels, Counter>,
}

/// Seconds, from 1 ms to about 65 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 17)
}

/// Seconds, from 0.1 ms to about 3 s: store commits are quick unless something is wrong.
fn commit_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 15)
}

const ROLES: [StepRole; 3] = [StepRole::Task1, StepRole::Task2, StepRole::Update];

fn role_index(role: StepRole) -> usize {
    match role {
        StepRole::Task1 => 0,
        StepRole::Task2 => 1,
        StepRole::Update => 2,
    }
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("batch_manager");

        let batches = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "batches",
            "Batches in the store by status, counted when scraped (local store only)",
            batches.clone(),
        );

        let item_family = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "items_recorded",
            "Items a chunk's update step counted into their batch, by outcome",
            item_family.clone(),
        );
        let item = |outcome| item_family.get_or_create_owned(&OutcomeLabel { outcome });
        let items = ItemCounters {
            succeeded: item("succeeded"),
            failed: item("failed"),
            cancelled: item("cancelled"),
        };

        let executions_started = Counter::default();
        registry.register(
            "chunk_executions_started",
            "Chunk executions the embedded engine started from their first state",
            executions_started.clone(),
        );
        let finished = Family::<StatusLabel, Counter>::default();
        registry.register(
            "chunk_executions_finished",
            "Chunk executions the embedded engine ran to their end, by how they ended",
            finished.clone(),
        );
        let executions_succeeded = finished.get_or_create_owned(&StatusLabel {
            status: "succeeded",
        });
        let executions_failed = finished.get_or_create_owned(&StatusLabel { status: "failed" });

        let executions_in_flight = Gauge::default();
        registry.register(
            "executions_in_flight",
            "Chunk executions a worker of the embedded engine is stepping now",
            executions_in_flight.clone(),
        );
        let executions_waiting = Gauge::default();
        registry.register(
            "executions_waiting",
            "Chunk executions paged into the engine's window, waiting for a worker",
            executions_waiting.clone(),
        );

        let retries = Family::<StateLabel, Counter>::default();
        registry.register(
            "state_retries",
            "Task states the embedded engine retried under their Retry policy, by state",
            retries.clone(),
        );

        let durations = Family::<RoleLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(latency_buckets())) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "step_duration",
            "Time a chunk step took, by role, failures included",
            Unit::Seconds,
            durations.clone(),
        );
        let step_durations = ROLES.map(|role| {
            durations.get_or_create_owned(&RoleLabel {
                role: role_name(role),
            })
        });
        let errors = Family::<RoleLabel, Counter>::default();
        registry.register(
            "step_errors",
            "Chunk steps that failed (their state's Retry or Catch handles them), by role",
            errors.clone(),
        );
        let step_errors = ROLES.map(|role| {
            errors.get_or_create_owned(&RoleLabel {
                role: role_name(role),
            })
        });

        let commits = Family::<StoreLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(commit_buckets())) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "store_commit_duration",
            "Time a store write took: a SQLite transaction's commit, or a DynamoDB write call",
            Unit::Seconds,
            commits.clone(),
        );
        let sqlite_commits = commits.get_or_create_owned(&StoreLabel { store: "sqlite" });
        let dynamo_writes = commits.get_or_create_owned(&StoreLabel { store: "dynamodb" });

        let grpc_requests = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls answered, by service, method and status code",
            grpc_requests.clone(),
        );

        Self {
            registry,
            batches,
            items,
            executions_started,
            executions_succeeded,
            executions_failed,
            executions_in_flight,
            executions_waiting,
            retries,
            step_durations,
            step_errors,
            sqlite_commits,
            dynamo_writes,
            grpc_requests,
        }
    }

    /// Counts the items of a chunk whose outcome was just recorded (never a replay).
    pub(crate) fn items_recorded(&self, tally: &ItemTally) {
        self.items.succeeded.inc_by(tally.succeeded);
        self.items.failed.inc_by(tally.failed);
        self.items.cancelled.inc_by(tally.cancelled);
    }

    /// Items recorded so far: succeeded, failed, cancelled.
    pub(crate) fn items_recorded_so_far(&self) -> ItemTally {
        ItemTally {
            succeeded: self.items.succeeded.get(),
            failed: self.items.failed.get(),
            cancelled: self.items.cancelled.get(),
        }
    }

    /// A chunk execution started from its first state.
    pub(crate) fn execution_started(&self) {
        self.executions_started.inc();
    }

    /// A chunk execution reached its end.
    pub(crate) fn execution_finished(&self, succeeded: bool) {
        if succeeded {
            self.executions_succeeded.inc();
        } else {
            self.executions_failed.inc();
        }
    }

    /// Marks an execution as stepped by a worker until the guard drops.
    pub(crate) fn execution_in_flight(&'static self) -> InFlight {
        self.executions_in_flight.inc();
        InFlight(&self.executions_in_flight)
    }

    /// An execution was paged in to wait for a worker (`true`) or taken by one (`false`).
    pub(crate) fn execution_waiting(&self, waiting: bool) {
        if waiting {
            self.executions_waiting.inc();
        } else {
            self.executions_waiting.dec();
        }
    }

    /// A Task state is retried under its Retry policy.
    pub(crate) fn state_retried(&self, state: &str) {
        self.retries
            .get_or_create(&StateLabel {
                state: state.to_owned(),
            })
            .inc();
    }

    /// A step of `role` took `elapsed`, and failed or not.
    pub(crate) fn step_finished(&self, role: StepRole, elapsed: Duration, failed: bool) {
        self.step_durations[role_index(role)].observe(elapsed.as_secs_f64());
        if failed {
            self.step_errors[role_index(role)].inc();
        }
    }

    /// A write to the store took `elapsed`.
    pub(crate) fn store_committed(&self, store: StoreKind, elapsed: Duration) {
        let histogram = match store {
            StoreKind::Sqlite => &self.sqlite_commits,
            StoreKind::Dynamo => &self.dynamo_writes,
        };
        histogram.observe(elapsed.as_secs_f64());
    }

    /// A gRPC call was answered with `code`.
    pub(crate) fn grpc_answered(&self, service: &str, method: &str, code: tonic::Code) {
        self.grpc_requests
            .get_or_create(&GrpcLabels {
                service: service.to_owned(),
                method: method.to_owned(),
                code: grpc_layer::code_name(code),
            })
            .inc();
    }

    /// Sets the batches gauge from the store's counts; every status is reported, 0 included.
    fn set_batch_counts(&self, counts: &[(BatchStatus, u64)]) {
        for status in BatchStatus::ALL {
            let count = counts
                .iter()
                .find(|(counted, _)| *counted == status)
                .map_or(0, |(_, count)| *count);
            self.batches
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The registry as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Holds the in-flight gauge up while an execution is stepped.
pub(crate) struct InFlight(&'static Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The name a role goes by in metrics.
pub(crate) fn role_name(role: StepRole) -> &'static str {
    match role {
        StepRole::Task1 => "task1",
        StepRole::Task2 => "task2",
        StepRole::Update => "update",
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// `GET /metrics` over `store`, whose batches are counted by status at every scrape.
pub fn router(store: Arc<dyn BatchStore>) -> Router {
    Router::new().route(ROUTE, get(scrape)).with_state(store)
}

async fn scrape(State(store): State<Arc<dyn BatchStore>>) -> Response {
    let metrics = global();
    match store.count_batches_by_status().await {
        Ok(Some(counts)) => metrics.set_batch_counts(&counts),
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(error = %err, "counting batches for the metrics failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({ "message": "the store is unavailable" })),
            )
                .into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_described_and_the_exposition_ends_with_eof() {
        let metrics = Metrics::new();
        metrics.set_batch_counts(&[(BatchStatus::Running, 2)]);
        metrics.items_recorded(&ItemTally {
            succeeded: 3,
            failed: 1,
            cancelled: 0,
        });
        metrics.grpc_answered(
            "batchmanager.v1.BatchManager",
            "SubmitBatch",
            tonic::Code::Ok,
        );
        // A family is written once it holds a series.
        metrics.state_retried("Task1");
        let text = metrics.encode();
        for name in [
            "batch_manager_batches",
            "batch_manager_items_recorded",
            "batch_manager_chunk_executions_started",
            "batch_manager_chunk_executions_finished",
            "batch_manager_executions_in_flight",
            "batch_manager_executions_waiting",
            "batch_manager_state_retries",
            "batch_manager_step_duration_seconds",
            "batch_manager_step_errors",
            "batch_manager_store_commit_duration_seconds",
            "batch_manager_grpc_requests",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        }
        assert!(
            text.contains("batch_manager_batches{status=\"RUNNING\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("batch_manager_batches{status=\"PAUSED\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("batch_manager_items_recorded_total{outcome=\"succeeded\"} 3\n"),
            "{text}"
        );
        assert!(text.contains(
            "batch_manager_grpc_requests_total{service=\"batchmanager.v1.BatchManager\",\
             method=\"SubmitBatch\",code=\"OK\"} 1\n"
        ));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
