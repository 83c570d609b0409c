//! The callback outbox in SQLite: one row per terminal transition of a batch with a callback
//! URL, written by a trigger on the batch's status, so every statement that turns a batch
//! terminal writes it in its own transaction, and none can forget to. The trigger also resets
//! the batch's callback columns, which show the delivery of its last transition.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::domain::{BatchId, CallbackStatus, Timestamp};
use crate::store::outbox::BatchSnapshot;
use crate::store::{AttemptResult, Delivery, DeliveryKey, OutboxStore, StoreError};

/// The outbox table, its due index and the trigger that fills it. The snapshot's fields are
/// [`BatchSnapshot`]'s.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS callback_outbox (
    batch_seq INTEGER NOT NULL,
    completed_at INTEGER NOT NULL,
    snapshot TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'PENDING',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    due_at INTEGER,
    PRIMARY KEY (batch_seq, completed_at)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS callback_outbox_due ON callback_outbox (due_at) WHERE due_at IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS batch_finished_callback AFTER UPDATE OF status ON batches
WHEN NEW.callback_url IS NOT NULL AND NEW.completed_at IS NOT NULL
    AND NEW.status IN ('COMPLETED', 'COMPLETED_WITH_FAILURES', 'FAILED', 'CANCELLED')
    AND OLD.status NOT IN ('COMPLETED', 'COMPLETED_WITH_FAILURES', 'FAILED', 'CANCELLED')
BEGIN
    INSERT OR IGNORE INTO callback_outbox (batch_seq, completed_at, snapshot, due_at)
    VALUES (NEW.seq, NEW.completed_at, json_object(
        'batchId', NEW.batch_id, 'status', NEW.status, 'totalItems', NEW.total_items,
        'receivedItems', NEW.received_items, 'succeededItems', NEW.succeeded_items,
        'failedItems', NEW.failed_items, 'cancelledItems', NEW.cancelled_items,
        'totalChunks', NEW.total_chunks, 'completedChunks', NEW.completed_chunks,
        'batchSize', NEW.batch_size, 'createdAt', NEW.created_at, 'updatedAt', NEW.updated_at,
        'completedAt', NEW.completed_at, 'maxConcurrency', NEW.max_concurrency,
        'failureReason', NEW.failure_reason, 'redriveCount', NEW.redrive_count,
        'callbackUrl', NEW.callback_url), NEW.completed_at);
    UPDATE batches SET callback_status = 'PENDING', callback_attempts = 0, callback_last_error = NULL
    WHERE seq = NEW.seq;
END;
";

const DELIVERY_COLUMNS: &str =
    "b.batch_id, o.completed_at, o.snapshot, o.attempts, o.status FROM callback_outbox o \
     JOIN batches b ON b.seq = o.batch_seq";

fn delivery(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, i64, String, u32, String)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn to_delivery(
    (batch_id, completed_at, snapshot, attempts, status): (String, i64, String, u32, String),
) -> Result<Delivery, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("outbox row: {what}"));
    Ok(Delivery {
        key: DeliveryKey {
            batch_id: BatchId::parse(batch_id).map_err(|_| corrupt("batch_id"))?,
            completed_at: Timestamp(completed_at),
        },
        batch: BatchSnapshot::parse(&snapshot)?,
        attempts,
        status: CallbackStatus::from_name(&status).ok_or_else(|| corrupt("status"))?,
        event_sent: true,
    })
}

fn load_delivery(conn: &Connection, key: &DeliveryKey) -> Result<Option<Delivery>, StoreError> {
    let sql = format!("SELECT {DELIVERY_COLUMNS} WHERE b.batch_id = ?1 AND o.completed_at = ?2");
    conn.prepare_cached(&sql)?
        .query_row(params![key.batch_id.as_str(), key.completed_at.0], delivery)
        .optional()?
        .map(to_delivery)
        .transpose()
}

/// Mirrors a record's state on its batch, when the record is the batch's last transition.
fn mirror_on_batch(conn: &Connection, key: &DeliveryKey) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE batches SET (callback_status, callback_attempts, callback_last_error) = \
         (SELECT status, attempts, last_error FROM callback_outbox WHERE batch_seq = batches.seq AND completed_at = ?2) \
         WHERE batch_id = ?1 AND completed_at = ?2",
    )?
    .execute(params![key.batch_id.as_str(), key.completed_at.0])?;
    Ok(())
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn due_deliveries(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {DELIVERY_COLUMNS} WHERE o.due_at IS NOT NULL AND o.due_at <= ?1 ORDER BY o.due_at LIMIT ?2"
            );
            let rows = conn
                .prepare_cached(&sql)?
                .query_map(params![now.0, limit as i64], delivery)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(to_delivery).collect()
        })
        .await
    }

    async fn load_delivery(&self, key: &DeliveryKey) -> Result<Option<Delivery>, StoreError> {
        let key = key.clone();
        self.read(move |conn| load_delivery(conn, &key)).await
    }

    async fn claim_delivery(
        &self,
        read: &Delivery,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<bool, StoreError> {
        let (key, attempts) = (read.key.clone(), read.attempts);
        self.write(move |conn| {
            let claimed = conn
                .prepare_cached(
                    "UPDATE callback_outbox SET attempts = attempts + 1, due_at = ?4 \
                     WHERE batch_seq = (SELECT seq FROM batches WHERE batch_id = ?1) AND completed_at = ?2 \
                     AND attempts = ?3 AND status = 'PENDING' AND due_at <= ?5",
                )?
                .execute(params![
                    key.batch_id.as_str(),
                    key.completed_at.0,
                    attempts,
                    lease_until.0,
                    now.0
                ])?
                == 1;
            if claimed {
                mirror_on_batch(conn, &key)?;
            }
            Ok(claimed)
        })
        .await
    }

    async fn mark_event_sent(&self, _key: &DeliveryKey) -> Result<(), StoreError> {
        // No completion events are put locally.
        Ok(())
    }

    async fn finish_attempt(
        &self,
        key: &DeliveryKey,
        attempt: u32,
        result: &AttemptResult,
    ) -> Result<(), StoreError> {
        let key = key.clone();
        let (status, due_at, error) = match result {
            AttemptResult::Delivered => (CallbackStatus::Delivered, None, None),
            AttemptResult::Retry { due_at, error } => {
                (CallbackStatus::Pending, Some(due_at.0), Some(error.clone()))
            }
            AttemptResult::GaveUp { error } => (CallbackStatus::Failed, None, Some(error.clone())),
        };
        self.write(move |conn| {
            let finished = conn
                .prepare_cached(
                    "UPDATE callback_outbox SET status = ?4, due_at = ?5, last_error = COALESCE(?6, last_error) \
                     WHERE batch_seq = (SELECT seq FROM batches WHERE batch_id = ?1) AND completed_at = ?2 \
                     AND attempts = ?3 AND status = 'PENDING'",
                )?
                .execute(params![
                    key.batch_id.as_str(),
                    key.completed_at.0,
                    attempt,
                    status.as_str(),
                    due_at,
                    error
                ])?
                == 1;
            if finished {
                mirror_on_batch(conn, &key)?;
            }
            Ok(())
        })
        .await
    }
}
