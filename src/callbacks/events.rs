//! Completion events: `PutEvents` on the default EventBridge bus, `source: batch-manager`,
//! `detail-type: Batch Finished`, the callback's body as the detail.
//!
//! One JSON request signed with SigV4 over the callbacks' HTTPS client, rather than the
//! EventBridge SDK: the call is one operation, and the SDK client would add about half a
//! megabyte to the Lambda artifact. The signer and the credentials are the ones the other
//! SDK clients already use.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};

use super::http::{describe, https_client, HttpsClient};

/// The events' source.
pub const SOURCE: &str = "batch-manager";
/// The events' detail type.
pub const DETAIL_TYPE: &str = "Batch Finished";
/// The longest a `PutEvents` call may take.
const PUT_TIMEOUT: Duration = Duration::from_secs(10);

/// Puts completion events. Cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    client: HttpsClient,
    credentials: SharedCredentialsProvider,
    region: String,
    endpoint: String,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl EventSink {
    /// A sink putting events with the configuration's credentials, in its region, at its
    /// endpoint (the regional EventBridge endpoint unless one is set); None without a region
    /// or credentials.
    pub fn from_config(config: &aws_config::SdkConfig) -> Option<Self> {
        let region = config.region()?.to_string();
        let credentials = config.credentials_provider()?;
        let endpoint = match config.endpoint_url() {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("https://events.{region}.amazonaws.com"),
        };
        Some(Self {
            client: https_client(),
            credentials,
            region,
            endpoint,
        })
    }

    /// Puts one event whose detail is `body`; why not, in a few words.
    pub async fn put(&self, body: &[u8]) -> Result<(), String> {
        let request = json!({
            "Entries": [{
                "Source": SOURCE,
                "DetailType": DETAIL_TYPE,
                "Detail": String::from_utf8_lossy(body),
            }]
        });
        let answer = tokio::time::timeout(PUT_TIMEOUT, self.send(request.to_string()))
            .await
            .map_err(|_| "EventBridge timed out".to_owned())??;
        let failed = answer["FailedEntryCount"].as_u64().unwrap_or(0);
        if failed == 0 {
            return Ok(());
        }
        let code = answer["Entries"]
            .as_array()
            .and_then(|entries| entries.iter().find_map(|entry| entry["ErrorCode"].as_str()))
            .unwrap_or("rejected")
            .to_owned();
        tracing::warn!(error_code = %code, "completion event rejected");
        Err(format!("rejected ({code})"))
    }

    /// Sends one signed `PutEvents` request; its JSON answer.
    async fn send(&self, payload: String) -> Result<Value, String> {
        let unavailable = |what: &str| {
            tracing::warn!(error = what, "completion event not put");
            "EventBridge unavailable".to_owned()
        };
        let identity: Identity = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|err| unavailable(&err.to_string()))?
            .into();
        let uri = format!("{}/", self.endpoint);
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "AWSEvents.PutEvents"),
        ];
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("events")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|err| unavailable(&err.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            &uri,
            headers.iter().copied(),
            SignableBody::Bytes(payload.as_bytes()),
        )
        .map_err(|err| unavailable(&err.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|err| unavailable(&err.to_string()))?
            .into_parts();
        let mut builder = hyper::Request::post(&uri);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let mut request = builder
            .body(Full::new(Bytes::from(payload)))
            .map_err(|err| unavailable(&err.to_string()))?;
        instructions.apply_to_request_http1x(&mut request);
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| unavailable(&describe(&err)))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|err| unavailable(&err.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(unavailable(&format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes)
            )));
        }
        serde_json::from_slice(&bytes).map_err(|err| unavailable(&err.to_string()))
    }
}
