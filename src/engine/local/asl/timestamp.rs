//! Timestamps as Step Functions reads them: RFC 3339 with an upper-case `T` between the date
//! and the time (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.5+02:00`).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Position of the date/time separator in an RFC 3339 timestamp (after `YYYY-MM-DD`).
const SEPARATOR_AT: usize = 10;

/// The instant `text` names, or `None` when it is not a timestamp Step Functions accepts.
pub(super) fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    // The `time` crate takes any character as the separator (RFC 3339 lets applications use a
    // space); Step Functions takes only `T`.
    if text.as_bytes().get(SEPARATOR_AT) != Some(&b'T') {
        return None;
    }
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// `instant` in RFC 3339, as the context object shows times.
pub(super) fn format_timestamp(instant: OffsetDateTime) -> String {
    instant.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_needs_a_t_between_date_and_time() {
        assert!(parse_timestamp("2024-05-01T12:00:00Z").is_some());
        assert!(parse_timestamp("2024-05-01T14:00:00.25+02:00").is_some());
        for refused in [
            "2024-05-01 12:00:00Z",
            "2024-05-01t12:00:00Z",
            "2024-05-01X12:00:00Z",
            "2024-05-01",
            "soon",
            "",
        ] {
            assert_eq!(parse_timestamp(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn a_formatted_timestamp_reads_back_as_the_same_instant() {
        let noon = parse_timestamp("2024-05-01T12:00:00Z").unwrap();
        let text = format_timestamp(noon);
        assert_eq!(text, "2024-05-01T12:00:00Z");
        assert_eq!(parse_timestamp(&text), Some(noon));
    }
}
