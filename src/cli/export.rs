//! `export`: a batch's items written as the server streams them, as JSON Lines or CSV, to
//! standard output or a file. Each batch of items the server sends is written and flushed
//! before the next is read, so memory stays flat whatever the batch's size.

use std::fs::File;
use std::io::{BufWriter, Write};

use anyhow::Context;

use super::{argument, batch_id_argument, InputRule};
use crate::config::ExportArgs;
use crate::domain::{ItemRecord, ItemStatus};
use crate::store::ItemQuery;

/// How exported items are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// One JSON object per line: itemId, status, error, attempts, chunk.
    JsonLines,
    /// A header, then one record per item, quoted by RFC 4180.
    Csv,
}

const CSV_HEADER: [&str; 5] = ["item_id", "status", "error", "attempts", "chunk"];

impl Format {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "jsonl" => Some(Self::JsonLines),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }

    fn write_header(self, out: &mut impl Write) -> std::io::Result<()> {
        match self {
            Self::JsonLines => Ok(()),
            Self::Csv => write_csv_record(out, CSV_HEADER),
        }
    }

    fn write_item(self, out: &mut impl Write, item: &ItemRecord) -> std::io::Result<()> {
        match self {
            Self::JsonLines => writeln!(out, "{}", item.to_json()),
            Self::Csv => write_csv_record(
                out,
                [
                    item.item_id.as_str(),
                    item.status.as_str(),
                    item.error.as_deref().unwrap_or(""),
                    &item.attempts.to_string(),
                    &item.chunk.to_string(),
                ],
            ),
        }
    }
}

/// Writes one CSV record ending in CRLF, each field quoted when it holds a comma, a quote, a
/// CR or an LF (its quotes doubled), as RFC 4180 says. The crate's `csv-core` writes through
/// fixed byte buffers a field at a time; five fields are shorter written here.
fn write_csv_record<'a>(
    out: &mut impl Write,
    fields: impl IntoIterator<Item = &'a str>,
) -> std::io::Result<()> {
    for (index, field) in fields.into_iter().enumerate() {
        if index > 0 {
            out.write_all(b",")?;
        }
        if field.contains([',', '"', '\r', '\n']) {
            write!(out, "\"{}\"", field.replace('"', "\"\""))?;
        } else {
            out.write_all(field.as_bytes())?;
        }
    }
    out.write_all(b"\r\n")
}

/// Runs `export`.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let status = match &args.status {
        Some(name) => Some(
            ItemStatus::from_name(name)
                .ok_or_else(|| argument("--status", InputRule::ItemStatus(name.clone())))?,
        ),
        None => None,
    };
    let format = Format::from_name(&args.format)
        .with_context(|| format!("--format: must be jsonl or csv, not {:?}", args.format))?;
    let batch_id = batch_id_argument(&args.batch_id)?;
    let mut client = args.credentials.connect(&args.server).await?;
    let query = ItemQuery {
        batch_id,
        status,
        page_size: 0,
        page_token: None,
    };
    // The export is opened before the file is created, so a refused export leaves no file.
    let mut items = client.export(query).await?;
    let sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            File::create(path)
                .with_context(|| format!("--output: cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(sink);
    let mut written = 0u64;
    let wrote = async {
        format.write_header(&mut out)?;
        while let Some(page) = items.next().await? {
            for item in &page {
                format.write_item(&mut out, item)?;
            }
            written += page.len() as u64;
            out.flush()?;
        }
        out.flush()?;
        anyhow::Ok(())
    }
    .await;
    match wrote {
        // The reader went away (`export ID | head`): it has what it wanted.
        Err(err) if is_broken_pipe(&err) => return Ok(()),
        other => other?,
    }
    if let Some(path) = &args.output {
        eprintln!("exported {written} items to {}", path.display());
    }
    Ok(())
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|err| err.kind() == std::io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ItemId;

    fn csv_of(fields: &[&str]) -> String {
        let mut out = Vec::new();
        write_csv_record(&mut out, fields.iter().copied()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_fields_are_quoted_only_when_they_need_it_with_quotes_doubled() {
        assert_eq!(csv_of(&["a", "b c", ""]), "a,b c,\r\n");
        assert_eq!(
            csv_of(&["a,b", "say \"hi\""]),
            "\"a,b\",\"say \"\"hi\"\"\"\r\n"
        );
        assert_eq!(
            csv_of(&["line\nbreak", "cr\r"]),
            "\"line\nbreak\",\"cr\r\"\r\n"
        );
    }

    #[test]
    fn an_item_is_one_json_line_or_one_csv_record() {
        let item = ItemRecord {
            item_id: ItemId::parse("id,1").unwrap(),
            status: ItemStatus::Failed,
            error: Some("bad \"input\"".into()),
            attempts: 2,
            chunk: 7,
        };
        let mut jsonl = Vec::new();
        Format::JsonLines.write_item(&mut jsonl, &item).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&jsonl).unwrap();
        assert_eq!(parsed["itemId"], "id,1");
        assert_eq!(parsed["status"], "FAILED");
        assert_eq!(parsed["chunk"], 7);
        let mut csv = Vec::new();
        Format::Csv.write_item(&mut csv, &item).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "\"id,1\",FAILED,\"bad \"\"input\"\"\",2,7\r\n"
        );
    }
}
