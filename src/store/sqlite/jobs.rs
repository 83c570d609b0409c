//! [`JobStore`] on SQLite: `chunk_jobs` (one row per chunk that ever had a job, keyed like its
//! chunk) and `batch_job_settings` (keyed by batch ID, so settings can be written before their batch).

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::domain::BatchId;
use crate::store::jobs::{next_revision, JobStore, JobWrite, StoredJob};
use crate::store::StoreError;

fn batch_seq(conn: &Connection, batch_id: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT seq FROM batches WHERE batch_id = ?1")?
        .query_row(params![batch_id], |row| row.get(0))
        .optional()?)
}

fn load_job(
    conn: &Connection,
    batch_id: &str,
    chunk: u64,
) -> Result<Option<StoredJob>, StoreError> {
    let Some(seq) = batch_seq(conn, batch_id)? else {
        return Ok(None);
    };
    Ok(conn
        .prepare_cached(
            "SELECT record, revision FROM chunk_jobs WHERE batch_seq = ?1 AND chunk = ?2",
        )?
        .query_row(params![seq, chunk as i64], |row| {
            Ok(StoredJob {
                record: row.get(0)?,
                revision: row.get::<_, i64>(1)? as u64,
            })
        })
        .optional()?)
}

fn put_job(
    conn: &Connection,
    batch_id: &str,
    chunk: u64,
    record: &str,
    read: Option<u64>,
) -> Result<JobWrite, StoreError> {
    let Some(seq) = batch_seq(conn, batch_id)? else {
        return Err(StoreError::Unavailable(format!(
            "no batch {batch_id} to record a job for"
        )));
    };
    let revision = next_revision(read);
    let written = match read {
        None => conn
            .prepare_cached(
                "INSERT INTO chunk_jobs (batch_seq, chunk, revision, record) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![seq, chunk as i64, revision as i64, record])?,
        Some(read) => conn
            .prepare_cached(
                "UPDATE chunk_jobs SET revision = ?3, record = ?4 \
                 WHERE batch_seq = ?1 AND chunk = ?2 AND revision = ?5",
            )?
            .execute(params![
                seq,
                chunk as i64,
                revision as i64,
                record,
                read as i64
            ])?,
    };
    Ok(if written == 1 {
        JobWrite::Written(revision)
    } else {
        JobWrite::Superseded
    })
}

fn list_jobs(conn: &Connection, batch_id: &str) -> Result<Vec<(u64, StoredJob)>, StoreError> {
    let Some(seq) = batch_seq(conn, batch_id)? else {
        return Ok(Vec::new());
    };
    let mut statement = conn.prepare_cached(
        "SELECT chunk, record, revision FROM chunk_jobs WHERE batch_seq = ?1 ORDER BY chunk",
    )?;
    let rows = statement.query_map(params![seq], |row| {
        Ok((
            row.get::<_, i64>(0)? as u64,
            StoredJob {
                record: row.get(1)?,
                revision: row.get::<_, i64>(2)? as u64,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn load_job(
        &self,
        batch_id: &BatchId,
        chunk: u64,
    ) -> Result<Option<StoredJob>, StoreError> {
        self.read_row(|conn| load_job(conn, batch_id.as_str(), chunk))
    }

    async fn put_job(
        &self,
        batch_id: &BatchId,
        chunk: u64,
        record: &str,
        read: Option<u64>,
    ) -> Result<JobWrite, StoreError> {
        let batch_id = batch_id.clone();
        let record = record.to_owned();
        self.write(move |conn| put_job(conn, batch_id.as_str(), chunk, &record, read))
            .await
    }

    async fn list_jobs(&self, batch_id: &BatchId) -> Result<Vec<(u64, StoredJob)>, StoreError> {
        let batch_id = batch_id.clone();
        self.read(move |conn| list_jobs(conn, batch_id.as_str()))
            .await
    }

    async fn put_job_settings(&self, batch_id: &BatchId, settings: &str) -> Result<(), StoreError> {
        let batch_id = batch_id.clone();
        let settings = settings.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO batch_job_settings (batch_id, settings) VALUES (?1, ?2) \
                 ON CONFLICT (batch_id) DO UPDATE SET settings = excluded.settings",
            )?
            .execute(params![batch_id.as_str(), settings])?;
            Ok(())
        })
        .await
    }

    async fn load_job_settings(&self, batch_id: &BatchId) -> Result<Option<String>, StoreError> {
        self.read_row(|conn| {
            Ok(conn
                .prepare_cached("SELECT settings FROM batch_job_settings WHERE batch_id = ?1")?
                .query_row(params![batch_id.as_str()], |row| row.get(0))
                .optional()?)
        })
    }
}
