//! What a callback POSTs (and a completion event carries as its detail): the batch's final
//! status in the camelCase JSON the CLI prints, plus the delivery ID.

use serde_json::json;

use crate::domain::Batch;

/// The JSON body for `batch`'s transition `delivery_id`, as exact bytes (they are signed).
pub fn body(batch: &Batch, delivery_id: &str) -> Vec<u8> {
    let mut value = batch.to_json();
    value["deliveryId"] = json!(delivery_id);
    serde_json::to_vec(&value).expect("a JSON value serializes")
}
