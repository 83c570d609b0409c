//! The callback outbox in DynamoDB: `outbox#<completedAt>` items in the request table, put by
//! the transaction that turns a batch terminal (`batches::move_status`), listed while due by
//! the sparse `by-due` index, claimed and finished by conditional updates.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};

use super::attributes::{
    corrupt, flag, flag_value, n, number, optional_text, outbox_sk, request_key, s, text, Item,
    ATTEMPTS, BATCH_ID, BY_DUE_INDEX, CALLBACK_ATTEMPTS, CALLBACK_LAST_ERROR, CALLBACK_STATUS,
    COMPLETED_AT, DELIVERY_STATUS, DUE_AT, DUE_PARTITION, DUE_PARTITION_VALUE, EVENT_SENT,
    LAST_ERROR, OUTBOX_PREFIX, SK, SNAPSHOT,
};
use super::writes::{conditional, unavailable, write_units};
use super::DynamoStore;
use crate::domain::{Batch, BatchId, CallbackStatus, Timestamp};
use crate::store::outbox::BatchSnapshot;
use crate::store::{AttemptResult, Delivery, DeliveryKey, OutboxStore, StoreError};

/// The record of `sk` in batch `batch_id`'s items, if `sk` names one (for stream records).
pub fn delivery_key(batch_id: BatchId, sk: &str) -> Option<DeliveryKey> {
    let digits = sk.strip_prefix(OUTBOX_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(DeliveryKey {
        batch_id,
        completed_at: Timestamp(digits.parse().ok()?),
    })
}

fn key_of(key: &DeliveryKey) -> Item {
    request_key(&key.batch_id, outbox_sk(key.completed_at.0))
}

impl DynamoStore {
    /// Whether the transition of `batch` to a terminal status gets an outbox record.
    pub(super) fn wants_outbox(&self, batch: &Batch) -> bool {
        self.completion_events || batch.callback.url.is_some()
    }

    /// The put of the outbox record of `after` (a batch just turned terminal), for the
    /// transaction that turns it.
    pub(super) fn outbox_put(&self, after: &Batch) -> Result<(TransactWriteItem, u64), StoreError> {
        let completed_at = after
            .completed_at
            .ok_or_else(|| StoreError::Corrupt("a terminal batch without completedAt".into()))?;
        let mut item: Item = HashMap::from([
            (SNAPSHOT.to_owned(), s(BatchSnapshot::of(after).to_json())),
            (
                DELIVERY_STATUS.to_owned(),
                s(CallbackStatus::Pending.as_str()),
            ),
            (ATTEMPTS.to_owned(), n(0)),
            (DUE_AT.to_owned(), n(completed_at.0)),
            (DUE_PARTITION.to_owned(), s(DUE_PARTITION_VALUE)),
            (COMPLETED_AT.to_owned(), n(completed_at.0)),
            (EVENT_SENT.to_owned(), flag_value(!self.completion_events)),
        ]);
        item.extend(request_key(&after.batch_id, outbox_sk(completed_at.0)));
        let units = write_units(&item);
        let put = Put::builder()
            .table_name(&self.tables.request_table)
            .set_item(Some(item))
            .condition_expression(format!("attribute_not_exists({SK})"))
            .build()?;
        Ok((TransactWriteItem::builder().put(put).build(), units))
    }

    async fn read_delivery(&self, key: &DeliveryKey) -> Result<Option<Delivery>, StoreError> {
        self.meter.read();
        let output = self
            .client
            .get_item()
            .table_name(&self.tables.request_table)
            .set_key(Some(key_of(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        output
            .item
            .map(|item| {
                Ok(Delivery {
                    key: key.clone(),
                    batch: BatchSnapshot::parse(text(&item, SNAPSHOT)?)?,
                    attempts: number(&item, ATTEMPTS)?,
                    status: CallbackStatus::from_name(text(&item, DELIVERY_STATUS)?)
                        .ok_or_else(|| corrupt(DELIVERY_STATUS))?,
                    event_sent: flag(&item, EVENT_SENT),
                })
            })
            .transpose()
    }

    /// Shows a record's state on its batch while the record is the batch's last transition.
    async fn mirror_on_batch(
        &self,
        key: &DeliveryKey,
        status: CallbackStatus,
        attempts: u32,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let error_update = match error {
            Some(_) => format!(", {CALLBACK_LAST_ERROR} = :error"),
            None => String::new(),
        };
        let mut update = self
            .update_batch_item(&key.batch_id)
            .update_expression(format!(
                "SET {CALLBACK_STATUS} = :status, {CALLBACK_ATTEMPTS} = :attempts{error_update}"
            ))
            .condition_expression(format!("{COMPLETED_AT} = :completed"))
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":attempts", n(attempts))
            .expression_attribute_values(":completed", n(key.completed_at.0));
        if let Some(error) = error {
            update = update.expression_attribute_values(":error", s(error));
        }
        self.meter.write(1);
        conditional(update.send().await, |e| {
            e.is_conditional_check_failed_exception()
        })?;
        Ok(())
    }
}

#[async_trait]
impl OutboxStore for DynamoStore {
    async fn due_deliveries(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.meter.read();
        let output = self
            .client
            .query()
            .table_name(&self.tables.request_table)
            .index_name(BY_DUE_INDEX)
            .key_condition_expression(format!("{DUE_PARTITION} = :due AND {DUE_AT} <= :now"))
            .expression_attribute_values(":due", s(DUE_PARTITION_VALUE))
            .expression_attribute_values(":now", n(now.0))
            .limit(limit.min(i32::MAX as usize) as i32)
            .send()
            .await
            .map_err(unavailable)?;
        let mut due = Vec::new();
        for item in output.items() {
            let batch_id = BatchId::parse(text(item, BATCH_ID)?).map_err(|_| corrupt(BATCH_ID))?;
            let Some(key) = optional_text(item, SK).and_then(|sk| delivery_key(batch_id, sk))
            else {
                continue;
            };
            if let Some(delivery) = self.read_delivery(&key).await? {
                due.push(delivery);
            }
        }
        Ok(due)
    }

    async fn load_delivery(&self, key: &DeliveryKey) -> Result<Option<Delivery>, StoreError> {
        self.read_delivery(key).await
    }

    async fn claim_delivery(
        &self,
        read: &Delivery,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<bool, StoreError> {
        self.meter.write(1);
        let sent = self
            .client
            .update_item()
            .table_name(&self.tables.request_table)
            .set_key(Some(key_of(&read.key)))
            .update_expression(format!("SET {ATTEMPTS} = :next, {DUE_AT} = :lease"))
            .condition_expression(format!(
                "{ATTEMPTS} = :read AND {DELIVERY_STATUS} = :pending AND {DUE_AT} <= :now"
            ))
            .expression_attribute_values(":next", n(read.attempts + 1))
            .expression_attribute_values(":read", n(read.attempts))
            .expression_attribute_values(":lease", n(lease_until.0))
            .expression_attribute_values(":now", n(now.0))
            .expression_attribute_values(":pending", s(CallbackStatus::Pending.as_str()))
            .send()
            .await;
        let claimed = conditional(sent, |e| e.is_conditional_check_failed_exception())?.is_some();
        if claimed && read.batch.callback.url.is_some() {
            self.mirror_on_batch(&read.key, CallbackStatus::Pending, read.attempts + 1, None)
                .await?;
        }
        Ok(claimed)
    }

    async fn mark_event_sent(&self, key: &DeliveryKey) -> Result<(), StoreError> {
        self.meter.write(1);
        self.client
            .update_item()
            .table_name(&self.tables.request_table)
            .set_key(Some(key_of(key)))
            .update_expression(format!("SET {EVENT_SENT} = :yes"))
            .expression_attribute_values(":yes", flag_value(true))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn finish_attempt(
        &self,
        key: &DeliveryKey,
        attempt: u32,
        result: &AttemptResult,
    ) -> Result<(), StoreError> {
        let (status, due_at, error) = match result {
            AttemptResult::Delivered => (CallbackStatus::Delivered, None, None),
            AttemptResult::Retry { due_at, error } => {
                (CallbackStatus::Pending, Some(*due_at), Some(error.as_str()))
            }
            AttemptResult::GaveUp { error } => (CallbackStatus::Failed, None, Some(error.as_str())),
        };
        let mut set = vec![format!("{DELIVERY_STATUS} = :status")];
        if error.is_some() {
            set.push(format!("{LAST_ERROR} = :error"));
        }
        if due_at.is_some() {
            set.push(format!("{DUE_AT} = :due"));
        }
        let expression = match due_at {
            Some(_) => format!("SET {}", set.join(", ")),
            None => format!("SET {} REMOVE {DUE_AT}, {DUE_PARTITION}", set.join(", ")),
        };
        let mut update = self
            .client
            .update_item()
            .table_name(&self.tables.request_table)
            .set_key(Some(key_of(key)))
            .update_expression(expression)
            .condition_expression(format!(
                "{ATTEMPTS} = :attempt AND {DELIVERY_STATUS} = :pending"
            ))
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":attempt", n(attempt))
            .expression_attribute_values(":pending", s(CallbackStatus::Pending.as_str()));
        if let Some(error) = error {
            update = update.expression_attribute_values(":error", s(error));
        }
        if let Some(due_at) = due_at {
            update = update.expression_attribute_values(":due", n(due_at.0));
        }
        self.meter.write(1);
        let finished = conditional(update.send().await, |e| {
            e.is_conditional_check_failed_exception()
        })?
        .is_some();
        if !finished {
            return Ok(());
        }
        let has_url = self
            .read_delivery(key)
            .await?
            .is_some_and(|delivery| delivery.batch.callback.url.is_some());
        if has_url {
            self.mirror_on_batch(key, status, attempt, error).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_sort_key_names_its_transition() {
        let batch = BatchId::parse("b").unwrap();
        let key = delivery_key(batch.clone(), &outbox_sk(1_700_000_000_000_001)).unwrap();
        assert_eq!(key.completed_at, Timestamp(1_700_000_000_000_001));
        assert_eq!(delivery_key(batch.clone(), "outbox#"), None);
        assert_eq!(delivery_key(batch, "chunk#00000000000000000001"), None);
    }
}
