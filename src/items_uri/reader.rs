//! Reading an object's item IDs as a stream, in any of the [`ItemsFormat`]s: the reader holds
//! at most one line (for CSV, one first field) at a time, whatever the object's size, and an
//! overlong line is refused as soon as it passes the limit, before the rest of it is read.
//! Every ID is parsed under the ID rules ([`ItemId::parse`]); a refusal names its line, from 1.
//! A UTF-8 byte order mark at the start of the object is skipped.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::{ItemsFormat, LineRule, ReadError, MAX_RECORD_BYTES};
use crate::domain::{IdError, ItemId, MAX_ID_BYTES};

/// Longest wait for the next piece of an object: a read that stalls fails instead of holding
/// the request forever.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One ID and the line it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineId {
    /// From 1; for CSV, the line its record starts on.
    pub line: u64,
    pub id: ItemId,
}

/// The IDs of one object, in order.
pub(crate) struct IdReader<R> {
    source: R,
    format: ItemsFormat,
    /// A CSV header row not yet skipped.
    header_pending: bool,
    /// Line terminators (`\n`) consumed so far.
    lines_ended: u64,
    started: bool,
    /// The current line, or for CSV the current record's first field.
    buffer: Vec<u8>,
    /// The fields of the current CSV record.
    record_fields: usize,
    csv: csv_core::Reader,
}

impl<R: AsyncBufRead + Unpin> IdReader<R> {
    pub(crate) fn new(source: R, format: ItemsFormat, header: bool) -> Self {
        Self {
            source,
            format,
            header_pending: header && format == ItemsFormat::Csv,
            lines_ended: 0,
            started: false,
            buffer: Vec::with_capacity(MAX_ID_BYTES + 1),
            record_fields: 0,
            csv: csv_core::Reader::new(),
        }
    }

    /// The next ID, or `None` at the end of the object. Blank lines are skipped.
    pub(crate) async fn next(&mut self) -> Result<Option<LineId>, ReadError> {
        if !self.started {
            self.started = true;
            if fill(&mut self.source).await?.starts_with(UTF8_BOM) {
                self.source.consume(UTF8_BOM.len());
            }
        }
        loop {
            let line = match self.format {
                ItemsFormat::Lines => self.read_line(MAX_ID_BYTES + 1, IdError::TooLong).await?,
                ItemsFormat::JsonLines => {
                    self.read_line(MAX_RECORD_BYTES, LineRule::TooLong).await?
                }
                ItemsFormat::Csv => self.read_csv_record().await?,
            };
            let Some(line) = line else {
                return Ok(None);
            };
            if let Some(id) = self.id_of(line)? {
                return Ok(Some(LineId { line, id }));
            }
        }
    }

    /// The ID in `buffer`, read from `line`; `None` for a blank line or a skipped header.
    fn id_of(&mut self, line: u64) -> Result<Option<ItemId>, ReadError> {
        if std::mem::take(&mut self.header_pending) {
            return Ok(None);
        }
        if self.format == ItemsFormat::JsonLines {
            return json_line_id(&self.buffer, line);
        }
        let text = std::str::from_utf8(&self.buffer)
            .map_err(|_| ReadError::line(line, LineRule::NotUtf8))?;
        // A CSV record is blank when its only field is; an empty first column beside others
        // is an empty ID.
        let blank = text.trim().is_empty()
            && (self.format == ItemsFormat::Lines || self.record_fields == 1);
        if blank {
            return Ok(None);
        }
        ItemId::parse(text)
            .map(Some)
            .map_err(|rule| ReadError::line(line, rule))
    }

