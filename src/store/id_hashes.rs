//! Finding item IDs that a new part repeats from earlier parts of its batch, without a row per
//! item. Each part's IDs are kept as one blob: the sorted 64-bit XXH3 hashes of its IDs, 8 bytes
//! each, little-endian. A new part's hashes are merged against each earlier part's blob, and a
//! hash found in both is confirmed against the earlier part's actual IDs before anything is
//! refused, so a hash collision refuses nothing.

use std::collections::HashMap;

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

/// A new part's ID hashes, sorted, with a bit filter over their leading bits so that most of
/// an earlier part's hashes are dismissed by one bit test, read in address order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartIndex {
    hashes: Vec<u64>,
    /// Bit `h >> filter_shift` is set for every hash `h` of the part.
    filter: Vec<u64>,
    filter_shift: u32,
}

impl PartIndex {
    pub(crate) fn new(items: &[ItemId]) -> Self {
        let mut hashes: Vec<u64> = items.iter().map(|id| hash_id(id.as_str())).collect();
        hashes.sort_unstable();
        // About 16 filter bits per ID (few false hits), between 64 bits and 512 KiB.
        let bits_log2 = (items.len().max(1) * 16)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(6, 22);
        let filter_shift = 64 - bits_log2;
        let mut filter = vec![0u64; 1 << (bits_log2 - 6)];
        for hash in &hashes {
            let bit = hash >> filter_shift;
            filter[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        Self {
            hashes,
            filter,
            filter_shift,
        }
    }

    fn may_hold(&self, hash: u64) -> bool {
        let bit = hash >> self.filter_shift;
        self.filter[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    /// The blob to store for this part: its hashes, sorted.
    pub(crate) fn blob(&self) -> Vec<u8> {
        let mut blob = Vec::with_capacity(self.hashes.len() * HASH_BYTES);
        for hash in &self.hashes {
            blob.extend_from_slice(&hash.to_le_bytes());
        }
        blob
    }

    /// The hashes this part shares with an earlier part's blob (given as its consecutive
    /// segments), in ascending order.
    pub(crate) fn shared_hashes<'a>(
        &self,
        earlier: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<u64>, StoreError> {
        let mut shared: Vec<u64> = Vec::new();
        for segment in earlier {
            if segment.len() % HASH_BYTES != 0 {
                return Err(StoreError::Corrupt(format!(
                    "an ID hash blob of {} bytes",
                    segment.len()
                )));
            }
            for bytes in segment.chunks_exact(HASH_BYTES) {
                let theirs = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
                if self.may_hold(theirs)
                    && self.hashes.binary_search(&theirs).is_ok()
                    && shared.last() != Some(&theirs)
                {
                    shared.push(theirs);
                }
            }
        }
        Ok(shared)
    }

    /// Every hash of this part, for an earlier part stored without a blob.
    pub(crate) fn all_hashes(&self) -> Vec<u64> {
        let mut hashes = self.hashes.clone();
        hashes.dedup();
        hashes
    }
}

/// The first position (in the new part) of an ID that `earlier_ids` also holds, looking only
/// at the new part's IDs whose hash is in `candidates` (sorted): a shared hash is only a
/// suspicion, the IDs' text decides.
pub(crate) fn first_repeat<'a>(
    items: &[ItemId],
    candidates: &[u64],
    earlier_ids: impl IntoIterator<Item = &'a str>,
) -> Option<usize> {
    let suspects: HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .filter(|(_, id)| candidates.binary_search(&hash_id(id.as_str())).is_ok())
        .map(|(position, id)| (id.as_str(), position))
        .collect();
    if suspects.is_empty() {
        return None;
    }
    earlier_ids
        .into_iter()
        .filter_map(|earlier| suspects.get(earlier).copied())
        .min()
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
        let candidates = PartIndex::new(&items).all_hashes();
        assert_eq!(first_repeat(&items, &candidates, ["a", "b", "c"]), Some(1));
        assert_eq!(first_repeat(&items, &candidates, ["c", "d"]), None);
        assert_eq!(first_repeat(&items, &[], ["a"]), None);
    }

    #[test]
    fn a_hash_collision_without_equal_ids_refuses_nothing() {
        // An earlier blob shared the hash of "x", as a collision would, but the earlier part's
        // IDs do not hold "x": nothing is refused.
        let items = ids(&["x"]);
        let collided = vec![hash_id("x")];
        assert_eq!(first_repeat(&items, &collided, ["z"]), None);
        assert_eq!(first_repeat(&items, &collided, ["z", "x"]), Some(0));
    }

    #[test]
    fn a_merge_finds_every_shared_hash_once_whatever_the_sizes() {
        let earlier: Vec<ItemId> = ids(&["a", "b", "c", "d", "e", "f", "g"]);
        let blob = PartIndex::new(&earlier).blob();
        let index = PartIndex::new(&ids(&["g", "a", "zz", "a2"]));
        let mut expected = vec![hash_id("a"), hash_id("g")];
        expected.sort_unstable();
        for split in [0, 8, 24, 56] {
            let (first, second) = blob.split_at(split);
            assert_eq!(index.shared_hashes([first, second]).unwrap(), expected);
        }
        assert!(PartIndex::new(&[])
            .shared_hashes([blob.as_slice()])
            .unwrap()
            .is_empty());
    }
}
