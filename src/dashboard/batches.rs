//! The batch list at `/`: newest first, filtered by status, a page at a time.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::{
    badge, batch_path, count, error_page, html_page, percent_done, progress_bar, rate, when,
    when_minute, with_query,
};
use crate::domain::BatchStatus;
use crate::grpc::AdminService;
use crate::store::BatchQuery;

/// Batches on a page.
const PAGE_SIZE: u32 = 25;

/// The list's query string.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListParams {
    status: Option<String>,
    page: Option<String>,
}

/// The batch list.
pub(super) async fn page(
    State(admin): State<AdminService>,
    Query(params): Query<ListParams>,
) -> Response {
    let status = params
        .status
        .as_deref()
        .filter(|name| !name.is_empty())
        .and_then(BatchStatus::from_name);
    let query = BatchQuery {
        status,
        page_size: PAGE_SIZE,
        page_token: params.page.clone().filter(|token| !token.is_empty()),
    };
    let listed = match admin.batches(&query).await {
        Ok(listed) => listed,
        Err(err) => return error_page(err),
    };
    let status_name = status.map(BatchStatus::as_str);
    let content = html! {
        section.panel {
            div.heading {
                h1 { "Batches" }
                form.filter method="get" action="/" {
                    label for="status" { "Status" }
                    select #status name="status" data-autosubmit {
                        option value="" selected[status.is_none()] { "All" }
                        @for option in BatchStatus::ALL {
                            option value=(option.as_str()) selected[status == Some(option)] {
                                (option.as_str())
                            }
                        }
                    }
                    noscript { button type="submit" { "Filter" } }
                }
            }
            @if listed.entries.is_empty() {
                p.empty { "No batches" @if let Some(name) = status_name { " in " (name) } "." }
            } @else {
                div.scroll {
                    table.batches {
                        thead {
                            tr {
                                th scope="col" { "Batch" }
                                th scope="col" { "Status" }
                                th scope="col" class="wide" { "Progress" }
                                th scope="col" .num { "Items" }
                                th scope="col" .num { "Succeeded" }
                                th scope="col" .num { "Failed" }
                                th scope="col" .num { "Cancelled" }
                                th scope="col" .num { "Items/s" }
                                th scope="col" { "Created (UTC)" }
                            }
                        }
                        tbody {
                            @for batch in &listed.entries {
                                tr {
                                    td data-label="Batch" {
                                        a.id href=(batch_path(batch.batch_id.as_str())) title=(batch.batch_id) { (batch.batch_id) }
                                    }
                                    td data-label="Status" { (badge(batch.status)) }
                                    td data-label="Progress" {
                                        div.progress-cell {
                                            (progress_bar(batch))
                                            span.pct { (percent_done(batch)) }
                                        }
                                    }
                                    td.num data-label="Items" { (count(batch.total_items)) }
                                    td.num data-label="Succeeded" { (count(batch.succeeded_items)) }
                                    td.num data-label="Failed" { (count(batch.failed_items)) }
                                    td.num data-label="Cancelled" { (count(batch.cancelled_items)) }
                                    td.num data-label="Items/s" { (rate(batch.progress.items_per_second)) }
                                    td.when data-label="Created" title=(when(batch.created_at)) { (when_minute(batch.created_at)) }
                                }
                            }
                        }
                    }
                }
            }
            nav.pager aria-label="Pages of batches" {
                @if params.page.as_deref().is_some_and(|token| !token.is_empty()) {
                    a href=(with_query("/", &[("status", status_name)])) { "« First page" }
                }
                @if let Some(next) = &listed.next_page_token {
                    a rel="next" href=(with_query("/", &[("status", status_name), ("page", Some(next))])) { "Next page »" }
                }
            }
        }
    };
    html_page(StatusCode::OK, "Batches", content)
}
