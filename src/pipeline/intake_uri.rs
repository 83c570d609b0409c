//! Intake of a batch given by reference: its items are read from an S3 object as a stream, in
//! two passes over one version of the object.
//!
//! 1. Check: every ID is parsed under the ID rules and counted, and its 64-bit hash kept. A hash
//!    seen twice sends the object through one more read, in which only the suspect IDs' text
//!    is kept, to name the first line that really repeats an ID. A refusal names its line, and
//!    nothing is stored.
//! 2. Store: the same version (`If-Match` on the ETag the check read) is read again and stored
//!    as parts of at most [`MAX_ITEMS_PER_REQUEST`] items through [`Intake::submit`], numbered
//!    from 1, each expecting the total the check counted. An object changed in between is
//!    refused before anything is stored.
//!
//! Memory stays flat in the object's size, but for the hashes: 8 bytes per item during the
//! check, plus one part's items during the store. A retried request stores nothing twice: each
//! part is stored once (`AlreadyStored`), and a request cut short by a store failure resumes
//! where it stopped.

use std::mem;

use super::{Accepted, Intake, IntakeError};
use crate::domain::{NewPart, MAX_ITEMS_PER_REQUEST};
use crate::items_uri::hashes::IdHashes;
use crate::items_uri::reader::{IdReader, LineId};
use crate::items_uri::s3::ObjectReader;
use crate::items_uri::{
    BatchByReference, ItemsError, ItemsReference, LineRule, ReadError, MAX_ITEMS_PER_OBJECT,
};

/// Why a batch by reference was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FromUriError {
    /// Reading the object failed, or its content was refused.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Storing a part failed.
    #[error(transparent)]
    Intake(#[from] IntakeError),
}

/// What the check learnt of the object.
struct Checked {
    total_items: u64,
    /// The version checked.
    etag: Option<String>,
}

impl Intake {
    /// Checks the object `request` names, then stores it as the batch's parts and starts their
    /// chunks. `created` is true when this call stored any part.
    pub(crate) async fn submit_from_uri(
        &self,
        objects: &ObjectReader,
        request: &BatchByReference,
    ) -> Result<Accepted, FromUriError> {
        self.check_callback(request.callback_url.as_ref())?;
        let checked = check(objects, &request.items).await?;
        let object = objects
            .open(&request.items.uri, checked.etag.as_deref())
            .await?;
        let mut ids = IdReader::new(object.body, request.items.format, request.items.header);
        let part_capacity = checked.total_items.min(MAX_ITEMS_PER_REQUEST as u64) as usize;
        let mut items = Vec::with_capacity(part_capacity);
        let mut part_number = 0;
        let mut stored_items = 0u64;
        let mut last: Option<Accepted> = None;
        let mut created = false;
        loop {
            let next = ids.next().await?;
            let at_end = next.is_none();
            if let Some(LineId { id, .. }) = next {
                items.push(id);
            }
            if items.len() == MAX_ITEMS_PER_REQUEST || (at_end && !items.is_empty()) {
                part_number += 1;
                stored_items += items.len() as u64;
                // Only an object other than the one checked can disagree with its count.
                if stored_items > checked.total_items {
                    return Err(ReadError::Changed.into());
                }
                let items = mem::replace(&mut items, Vec::with_capacity(part_capacity));
                let part = NewPart::new(
                    request.batch_id.clone(),
                    checked.total_items,
                    request.batch_size,
                    part_number,
                    items,
                )
                .map_err(|_| ReadError::Changed)?
                .with_max_concurrency(request.max_concurrency)
                .with_failure_budget(request.failure_budget)
                .with_callback_url(request.callback_url.clone());
                let accepted = self.submit(&part).await?;
                created |= accepted.created;
                last = Some(accepted);
            }
            if at_end {
                break;
            }
        }
        match last {
            Some(accepted) if stored_items == checked.total_items => Ok(Accepted {
                created,
                ..accepted
            }),
            _ => Err(ReadError::Changed.into()),
        }
    }
}

/// The first pass (and, when a hash repeats, the one after it): every line checked, the items
/// counted, nothing stored.
async fn check(objects: &ObjectReader, reference: &ItemsReference) -> Result<Checked, ReadError> {
    let object = objects.open(&reference.uri, None).await?;
    let mut ids = IdReader::new(object.body, reference.format, reference.header);
    let mut hashes = IdHashes::new();
    while let Some(LineId { id, .. }) = ids.next().await? {
        if hashes.len() == MAX_ITEMS_PER_OBJECT {
            return Err(ItemsError::TooManyItems.into());
        }
        hashes.insert(id.as_str());
    }
    let total_items = hashes.len();
    if total_items == 0 {
        return Err(ItemsError::NoItems.into());
    }
    let suspects = hashes.repeated();
    if !suspects.is_empty() {
        let object = objects.open(&reference.uri, object.etag.as_deref()).await?;
        let mut ids = IdReader::new(object.body, reference.format, reference.header);
        let mut finder = suspects.finder();
        while let Some(LineId { line, id }) = ids.next().await? {
            if let Some(first_line) = finder.first_line_of(id.as_str(), line) {
                let rule = LineRule::Duplicate {
                    id: id.into_string(),
                    first_line,
                };
                return Err(ReadError::line(line, rule));
            }
        }
    }
    Ok(Checked {
        total_items,
        etag: object.etag,
    })
}
