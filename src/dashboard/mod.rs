//! The web dashboard of `serve`: server-rendered pages over the admin service (the batch list,
//! a batch's page with its failures and items), live counters as Server-Sent Events, and the
//! cancel, pause, resume and redrive buttons. Pages carry their CSS and JavaScript inline, so
//! that a page loaded with a bearer token needs no further unauthenticated request.

mod actions;
mod batch;
mod batches;
mod events;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tonic::Code;

use crate::domain::{Batch, BatchStatus};
use crate::grpc::{AdminService, ApiError};
use crate::http::guard;

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// Characters left as they are in a path segment or query value.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The dashboard's routes, over the same admin service the gRPC API serves.
pub(crate) fn router(admin: AdminService) -> Router {
    let json_only = || middleware::from_fn(guard::require_json_content_type);
    Router::new()
        .route("/", get(batches::page))
        .route("/batches/{batch_id}", get(batch::page))
        .route("/batches/{batch_id}/events", get(events::stream))
        .route(
            "/batches/{batch_id}/{action}",
            post(actions::act).route_layer(json_only()),
        )
        .with_state(admin)
}

/// The page a browser is shown instead of a 401 answer when the server asks for a bearer
/// token: it asks for the token once, keeps it for the browser tab, and loads the requested
/// page with it.
pub(crate) fn sign_in_page() -> String {
    layout(
        "Sign in",
        html! {
            section.panel.sign-in {
                h1 { "Sign in" }
                p { "This server needs an access token. It is kept in this browser tab only." }
                form #sign-in {
                    label for="token" { "Access token" }
                    input #token type="password" name="token" autocomplete="current-password" required;
                    button.primary type="submit" { "Sign in" }
                    p #sign-in-error .error role="alert" hidden {}
                }
            }
        },
    )
    .into_string()
}

/// The header the dashboard's script sets on every request it makes (its fetches of pages,
/// event streams and button POSTs), so that they can be told from the browser's navigations.
pub(crate) const SCRIPT_REQUEST_HEADER: &str = "x-batch-manager-dashboard";

/// Whether a request refused for want of a token should be answered with [`sign_in_page`]:
/// a browser's navigation (a GET asking for HTML), not a request of the page's script or of
/// an API client, which get the plain 401.
pub(crate) fn wants_sign_in_page(method: &axum::http::Method, headers: &HeaderMap) -> bool {
    let accepts_html = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    *method == axum::http::Method::GET
        && accepts_html
        && !headers.contains_key(SCRIPT_REQUEST_HEADER)
}

/// A whole page around `content`.
fn layout(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · batch-manager" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header.top {
                    a.brand href="/" { "batch-manager" }
                    nav aria-label="Main" { a href="/" { "Batches" } }
                    button #sign-out type="button" hidden { "Sign out" }
                }
                div #flash role="status" aria-live="polite" hidden {}
                main { (content) }
                dialog #confirm aria-labelledby="confirm-title" {
                    form method="dialog" {
                        h2 #confirm-title { "Are you sure?" }
                        p data-confirm-text {}
                        p data-redrive-option hidden {
                            label {
                                input #include-cancelled type="checkbox";
                                " Include cancelled items"
                            }
                        }
                        div.dialog-buttons {
                            button type="submit" value="no" { "Back" }
                            button.primary type="submit" value="yes" data-confirm-yes { "Confirm" }
                        }
                    }
                }
                script { (PreEscaped(JS)) }
            }
        }
    }
}

/// An HTML answer.
fn html_page(status: StatusCode, title: &str, content: Markup) -> Response {
    let mut response = (status, layout(title, content).into_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An error of the admin service as an HTML page, with the status and message the gRPC API
/// would give.
fn error_page(err: ApiError) -> Response {
    let (status, message) = refusal(err);
    message_page(status, message)
}

/// An error page saying `message`.
fn message_page(status: StatusCode, message: String) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    html_page(
        status,
        title,
        html! {
            section.panel {
                h1 { (title) }
                p.error { (message) }
                p { a href="/" { "Back to the batches" } }
            }
        },
    )
}

/// The HTTP status and client-facing message of an admin-service error: its gRPC status's,
/// so that internal details stay in the logs.
fn refusal(err: ApiError) -> (StatusCode, String) {
    let status = tonic::Status::from(err);
    let code = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, status.message().to_owned())
}

/// `text` encoded for a path segment or a query value.
fn encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

/// The path of a batch's page.
fn batch_path(batch: &str) -> String {
    format!("/batches/{}", encode(batch))
}

