//! Step Functions as the orchestrator: one `StartExecution` of the deployed chunk state machine
//! per chunk, with the input `{"batchId": ..., "chunk": N}` that the definition's first state
//! reads.
//!
//! # Workflow types
//!
//! The stack's `WorkflowType` parameter picks the state machine's type:
//! - **EXPRESS** (the default): cheap and fast to start, but at-least-once, and an execution
//!   ends after 5 minutes, retries included. Express does not deduplicate execution names, so
//!   a retried init may start a chunk twice; that is harmless because every step is idempotent
//!   (task 1 claims the chunk, update counts it once).
//! - **STANDARD**: exactly-once execution starts, for up to a year, at a higher price per state
//!   transition. Each chunk's execution has a deterministic name (see [`execution_name`]), so
//!   a retried init cannot start a chunk twice: Step Functions answers the repeat with the
//!   running execution, or with `ExecutionAlreadyExists` once it has closed, which counts as
//!   started here.
//!
//! # Payload size
//!
//! An execution's input names a chunk; it never carries the chunk's items, which live in
//! DynamoDB, and the tasks return counts, not items. The state payload (a chunk's name, its
//! counts and, after a failure, one error message) therefore does not grow with the batch size:
//! at the largest batch size, 1000 items per chunk, it stays a few hundred bytes, far inside
//! Step Functions' 256 KiB limit.
//!
//! # Throttling
//!
//! Starts run with bounded concurrency ([`START_CONCURRENCY`] in flight); throttled calls are
//! retried by the SDK's own retry policy, with backoff and jitter ([`client`] makes at least
//! [`START_MAX_ATTEMPTS`] attempts).

use async_trait::async_trait;
use aws_sdk_sfn::config::retry::RetryConfig;
use aws_sdk_sfn::error::DisplayErrorContext;
use futures::TryStreamExt;
use sha2::{Digest, Sha256};

use crate::domain::BatchId;
use crate::pipeline::{Orchestrator, OrchestratorError};

/// `StartExecution` calls in flight at once for one batch part.
pub(crate) const START_CONCURRENCY: usize = 16;

/// Fewest attempts per `StartExecution`, throttling retries included. Higher than the SDK's
/// default of 3 so that a large part's burst of starts rides out throttling instead of failing
/// the request.
pub(crate) const START_MAX_ATTEMPTS: u32 = 5;

/// Longest execution name Step Functions accepts.
const NAME_MAX_CHARS: usize = 80;
/// Hex digits of the batch id's SHA-256 in a name (128 bits).
const NAME_HASH_HEX_DIGITS: usize = 32;
/// Room for the readable prefix: the name minus the hash, the longest chunk number
/// (`u64::MAX` has 20 digits) and two separators.
const NAME_PREFIX_CHARS: usize = NAME_MAX_CHARS - NAME_HASH_HEX_DIGITS - 20 - 2;
/// Room kept for a redrive's `-r<run>` (runs go up to 1000).
const RUN_SUFFIX_CHARS: usize = 6;

/// A Step Functions client for chunk starts: the configured retry policy (the SDK backs off
/// with jitter on throttling), with at least [`START_MAX_ATTEMPTS`] attempts.
pub(crate) fn client(config: &aws_config::SdkConfig) -> aws_sdk_sfn::Client {
    let retry = config
        .retry_config()
        .cloned()
        .unwrap_or_else(RetryConfig::standard);
    let retry = if retry.max_attempts() < START_MAX_ATTEMPTS {
        retry.with_max_attempts(START_MAX_ATTEMPTS)
    } else {
        retry
    };
    let config = aws_sdk_sfn::config::Builder::from(config)
        .retry_config(retry)
        .build();
    aws_sdk_sfn::Client::from_conf(config)
}

/// Starts chunk executions of a deployed state machine.
#[derive(Clone)]
pub(crate) struct StepFunctionsOrchestrator {
    client: aws_sdk_sfn::Client,
    state_machine_arn: String,
}

impl StepFunctionsOrchestrator {
    pub(crate) fn new(client: aws_sdk_sfn::Client, state_machine_arn: String) -> Self {
        Self {
            client,
            state_machine_arn,
        }
    }

    /// Starts the executions of `chunks` of `batch_id` for a run (0: the batch's first; a
    /// redrive's number after it), whose names differ from every other run's.
    pub(crate) async fn start_run_chunks(
        &self,
        batch_id: &BatchId,
        chunks: &[u64],
        run: u32,
    ) -> Result<(), OrchestratorError> {
        futures::stream::iter(chunks.iter().copied().map(Ok))
            .try_for_each_concurrent(START_CONCURRENCY, |chunk| {
                self.start_chunk(batch_id, chunk, run)
            })
            .await
    }

