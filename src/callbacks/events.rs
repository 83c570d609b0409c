//! Completion events: `PutEvents` on the default EventBridge bus, `source: batch-manager`,
//! `detail-type: Batch Finished`, the callback's body as the detail.

use aws_sdk_eventbridge::types::PutEventsRequestEntry;

/// The events' source.
pub const SOURCE: &str = "batch-manager";
/// The events' detail type.
pub const DETAIL_TYPE: &str = "Batch Finished";

/// Puts completion events. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventSink {
    client: aws_sdk_eventbridge::Client,
}

impl EventSink {
    /// A sink over `client`.
    pub fn new(client: aws_sdk_eventbridge::Client) -> Self {
        Self { client }
    }

    /// Puts one event whose detail is `body`; why not, in a few words.
    pub async fn put(&self, body: &[u8]) -> Result<(), String> {
        let detail = String::from_utf8_lossy(body).into_owned();
        let entry = PutEventsRequestEntry::builder()
            .source(SOURCE)
            .detail_type(DETAIL_TYPE)
            .detail(detail)
            .build();
        match self.client.put_events().entries(entry).send().await {
            Ok(output) if output.failed_entry_count() == 0 => Ok(()),
            Ok(output) => {
                let code = output
                    .entries()
                    .iter()
                    .find_map(|entry| entry.error_code())
                    .unwrap_or("rejected");
                tracing::warn!(error_code = code, "completion event rejected");
                Err(format!("rejected ({code})"))
            }
            Err(err) => {
                tracing::warn!(error = %aws_sdk_eventbridge::error::DisplayErrorContext(&err), "completion event not put");
                Err("EventBridge unavailable".to_owned())
            }
        }
    }
}
