//! A batch's failure counts: one `errorCounts` item per batch in the request table, beside its
//! chunks, and one `errorMessage#<key>` item per message kept. The batch item stays small, so
//! that the writes counting chunks into it stay at one unit; the counts item names each message
//! by a 16-character key of its text, so that it stays under 1 KiB (20 counts) and adding to it
//! costs one unit whatever the messages' lengths.
//!
//! Counting happens in the transaction that records a chunk, and only for a chunk with
//! failures: each kept message has its own count attribute, so counting is an `ADD` whatever the
//! counts stand at. A message new to the batch is kept on the condition that the number of
//! messages kept is still the one read, so no more than `MAX_DISTINCT_ERRORS` are ever kept; its
//! text is written first, by a put that writes the same item whoever writes it (a text written
//! for a transaction that then lost its condition is harmless: it is never counted).

use aws_sdk_dynamodb::types::{AttributeValue, Update};
use sha2::{Digest, Sha256};

use super::attributes::{
    n, request_key, s, text, Item, DISTINCT_ERRORS, ERROR_COUNTS_SK, ERROR_MESSAGE,
    ERROR_MESSAGE_PREFIX, ERROR_PREFIX, OTHER_ERRORS,
};
use super::writes::write_units;
use super::DynamoStore;
use crate::domain::{BatchId, ErrorCount};
use crate::store::codec::ChunkOutcomes;
use crate::store::progress;
use crate::store::StoreError;

/// The key a message is kept under: the first 16 hex digits of its SHA-256.
fn message_key(message: &str) -> String {
    let digest = Sha256::digest(message.as_bytes());
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl DynamoStore {
    /// The update that adds a recorded chunk's failures to its batch's counts, for the
    /// transaction that records it, with its write units; None when no item of it failed. The
    /// texts of messages new to the batch are written first.
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
            stored.contains_key(&format!("{ERROR_PREFIX}{}", message_key(message)))
        });
        for (message, _) in &tally.new {
            let mut item = request_key(
                batch_id,
                format!("{ERROR_MESSAGE_PREFIX}{}", message_key(message)),
            );
            item.insert(ERROR_MESSAGE.to_owned(), s(message.as_str()));
            self.put_request_item(item).await?;
        }
        let mut after = stored.clone();
        let mut additions = Vec::new();
        let mut update = Update::builder()
            .table_name(&self.tables.request_table)
            .set_key(Some(request_key(batch_id, ERROR_COUNTS_SK.to_owned())));
        for (index, (message, count)) in tally.known.iter().chain(&tally.new).enumerate() {
            let name = format!("{ERROR_PREFIX}{}", message_key(message));
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

    /// The batch's most frequent failure messages: its counts, then the texts of the messages
    /// kept (one query).
    pub(super) async fn top_errors(
        &self,
        batch_id: &BatchId,
    ) -> Result<Vec<ErrorCount>, StoreError> {
        let Some(counts) = self
            .get_request_item(batch_id, ERROR_COUNTS_SK.to_owned())
            .await?
        else {
            return Ok(Vec::new());
        };
        let mut texts = Vec::new();
        self.for_each_item_with_prefix(batch_id, ERROR_MESSAGE_PREFIX, |item| {
            let key = text(item, super::attributes::SK)?
                .trim_start_matches(ERROR_MESSAGE_PREFIX)
                .to_owned();
            texts.push((key, text(item, ERROR_MESSAGE)?.to_owned()));
            Ok(())
        })
        .await?;
        let kept = texts.into_iter().filter_map(|(key, message)| {
            let count = count_of(&counts, &format!("{ERROR_PREFIX}{key}"));
            (count > 0).then_some((message, count))
        });
        Ok(progress::top_errors(kept, count_of(&counts, OTHER_ERRORS)))
    }
}

fn count_of(item: &Item, name: &str) -> u64 {
    match item.get(name) {
        Some(AttributeValue::N(count)) => count.parse().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_kept_under_sixteen_hex_digits_of_its_hash() {
        let key = message_key(&"x".repeat(200));
        assert_eq!(key.len(), 16);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(key, message_key(&"x".repeat(200)));
        assert_ne!(key, message_key("y"));
    }
}
