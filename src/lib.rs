//! batch-manager: a batch-processing manager in one binary.
//!
//! A client submits a batch of item IDs; the batch is stored, split into chunks, and every
//! chunk runs through task 1 -> task 2 -> update under the state machine in
//! `cf-templates/state-machine.asl.json`.
//!
//! Layout, edge to core:
//! - [`grpc`], [`http`], [`seed`], [`cli`]: the edges (gRPC admin service and clients, the
//!   seed-compatible HTTP endpoint);
//! - [`domain`]: parsed, trusted values;
//! - [`pipeline`]: intake and the per-chunk steps; [`pipeline::tasks`] is the user's trait;
//! - [`store`]: persistence (SQLite locally);
//! - [`engine`]: orchestration (the embedded ASL engine locally);
//! - [`app`], [`config`], [`bench`]: wiring, settings, the benchmark.

pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod domain;
pub mod engine;
pub mod grpc;
pub mod http;
pub mod pipeline;
pub mod seed;
pub mod store;
