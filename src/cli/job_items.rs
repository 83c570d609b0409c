//! `batch-manager job-items`: run inside an AWS Batch job, prints the item IDs the job works on,
//! one per line, read from the stack's request table. A chunk's IDs reach the job in its
//! environment (`BATCH_MANAGER_ITEM_IDS`) only while they fit in AWS Batch's 8 KiB of container
//! overrides; larger chunks read them with this command.
//!
//! The job was submitted with the chunk's items still pending at the time; they stay pending
//! until the job's outcomes are saved, so they are read back the same, and the digest the job was
//! given proves it (a mismatch is an error, never a wrong list).

use std::io::Write;

use anyhow::{bail, Context};

use crate::config::JobItemsArgs;
use crate::domain::BatchId;
use crate::pipeline::jobs::items_digest;
use crate::store::dynamo::{DynamoStore, DynamoTables};
use crate::store::{BatchStore, ItemState};

/// Prints the job's items (or, in an array job's child, its one item).
pub async fn job_items(args: JobItemsArgs) -> anyhow::Result<()> {
    let batch_id = BatchId::parse(args.batch_id.clone())
        .with_context(|| format!("--batch-id {:?}", args.batch_id))?;
    let sdk_config = crate::config::aws_sdk_config().await;
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk_config),
        DynamoTables {
            batch_table: args.tables.batch_table,
            request_table: args.tables.request_table,
        },
    );
    let chunk = store
        .load_chunk(&batch_id, args.chunk)
        .await
        .context("reading the chunk")?
        .with_context(|| format!("chunk {} of batch {batch_id} does not exist", args.chunk))?;
    let items: Vec<_> = chunk
        .items
        .into_iter()
        .zip(chunk.states)
        .filter(|(_, state)| *state == ItemState::Pending)
        .map(|(item, _)| item)
        .collect();
    if items_digest(&items) != args.items_digest {
        bail!(
            "the chunk's pending items are not those the job was submitted with (its outcomes \
             were saved, or another attempt's job is running): nothing to do"
        );
    }
    let chosen = match (args.index, args.all) {
        (Some(index), false) => {
            let item = items
                .get(index)
                .with_context(|| format!("--index {index}: the job has {} items", items.len()))?;
            std::slice::from_ref(item)
        }
        _ => &items[..],
    };
    let mut out = std::io::stdout().lock();
    for item in chosen {
        writeln!(out, "{}", item.as_str())?;
    }
    out.flush()?;
    Ok(())
}