    /// Reads the next line into `buffer`, without its `\n` and a `\r` before it, and returns
    /// its number; `None` at the end of the object. A line longer than `max` bytes (its `\r`
    /// included) is refused with `too_long` as soon as that many bytes have been read.
    async fn read_line(
        &mut self,
        max: usize,
        too_long: impl Into<LineRule>,
    ) -> Result<Option<u64>, ReadError> {
        self.buffer.clear();
        let number = self.lines_ended + 1;
        let mut read_any = false;
        loop {
            let available = fill(&mut self.source).await?;
            if available.is_empty() {
                if !read_any {
                    return Ok(None);
                }
                break;
            }
            read_any = true;
            let newline = available.iter().position(|&b| b == b'\n');
            let piece = newline.unwrap_or(available.len());
            if self.buffer.len() + piece > max {
                return Err(ReadError::line(number, too_long));
            }
            self.buffer.extend_from_slice(&available[..piece]);
            match newline {
                Some(end) => {
                    self.source.consume(end + 1);
                    self.lines_ended += 1;
                    break;
                }
                None => self.source.consume(piece),
            }
        }
        if self.buffer.last() == Some(&b'\r') {
            self.buffer.pop();
        }
        Ok(Some(number))
    }

    /// Reads the next CSV record's first field into `buffer` (unquoted) and returns the line
    /// the record starts on; `None` at the end of the object. The other fields are read and
    /// dropped. Only the first field is held: one longer than an ID may be is refused at once,
    /// and a record longer than [`MAX_RECORD_BYTES`] is refused.
    async fn read_csv_record(&mut self) -> Result<Option<u64>, ReadError> {
        // Line terminators between records are skipped here, not by the CSV reader, so that
        // the record's first line is known before it is read.
        loop {
            let available = fill(&mut self.source).await?;
            if available.is_empty() {
                return Ok(None);
            }
            let skipped = available
                .iter()
                .take_while(|&&b| b == b'\n' || b == b'\r')
                .count();
            let newlines = available[..skipped].iter().filter(|&&b| b == b'\n').count();
            let more = skipped < available.len();
            self.source.consume(skipped);
            self.lines_ended += newlines as u64;
            if more {
                break;
            }
        }
        let number = self.lines_ended + 1;
        let lines_before = self.csv.line();
        let keep_first_field = !self.header_pending;
        self.buffer.clear();
        let mut first_field = [0u8; MAX_ID_BYTES + 1];
        let mut first_len = 0;
        let mut discarded = [0u8; 4096];
        let mut in_first_field = true;
        let mut record_bytes = 0usize;
        self.record_fields = 0;
        loop {
            let available = fill(&mut self.source).await?;
            let output: &mut [u8] = if in_first_field && keep_first_field {
                &mut first_field[first_len..]
            } else {
                &mut discarded
            };
            let (result, read, written) = self.csv.read_field(available, output);
            self.source.consume(read);
            record_bytes += read;
            if record_bytes > MAX_RECORD_BYTES {
                return Err(ReadError::line(number, LineRule::TooLong));
            }
            if in_first_field && keep_first_field {
                first_len += written;
            }
            match result {
                csv_core::ReadFieldResult::InputEmpty => {}
                csv_core::ReadFieldResult::OutputFull => {
                    if in_first_field && keep_first_field {
                        return Err(ReadError::line(number, IdError::TooLong));
                    }
                }
                csv_core::ReadFieldResult::Field { record_end } => {
                    in_first_field = false;
                    self.record_fields += 1;
                    if record_end {
                        break;
                    }
                }
                csv_core::ReadFieldResult::End => break,
            }
        }
        self.lines_ended += self.csv.line() - lines_before;
        self.buffer.extend_from_slice(&first_field[..first_len]);
        Ok(Some(number))
    }
}

/// The object's next bytes; empty at its end.
async fn fill<R: AsyncBufRead + Unpin>(source: &mut R) -> Result<&[u8], ReadError> {
    match tokio::time::timeout(STALL_TIMEOUT, source.fill_buf()).await {
        Ok(Ok(available)) => Ok(available),
        Ok(Err(err)) => Err(ReadError::Unreachable(err.to_string())),
        Err(_) => Err(ReadError::Unreachable(format!(
            "no data for {} s",
            STALL_TIMEOUT.as_secs()
        ))),
    }
}

