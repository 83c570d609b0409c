//! Batches given by reference: `items_uri` (gRPC) or `itemsUri` (the seed body) names an S3
//! object holding the batch's item IDs instead of sending them. This module owns the reference
//! (the `s3://bucket/key` URI, the object's format, whether a CSV has a header row), the rules an
//! object's content keeps, and the refusals a client is shown: [`reader`] reads an object's IDs
//! as a stream, each checked under the ID rules and named by its 1-based line when refused;
//! [`hashes`] finds repeated IDs in 8 bytes per item; [`s3`] opens objects, in the buckets the
//! server may read. Storing what was read is the pipeline's (`Intake::submit_from_uri`).

pub(crate) mod hashes;
pub(crate) mod reader;
pub mod s3;

use std::fmt;

use crate::domain::{BatchId, BatchSize, CallbackUrl, IdError, MAX_COUNT};

/// Longest line (CSV record) of a CSV or JSON Lines object, in bytes. A line of the lines format
/// is one ID, so it is held to the ID's limit instead.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Most items one object may hold: while an object is checked, each of its items takes 8 bytes
/// of memory (800 MB at this limit).
pub const MAX_ITEMS_PER_OBJECT: u64 = 100_000_000;
/// Longest S3 object key, in bytes (S3's own limit).
const MAX_KEY_BYTES: usize = 1024;

const _: () = assert!(MAX_ITEMS_PER_OBJECT <= MAX_COUNT);

/// An object's location: `s3://bucket/key`, the key taken as written (no percent-decoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemsUri {
    bucket: String,
    key: String,
}

impl ItemsUri {
    /// Parses an `s3://bucket/key` URI. Other schemes and bare paths are refused: the server
    /// never reads its own files on a client's behalf.
    pub fn parse(raw: &str) -> Result<Self, ReferenceRule> {
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(ReferenceRule::NotAUri);
        };
        if !scheme.eq_ignore_ascii_case("s3") {
            return Err(ReferenceRule::Scheme(scheme.to_owned()));
        }
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || key.is_empty() {
            return Err(ReferenceRule::BucketAndKey);
        }
        // S3's names, legacy ones included (upper case, underscores): nothing that would change
        // the request's meaning (`?`, `#`, `@`, `:`).
        let bucket_is_valid = bucket.len() <= 255
            && bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !bucket_is_valid {
            return Err(ReferenceRule::Bucket);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(ReferenceRule::KeyTooLong);
        }
        if key.chars().any(char::is_control) {
            return Err(ReferenceRule::KeyControlCharacter);
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for ItemsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// How an object holds its IDs. Blank lines (empty, or only whitespace) are skipped in every
/// format; lines are counted from 1 whatever their content, so a refusal names the line an
/// editor shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemsFormat {
    /// One ID per line, taken whole (spaces inside and around it are part of it).
    Lines,
    /// CSV (RFC 4180 quoting, any of CRLF, LF or CR between records): the first column is the
    /// ID; other columns are ignored.
    Csv,
    /// JSON Lines: one JSON object per line, whose `id` string is the ID; other fields are
    /// ignored.
    JsonLines,
}

impl ItemsFormat {
    /// The format a key's extension suggests: `.csv` is CSV, `.jsonl` and `.ndjson` are JSON
    /// Lines (case-insensitive), anything else is one ID per line.
    pub fn for_key(key: &str) -> Self {
        let extension = key
            .rsplit_once('.')
            .map(|(_, extension)| extension.to_ascii_lowercase())
            .unwrap_or_default();
        match extension.as_str() {
            "csv" => Self::Csv,
            "jsonl" | "ndjson" => Self::JsonLines,
            _ => Self::Lines,
        }
    }

    /// Parses the name a JSON body or the CLI uses: `lines`, `csv` or `jsonl`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Lines, Self::Csv, Self::JsonLines]
            .into_iter()
            .find(|format| format.as_str() == name)
    }

    /// The format's name: `lines`, `csv` or `jsonl`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lines => "lines",
            Self::Csv => "csv",
            Self::JsonLines => "jsonl",
        }
    }
}

impl fmt::Display for ItemsFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a batch's items are, and how to read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemsReference {
    /// The object.
    pub uri: ItemsUri,
    /// Its format.
    pub format: ItemsFormat,
    /// Whether its first record is a header to skip (CSV only).
    pub header: bool,
}

