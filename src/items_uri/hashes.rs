//! Finding repeated IDs in an object too large to hold: while the object is read, each ID is
//! kept only as a seeded 64-bit hash, 8 bytes, in blocks of fixed size (growing never copies
//! them); at the end the blocks are sorted and merged, and a hash seen twice marks its IDs as
//! suspects. Suspects are only suspicions: the object is read again and their text decides
//! ([`RepeatFinder`]), so a hash collision refuses nothing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::OnceLock;

/// Hashes per block: 2 MiB.
const BLOCK_HASHES: usize = 1 << 18;

/// The hash function of one process: XXH3 with a seed chosen at random once, so that no crafted
/// set of IDs can make many of them collide.
#[derive(Debug, Clone, Copy)]
struct Hasher {
    seed: u64,
}

impl Hasher {
    fn of_this_process() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        Self {
            seed: *SEED.get_or_init(rand::random),
        }
    }

    fn hash(self, id: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), self.seed)
    }
}

/// The hashes of every ID read so far.
#[derive(Debug)]
pub(crate) struct IdHashes {
    hasher: Hasher,
    blocks: Vec<Vec<u64>>,
    len: u64,
}

impl IdHashes {
    pub(crate) fn new() -> Self {
        Self {
            hasher: Hasher::of_this_process(),
            blocks: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn insert(&mut self, id: &str) {
        let hash = self.hasher.hash(id);
        match self.blocks.last_mut() {
            Some(block) if block.len() < BLOCK_HASHES => block.push(hash),
            _ => {
                let mut block = Vec::with_capacity(if self.blocks.is_empty() {
                    // Most objects are small: the first block grows as needed.
                    0
                } else {
                    BLOCK_HASHES
                });
                block.push(hash);
                self.blocks.push(block);
            }
        }
        self.len += 1;
    }

    /// How many IDs were inserted.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The hashes inserted more than once, each once, ascending: every repeated ID's hash is
    /// among them (and, rarely, the hash two different IDs share).
    pub(crate) fn repeated(mut self) -> Suspects {
        for block in &mut self.blocks {
            block.sort_unstable();
        }
        // A k-way merge of the sorted blocks: equal hashes come out next to each other.
        let mut heads: BinaryHeap<Reverse<(u64, usize, usize)>> = self
            .blocks
            .iter()
            .enumerate()
            .filter_map(|(block, hashes)| Some(Reverse((*hashes.first()?, block, 0))))
            .collect();
        let mut previous = None;
        let mut repeated: Vec<u64> = Vec::new();
        while let Some(Reverse((hash, block, position))) = heads.pop() {
            if previous == Some(hash) && repeated.last() != Some(&hash) {
                repeated.push(hash);
            }
            previous = Some(hash);
            if let Some(&next) = self.blocks[block].get(position + 1) {
                heads.push(Reverse((next, block, position + 1)));
            }
        }
        Suspects {
            hasher: self.hasher,
            hashes: repeated,
        }
    }
}

/// The hashes found more than once in an object.
#[derive(Debug)]
pub(crate) struct Suspects {
    hasher: Hasher,
    hashes: Vec<u64>,
}

impl Suspects {
    /// Whether no hash was seen twice, and so no ID appears twice.
    pub(crate) fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Finds the first ID that really repeats, reading the object again.
    pub(crate) fn finder(&self) -> RepeatFinder<'_> {
        RepeatFinder {
            suspects: self,
            seen: HashMap::new(),
        }
    }

    fn holds(&self, id: &str) -> bool {
        self.hashes.binary_search(&self.hasher.hash(id)).is_ok()
    }
}

/// Follows a second read of an object, keeping the text of the suspect IDs only.
#[derive(Debug)]
pub(crate) struct RepeatFinder<'a> {
    suspects: &'a Suspects,
    /// A suspect ID and the line it was first read on.
    seen: HashMap<String, u64>,
}

impl RepeatFinder<'_> {
    /// The line `id` was first read on, when it was read before.
    pub(crate) fn first_line_of(&mut self, id: &str, line: u64) -> Option<u64> {
        if !self.suspects.holds(id) {
            return None;
        }
        match self.seen.get(id) {
            Some(&first) => Some(first),
            None => {
                self.seen.insert(id.to_owned(), line);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes_of<'a>(ids: impl IntoIterator<Item = &'a str>) -> IdHashes {
        let mut hashes = IdHashes::new();
        for id in ids {
            hashes.insert(id);
        }
        hashes
    }

    #[test]
    fn distinct_ids_leave_no_suspect_across_many_blocks() {
        let ids: Vec<String> = (0..BLOCK_HASHES * 2 + 17)
            .map(|i| format!("id-{i}"))
            .collect();
        let hashes = hashes_of(ids.iter().map(String::as_str));
        assert_eq!(hashes.len(), ids.len() as u64);
        assert_eq!(hashes.blocks.len(), 3);
        assert!(hashes.repeated().is_empty());
    }

    #[test]
    fn a_repeat_in_another_block_is_found_and_confirmed_by_its_text() {
        let mut ids: Vec<String> = (0..BLOCK_HASHES + 10).map(|i| format!("id-{i}")).collect();
        ids.push("id-3".to_owned());
        ids.push("id-3".to_owned());
        let suspects = hashes_of(ids.iter().map(String::as_str)).repeated();
        assert_eq!(suspects.hashes.len(), 1);
        let mut finder = suspects.finder();
        let found: Vec<(usize, u64)> = ids
            .iter()
            .enumerate()
            .filter_map(|(index, id)| {
                let line = index as u64 + 1;
                finder.first_line_of(id, line).map(|first| (index, first))
            })
            .collect();
        assert_eq!(found, vec![(BLOCK_HASHES + 10, 4), (BLOCK_HASHES + 11, 4)]);
    }

    #[test]
    fn a_shared_hash_without_equal_text_refuses_nothing() {
        // As if "x" and "y" collided: their hash is a suspect, but their text differs.
        let hasher = Hasher::of_this_process();
        let suspects = Suspects {
            hasher,
            hashes: vec![hasher.hash("x")],
        };
        let mut finder = suspects.finder();
        assert_eq!(finder.first_line_of("x", 1), None);
        assert_eq!(finder.first_line_of("y", 2), None);
        assert_eq!(finder.first_line_of("x", 3), Some(1));
    }
}
