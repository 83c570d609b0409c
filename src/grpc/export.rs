//! `ExportBatchItems`: a batch's items streamed a page at a time as the store reads them. The
//! messages go through a channel of [`MESSAGES_AHEAD`] places: once the client stops taking
//! them, the reader waits, so a slow client never makes the server hold more than a page and a
//! few messages.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::error::ApiError;
use super::pb;
use crate::domain::ItemRecord;
use crate::store::{BatchStore, ItemQuery, ListError};

/// Messages read ahead of the client.
const MESSAGES_AHEAD: usize = 2;
/// About the most bytes of IDs and errors one message holds: a page of long failure messages is
/// sent in several, well under the 4 MiB most gRPC clients accept by default.
const MESSAGE_BYTES: usize = 1024 * 1024;
/// What an item adds to a message beyond its ID and error (status, attempts, chunk, framing).
const ITEM_OVERHEAD_BYTES: usize = 24;

/// The stream of one export's pages.
pub(super) type ExportReceiver = mpsc::Receiver<Result<pb::ExportBatchItemsResponse, Status>>;

/// Reads one export's pages and sends them to its client, until the last one, the client
/// going away, or the server stopping.
pub(super) struct Exporter {
    store: Arc<dyn BatchStore>,
    query: ItemQuery,
    stopping: watch::Receiver<bool>,
    sender: mpsc::Sender<Result<pb::ExportBatchItemsResponse, Status>>,
}

impl Exporter {
    /// An exporter of the items `query` selects (from its first page), and the stream its
    /// pages go to.
    pub(super) fn new(
        store: Arc<dyn BatchStore>,
        query: ItemQuery,
        stopping: watch::Receiver<bool>,
    ) -> (Self, ExportReceiver) {
        let (sender, receiver) = mpsc::channel(MESSAGES_AHEAD);
        let exporter = Self {
            store,
            query,
            stopping,
            sender,
        };
        (exporter, receiver)
    }

    pub(super) async fn run(mut self) {
        loop {
            let page = match self.store.list_items(&self.query).await {
                Ok(page) => page,
                Err(ListError::NotFound) => {
                    return self
                        .fail(ApiError::NotFound(self.query.batch_id.clone()))
                        .await
                }
                Err(err) => return self.fail(err.into()).await,
            };
            // A share of the batch the filter leaves empty is not worth a message.
            for message in messages(page.entries) {
                let stopping = &mut self.stopping;
                let stopped = tokio::select! {
                    sent = self.sender.send(Ok(message)) => {
                        if sent.is_err() {
                            return;
                        }
                        false
                    }
                    _ = stopping.wait_for(|stopping| *stopping) => true,
                };
                if stopped {
                    return self.fail(ApiError::ExportStopped).await;
                }
            }
            match page.next_page_token {
                Some(token) => self.query.page_token = Some(token),
                None => return,
            }
        }
    }

    async fn fail(&self, err: ApiError) {
        let _ = self.sender.try_send(Err(err.into()));
    }
}

/// A page's items as messages of about [`MESSAGE_BYTES`] at most (one item alone may pass it).
fn messages(items: Vec<ItemRecord>) -> Vec<pb::ExportBatchItemsResponse> {
    let mut messages = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for item in items {
        let size = item.item_id.as_str().len()
            + item.error.as_deref().map_or(0, str::len)
            + ITEM_OVERHEAD_BYTES;
        if !current.is_empty() && bytes + size > MESSAGE_BYTES {
            messages.push(pb::ExportBatchItemsResponse::from(std::mem::take(
                &mut current,
            )));
            bytes = 0;
        }
        bytes += size;
        current.push(item);
    }
    if !current.is_empty() {
        messages.push(pb::ExportBatchItemsResponse::from(current));
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ItemId, ItemStatus};

    fn failed(id: usize, error_bytes: usize) -> ItemRecord {
        ItemRecord {
            item_id: ItemId::parse(format!("item-{id}")).unwrap(),
            status: ItemStatus::Failed,
            error: Some("e".repeat(error_bytes)),
            attempts: 1,
            chunk: 0,
        }
    }

    #[test]
    fn a_page_of_long_errors_is_sent_in_messages_of_about_a_mebibyte() {
        let page: Vec<ItemRecord> = (0..10_000).map(|id| failed(id, 1024)).collect();
        let sent = messages(page);
        assert!(sent.len() >= 10, "{} messages", sent.len());
        assert_eq!(sent.iter().map(|m| m.items.len()).sum::<usize>(), 10_000);
        assert!(sent
            .iter()
            .all(|m| prost::Message::encoded_len(m) <= MESSAGE_BYTES + 64 * 1024));
        let short: Vec<ItemRecord> = (0..10_000).map(|id| failed(id, 0)).collect();
        assert_eq!(messages(short).len(), 1);
        assert!(messages(Vec::new()).is_empty());
    }
}
