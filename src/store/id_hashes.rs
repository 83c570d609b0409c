//! Finding item IDs that a new part repeats from earlier parts of its batch, without a row per
//! item. Each part's IDs are kept as one blob: the sorted 64-bit XXH3 hashes of its IDs, 8 bytes
//! each, little-endian. A new part's hashes are merged against each earlier part's blob, and a
//! hash found in both is confirmed against the earlier part's actual IDs before anything is
//! refused, so a hash collision refuses nothing.

use xxhash_rust::xxh3::xxh3_64;

use super::{AppendOutcome, StoreError};
use crate::domain::{ItemId, NewPart};

/// Bytes per hash in a blob.
const HASH_BYTES: usize = 8;

/// The hash an ID is stored under. XXH3's output is fixed by its specification, so blobs stay
/// readable across versions.
pub(crate) fn hash_id(id: &str) -> u64 {
    xxh3_64(id.as_bytes())
}

/// A new part's IDs by hash: (hash, position in the part), sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartIndex {
    entries: Vec<(u64, usize)>,
}

impl PartIndex {
    pub(crate) fn new(items: &[ItemId]) -> Self {
        let mut entries: Vec<(u64, usize)> = items
            .iter()
            .enumerate()
            .map(|(position, id)| (hash_id(id.as_str()), position))
            .collect();
        entries.sort_unstable();
        Self { entries }
    }

    /// The blob to store for this part: its hashes, sorted.
    pub(crate) fn blob(&self) -> Vec<u8> {
        let mut blob = Vec::with_capacity(self.entries.len() * HASH_BYTES);
        for (hash, _) in &self.entries {
            blob.extend_from_slice(&hash.to_le_bytes());
        }
        blob
    }

    /// The hashes this part shares with an earlier part's blob (given as its consecutive
    /// segments), by one merge pass over both sorted sequences.
    pub(crate) fn shared_hashes<'a>(
        &self,
        earlier: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<u64>, StoreError> {
        let mut shared = Vec::new();
        let mut mine = self.entries.iter().map(|(hash, _)| *hash).peekable();
        for segment in earlier {
            if segment.len() % HASH_BYTES != 0 {
                return Err(StoreError::Corrupt(format!(
                    "an ID hash blob of {} bytes",
                    segment.len()
                )));
            }
            for bytes in segment.chunks_exact(HASH_BYTES) {
                let theirs = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
                while mine.next_if(|&hash| hash < theirs).is_some() {}
                match mine.peek() {
                    None => return Ok(shared),
                    Some(&hash) if hash == theirs && shared.last() != Some(&hash) => {
                        shared.push(hash);
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(shared)
    }

    /// Every hash of this part, for an earlier part stored without a blob.
    pub(crate) fn all_hashes(&self) -> Vec<u64> {
        let mut hashes: Vec<u64> = self.entries.iter().map(|(hash, _)| *hash).collect();
        hashes.dedup();
        hashes
    }

    /// The first position (in the new part) of an ID that `earlier_ids` also holds, looking only
    /// at IDs whose hash is in `candidates` (sorted).
    pub(crate) fn first_repeat<'a>(
        &self,
        items: &[ItemId],
        candidates: &[u64],
        earlier_ids: impl IntoIterator<Item = &'a str>,
    ) -> Option<usize> {
        let mut first: Option<usize> = None;
        for earlier in earlier_ids {
            let hash = hash_id(earlier);
            if candidates.binary_search(&hash).is_err() {
                continue;
            }
            let start = self.entries.partition_point(|&(mine, _)| mine < hash);
            let repeats = self.entries[start..]
                .iter()
                .take_while(|&&(mine, _)| mine == hash)
                .map(|&(_, position)| position)
                .filter(|&position| items[position].as_str() == earlier);
            for position in repeats {
                first = Some(first.map_or(position, |seen| seen.min(position)));
            }
        }
        first
    }
}

/// The refusal of a part whose item at `position` is already in `earlier_part`.
pub(crate) fn repeated_item(part: &NewPart, position: usize, earlier_part: u64) -> AppendOutcome {
    AppendOutcome::Conflict(format!(
        "item ID {:?} (index {position} in part {}) is already in part {earlier_part} of batch {}",
        part.items[position].as_str(),
        part.part_number,
        part.batch_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(raw: &[&str]) -> Vec<ItemId> {
        raw.iter()
            .map(|id| ItemId::from_trusted((*id).to_owned()))
            .collect()
    }

    #[test]
    fn a_blob_holds_eight_sorted_bytes_per_id() {
        let index = PartIndex::new(&ids(&["a", "b", "c"]));
        let blob = index.blob();
        assert_eq!(blob.len(), 24);
        let hashes: Vec<u64> = blob
            .chunks_exact(8)
            .map(|bytes| u64::from_le_bytes(bytes.try_into().unwrap()))
            .collect();
        let mut sorted = hashes.clone();
        sorted.sort_unstable();
        assert_eq!(hashes, sorted);
        let mut expected = vec![hash_id("a"), hash_id("b"), hash_id("c")];
        expected.sort_unstable();
        assert_eq!(hashes, expected);
    }

    #[test]
    fn the_hash_of_an_id_never_changes() {
        // Stored blobs depend on it: XXH3-64 with seed 0.
        assert_eq!(hash_id(""), 0x2d06_8005_38d3_94c2);
        assert_eq!(hash_id("a"), xxh3_64(b"a"));
    }

    #[test]
    fn shared_hashes_are_found_across_segments() {
        let earlier = PartIndex::new(&ids(&["a", "b", "c", "d", "e", "f"])).blob();
        let index = PartIndex::new(&ids(&["x", "d", "y", "a"]));
        let (first, second) = earlier.split_at(24);
        let mut shared = index.shared_hashes([first, second]).unwrap();
        shared.sort_unstable();
        let mut expected = vec![hash_id("a"), hash_id("d")];
        expected.sort_unstable();
        assert_eq!(shared, expected);
        assert!(index
            .shared_hashes([PartIndex::new(&ids(&["q"])).blob().as_slice()])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_blob_of_a_length_not_a_multiple_of_eight_is_corrupt() {
        let index = PartIndex::new(&ids(&["a"]));
        assert!(matches!(
            index.shared_hashes([[1u8, 2, 3].as_slice()]),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_repeat_is_confirmed_against_the_ids_and_the_first_position_is_named() {
        let items = ids(&["x", "b", "y", "a"]);
        let index = PartIndex::new(&items);
        let candidates = index.all_hashes();
        assert_eq!(
            index.first_repeat(&items, &candidates, ["a", "b", "c"]),
            Some(1)
        );
        assert_eq!(index.first_repeat(&items, &candidates, ["c", "d"]), None);
    }

    #[test]
    fn a_hash_collision_without_equal_ids_refuses_nothing() {
        // "x" filed under the hash of "z", as a collision would: the hash matches, the IDs
        // differ, and nothing is refused.
        let items = ids(&["x"]);
        let colliding = PartIndex {
            entries: vec![(hash_id("z"), 0)],
        };
        let candidates = colliding.all_hashes();
        assert_eq!(colliding.first_repeat(&items, &candidates, ["z"]), None);
        let honest = PartIndex::new(&items);
        assert_eq!(
            honest.first_repeat(&items, &honest.all_hashes(), ["x"]),
            Some(0)
        );
    }
}
