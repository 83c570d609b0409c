//! `ExportBatchItems`: a batch's items streamed a page at a time as the store reads them. The
//! pages go through a channel of [`PAGES_AHEAD`] places: once the client stops taking them, the
//! reader waits, so a slow client never makes the server hold more than a few pages.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::error::ApiError;
use super::pb;
use crate::store::{BatchStore, ItemQuery, ListError};

/// Pages read ahead of the client (each at most the largest `ListBatchItems` page).
const PAGES_AHEAD: usize = 2;

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
        let (sender, receiver) = mpsc::channel(PAGES_AHEAD);
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
            if !page.entries.is_empty() {
                let message = pb::ExportBatchItemsResponse::from(page.entries);
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