    async fn start_chunk(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        run: u32,
    ) -> Result<(), OrchestratorError> {
        let started = self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(run_execution_name(batch_id, chunk, run))
            .input(execution_input(batch_id, chunk))
            .send()
            .await;
        match started {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|err| err.is_execution_already_exists()) =>
            {
                Ok(())
            }
            Err(err) => Err(OrchestratorError(format!(
                "starting chunk {chunk} of batch {}: {}",
                batch_id.as_str(),
                DisplayErrorContext(&err)
            ))),
        }
    }
}

#[async_trait]
impl Orchestrator for StepFunctionsOrchestrator {
    async fn start_chunks(
        &self,
        batch_id: &BatchId,
        chunks: &[u64],
    ) -> Result<(), OrchestratorError> {
        self.start_run_chunks(batch_id, chunks, 0).await
    }
}

/// The execution input of a chunk: exactly what the definition's first state reads.
pub(crate) fn execution_input(batch_id: &BatchId, chunk: u64) -> String {
    serde_json::json!({ "batchId": batch_id.as_str(), "chunk": chunk }).to_string()
}

/// The deterministic execution name of a chunk: `{prefix}-{hash}-{chunk}`, where `prefix` is
/// the start of the batch id with every character outside `[A-Za-z0-9_-]` replaced by `_`
/// (readable in the console) and `hash` is 128 bits of the SHA-256 of the whole batch id, so
/// that batch ids sharing a prefix get distinct names. At most 80 characters of
/// `[A-Za-z0-9_-]`, the set that also keeps CloudWatch logging of executions working.
pub fn execution_name(batch_id: &BatchId, chunk: u64) -> String {
    run_execution_name(batch_id, chunk, 0)
}

/// The deterministic execution name of a chunk in a run: [`execution_name`] for the batch's
/// first run; after a redrive, `-r<run>` follows the chunk (the prefix gives it room).
pub fn run_execution_name(batch_id: &BatchId, chunk: u64, run: u32) -> String {
    let suffix = match run {
        0 => String::new(),
        run => format!("-r{run}"),
    };
    let prefix: String = batch_id
        .as_str()
        .chars()
        .take(match run {
            0 => NAME_PREFIX_CHARS,
            _ => NAME_PREFIX_CHARS - RUN_SUFFIX_CHARS,
        })
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = Sha256::digest(batch_id.as_str().as_bytes());
    let hash = hex::encode(&digest[..NAME_HASH_HEX_DIGITS / 2]);
    format!("{prefix}-{hash}-{chunk}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(raw: &str) -> BatchId {
        BatchId::parse(raw).unwrap()
    }

    fn is_valid_name(name: &str) -> bool {
        (1..=NAME_MAX_CHARS).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }

    #[test]
    fn names_are_deterministic_and_readable() {
        let id = batch("4b4dc5c6-fbd9-493d-98ff-c459c378f45d");
        let name = execution_name(&id, 3);
        assert_eq!(name, execution_name(&id, 3));
        assert!(name.starts_with("4b4dc5c6-fbd9-493d-98ff-c4-"), "{name}");
        assert!(name.ends_with("-3"), "{name}");
        assert!(is_valid_name(&name), "{name}");
    }

    #[test]
    fn the_longest_batch_id_and_chunk_number_still_make_a_valid_name() {
        let ids = [
            "x".repeat(256),
            "é".repeat(128),
            "a b/c:d{e}".to_owned(),
            "\u{1F600}".repeat(64),
        ];
        for raw in ids {
            let name = execution_name(&batch(&raw), u64::MAX);
            assert!(is_valid_name(&name), "{raw:?} -> {name}");
        }
    }

    #[test]
    fn distinct_batches_and_chunks_never_share_a_name() {
        let shared_prefix = "p".repeat(NAME_PREFIX_CHARS);
        let ids = [
            batch(&format!("{shared_prefix}1")),
            batch(&format!("{shared_prefix}2")),
            batch("a/b"),
            batch("a:b"),
            batch("a_b"),
            batch("12"),
            batch("1"),
        ];
        let mut names = std::collections::HashSet::new();
        for id in &ids {
            for chunk in [0, 1, 2, 12, 21] {
                assert!(
                    names.insert(execution_name(id, chunk)),
                    "{id:?} chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn the_input_is_what_the_definition_reads() {
        let input: serde_json::Value =
            serde_json::from_str(&execution_input(&batch("b-1"), 7)).unwrap();
        assert_eq!(input, serde_json::json!({"batchId": "b-1", "chunk": 7}));
    }
}
