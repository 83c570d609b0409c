//! The old job submitter's run request, `POST /runrequests` with `{"processname", "clientname",
//! "timestamp"}` (and the gRPC `SubmitRunRequest`): parsing, and the status and JSON body of
//! every answer. Shared by the local HTTP endpoint and the `init` Lambda so both answer alike.
//!
//! A run request is stored as a batch of one item whose ID, like the batch's, is the generated
//! `runRequestID`; task 2's external job runs it, named `processname-clientname-runRequestID`.

use serde_json::{json, Map, Value};

use crate::pipeline::{Intake, RunRequestError};
use crate::seed::Reply;

/// The route the old submitter exposed.
pub(crate) const ROUTE: &str = "/runrequests";
/// Longest process or client name, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 64;
/// Longest timestamp text kept, in bytes.
pub(crate) const MAX_TIMESTAMP_BYTES: usize = 64;

/// A run request, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunRequest {
    /// `processname`.
    pub process_name: String,
    /// `clientname`.
    pub client_name: String,
    /// `timestamp`, as sent.
    pub timestamp: Option<String>,
}

/// A refused run request: the field (by its name in the body) and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub(crate) struct RunRequestFieldError {
    pub field: &'static str,
    pub rule: String,
}

fn refuse(field: &'static str, rule: impl Into<String>) -> RunRequestFieldError {
    RunRequestFieldError {
        field,
        rule: rule.into(),
    }
}

/// Checks a process or client name: 1 to 64 letters, digits, `-` and `_`.
pub(crate) fn check_name(field: &'static str, name: &str) -> Result<(), RunRequestFieldError> {
    if name.is_empty() {
        return Err(refuse(field, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(refuse(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(refuse(field, "must hold only letters, digits, '-' and '_'"));
    }
    Ok(())
}

/// Checks a timestamp's text: at most 64 bytes, no control characters.
pub(crate) fn check_timestamp(text: &str) -> Result<&str, RunRequestFieldError> {
    if text.len() > MAX_TIMESTAMP_BYTES {
        return Err(refuse(
            "timestamp",
            format!("must be at most {MAX_TIMESTAMP_BYTES} bytes"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(refuse("timestamp", "must not contain control characters"));
    }
    Ok(text)
}

fn name(body: &Map<String, Value>, field: &'static str) -> Result<String, RunRequestFieldError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(refuse(field, "is required")),
        Some(Value::String(text)) => {
            check_name(field, text)?;
            Ok(text.clone())
        }
        Some(_) => Err(refuse(field, "must be a string")),
    }
}

/// Parses a run request body.
pub(crate) fn parse(body: &[u8]) -> Result<RunRequest, RunRequestFieldError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| refuse("body", format!("is not valid JSON: {err}")))?;
    let Value::Object(body) = value else {
        return Err(refuse("body", "must be a JSON object"));
    };
    let process_name = name(&body, "processname")?;
    let client_name = name(&body, "clientname")?;
    let timestamp = match body.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(check_timestamp(text)?.to_owned()),
        Some(_) => return Err(refuse("timestamp", "must be a string")),
    };
    Ok(RunRequest {
        process_name,
        client_name,
        timestamp,
    })
}

/// Handles one request body end to end.
pub(crate) async fn handle(intake: &Intake, body: &[u8]) -> Reply {
    let request = match parse(body) {
        Ok(request) => request,
        Err(err) => return Reply::message(400, err.to_string()),
    };
    match intake.submit_run_request(&request).await {
        Ok(run_request_id) => Reply {
            status: 200,
            body: json!({ "runRequestID": run_request_id.as_str() }),
        },
        Err(RunRequestError::NoExternalJob) => {
            Reply::message(409, RunRequestError::NoExternalJob.to_string())
        }
        Err(RunRequestError::Intake(err)) => Reply::failure(&err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &str) -> Result<RunRequest, String> {
        parse(body.as_bytes()).map_err(|err| err.to_string())
    }

    #[test]
    fn the_old_submitters_body_is_accepted_unchanged() {
        let request = parsed(
            r#"{"processname": "APOST", "clientname": "2Sigma", "timestamp": "2018-8-31 12:59:59"}"#,
        )
        .unwrap();
        assert_eq!(
            request,
            RunRequest {
                process_name: "APOST".to_owned(),
                client_name: "2Sigma".to_owned(),
                timestamp: Some("2018-8-31 12:59:59".to_owned()),
            }
        );
        let without_timestamp = parsed(r#"{"processname": "a_b-1", "clientname": "c"}"#).unwrap();
        assert_eq!(without_timestamp.timestamp, None);
    }

    #[test]
    fn malformed_bodies_are_refused_naming_the_field() {
        let cases = [
            ("not json", "body: is not valid JSON"),
            ("[]", "body: must be a JSON object"),
            (r#"{"clientname": "c"}"#, "processname: is required"),
            (r#"{"processname": "p"}"#, "clientname: is required"),
            (
                r#"{"processname": "", "clientname": "c"}"#,
                "processname: must not be empty",
            ),
            (
                r#"{"processname": 7, "clientname": "c"}"#,
                "processname: must be a string",
            ),
            (
                r#"{"processname": "p", "clientname": "two words"}"#,
                "clientname: must hold only letters, digits, '-' and '_'",
            ),
            (
                r#"{"processname": "p", "clientname": "c", "timestamp": 5}"#,
                "timestamp: must be a string",
            ),
        ];
        for (body, expected) in cases {
            let error = parsed(body).unwrap_err();
            assert!(error.starts_with(expected), "{body}: {error}");
        }
        let long = format!(
            r#"{{"processname": "{}", "clientname": "c"}}"#,
            "p".repeat(65)
        );
        assert_eq!(
            parsed(&long).unwrap_err(),
            "processname: must be at most 64 characters"
        );
        let exactly = format!(
            r#"{{"processname": "{}", "clientname": "c"}}"#,
            "p".repeat(64)
        );
        assert!(parsed(&exactly).is_ok());
    }
}
