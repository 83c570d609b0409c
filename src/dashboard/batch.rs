//! A batch's page at `/batches/{id}`: its status and counters (kept live by [`super::events`]),
//! its most frequent errors, its failed items grouped by message, its items by status, and the
//! buttons that apply to it.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use serde::{Deserialize, Serialize};

use super::{
    badge, batch_path, count, duration, error_page, html_page, pending, percent_done, progress_bar,
    rate, when, with_query,
};
use crate::domain::{Batch, BatchId, BatchStatus, ItemRecord, ItemStatus};
use crate::grpc::{AdminService, ApiError};
use crate::store::{ItemQuery, Page};

/// Failed items on a page of the failures.
const FAILED_PAGE_SIZE: u32 = 50;
/// Items on a page of the item list.
const ITEM_PAGE_SIZE: u32 = 50;
const ITEM_STATUSES: [ItemStatus; 4] = [
    ItemStatus::Pending,
    ItemStatus::Succeeded,
    ItemStatus::Failed,
    ItemStatus::Cancelled,
];

/// The batch page's query string: one page token per list, and the item list's filter.
#[derive(Debug, Default, Deserialize)]
pub(super) struct BatchParams {
    failed_page: Option<String>,
    items: Option<String>,
    items_page: Option<String>,
}

/// What the page shows of a batch's counters, as the live updates and the buttons send it.
#[derive(Debug, Serialize)]
pub(super) struct Snapshot {
    status: &'static str,
    status_class: &'static str,
    terminal: bool,
    total: u64,
    done: u64,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
    fields: Vec<(&'static str, String)>,
}

impl From<&Batch> for Snapshot {
    fn from(batch: &Batch) -> Self {
        let pending = pending(batch);
        Self {
            status: batch.status.as_str(),
            status_class: super::status_class(batch.status),
            terminal: batch.status.is_terminal(),
            total: batch.total_items,
            done: batch.total_items - pending,
            succeeded: batch.succeeded_items,
            failed: batch.failed_items,
            cancelled: batch.cancelled_items,
            fields: vec![
                ("total", count(batch.total_items)),
                ("succeeded", count(batch.succeeded_items)),
                ("failed", count(batch.failed_items)),
                ("cancelled", count(batch.cancelled_items)),
                ("pending", count(pending)),
                ("percent", percent_done(batch)),
                ("rate", rate(batch.progress.items_per_second)),
                ("eta", eta(batch)),
                ("redrives", count(u64::from(batch.redrive_count))),
                ("updated", when(batch.updated_at)),
                (
                    "failure-reason",
                    batch.failure_reason.clone().unwrap_or_default(),
                ),
                (
                    "chunks",
                    format!(
                        "{} of {}",
                        count(batch.completed_chunks),
                        count(batch.total_chunks)
                    ),
                ),
            ],
        }
    }
}

fn eta(batch: &Batch) -> String {
    match (batch.status.is_terminal(), batch.progress.eta_seconds) {
        (true, _) => "done".to_owned(),
        (false, Some(seconds)) => duration(seconds),
        (false, None) => "–".to_owned(),
    }
}

/// A control button: its action, label, the statuses it applies in, and what it asks.
struct Control {
    action: &'static str,
    label: &'static str,
    when: &'static [BatchStatus],
    confirm: &'static str,
}

const CONTROLS: [Control; 4] = [
    Control {
        action: "pause",
        label: "Pause",
        when: &[BatchStatus::Pending, BatchStatus::Running],
        confirm:
            "Pause this batch? No new chunk starts until it is resumed; running chunks finish.",
    },
    Control {
        action: "resume",
        label: "Resume",
        when: &[BatchStatus::Paused],
        confirm: "Resume this batch?",
    },
    Control {
        action: "cancel",
        label: "Cancel",
        when: &[
            BatchStatus::Pending,
            BatchStatus::Running,
            BatchStatus::Paused,
        ],
        confirm: "Cancel this batch? Chunks not started are cancelled and its external jobs \
                  stopped. This cannot be undone.",
    },
    Control {
        action: "redrive",
        label: "Redrive",
        when: &[
            BatchStatus::CompletedWithFailures,
            BatchStatus::Failed,
            BatchStatus::Cancelled,
        ],
        confirm: "Redrive this batch? Its failed items run again.",
    },
];

impl Control {
    /// Whether the button is shown; the page's script applies the same rule to live updates.
    fn applies(&self, batch: &Batch) -> bool {
        self.when.contains(&batch.status)
            && (self.action != "redrive" || batch.failed_items + batch.cancelled_items > 0)
    }

