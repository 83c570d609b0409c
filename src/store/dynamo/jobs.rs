//! [`JobStore`] on DynamoDB: request-table items beside the batch's chunks, `job#<chunk>` (a
//! chunk's job record, replaced only on the revision read) and `jobSettings` (the batch's job
//! settings). Both sort after every `chunk#` key, so chunk queries never read them.

use async_trait::async_trait;

use super::attributes::{
    job_sk, n, number, request_key, s, text, Item, JOB_PREFIX, JOB_SETTINGS_SK, RECORD, REVISION,
    SK,
};
use super::writes::{conditional, write_units};
use super::DynamoStore;
use crate::domain::BatchId;
use crate::store::jobs::{next_revision, JobStore, JobWrite, StoredJob};
use crate::store::StoreError;

fn stored_job(item: &Item) -> Result<StoredJob, StoreError> {
    Ok(StoredJob {
        record: text(item, RECORD)?.to_owned(),
        revision: number(item, REVISION)?,
    })
}

fn chunk_of_job_sk(sk: &str) -> Option<u64> {
    sk.strip_prefix(JOB_PREFIX)?.parse().ok()
}

#[async_trait]
impl JobStore for DynamoStore {
    async fn load_job(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<StoredJob>, StoreError> {
        self.get_request_item(batch_id, job_sk(chunk))
            .await?
            .map(|item| stored_job(&item))
            .transpose()
    }

    async fn put_job(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        record: &str,
        read: Option<u64>,
    ) -> Result<JobWrite, StoreError> {
        let revision = next_revision(read);
        let mut item = request_key(batch_id, job_sk(chunk));
        item.insert(RECORD.to_owned(), s(record));
        item.insert(REVISION.to_owned(), n(revision));
        self.meter.write(write_units(&item));
        let request = self
            .client
            .put_item()
            .table_name(&self.tables.request_table)
            .set_item(Some(item));
        let request = match read {
            None => request.condition_expression(format!("attribute_not_exists({SK})")),
            Some(read) => request
                .condition_expression(format!("{REVISION} = :read"))
                .expression_attribute_values(":read", n(read)),
        };
        let written = conditional(request.send().await, |e| {
            e.is_conditional_check_failed_exception()
        })?;
        Ok(match written {
            Some(_) => JobWrite::Written(revision),
            None => JobWrite::Superseded,
        })
    }

    async fn list_jobs(&self, batch_id: &BatchId) -> Result<Vec<(u64, StoredJob)>, StoreError> {
        let mut jobs = Vec::new();
        self.for_each_item_with_prefix(batch_id, JOB_PREFIX, |item| {
            if let Some(chunk) = chunk_of_job_sk(text(item, SK)?) {
                jobs.push((chunk, stored_job(item)?));
            }
            Ok(())
        })
        .await?;
        Ok(jobs)
    }

    async fn put_job_settings(&self, batch_id: &BatchId, settings: &str) -> Result<(), StoreError> {
        let mut item = request_key(batch_id, JOB_SETTINGS_SK.to_owned());
        item.insert(RECORD.to_owned(), s(settings));
        self.put_request_item(item).await
    }

    async fn load_job_settings(&self, batch_id: &BatchId) -> Result<Option<String>, StoreError> {
        self.get_request_item(batch_id, JOB_SETTINGS_SK.to_owned())
            .await?
            .map(|item| text(&item, RECORD).map(str::to_owned))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_name_their_chunk_and_sort_after_chunk_keys() {
        assert_eq!(chunk_of_job_sk(&job_sk(42)), Some(42));
        assert_eq!(chunk_of_job_sk("chunk#00000000000000000042"), None);
        assert!(job_sk(0).as_str() > super::super::attributes::AFTER_CHUNKS);
        assert!(JOB_SETTINGS_SK > super::super::attributes::AFTER_CHUNKS);
    }
}
