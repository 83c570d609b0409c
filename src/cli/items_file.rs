//! The items file of `submit`: one ID per line (blank lines skipped), read in groups without
//! holding the whole file, each ID parsed before anything is sent, and a refusal naming the
//! line it came from.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{InputError, ITEMS_PER_PART};
use crate::domain::{parse_item_ids, ItemId, ItemIdsError, MAX_ITEMS_PER_REQUEST};

/// Where item IDs come from: a file, or standard input (`-`).
pub(super) struct ItemsSource {
    pub(super) path: PathBuf,
}

/// IDs read from consecutive non-blank lines, with the line each came from.
pub(super) struct IdGroup {
    pub(super) ids: Vec<String>,
    lines: Vec<u64>,
}

impl ItemsSource {
    pub(super) fn is_stdin(&self) -> bool {
        self.path == Path::new("-")
    }

    /// How errors name the source.
    pub(super) fn name(&self) -> String {
        if self.is_stdin() {
            "standard input".to_owned()
        } else {
            self.path.display().to_string()
        }
    }

    fn open(&self) -> anyhow::Result<Box<dyn BufRead>> {
        if self.is_stdin() {
            return Ok(Box::new(BufReader::new(std::io::stdin())));
        }
        let file = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
    }

    /// Reads IDs in groups of `group` without holding the whole file; blank lines are skipped.
    pub(super) fn for_each_group(
        &self,
        group: usize,
        mut each: impl FnMut(IdGroup) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let capacity = group.min(MAX_ITEMS_PER_REQUEST + 1);
        let empty = || IdGroup {
            ids: Vec::with_capacity(capacity),
            lines: Vec::with_capacity(capacity),
        };
        let mut current = empty();
        for (index, line) in self.open()?.lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", self.name()))?;
            let id = line.strip_suffix('\r').unwrap_or(&line);
            if id.trim().is_empty() {
                continue;
            }
            current.ids.push(id.to_owned());
            current.lines.push(index as u64 + 1);
            if current.ids.len() == group {
                each(std::mem::replace(&mut current, empty()))?;
            }
        }
        if !current.ids.is_empty() {
            each(current)?;
        }
        Ok(())
    }

    /// Parses a group's IDs, naming the line of the first one refused.
    pub(super) fn parse(&self, group: IdGroup) -> Result<Vec<ItemId>, InputError> {
        let IdGroup { ids, lines } = group;
        parse_item_ids(ids).map_err(|err| {
            let file = self.name();
            match (err.index(), err) {
                (Some(index), ItemIdsError::InvalidId { rule, .. }) => InputError::Line {
                    file,
                    line: lines[index],
                    rule: rule.into(),
                },
                (Some(index), other) => InputError::Line {
                    file,
                    line: lines[index],
                    rule: other.into(),
                },
                (None, other) => InputError::File {
                    file,
                    rule: other.into(),
                },
            }
        })
    }

    /// Checks every line of a file and counts its IDs, before anything is sent.
    pub(super) fn check(&self) -> anyhow::Result<u64> {
        let mut total = 0u64;
        self.for_each_group(ITEMS_PER_PART, |group| {
            total += group.ids.len() as u64;
            self.parse(group)?;
            Ok(())
        })?;
        if total == 0 {
            return Err(InputError::File {
                file: self.name(),
                rule: ItemIdsError::Empty.into(),
            }
            .into());
        }
        Ok(total)
    }

    /// Every ID as one group, for one `SubmitBatch`.
    pub(super) fn read_all(&self) -> anyhow::Result<Vec<ItemId>> {
        let mut all = IdGroup {
            ids: Vec::new(),
            lines: Vec::new(),
        };
        self.for_each_group(MAX_ITEMS_PER_REQUEST + 1, |group| {
            if !all.ids.is_empty() {
                anyhow::bail!(
                    "{} holds more than {MAX_ITEMS_PER_REQUEST} items; pass a file to send it in parts",
                    self.name()
                );
            }
            all = group;
            Ok(())
        })?;
        Ok(self.parse(all)?)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file_with(lines: &str) -> (tempfile::NamedTempFile, ItemsSource) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(lines.as_bytes()).unwrap();
        let source = ItemsSource {
            path: file.path().to_owned(),
        };
        (file, source)
    }

    #[test]
    fn a_bad_line_is_named_by_its_number_in_the_file() {
        let (_file, source) = file_with("a\n\nb\r\n\nb\n");
        let err = source.check().unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.ends_with(" line 5: duplicate item ID \"b\""),
            "{message}"
        );
        let (_file, source) = file_with("a\nb\tc\n");
        let message = format!("{:#}", source.check().unwrap_err());
        assert!(
            message.ends_with(" line 2: must not contain control characters (found U+0009)"),
            "{message}"
        );
    }

    #[test]
    fn a_file_without_ids_is_refused_and_blank_lines_are_skipped() {
        let (_file, source) = file_with("\n  \n\r\n");
        let message = format!("{:#}", source.check().unwrap_err());
        assert!(
            message.ends_with(": must hold at least one item ID"),
            "{message}"
        );
        let (_file, source) = file_with("one\n\ntwo\r\n");
        assert_eq!(source.check().unwrap(), 2);
        let ids: Vec<String> = source
            .read_all()
            .unwrap()
            .into_iter()
            .map(ItemId::into_string)
            .collect();
        assert_eq!(ids, vec!["one", "two"]);
    }
}
