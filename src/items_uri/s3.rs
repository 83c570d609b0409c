//! Opening items objects on S3: the client, the buckets the server may read, and what S3's
//! answers mean for a client. A missing object or bucket, a refused one and a bucket outside
//! the allowed list are the client's to fix (refusals); S3 failing or unreachable is not, and
//! its detail goes to the log only.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use tokio::io::AsyncBufRead;
use tokio::sync::OnceCell;

use super::{ItemsError, ItemsUri, ReadError};

/// Which buckets `items_uri` may name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BucketPolicy {
    /// Any bucket the server's credentials can read (`serve` without `--items-buckets`).
    #[default]
    Any,
    /// Only these (the `init` function: its `ITEMS_BUCKETS`, none when unset).
    Only(BTreeSet<String>),
}

impl BucketPolicy {
    /// The buckets of a comma-separated list (`ITEMS_BUCKETS`); blanks around names are
    /// dropped, and an empty list allows none.
    pub fn only_listed(list: &str) -> Self {
        Self::Only(
            list.split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    fn allows(&self, bucket: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(buckets) => buckets.contains(bucket),
        }
    }
}

/// An object opened for reading: its body as a stream, and the version read.
pub(crate) struct OpenObject {
    pub body: Pin<Box<dyn AsyncBufRead + Send>>,
    /// The version read, to read the same one again (`If-Match`).
    pub etag: Option<String>,
}

/// Reads items objects: built once per process and shared by every request.
#[derive(Clone)]
pub struct ObjectReader {
    client: Arc<ClientSource>,
    buckets: BucketPolicy,
}

enum ClientSource {
    Ready(aws_sdk_s3::Client),
    /// Built from the standard AWS configuration on first use, so that a server that never
    /// reads an object never looks for credentials.
    FromEnvironment(OnceCell<aws_sdk_s3::Client>),
}

impl ObjectReader {
    /// A reader with this client.
    pub fn new(client: aws_sdk_s3::Client, buckets: BucketPolicy) -> Self {
        Self {
            client: Arc::new(ClientSource::Ready(client)),
            buckets,
        }
    }

    /// A reader whose client is built from the standard AWS configuration (environment,
    /// profile files) when the first object is read.
    pub fn from_environment(buckets: BucketPolicy) -> Self {
        Self {
            client: Arc::new(ClientSource::FromEnvironment(OnceCell::new())),
            buckets,
        }
    }

    async fn client(&self) -> &aws_sdk_s3::Client {
        match self.client.as_ref() {
            ClientSource::Ready(client) => client,
            ClientSource::FromEnvironment(cell) => {
                cell.get_or_init(|| async {
                    aws_sdk_s3::Client::new(&crate::config::aws_sdk_config().await)
                })
                .await
            }
        }
    }

    /// Opens the object at `uri`; with `if_match`, only the version with that ETag (another is
    /// [`ReadError::Changed`]). A bucket the policy does not allow is refused before any call.
    pub(crate) async fn open(
        &self,
        uri: &ItemsUri,
        if_match: Option<&str>,
    ) -> Result<OpenObject, ReadError> {
        if !self.buckets.allows(uri.bucket()) {
            return Err(ItemsError::BucketNotAllowed(uri.bucket().to_owned()).into());
        }
        let output = self
            .client()
            .await
            .get_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .set_if_match(if_match.map(str::to_owned))
            .send()
            .await
            .map_err(|err| refusal(err, uri))?;
        Ok(OpenObject {
            etag: output.e_tag().map(str::to_owned),
            body: Box::pin(output.body.into_async_read()),
        })
    }
}

/// What a failed `GetObject` means for the client.
fn refusal(err: SdkError<GetObjectError>, uri: &ItemsUri) -> ReadError {
    let status = err
        .raw_response()
        .map(|response| response.status().as_u16());
    if let Some(service_error) = err.as_service_error() {
        let refused = match service_error {
            GetObjectError::NoSuchKey(_) => Some(ItemsError::NoSuchKey),
            GetObjectError::InvalidObjectState(_) => Some(ItemsError::Archived),
            other => match other.code() {
                Some("NoSuchBucket" | "InvalidBucketName") => {
                    Some(ItemsError::NoSuchBucket(uri.bucket().to_owned()))
                }
                Some("NoSuchKey") => Some(ItemsError::NoSuchKey),
                Some("AccessDenied") => Some(ItemsError::AccessDenied),
                Some("PermanentRedirect" | "AuthorizationHeaderMalformed") => {
                    Some(ItemsError::WrongRegion)
                }
                Some("PreconditionFailed") => return ReadError::Changed,
                _ => None,
            },
        };
        if let Some(refused) = refused {
            return refused.into();
        }
        match status {
            // Some answers (to HEAD-like requests, or from S3-compatible stores) carry no code.
            Some(404) => return ItemsError::NoSuchKey.into(),
            Some(403) => return ItemsError::AccessDenied.into(),
            Some(412) => return ReadError::Changed,
            _ => {}
        }
    }
    ReadError::Unreachable(format!("GetObject {uri}: {}", DisplayErrorContext(&err)))
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::primitives::SdkBody;

    use super::*;

    fn answered(status: u16, error: GetObjectError) -> ReadError {
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        let uri = ItemsUri::parse("s3://ids/today.txt").unwrap();
        refusal(SdkError::service_error(error, raw), &uri)
    }

    fn coded(code: &str) -> GetObjectError {
        GetObjectError::generic(ErrorMetadata::builder().code(code).build())
    }

    #[test]
    fn s3_answers_are_refusals_a_changed_object_or_unreachable() {
        let missing =
            GetObjectError::NoSuchKey(aws_sdk_s3::types::error::NoSuchKey::builder().build());
        let cases = [
            (answered(404, missing), "the object does not exist"),
            (
                answered(404, coded("NoSuchBucket")),
                "bucket \"ids\" does not exist",
            ),
            (
                answered(403, coded("AccessDenied")),
                "the object does not exist or this server may not read it (access denied)",
            ),
            (
                answered(301, coded("PermanentRedirect")),
                "the bucket is in another AWS Region than this server's",
            ),
            (answered(404, coded("")), "the object does not exist"),
        ];
        for (refused, expected) in cases {
            match refused {
                ReadError::Refused(err) => assert_eq!(err.to_string(), expected),
                other => panic!("not a refusal: {other:?}"),
            }
        }
        assert!(matches!(
            answered(412, coded("PreconditionFailed")),
            ReadError::Changed
        ));
        assert!(matches!(answered(412, coded("")), ReadError::Changed));
        assert!(matches!(
            answered(503, coded("SlowDown")),
            ReadError::Unreachable(_)
        ));
        let uri = ItemsUri::parse("s3://ids/today.txt").unwrap();
        assert!(matches!(
            refusal(SdkError::timeout_error("no answer"), &uri),
            ReadError::Unreachable(_)
        ));
    }

    #[test]
    fn a_listed_policy_allows_exactly_its_names() {
        let policy = BucketPolicy::only_listed(" ids-a , ids-b,,");
        assert!(policy.allows("ids-a"));
        assert!(policy.allows("ids-b"));
        assert!(!policy.allows("ids-c"));
        assert!(!policy.allows(""));
        assert!(!BucketPolicy::only_listed("").allows("ids-a"));
        assert!(BucketPolicy::Any.allows("ids-c"));
    }
}