/// The `id` of a JSON Lines line; `None` for a blank line.
fn json_line_id(line_bytes: &[u8], line: u64) -> Result<Option<ItemId>, ReadError> {
    #[derive(serde::Deserialize)]
    struct JsonLine<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let trimmed = line_bytes.trim_ascii_start();
    if trimmed.is_empty() {
        return Ok(None);
    }
    // serde would also read a struct from an array (`["a"]`).
    if !trimmed.starts_with(b"{") {
        let rule = match serde_json::from_slice::<serde::de::IgnoredAny>(line_bytes) {
            Ok(_) => LineRule::NoJsonId,
            Err(_) => LineRule::NotJson,
        };
        return Err(ReadError::line(line, rule));
    }
    let parsed: JsonLine<'_> = serde_json::from_slice(line_bytes).map_err(|err| {
        let rule = if err.is_data() {
            LineRule::NoJsonId
        } else {
            LineRule::NotJson
        };
        ReadError::line(line, rule)
    })?;
    ItemId::parse(parsed.id.into_owned())
        .map(Some)
        .map_err(|rule| ReadError::line(line, rule))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items_uri::ItemsError;

    async fn read_all(
        content: &[u8],
        format: ItemsFormat,
        header: bool,
    ) -> Result<Vec<(u64, String)>, ReadError> {
        let mut reader = IdReader::new(content, format, header);
        let mut ids = Vec::new();
        while let Some(LineId { line, id }) = reader.next().await? {
            ids.push((line, id.into_string()));
        }
        Ok(ids)
    }

    async fn ids(content: &str, format: ItemsFormat, header: bool) -> Vec<(u64, String)> {
        read_all(content.as_bytes(), format, header)
            .await
            .unwrap_or_else(|err| panic!("{content:?}: {err:?}"))
    }

    async fn refusal(content: &[u8], format: ItemsFormat) -> (u64, String) {
        match read_all(content, format, false).await {
            Err(ReadError::Refused(ItemsError::Line { line, rule })) => (line, rule.to_string()),
            other => panic!("not a line refusal: {other:?}"),
        }
    }

    fn expected(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
        pairs
            .iter()
            .map(|(line, id)| (*line, (*id).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn lines_keep_their_numbers_across_crlf_blank_lines_and_a_last_line_without_newline() {
        let content = "\u{FEFF}a\r\nb\n\n   \r\n  c d \nlast";
        assert_eq!(
            ids(content, ItemsFormat::Lines, false).await,
            expected(&[(1, "a"), (2, "b"), (5, "  c d "), (6, "last")])
        );
        assert_eq!(ids("", ItemsFormat::Lines, false).await, vec![]);
        assert_eq!(ids("\n\r\n \n", ItemsFormat::Lines, false).await, vec![]);
    }

    #[tokio::test]
    async fn a_bad_line_is_named_by_its_number_and_rule() {
        let mut content = String::new();
        for i in 1..537 {
            content.push_str(&format!("id-{i}\n"));
        }
        content.push_str("tab\there\nid-538\n");
        assert_eq!(
            refusal(content.as_bytes(), ItemsFormat::Lines).await,
            (
                537,
                "must not contain control characters (found U+0009)".to_owned()
            )
        );
        assert_eq!(
            refusal(b"ok\n\xFF\xFE\n", ItemsFormat::Lines).await,
            (2, "is not valid UTF-8".to_owned())
        );
        assert_eq!(
            refusal("a\ninvisible\u{200B}\n".as_bytes(), ItemsFormat::Lines).await,
            (
                2,
                "must not contain bidirectional-control or zero-width characters (found U+200B)"
                    .to_owned()
            )
        );
    }

    #[tokio::test]
    async fn an_oversized_line_is_refused_before_the_rest_of_it_is_read() {
        let at_limit = "x".repeat(MAX_ID_BYTES);
        assert_eq!(
            ids(&format!("{at_limit}\r\n"), ItemsFormat::Lines, false).await,
            expected(&[(1, &at_limit)])
        );
        let over = format!("ok\n{}x\n", at_limit);
        assert_eq!(
            refusal(over.as_bytes(), ItemsFormat::Lines).await,
            (2, "must be at most 256 bytes".to_owned())
        );
        // An endless line with no newline: refused once the limit is passed, the rest unread.
        let endless = "y".repeat(10 * 1024 * 1024);
        let mut source = endless.as_bytes();
        let mut reader = IdReader::new(&mut source, ItemsFormat::Lines, false);
        assert!(matches!(
            reader.next().await,
            Err(ReadError::Refused(ItemsError::Line { line: 1, .. }))
        ));
        assert!(source.len() > endless.len() - 64 * 1024, "{}", source.len());
        let long_json = format!(
            "{{\"id\": \"a\", \"pad\": \"{}\"}}\n",
            "p".repeat(MAX_RECORD_BYTES)
        );
        assert_eq!(
            refusal(long_json.as_bytes(), ItemsFormat::JsonLines).await,
            (1, "must be at most 65536 bytes".to_owned())
        );
    }

    #[tokio::test]
    async fn csv_takes_the_first_column_unquoted_and_skips_a_header_when_asked() {
        let content =
            "id,name\r\n\"a,1\",x\r\n\"say \"\"hi\"\"\",y\nplain\n\n  \nc,\"note, with\nnewline\"\nd";
        assert_eq!(
            ids(content, ItemsFormat::Csv, true).await,
            expected(&[
                (2, "a,1"),
                (3, "say \"hi\""),
                (4, "plain"),
                (7, "c"),
                (9, "d"),
            ])
        );
    }

    #[tokio::test]
    async fn csv_records_keep_their_first_line_across_quoted_newlines_and_blank_lines() {
        let content = "id\na,\"note\nover\nlines\"\n\r\nb\r\n\"c\",1\n";
        assert_eq!(
            ids(content, ItemsFormat::Csv, true).await,
            expected(&[(2, "a"), (6, "b"), (7, "c")])
        );
        assert_eq!(
            ids(content, ItemsFormat::Csv, false).await,
            expected(&[(1, "id"), (2, "a"), (6, "b"), (7, "c")])
        );
        let only_header = "id,name\n";
        assert_eq!(ids(only_header, ItemsFormat::Csv, true).await, vec![]);
    }

    #[tokio::test]
    async fn csv_refuses_an_empty_first_column_a_quoted_newline_in_it_and_an_overlong_one() {
        assert_eq!(
            refusal(b"a\n,b\n", ItemsFormat::Csv).await,
            (2, "must not be empty".to_owned())
        );
        assert_eq!(
            refusal(b"a\n\"two\nlines\",b\n", ItemsFormat::Csv).await,
            (
                2,
                "must not contain control characters (found U+000A)".to_owned()
            )
        );
        let long = format!("a\n\"{}\",b\n", "z".repeat(MAX_ID_BYTES + 1));
        assert_eq!(
            refusal(long.as_bytes(), ItemsFormat::Csv).await,
            (2, "must be at most 256 bytes".to_owned())
        );
        let long_record = format!("a,{}\n", "z".repeat(MAX_RECORD_BYTES));
        assert_eq!(
            refusal(long_record.as_bytes(), ItemsFormat::Csv).await,
            (1, "must be at most 65536 bytes".to_owned())
        );
    }

    #[tokio::test]
    async fn json_lines_take_the_id_string_and_name_lines_that_have_none() {
        let content = "{\"id\": \"a\", \"extra\": [1, 2]}\r\n\n{\"n\": 1, \"id\": \"b\\u00e9\"}\n{\"id\":\"c\"}";
        assert_eq!(
            ids(content, ItemsFormat::JsonLines, false).await,
            expected(&[(1, "a"), (3, "b\u{e9}"), (4, "c")])
        );
        for (content, rule) in [
            (
                "{\"id\": \"a\"}\n{\"id\": 7}\n",
                "must be a JSON object with an \"id\" string",
            ),
            (
                "{\"id\": \"a\"}\n{\"name\": \"x\"}\n",
                "must be a JSON object with an \"id\" string",
            ),
            (
                "{\"id\": \"a\"}\n[\"b\"]\n",
                "must be a JSON object with an \"id\" string",
            ),
            ("{\"id\": \"a\"}\nb\n", "is not valid JSON"),
            ("{\"id\": \"a\"}\n{\"id\": \"\"}\n", "must not be empty"),
        ] {
            assert_eq!(
                refusal(content.as_bytes(), ItemsFormat::JsonLines).await,
                (2, rule.to_owned()),
                "{content:?}"
            );
        }
    }
}