    /// The statuses it applies in, for the page's script.
    fn when_names(&self) -> String {
        let names: Vec<&str> = self.when.iter().map(|status| status.as_str()).collect();
        names.join(" ")
    }
}

/// A batch's page.
async fn page_for(
    admin: &AdminService,
    batch_id: BatchId,
    params: &BatchParams,
) -> Result<Markup, ApiError> {
    let batch = admin.batch(&batch_id).await?;
    let item_status = params.items.as_deref().and_then(ItemStatus::from_name);
    let failed = if batch.failed_items > 0 {
        Some(
            admin
                .items(&ItemQuery {
                    batch_id: batch_id.clone(),
                    status: Some(ItemStatus::Failed),
                    page_size: FAILED_PAGE_SIZE,
                    page_token: nonempty(&params.failed_page),
                })
                .await?,
        )
    } else {
        None
    };
    let items = admin
        .items(&ItemQuery {
            batch_id: batch_id.clone(),
            status: item_status,
            page_size: ITEM_PAGE_SIZE,
            page_token: nonempty(&params.items_page),
        })
        .await?;
    let path = batch_path(batch_id.as_str());
    let snapshot = Snapshot::from(&batch);
    let field = |name: &str| {
        snapshot
            .fields
            .iter()
            .find(|(field, _)| *field == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    };
    Ok(html! {
        section.panel #batch data-batch=(batch_id) data-events=(format!("{path}/events"))
            data-status=(batch.status.as_str()) {
            div.heading {
                div {
                    p.crumbs { a href="/" { "Batches" } " / " }
                    h1.id { (batch_id) }
                }
                (badge(batch.status))
            }
            div.progress-line {
                (progress_bar(&batch))
                span.pct data-field="percent" { (field("percent")) }
            }
            dl.counters {
                div { dt { "Total" } dd data-field="total" { (field("total")) } }
                div.ok { dt { "Succeeded" } dd data-field="succeeded" { (field("succeeded")) } }
                div.bad { dt { "Failed" } dd data-field="failed" { (field("failed")) } }
                div.off { dt { "Cancelled" } dd data-field="cancelled" { (field("cancelled")) } }
                div { dt { "Pending" } dd data-field="pending" { (field("pending")) } }
                div { dt { "Items/s" } dd data-field="rate" { (field("rate")) } }
                div { dt { "ETA" } dd data-field="eta" { (field("eta")) } }
                div { dt { "Redrives" } dd data-field="redrives" { (field("redrives")) } }
            }
            p.failure-reason.error role="alert" data-field="failure-reason"
                hidden[batch.failure_reason.is_none()] {
                (field("failure-reason"))
            }
            dl.details {
                div { dt { "Created" } dd { (when(batch.created_at)) } }
                div { dt { "Updated" } dd data-field="updated" { (field("updated")) } }
                div { dt { "Chunks ended" } dd data-field="chunks" { (field("chunks")) } }
                div { dt { "Batch size" } dd { (count(u64::from(batch.batch_size))) } }
                div { dt { "Max concurrency" } dd { (batch.max_concurrency.map_or("default".to_owned(), |n| count(u64::from(n)))) } }
            }
            div.actions role="group" aria-label="Batch actions" {
                @for control in &CONTROLS {
                    button type="button" .(format!("act-{}", control.action))
                        data-action=(control.action) data-when=(control.when_names())
                        data-confirm=(control.confirm) hidden[!control.applies(&batch)] {
                        (control.label)
                    }
                }
                p.live-note data-live-note hidden { "Live" }
            }
        }
        @if !batch.progress.top_errors.is_empty() {
            section.panel #errors {
                h2 { "Errors" }
                p.hint { "The most frequent failure messages over the whole batch." }
                div.scroll {
                    table {
                        thead { tr { th scope="col" { "Message" } th scope="col" .num { "Items" } th scope="col" .num { "Share" } } }
                        tbody {
                            @for error in &batch.progress.top_errors {
                                tr {
                                    td data-label="Message" { code.message { (error.message) } }
                                    td.num data-label="Items" { (count(error.count)) }
                                    td.num data-label="Share" { (share(error.count, batch.failed_items)) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(failed) = &failed {
            (failed_items(&path, params, failed))
        }
        (item_list(&path, params, item_status, &items))
    })
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "–".to_owned();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

fn nonempty(token: &Option<String>) -> Option<String> {
    token.clone().filter(|token| !token.is_empty())
}

/// A page of the failed items, grouped by message (in order of first appearance on the page).
fn failed_items(path: &str, params: &BatchParams, failed: &Page<ItemRecord>) -> Markup {
    let mut groups: Vec<(&str, Vec<&ItemRecord>)> = Vec::new();
    for item in &failed.entries {
        let message = item.error.as_deref().unwrap_or("(no message)");
        match groups.iter_mut().find(|(known, _)| *known == message) {
            Some((_, items)) => items.push(item),
            None => groups.push((message, vec![item])),
        }
    }
    let keep = [
        ("items", params.items.as_deref()),
        ("items_page", params.items_page.as_deref()),
    ];
    html! {
        section.panel #failed {
            h2 { "Failed items" }
            p.hint { "A page of failed items, grouped by message." }
            @if groups.is_empty() {
                // A page ends early, with a token, when the store has read its share of a
                // large batch without finding enough matches.
                p.empty { "No failed items in this stretch of the batch; the next page reads on." }
            }
            @for (message, items) in &groups {
                details.group open {
                    summary {
                        code.message { (message) }
                        span.count { (count(items.len() as u64)) " on this page" }
                    }
                    ul.ids {
                        @for item in items {
                            li { code { (item.item_id.as_str()) } span.meta { "chunk " (item.chunk) ", " (item.attempts) " attempt(s)" } }
                        }
                    }
                }
            }
            nav.pager aria-label="Pages of failed items" {
                @if nonempty(&params.failed_page).is_some() {
                    a href=(with_query(path, &keep)) { "« First page" }
                }
                @if let Some(next) = &failed.next_page_token {
                    a rel="next" href=(with_query(path, &[keep[0], keep[1], ("failed_page", Some(next))])) { "Next failed items »" }
                }
            }
        }
    }
}

/// A page of the batch's items, filtered by status.
fn item_list(
    path: &str,
    params: &BatchParams,
    status: Option<ItemStatus>,
    items: &Page<ItemRecord>,
) -> Markup {
    let status_name = status.map(ItemStatus::as_str);
    let failed_page = params.failed_page.as_deref();
    html! {
        section.panel #items {
            div.heading {
                h2 { "Items" }
                form.filter method="get" action=(path) {
                    @if let Some(token) = failed_page {
                        input type="hidden" name="failed_page" value=(token);
                    }
                    label for="item-status" { "Item status" }
                    select #item-status name="items" data-autosubmit {
                        option value="" selected[status.is_none()] { "All" }
                        @for option in ITEM_STATUSES {
                            option value=(option.as_str()) selected[status == Some(option)] { (option.as_str()) }
                        }
                    }
                    noscript { button type="submit" { "Filter" } }
                }
            }
            @if items.entries.is_empty() {
                p.empty { "No items" @if let Some(name) = status_name { " in " (name) } " on this page." }
            } @else {
                div.scroll {
                    table.items {
                        thead {
                            tr {
                                th scope="col" { "Item" }
                                th scope="col" { "Status" }
                                th scope="col" .num { "Chunk" }
                                th scope="col" .num { "Attempts" }
                                th scope="col" { "Error" }
                            }
                        }
                        tbody {
                            @for item in &items.entries {
                                tr {
                                    td data-label="Item" { code { (item.item_id.as_str()) } }
                                    td data-label="Status" { span.badge.(item_class(item.status)) { (item.status.as_str()) } }
                                    td.num data-label="Chunk" { (item.chunk) }
                                    td.num data-label="Attempts" { (item.attempts) }
                                    td data-label="Error" { @if let Some(error) = &item.error { code.message { (error) } } }
                                }
                            }
                        }
                    }
                }
            }
            nav.pager aria-label="Pages of items" {
                @if nonempty(&params.items_page).is_some() {
                    a href=(with_query(path, &[("failed_page", failed_page), ("items", status_name)])) { "« First page" }
                }
                @if let Some(next) = &items.next_page_token {
                    a rel="next" href=(with_query(path, &[("failed_page", failed_page), ("items", status_name), ("items_page", Some(next))])) { "Next items »" }
                }
            }
        }
    }
}

fn item_class(status: ItemStatus) -> &'static str {
    match status {
        ItemStatus::Pending => "s-pending",
        ItemStatus::Succeeded => "s-completed",
        ItemStatus::Failed => "s-failed",
        ItemStatus::Cancelled => "s-cancelled",
    }
}

/// A batch's page, or an HTML error page (404 for an unknown batch).
pub(super) async fn page(
    State(admin): State<AdminService>,
    Path(batch_id): Path<String>,
    Query(params): Query<BatchParams>,
) -> Response {
    let batch_id = match BatchId::parse(batch_id) {
        Ok(batch_id) => batch_id,
        Err(err) => {
            return super::message_page(StatusCode::BAD_REQUEST, format!("batch_id: {err}"))
        }
    };
    match page_for(&admin, batch_id.clone(), &params).await {
        Ok(content) => html_page(StatusCode::OK, batch_id.as_str(), content),
        Err(err) => error_page(err),
    }
}
