//! batch-manager: a batch-processing manager in one binary.
//!
//! A client submits a batch of item IDs; the batch is stored, split into chunks, and every
//! chunk runs through task 1 -> task 2 -> update under the state machine in
//! `cf-templates/state-machine.asl.json`.
//!
//! Layout, edge to core:
//! - [`grpc`], [`http`], [`seed`], [`run_request`], [`cli`], [`lambda`]: the edges (gRPC admin
//!   service and clients, the seed-compatible HTTP endpoints, the four AWS Lambda roles);
//! - [`dashboard`]: the web dashboard `serve` shows on its HTTP address;
//! - [`domain`]: parsed, trusted values; [`items_uri`]: batches whose items are read from S3;
//! - [`pipeline`]: intake and the per-chunk steps; [`pipeline::tasks`] is the user's trait;
//! - [`store`]: persistence (SQLite locally, DynamoDB on AWS);
//! - [`engine`]: orchestration (the embedded ASL engine locally, Step Functions on AWS);
//! - [`callbacks`]: completion callbacks (signed HTTP POSTs, EventBridge events);
//! - [`metrics`], [`logging`]: Prometheus metrics of `serve`, embedded-metric-format lines on
//!   Lambda; text or JSON logs with a request ID per request;
//! - [`app`], [`config`], [`bench`]: wiring, settings, the benchmark.

pub mod access;
pub mod app;
#[cfg(feature = "bench")]
pub mod bench;
pub mod callbacks;
pub mod cli;
pub mod config;
pub(crate) mod dashboard;
pub mod domain;
pub mod engine;
pub mod grpc;
pub(crate) mod http;
pub mod items_uri;
pub mod lambda;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub(crate) mod run_request;
pub(crate) mod seed;
pub mod store;
