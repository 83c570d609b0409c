//! The callback outbox in DynamoDB.

use async_trait::async_trait;

use super::DynamoStore;
use crate::domain::Timestamp;
use crate::store::{AttemptResult, Delivery, DeliveryKey, OutboxStore, StoreError};

#[async_trait]
impl OutboxStore for DynamoStore {
    async fn due_deliveries(
        &self,
        _now: Timestamp,
        _limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        Ok(Vec::new())
    }

    async fn load_delivery(&self, _key: &DeliveryKey) -> Result<Option<Delivery>, StoreError> {
        Ok(None)
    }

    async fn claim_delivery(
        &self,
        _read: &Delivery,
        _now: Timestamp,
        _lease_until: Timestamp,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }

    async fn mark_event_sent(&self, _key: &DeliveryKey) -> Result<(), StoreError> {
        Ok(())
    }

    async fn finish_attempt(
        &self,
        _key: &DeliveryKey,
        _attempt: u32,
        _result: &AttemptResult,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}
