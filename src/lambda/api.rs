//! The `init` role: API Gateway proxy events (REST API v1 and HTTP API v2) for
//! `POST /stateMachineInit` and `POST /runrequests`, answered with exactly the statuses and JSON
//! bodies of the local HTTP endpoints, since both go through [`seed::handle`] and
//! [`run_request::handle`]. `lambda_http` turns either event into one
//! request type and decodes base64 bodies.

use std::convert::Infallible;

use lambda_http::http::{header, Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{service_fn, Body, Request, RequestExt, Response};
use serde_json::{json, Value};

use lambda_http::request::LambdaRequest;
use lambda_runtime::LambdaEvent;
use serde_json::value::RawValue;
use tower::ServiceExt;

use super::stream::{self, ChunkStarter, EventSource};
use crate::items_uri::s3::ObjectReader;
use crate::pipeline::Intake;
use crate::{run_request, seed};

/// Serves the role's events until the Runtime API stops the process: API Gateway requests
/// (`objects` reads the items of seed bodies by reference), and the request table's stream and
/// the repair schedule ([`stream`]).
pub(crate) async fn serve(
    intake: Intake,
    objects: ObjectReader,
    starter: ChunkStarter,
) -> Result<(), lambda_runtime::Error> {
    let (intake, objects, starter) = (&intake, &objects, &starter);
    let http = lambda_http::Adapter::from(service_fn(move |request: Request| async move {
        Ok::<_, Infallible>(respond(intake, objects, request).await)
    }));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Box<RawValue>>| {
        let http = http.clone();
        async move {
            let (payload, context) = (event.payload, event.context);
            match stream::event_source(payload.get()) {
                EventSource::Stream => {
                    let records: stream::StreamEvent = serde_json::from_str(payload.get())?;
                    Ok::<Value, lambda_runtime::Error>(starter.handle_stream(records).await)
                }
                EventSource::Schedule => Ok(starter.sweep().await?),
                EventSource::Api => {
                    let request: LambdaRequest = serde_json::from_str(payload.get())?;
                    let response = http.oneshot(LambdaEvent::new(request, context)).await?;
                    Ok(serde_json::to_value(response)?)
                }
            }
        }
    }))
    .await
}

/// Answers one request.
pub(crate) async fn respond(
    intake: &Intake,
    objects: &ObjectReader,
    request: Request,
) -> Response<Body> {
    let path = route_path(&request);
    if path != seed::ROUTE && path != run_request::ROUTE {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({ "message": format!("no route for {} {path}", request.method()) }),
        );
    }
    if request.method() != Method::POST {
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "message": format!("{} {path} is not allowed; use POST", request.method()) }),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return response;
    }
    let reply = if path == run_request::ROUTE {
        run_request::handle(intake, request.body().as_ref()).await
    } else {
        seed::handle(intake, objects, request.body().as_ref()).await
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &reply.body)
}

/// The request's path without the stage prefix API Gateway may deliver it with, and without a
/// trailing slash.
fn route_path(request: &Request) -> String {
    let path = request.uri().path();
    let stage = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(context)) => context.stage.as_deref(),
        Some(RequestContext::ApiGatewayV2(context)) => context.stage.as_deref(),
        _ => None,
    };
    let without_stage = stage
        .filter(|stage| *stage != "$default")
        .and_then(|stage| path.strip_prefix('/')?.strip_prefix(stage))
        .filter(|rest| rest.starts_with('/'))
        .unwrap_or(path);
    let trimmed = without_stage.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::Text(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn request(fixture: &str, edit: impl FnOnce(&mut Value)) -> Request {
        let mut event: Value = serde_json::from_str(fixture).unwrap();
        edit(&mut event);
        lambda_http::request::from_str(&event.to_string()).unwrap()
    }

    const V1: &str = include_str!("../../tests/fixtures/apigw-v1-seed.json");
    const V2: &str = include_str!("../../tests/fixtures/apigw-v2-seed.json");

    #[test]
    fn the_seed_route_is_found_behind_any_stage_and_trailing_slash() {
        let cases = [
            request(V1, |_| {}),
            request(V1, |event| event["path"] = "/stateMachineInit/".into()),
            request(V2, |_| {}),
            request(V2, |event| {
                event["rawPath"] = "/prod/stateMachineInit/".into();
                event["requestContext"]["stage"] = "prod".into();
            }),
            request(V2, |event| {
                event["rawPath"] = "/stateMachineInit".into();
                event["requestContext"]["stage"] = "prod".into();
            }),
        ];
        for request in cases {
            assert_eq!(route_path(&request), seed::ROUTE, "{:?}", request.uri());
        }
    }

    #[test]
    fn other_paths_keep_their_own_route() {
        let cases = [
            (request(V2, |event| event["rawPath"] = "/".into()), "/"),
            (
                request(V2, |event| {
                    event["rawPath"] = "/prodstateMachineInit".into();
                    event["requestContext"]["stage"] = "prod".into();
                }),
                "/prodstateMachineInit",
            ),
            (
                request(V1, |event| event["path"] = "/v1/stateMachineInit".into()),
                "/v1/stateMachineInit",
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(route_path(&request), expected, "{:?}", request.uri());
        }
    }
}
