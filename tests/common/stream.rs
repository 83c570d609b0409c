//! A stand-in for Lambda's event source mapping on the request table's stream: reads moto's
//! DynamoDB stream with `GetShardIterator`/`GetRecords`, keeps the records the stack's
//! `FilterCriteria` keep, and invokes the `init` function with them in batches, as Lambda
//! would, retrying from a record the function reports in `batchItemFailures`.

use std::collections::HashMap;

use aws_sdk_dynamodbstreams::types::{AttributeValue, Record, ShardIteratorType};
use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;

use super::lambda::LambdaFunction;

/// Records per invocation, the stack's `BatchSize`.
const BATCH_SIZE: usize = 100;
/// Invocations of one batch before giving up on it (the stack retries 20 times).
const ATTEMPTS: usize = 20;

/// Reads a table's stream from its start, shard by shard.
pub(crate) struct StreamPoller {
    client: aws_sdk_dynamodbstreams::Client,
    stream_arn: String,
    /// The next iterator of each shard seen; None once a closed shard is read to its end.
    positions: Mutex<HashMap<String, Option<String>>>,
}

/// A stream attribute in the JSON Lambda delivers (`{"S": "..."}`, `{"N": "1"}`...).
fn attribute_json(value: &AttributeValue) -> Value {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    match value {
        AttributeValue::S(text) => json!({ "S": text }),
        AttributeValue::N(number) => json!({ "N": number }),
        AttributeValue::Bool(flag) => json!({ "BOOL": flag }),
        AttributeValue::Null(is_null) => json!({ "NULL": is_null }),
        AttributeValue::B(blob) => json!({ "B": encode(blob.as_ref()) }),
        AttributeValue::Ss(texts) => json!({ "SS": texts }),
        AttributeValue::Ns(numbers) => json!({ "NS": numbers }),
        AttributeValue::Bs(blobs) => {
            json!({ "BS": blobs.iter().map(|blob| encode(blob.as_ref())).collect::<Vec<_>>() })
        }
        AttributeValue::L(values) => {
            json!({ "L": values.iter().map(attribute_json).collect::<Vec<_>>() })
        }
        AttributeValue::M(map) => json!({ "M": image_json(map) }),
        _ => json!({}),
    }
}

fn image_json(image: &HashMap<String, AttributeValue>) -> Value {
    Value::Object(
        image
            .iter()
            .map(|(name, value)| (name.clone(), attribute_json(value)))
            .collect::<Map<_, _>>(),
    )
}

/// A stream record as Lambda delivers it to a function.
fn lambda_record(record: &Record) -> Value {
    let change = record.dynamodb().expect("a DynamoDB change");
    let mut dynamodb = json!({
        "SequenceNumber": change.sequence_number().unwrap_or_default(),
        "Keys": image_json(change.keys().unwrap_or(&HashMap::new())),
        "StreamViewType": "NEW_IMAGE",
    });
    if let Some(image) = change.new_image() {
        dynamodb["NewImage"] = image_json(image);
    }
    json!({
        "eventID": record.event_id().unwrap_or_default(),
        "eventName": record.event_name().map(|name| name.as_str()).unwrap_or_default(),
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": dynamodb,
    })
}

/// The stack's `FilterCriteria`: parts written, chunks recorded, limits changed, outbox
/// records written.
fn kept_by_filter(record: &Value) -> bool {
    let change = &record["dynamodb"];
    change["NewImage"]["chunksWritten"]["BOOL"] == json!(true)
        || change["NewImage"]["stage"]["S"] == json!("RECORDED")
        || change["Keys"]["sk"]["S"] == json!("limitChanged")
        || (change["Keys"]["sk"]["S"]
            .as_str()
            .is_some_and(|sk| sk.starts_with("outbox#"))
            && change["NewImage"]["attempts"]["N"] == json!("0"))
}

impl StreamPoller {
    /// A poller of `table`'s stream (the table must have one).
    pub(crate) async fn new(sdk_config: &aws_config::SdkConfig, table: &str) -> Self {
        let described = aws_sdk_dynamodb::Client::new(sdk_config)
            .describe_table()
            .table_name(table)
            .send()
            .await
            .expect("DescribeTable");
        let stream_arn = described
            .table()
            .and_then(|table| table.latest_stream_arn())
            .expect("the request table has a stream")
            .to_owned();
        Self {
            client: aws_sdk_dynamodbstreams::Client::new(sdk_config),
            stream_arn,
            positions: Mutex::new(HashMap::new()),
        }
    }

    /// Every record written since the last read, in order within each shard, kept by the
    /// stack's filter, as Lambda delivers them.
    pub(crate) async fn read(&self) -> Vec<Value> {
        let mut positions = self.positions.lock().await;
        let shards = self
            .client
            .describe_stream()
            .stream_arn(&self.stream_arn)
            .send()
            .await
            .expect("DescribeStream")
            .stream_description
            .map(|description| description.shards.unwrap_or_default())
            .unwrap_or_default();
        let mut records = Vec::new();
        for shard in shards {
            let shard_id = shard.shard_id().expect("shard id").to_owned();
            if !positions.contains_key(&shard_id) {
                let iterator = self
                    .client
                    .get_shard_iterator()
                    .stream_arn(&self.stream_arn)
                    .shard_id(&shard_id)
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send()
                    .await
                    .expect("GetShardIterator")
                    .shard_iterator;
                positions.insert(shard_id.clone(), iterator);
            }
            while let Some(iterator) = positions.get(&shard_id).cloned().flatten() {
                let page = self
                    .client
                    .get_records()
                    .shard_iterator(iterator)
                    .limit(1000)
                    .send()
                    .await
                    .expect("GetRecords");
                let count = page.records().len();
                records.extend(page.records().iter().map(lambda_record));
                positions.insert(shard_id.clone(), page.next_shard_iterator);
                if count == 0 {
                    break;
                }
            }
        }
        records.retain(kept_by_filter);
        records
    }

    /// Reads the new records and delivers them to `init` in batches; how many it delivered.
    /// A batch the function reports failures for is delivered again from the first failed
    /// record, as the stack's `ReportBatchItemFailures` mapping does.
    pub(crate) async fn deliver(&self, init: &LambdaFunction) -> usize {
        let records = self.read().await;
        for batch in records.chunks(BATCH_SIZE) {
            let mut pending = batch.to_vec();
            let mut attempts = 0;
            while !pending.is_empty() {
                attempts += 1;
                assert!(
                    attempts <= ATTEMPTS,
                    "init kept failing stream records: {}",
                    init.logs()
                );
                let answer = init
                    .invoke(json!({ "Records": pending }))
                    .await
                    .expect("init handles stream records");
                let failed: Vec<&str> = answer["batchItemFailures"]
                    .as_array()
                    .expect("batchItemFailures")
                    .iter()
                    .filter_map(|failure| failure["itemIdentifier"].as_str())
                    .collect();
                let Some(first_failed) = failed
                    .iter()
                    .filter_map(|sequence| {
                        pending.iter().position(|record| {
                            record["dynamodb"]["SequenceNumber"].as_str() == Some(sequence)
                        })
                    })
                    .min()
                else {
                    break;
                };
                pending.drain(..first_failed);
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        records.len()
    }
}
