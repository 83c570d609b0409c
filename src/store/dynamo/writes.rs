//! How the store writes: metered requests, conditional writes (a failed condition is an answer,
//! not an error), transactions, and `BatchWriteItem` with `UnprocessedItems` retried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, TransactWriteItem, WriteRequest};
use futures::{stream, StreamExt, TryStreamExt};

use super::attributes::Item;
use super::{DynamoStore, StoreMetrics};
use crate::metrics::StoreKind;
use crate::store::StoreError;

/// Most items in one `BatchWriteItem` request.
const BATCH_WRITE_LIMIT: usize = 25;
/// `BatchWriteItem` requests in flight at once.
const WRITES_IN_FLIGHT: usize = 8;
/// Rounds of retrying `UnprocessedItems` before giving up.
const UNPROCESSED_RETRIES: u32 = 10;

/// Counts what the store sends, for cost measurement.
#[derive(Debug, Default)]
pub(super) struct Meter {
    write_units: AtomicU64,
    write_requests: AtomicU64,
    read_requests: AtomicU64,
}

impl Meter {
    pub(super) fn read(&self) {
        self.read_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn write(&self, units: u64) {
        self.write_requests.fetch_add(1, Ordering::Relaxed);
        self.write_units.fetch_add(units, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> StoreMetrics {
        StoreMetrics {
            write_units: self.write_units.load(Ordering::Relaxed),
            write_requests: self.write_requests.load(Ordering::Relaxed),
            read_requests: self.read_requests.load(Ordering::Relaxed),
        }
    }
}

/// DynamoDB's size of an item, for metering (attribute names plus values).
fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(text) => text.len(),
        AttributeValue::N(number) => number.len().div_ceil(2) + 1,
        AttributeValue::B(blob) => blob.as_ref().len(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| k.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        AttributeValue::L(list) => 3 + list.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        _ => 1,
    }
}

/// Write units of writing `item` once.
pub(super) fn write_units(item: &Item) -> u64 {
    item_size(item).div_ceil(1024).max(1) as u64
}

pub(super) fn unavailable<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Unavailable(DisplayErrorContext(&err).to_string())
}

/// The output of a conditional write, or None when its condition failed (another writer got
/// there first).
pub(super) fn conditional<T, E, R>(
    sent: Result<T, SdkError<E, R>>,
    is_condition_failure: impl Fn(&E) -> bool,
) -> Result<Option<T>, StoreError>
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match sent {
        Ok(output) => Ok(Some(output)),
        Err(err) if err.as_service_error().is_some_and(is_condition_failure) => Ok(None),
        Err(err) => Err(unavailable(err)),
    }
}

impl From<aws_sdk_dynamodb::error::BuildError> for StoreError {
    /// A request missing a field this module always sets.
    fn from(err: aws_sdk_dynamodb::error::BuildError) -> Self {
        StoreError::Corrupt(err.to_string())
    }
}

/// Exponential backoff (50 ms doubling, capped at 5 s) with full jitter.
fn backoff_with_jitter(round: u32) -> Duration {
    let cap = Duration::from_millis(50)
        .saturating_mul(1 << round.min(7))
        .min(Duration::from_secs(5));
    cap.mul_f64(rand::random::<f64>())
}

impl DynamoStore {
    /// Runs a transaction of `items` billed at `units` write units; false when a condition
    /// failed (another writer got there first).
    pub(super) async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        units: u64,
    ) -> Result<bool, StoreError> {
        self.meter.write(2 * units);
        let started = Instant::now();
        let outcome = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        crate::metrics::global().store_committed(StoreKind::Dynamo, started.elapsed());
        Ok(conditional(outcome, |e| e.is_transaction_canceled_exception())?.is_some())
    }

    /// Puts request-table items with `BatchWriteItem` in pages of 25, retrying
    /// `UnprocessedItems` with exponential backoff and full jitter until every item is written.
    pub(super) async fn write_all(&self, items: Vec<Item>) -> Result<(), StoreError> {
        let mut pages = Vec::new();
        let mut page = Vec::with_capacity(BATCH_WRITE_LIMIT);
        for item in items {
            page.push(item);
            if page.len() == BATCH_WRITE_LIMIT {
                pages.push(std::mem::take(&mut page));
            }
        }
        if !page.is_empty() {
            pages.push(page);
        }
        stream::iter(pages)
            .map(|page| self.write_page(page))
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn write_page(&self, page: Vec<Item>) -> Result<(), StoreError> {
        let table = self.tables.request_table.clone();
        let mut pending: Vec<WriteRequest> = page
            .into_iter()
            .map(|item| {
                let put = PutRequest::builder().set_item(Some(item)).build()?;
                Ok::<_, StoreError>(WriteRequest::builder().put_request(put).build())
            })
            .collect::<Result<_, _>>()?;
        let mut round = 0;
        loop {
            let units: u64 = pending
                .iter()
                .filter_map(|request| request.put_request())
                .map(|put| write_units(&put.item))
                .sum();
            self.meter.write(units);
            let started = Instant::now();
            let output = self
                .client
                .batch_write_item()
                .request_items(&table, pending)
                .send()
                .await;
            crate::metrics::global().store_committed(StoreKind::Dynamo, started.elapsed());
            let output = output.map_err(unavailable)?;
            let unprocessed = output
                .unprocessed_items
                .and_then(|mut tables| tables.remove(&table))
                .unwrap_or_default();
            if unprocessed.is_empty() {
                return Ok(());
            }
            round += 1;
            if round > UNPROCESSED_RETRIES {
                return Err(StoreError::Unavailable(format!(
                    "{} items stayed unprocessed after {UNPROCESSED_RETRIES} retries",
                    unprocessed.len()
                )));
            }
            tracing::debug!(
                items = unprocessed.len(),
                round,
                "retrying unprocessed items"
            );
            tokio::time::sleep(backoff_with_jitter(round)).await;
            pending = unprocessed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dynamo::attributes::{blob, n, s};

    #[test]
    fn an_item_costs_one_unit_per_started_kilobyte() {
        let small = Item::from([("a".to_owned(), s("x"))]);
        assert_eq!(write_units(&small), 1);
        let blob_item = Item::from([("h".to_owned(), blob(&[0; 2048]))]);
        assert_eq!(write_units(&blob_item), 3);
        let exact = Item::from([("k".to_owned(), s("x".repeat(1023)))]);
        assert_eq!(write_units(&exact), 1);
        assert_eq!(value_size(&n(12345)), 4);
    }

    #[test]
    fn backoff_stays_within_its_cap() {
        for round in 0..20 {
            assert!(backoff_with_jitter(round) <= Duration::from_secs(5));
        }
        assert!(backoff_with_jitter(1) <= Duration::from_millis(100));
    }
}
