//! A batch's failure counts: one `errorCounts` item per batch in the request table, beside its
//! chunks (the batch item stays small, so that the writes counting chunks into it stay at one
//! unit). Counted in the transaction that records a chunk, and only for a chunk with failures;
//! each kept message has its own count attribute, so counting is an `ADD` whatever the counts
//! stand at. A message new to the batch is kept on the condition that the number of messages
//! kept is still the one read, so no more than `MAX_DISTINCT_ERRORS` are ever kept.

use aws_sdk_dynamodb::types::{AttributeValue, Update};

use super::attributes::{
    n, request_key, Item, DISTINCT_ERRORS, ERROR_COUNTS_SK, ERROR_PREFIX, OTHER_ERRORS,
};
use super::writes::write_units;
use super::DynamoStore;
use crate::domain::{BatchId, ErrorCount};
use crate::store::codec::ChunkOutcomes;
use crate::store::progress;
use crate::store::StoreError;

impl DynamoStore {
    /// The update that adds a recorded chunk's failures to its batch's counts, for the
    /// transaction that records it, with its write units; None when no item of it failed.
    pub(super) async fn error_counts_update(
        &self,
        batch_id: &BatchId,
        outcomes: &ChunkOutcomes,
    ) -> Result<Option<(Update, u64)>, StoreError> {
        let chunk = progress::chunk_errors(outcomes);
        if chunk.is_empty() {
            return Ok(None);
        }
        let stored = self
            .get_request_item(batch_id, ERROR_COUNTS_SK.to_owned())
            .await?
            .unwrap_or_else(|| request_key(batch_id, ERROR_COUNTS_SK.to_owned()));
        let kept: Option<u64> = match stored.get(DISTINCT_ERRORS) {
            Some(AttributeValue::N(count)) => count.parse().ok(),
            _ => None,
        };
        let tally = progress::tally_errors(chunk, kept.unwrap_or(0) as usize, |message| {
            stored.contains_key(&format!("{ERROR_PREFIX}{message}"))
        });
        let mut after = stored.clone();
        let mut additions = Vec::new();
        let mut update = Update::builder()
            .table_name(&self.tables.request_table)
            .set_key(Some(request_key(batch_id, ERROR_COUNTS_SK.to_owned())));
        for (index, (message, count)) in tally.known.iter().chain(&tally.new).enumerate() {
            let name = format!("{ERROR_PREFIX}{message}");
            additions.push(format!("#e{index} :e{index}"));
            update = update
                .expression_attribute_names(format!("#e{index}"), name.clone())
                .expression_attribute_values(format!(":e{index}"), n(count));
            after.entry(name).or_insert_with(|| n(count));
        }
        if tally.other > 0 {
            additions.push(format!("{OTHER_ERRORS} :other"));
            update = update.expression_attribute_values(":other", n(tally.other));
            after.entry(OTHER_ERRORS.to_owned()).or_insert_with(|| n(0));
        }
        if !tally.new.is_empty() {
            additions.push(format!("{DISTINCT_ERRORS} :added"));
            update = update.expression_attribute_values(":added", n(tally.new.len()));
            after.insert(DISTINCT_ERRORS.to_owned(), n(0));
            update = match kept {
                Some(seen) => update
                    .condition_expression(format!("{DISTINCT_ERRORS} = :seen"))
                    .expression_attribute_values(":seen", n(seen)),
                None => {
                    update.condition_expression(format!("attribute_not_exists({DISTINCT_ERRORS})"))
                }
            };
        }
        let update = update
            .update_expression(format!("ADD {}", additions.join(", ")))
            .build()?;
        Ok(Some((update, write_units(&after))))
    }

    /// The batch's most frequent failure messages.
    pub(super) async fn top_errors(
        &self,
        batch_id: &BatchId,
    ) -> Result<Vec<ErrorCount>, StoreError> {
        let Some(item) = self
            .get_request_item(batch_id, ERROR_COUNTS_SK.to_owned())
            .await?
        else {
            return Ok(Vec::new());
        };
        Ok(progress::top_errors(
            kept_counts(&item),
            count_of(&item, OTHER_ERRORS),
        ))
    }
}

fn count_of(item: &Item, name: &str) -> u64 {
    match item.get(name) {
        Some(AttributeValue::N(count)) => count.parse().unwrap_or(0),
        _ => 0,
    }
}

/// The kept messages of an `errorCounts` item, with their counts.
fn kept_counts(item: &Item) -> Vec<(String, u64)> {
    item.iter()
        .filter_map(|(name, value)| {
            let message = name.strip_prefix(ERROR_PREFIX)?;
            match value {
                AttributeValue::N(count) => Some((message.to_owned(), count.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}
