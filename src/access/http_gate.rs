//! The gate in front of the HTTP routes: `/healthz` passes; every other route needs a good
//! token; a read-only token may only GET. A browser that navigates without a token is sent
//! the dashboard's sign-in page with the 401, which asks for the token and keeps it in the
//! tab's session storage.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use super::{AccessControl, Admission, Caller, UNAUTHENTICATED_MESSAGE};
use crate::access::Access;
use crate::dashboard;
use crate::http::error;

/// The liveness route, open to probes.
pub(crate) const HEALTH_ROUTE: &str = "/healthz";

/// Admits or refuses one HTTP request (401, 403).
pub(crate) async fn require_http_token(
    State(access): State<AccessControl>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == HEALTH_ROUTE {
        return next.run(request).await;
    }
    match access.admit(request.headers()) {
        Admission::Open => next.run(request).await,
        Admission::Refused => unauthenticated(&request),
        Admission::Caller(caller) => {
            let reads = matches!(*request.method(), Method::GET | Method::HEAD);
            if !reads {
                if caller.access == Access::ReadOnly {
                    return error(
                        StatusCode::FORBIDDEN,
                        format!(
                            "{} {}: a read-only token may only read",
                            request.method(),
                            request.uri().path()
                        ),
                    );
                }
                tracing::info!(
                    caller = %caller.name,
                    method = %request.method(),
                    path = request.uri().path(),
                    "request"
                );
            }
            request.extensions_mut().insert::<Caller>(caller);
            next.run(request).await
        }
    }
}

/// The 401: JSON for API clients and the dashboard's script, the sign-in page for a browser's
/// navigation (which cannot carry the token), so that it can ask for the token.
fn unauthenticated(request: &Request) -> Response {
    let mut response = if dashboard::wants_sign_in_page(request.method(), request.headers()) {
        (StatusCode::UNAUTHORIZED, Html(dashboard::sign_in_page())).into_response()
    } else {
        error(StatusCode::UNAUTHORIZED, UNAUTHENTICATED_MESSAGE)
    };
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
