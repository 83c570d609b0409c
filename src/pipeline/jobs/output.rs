//! Reading a command's output: lines of bounded length, item failures from stdout, the last
//! line of stderr.

use std::collections::HashMap;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::{truncate_to_bytes, ItemFailure};
use crate::domain::ItemId;

/// Longest stdout line read as a whole; a longer line cannot be an item failure anyone wrote
/// on purpose and is skipped, so a command cannot make the server hold an unbounded line.
pub(super) const MAX_STDOUT_LINE_BYTES: usize = 64 * 1024;
/// Longest failure reason or item message kept, in bytes.
pub(super) const MAX_MESSAGE_BYTES: usize = 1024;

/// Reads `reader` to its end and calls `on_line` with every line (without its line break, a
/// trailing `\r` removed), cut to its first `max_bytes` bytes. Memory stays bounded by
/// `max_bytes` whatever the command writes.
pub(super) async fn for_each_line<R, F>(
    reader: R,
    max_bytes: usize,
    mut on_line: F,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    F: FnMut(&[u8], LineLength),
{
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let mut length = LineLength::Whole;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            if !line.is_empty() || length == LineLength::Cut {
                on_line(trim_carriage_return(&line), length);
            }
            return Ok(());
        }
        let (taken, ends_line) = match buffer.iter().position(|&b| b == b'\n') {
            Some(end) => (end + 1, true),
            None => (buffer.len(), false),
        };
        let content = &buffer[..if ends_line { taken - 1 } else { taken }];
        let room = max_bytes.saturating_sub(line.len());
        if content.len() > room {
            length = LineLength::Cut;
        }
        line.extend_from_slice(&content[..content.len().min(room)]);
        reader.consume(taken);
        if ends_line {
            on_line(trim_carriage_return(&line), length);
            line.clear();
            length = LineLength::Whole;
        }
    }
}

/// Whether a line was read whole or cut to the length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LineLength {
    Whole,
    Cut,
}

fn trim_carriage_return(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A stdout line that reports an item failure.
#[derive(Deserialize)]
struct FailureLine {
    item_id: String,
    error: String,
}

/// Collects the item failures a command prints on stdout, one JSON object
/// `{"item_id": "...", "error": "..."}` per line. Other lines are not failures and are ignored;
/// an item ID that is not in the chunk is logged and ignored; an item reported twice keeps its
/// first message.
pub(super) struct FailureCollector<'a> {
    job_name: &'a str,
    positions: HashMap<&'a str, usize>,
    failures: HashMap<usize, String>,
}

impl<'a> FailureCollector<'a> {
    pub(super) fn new(job_name: &'a str, items: &'a [ItemId]) -> Self {
        let positions = items
            .iter()
            .enumerate()
            .map(|(position, item)| (item.as_str(), position))
            .collect();
        Self {
            job_name,
            positions,
            failures: HashMap::new(),
        }
    }

    /// Takes one stdout line.
    pub(super) fn line(&mut self, line: &[u8], length: LineLength) {
        if length == LineLength::Cut {
            tracing::debug!(job = self.job_name, "skipped an overlong stdout line");
            return;
        }
        let Ok(failure) = serde_json::from_slice::<FailureLine>(line) else {
            return;
        };
        let Some(&position) = self.positions.get(failure.item_id.as_str()) else {
            tracing::warn!(
                job = self.job_name,
                item_id = %failure.item_id.escape_debug(),
                "the command reported a failure for an item that is not in its chunk; ignored"
            );
            return;
        };
        let message = match failure.error.trim() {
            "" => "failed (the command gave no message)".to_owned(),
            message => truncate_to_bytes(message, MAX_MESSAGE_BYTES).to_owned(),
        };
        self.failures.entry(position).or_insert(message);
    }

    /// The failures, in the order of the chunk's items.
    pub(super) fn finish(self, items: &[ItemId]) -> Vec<ItemFailure> {
        let mut failures: Vec<(usize, String)> = self.failures.into_iter().collect();
        failures.sort_unstable_by_key(|(position, _)| *position);
        failures
            .into_iter()
            .map(|(position, message)| ItemFailure {
                item_id: items[position].clone(),
                message,
            })
            .collect()
    }
}

/// Keeps the last non-blank line of stderr, cut to [`MAX_MESSAGE_BYTES`].
#[derive(Debug, Default)]
pub(super) struct LastLine(Option<String>);

impl LastLine {
    pub(super) fn line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if !text.is_empty() {
            self.0 = Some(truncate_to_bytes(text, MAX_MESSAGE_BYTES).to_owned());
        }
    }

    pub(super) fn into_inner(self) -> Option<String> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<(String, LineLength)> {
        let mut seen = Vec::new();
        for_each_line(input, max, |line, length| {
            seen.push((String::from_utf8_lossy(line).into_owned(), length))
        })
        .await
        .unwrap();
        seen
    }

    #[tokio::test]
    async fn lines_are_split_on_newlines_with_and_without_a_final_break() {
        use LineLength::Whole;
        assert_eq!(
            lines(b"a\r\nbb\n\nccc", 10).await,
            [
                ("a".to_owned(), Whole),
                ("bb".to_owned(), Whole),
                (String::new(), Whole),
                ("ccc".to_owned(), Whole)
            ]
        );
        assert_eq!(lines(b"", 10).await, []);
    }

    #[tokio::test]
    async fn an_overlong_line_is_cut_and_the_next_line_read_whole() {
        let mut input = vec![b'x'; 100_000];
        input.extend_from_slice(b"\nnext\n");
        let seen = lines(&input, 8).await;
        assert_eq!(
            seen,
            [
                ("xxxxxxxx".to_owned(), LineLength::Cut),
                ("next".to_owned(), LineLength::Whole)
            ]
        );
    }

    fn items(raw: &[&str]) -> Vec<ItemId> {
        raw.iter().map(|id| ItemId::parse(*id).unwrap()).collect()
    }

    #[test]
    fn failures_come_from_json_lines_naming_the_chunk_s_items() {
        let chunk = items(&["a", "b", "c"]);
        let mut collector = FailureCollector::new("job", &chunk);
        for line in [
            r#"{"item_id": "c", "error": "too big"}"#,
            "progress: 50%",
            r#"{"item_id": "z", "error": "not ours"}"#,
            r#"{"item_id": "a", "error": "   "}"#,
            r#"{"item_id": "c", "error": "reported twice"}"#,
            r#"{"item_id": "b"}"#,
            r#"["a", "b"]"#,
        ] {
            collector.line(line.as_bytes(), LineLength::Whole);
        }
        collector.line(br#"{"item_id": "b", "error": "cut"}"#, LineLength::Cut);
        let failures = collector.finish(&chunk);
        assert_eq!(
            failures,
            [
                ItemFailure {
                    item_id: chunk[0].clone(),
                    message: "failed (the command gave no message)".to_owned()
                },
                ItemFailure {
                    item_id: chunk[2].clone(),
                    message: "too big".to_owned()
                }
            ]
        );
    }

    #[test]
    fn the_last_non_blank_stderr_line_is_kept_cut_to_a_kibibyte() {
        let mut last = LastLine::default();
        assert_eq!(LastLine::default().into_inner(), None);
        last.line(b"first");
        last.line("ünïcode".repeat(200).as_bytes());
        last.line(b"   ");
        let kept = last.into_inner().unwrap();
        assert!(kept.len() <= MAX_MESSAGE_BYTES && kept.len() > MAX_MESSAGE_BYTES - 4);
        assert!(kept.starts_with("ünïcode"));
    }
}