impl ItemsReference {
    /// A reference to `uri`, in `format` or, when none is given, the one its key's extension
    /// suggests. A header row is a CSV's only.
    pub fn new(
        uri: ItemsUri,
        format: Option<ItemsFormat>,
        header: bool,
    ) -> Result<Self, ReferenceRule> {
        let format = format.unwrap_or_else(|| ItemsFormat::for_key(uri.key()));
        if header && format != ItemsFormat::Csv {
            return Err(ReferenceRule::HeaderNotCsv(format));
        }
        Ok(Self {
            uri,
            format,
            header,
        })
    }
}

/// A whole batch whose items are read from an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchByReference {
    /// The batch's ID (the idempotency key).
    pub batch_id: BatchId,
    /// Items per chunk.
    pub batch_size: BatchSize,
    /// Where its items are.
    pub items: ItemsReference,
    /// Chunk executions in flight at once; `None` for the deployment's default.
    pub max_concurrency: Option<u32>,
    /// Failed items tolerated before the batch stops (unset: no budget).
    pub failure_budget: crate::domain::FailureBudget,
    /// Where the batch's final status is POSTed; `None`: no callback.
    pub callback_url: Option<CallbackUrl>,
}

/// Why a reference was refused before anything was read: the rule its URI or its options
/// break. Each edge puts its own name for the field in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceRule {
    /// Not a URI at all (a bare path, a name).
    #[error("must be an s3:// URI (s3://bucket/key)")]
    NotAUri,
    /// A URI of another scheme.
    #[error("must be an s3:// URI (s3://bucket/key), not {0}://")]
    Scheme(String),
    /// The bucket or the key is missing.
    #[error("must name a bucket and a key (s3://bucket/key)")]
    BucketAndKey,
    /// The bucket's name holds characters no bucket name has.
    #[error("must name a bucket of letters, digits, '.', '-' and '_' (s3://bucket/key)")]
    Bucket,
    /// The key is longer than S3 allows.
    #[error("the key must be at most {MAX_KEY_BYTES} bytes")]
    KeyTooLong,
    /// The key holds a control character.
    #[error("the key must not contain control characters")]
    KeyControlCharacter,
    /// A header row was asked for in a format that has none.
    #[error("applies only to the csv format (the format is {0})")]
    HeaderNotCsv(ItemsFormat),
    /// The request also sends item IDs inline (the field that does is named).
    #[error("must not be given with {0}: send the item IDs inline or by reference, not both")]
    WithInlineItems(&'static str),
    /// An option of a reference, given without one (the reference's field is named).
    #[error("applies only with {0}")]
    WithoutReference(&'static str),
    /// A field of the inline shape, given with a reference (the reference's field is named).
    #[error("must not be given with {0}: the whole batch comes from the object")]
    WithReference(&'static str),
}

/// Why an object's items were refused: the client's to fix, and nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemsError {
    /// A line breaks a rule.
    #[error("line {line}")]
    Line {
        /// The line, from 1 (for CSV, the line its record starts on).
        line: u64,
        /// The rule.
        #[source]
        rule: LineRule,
    },
    /// The bucket is not one the server may read.
    #[error("bucket {0:?} is not one this server may read (its ITEMS_BUCKETS setting)")]
    BucketNotAllowed(String),
    /// The bucket does not exist.
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    /// The object does not exist.
    #[error("the object does not exist")]
    NoSuchKey,
    /// S3 refused the server's credentials for this object (S3 also answers so for a missing
    /// object to those who may not list the bucket).
    #[error("the object does not exist or this server may not read it (access denied)")]
    AccessDenied,
    /// The bucket is in a Region other than the server's.
    #[error("the bucket is in another AWS Region than this server's")]
    WrongRegion,
    /// The object is archived (Glacier) and must be restored first.
    #[error("the object is archived; restore it before submitting")]
    Archived,
    /// The object holds no IDs (it is empty, blank, or only a header).
    #[error("the object holds no item IDs")]
    NoItems,
    /// The object holds more IDs than one batch by reference may.
    #[error("the object holds more than {MAX_ITEMS_PER_OBJECT} item IDs")]
    TooManyItems,
}

/// The rule a line of an object breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineRule {
    /// The ID breaks an ID rule (the lines format's overlong line included).
    #[error(transparent)]
    Id(#[from] IdError),
    /// The line is not UTF-8.
    #[error("is not valid UTF-8")]
    NotUtf8,
    /// A CSV or JSON Lines line is longer than [`MAX_RECORD_BYTES`].
    #[error("must be at most {MAX_RECORD_BYTES} bytes")]
    TooLong,
    /// A JSON Lines line is not JSON.
    #[error("is not valid JSON")]
    NotJson,
    /// A JSON Lines line is JSON, but not an object with an `id` string.
    #[error("must be a JSON object with an \"id\" string")]
    NoJsonId,
    /// The ID appeared on an earlier line.
    #[error("duplicate item ID {id:?} (first on line {first_line})")]
    Duplicate {
        /// The repeated ID.
        id: String,
        /// Where it first appeared.
        first_line: u64,
    },
}

/// Why reading an object failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The object, or the request for it, breaks a rule: INVALID_ARGUMENT, 400.
    #[error(transparent)]
    Refused(#[from] ItemsError),
    /// The object changed between two reads of the same request, so its checked content is not
    /// what would be stored.
    #[error("the object changed while it was being read; nothing was stored, submit again")]
    Changed,
    /// S3 could not be reached or failed; the detail is for the log only.
    #[error("the object could not be read: {0}")]
    Unreachable(String),
}

impl ReadError {
    pub(crate) fn line(line: u64, rule: impl Into<LineRule>) -> Self {
        Self::Refused(ItemsError::Line {
            line,
            rule: rule.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_uri_splits_into_bucket_and_key_taken_as_written() {
        let uri = ItemsUri::parse("s3://my-bucket/some/dir/ids%20today.csv").unwrap();
        assert_eq!(uri.bucket(), "my-bucket");
        assert_eq!(uri.key(), "some/dir/ids%20today.csv");
        assert_eq!(uri.to_string(), "s3://my-bucket/some/dir/ids%20today.csv");
        assert!(ItemsUri::parse("S3://Legacy_Bucket/k").is_ok());
    }

    #[test]
    fn other_schemes_paths_and_incomplete_uris_are_refused_naming_the_rule() {
        let cases = [
            (
                "file:///etc/passwd",
                "must be an s3:// URI (s3://bucket/key), not file://",
            ),
            (
                "http://example.com/ids.txt",
                "must be an s3:// URI (s3://bucket/key), not http://",
            ),
            ("/tmp/ids.txt", "must be an s3:// URI (s3://bucket/key)"),
            ("ids.txt", "must be an s3:// URI (s3://bucket/key)"),
            (
                "s3://bucket-only",
                "must name a bucket and a key (s3://bucket/key)",
            ),
            (
                "s3://bucket/",
                "must name a bucket and a key (s3://bucket/key)",
            ),
            (
                "s3:///key",
                "must name a bucket and a key (s3://bucket/key)",
            ),
            (
                "s3://user@bucket/key",
                "must name a bucket of letters, digits, '.', '-' and '_' (s3://bucket/key)",
            ),
            (
                "s3://b/line\nbreak",
                "the key must not contain control characters",
            ),
        ];
        for (raw, expected) in cases {
            let err = ItemsUri::parse(raw).unwrap_err();
            assert_eq!(err.to_string(), expected, "{raw:?}");
        }
        let long_key = format!("s3://b/{}", "k".repeat(1025));
        assert_eq!(
            ItemsUri::parse(&long_key).unwrap_err(),
            ReferenceRule::KeyTooLong
        );
    }

    #[test]
    fn the_format_defaults_from_the_extension_and_a_header_is_for_csv_only() {
        for (key, format) in [
            ("ids.csv", ItemsFormat::Csv),
            ("IDS.CSV", ItemsFormat::Csv),
            ("ids.jsonl", ItemsFormat::JsonLines),
            ("ids.ndjson", ItemsFormat::JsonLines),
            ("ids.txt", ItemsFormat::Lines),
            ("ids", ItemsFormat::Lines),
            ("dir.csv/ids", ItemsFormat::Lines),
        ] {
            let uri = ItemsUri::parse(&format!("s3://b/{key}")).unwrap();
            let reference = ItemsReference::new(uri, None, false).unwrap();
            assert_eq!(reference.format, format, "{key}");
        }
        let uri = ItemsUri::parse("s3://b/ids.csv").unwrap();
        let explicit = ItemsReference::new(uri.clone(), Some(ItemsFormat::Lines), false).unwrap();
        assert_eq!(explicit.format, ItemsFormat::Lines);
        assert!(ItemsReference::new(uri.clone(), None, true).unwrap().header);
        assert_eq!(
            ItemsReference::new(uri, Some(ItemsFormat::JsonLines), true)
                .unwrap_err()
                .to_string(),
            "applies only to the csv format (the format is jsonl)"
        );
        assert_eq!(
            ItemsFormat::from_name("jsonl"),
            Some(ItemsFormat::JsonLines)
        );
        assert_eq!(ItemsFormat::from_name("JSON"), None);
    }
}