/// `path` with the query parameters that have a value.
fn with_query(path: &str, params: &[(&str, Option<&str>)]) -> String {
    let query: Vec<String> = params
        .iter()
        .filter_map(|(name, value)| value.map(|value| format!("{name}={}", encode(value))))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// Items not yet ended (including items not received yet).
fn pending(batch: &Batch) -> u64 {
    batch
        .total_items
        .saturating_sub(batch.succeeded_items + batch.failed_items + batch.cancelled_items)
}

/// `n` with thousands separators.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Items per second, for people.
fn rate(items_per_second: f64) -> String {
    if items_per_second <= 0.0 {
        "–".to_owned()
    } else if items_per_second < 10.0 {
        format!("{items_per_second:.1}/s")
    } else {
        format!("{}/s", count(items_per_second.round() as u64))
    }
}

/// A duration in seconds, for people.
fn duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// A timestamp to the second, in UTC.
fn when(timestamp: crate::domain::Timestamp) -> String {
    let text = timestamp.to_rfc3339();
    let seconds = text.get(..19).unwrap_or(&text);
    format!("{} UTC", seconds.replace('T', " "))
}

/// A timestamp to the minute, in UTC.
fn when_minute(timestamp: crate::domain::Timestamp) -> String {
    let text = timestamp.to_rfc3339();
    text.get(..16).unwrap_or(&text).replace('T', " ")
}

/// The CSS class of a status badge.
fn status_class(status: BatchStatus) -> &'static str {
    match status {
        BatchStatus::Pending => "s-pending",
        BatchStatus::Running => "s-running",
        BatchStatus::Paused => "s-paused",
        BatchStatus::Completed => "s-completed",
        BatchStatus::CompletedWithFailures => "s-warning",
        BatchStatus::Failed => "s-failed",
        BatchStatus::Cancelled => "s-cancelled",
    }
}

/// A status badge.
fn badge(status: BatchStatus) -> Markup {
    html! { span.badge.(status_class(status)) data-field="status" { (status.as_str()) } }
}

/// A bar of the batch's ended items: succeeded, failed and cancelled segments.
fn progress_bar(batch: &Batch) -> Markup {
    let total = batch.total_items.max(1) as f64;
    let share = |n: u64| format!("width:{:.2}%", n as f64 * 100.0 / total);
    let done = batch.total_items - pending(batch);
    html! {
        div.bar role="progressbar" aria-label={ "Progress of batch " (batch.batch_id) }
            aria-valuemin="0" aria-valuemax=(batch.total_items) aria-valuenow=(done)
            aria-valuetext={ (count(done)) " of " (count(batch.total_items)) " items ended" } {
            span.seg.ok data-seg="succeeded" style=(share(batch.succeeded_items)) {}
            span.seg.bad data-seg="failed" style=(share(batch.failed_items)) {}
            span.seg.off data-seg="cancelled" style=(share(batch.cancelled_items)) {}
        }
    }
}

/// The percentage of the batch's items that ended.
fn percent_done(batch: &Batch) -> String {
    if batch.total_items == 0 {
        return "0%".to_owned();
    }
    let done = batch.total_items - pending(batch);
    format!("{}%", done * 100 / batch.total_items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sign_in_page_asks_for_a_token_with_a_labelled_password_field() {
        let page = sign_in_page();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains(r#"<label for="token">"#));
        assert!(page.contains(r#"type="password""#));
        assert!(page.contains("sessionStorage"));
        assert!(page.to_ascii_lowercase().contains(SCRIPT_REQUEST_HEADER));
    }

    #[test]
    fn only_a_browser_navigation_is_answered_with_the_sign_in_page() {
        let navigation = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            headers
        };
        let get = axum::http::Method::GET;
        let browser = navigation(&[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")]);
        assert!(wants_sign_in_page(&get, &browser));
        assert!(!wants_sign_in_page(&axum::http::Method::POST, &browser));
        let script = navigation(&[("accept", "text/html"), (SCRIPT_REQUEST_HEADER, "1")]);
        assert!(!wants_sign_in_page(&get, &script));
        assert!(!wants_sign_in_page(
            &get,
            &navigation(&[("accept", "application/json")])
        ));
        assert!(!wants_sign_in_page(&get, &HeaderMap::new()));
    }

    #[test]
    fn links_encode_batch_ids_and_tokens() {
        assert_eq!(batch_path("a/b c"), "/batches/a%2Fb%20c");
        assert_eq!(
            with_query(
                "/",
                &[
                    ("status", Some("FAILED")),
                    ("page", None),
                    ("x", Some("a&b"))
                ]
            ),
            "/?status=FAILED&x=a%26b"
        );
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(duration(3_725), "1h 2m");
    }
}
