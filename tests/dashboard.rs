//! The web dashboard in a real browser: Debian's headless chromium, driven through
//! chromedriver (WebDriver), against a real server on loopback. The batch list, a running
//! batch whose counters advance live without a reload until it completes, failed items
//! grouped by message and the item filter, the buttons behind their confirmation, and a
//! phone-width layout. Screenshots go to `target/`, or to `docs/` with
//! `BATCH_MANAGER_UPDATE_SCREENSHOTS=1`.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batch_manager::domain::ItemOutcome;
use batch_manager::grpc::pb;
use batch_manager::pipeline::{ChunkTask, TaskError, TaskInput, Tasks};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// Longest wait for anything the browser shows.
const UI_DEADLINE: Duration = Duration::from_secs(60);

/// One browser at a time: the tests share two cores with the server and its tasks.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Batches whose chunks [`Paced`] holds.
const PACED_BATCHES: [&str; 5] = [
    "catalogue-sync",
    "price-update",
    "returns-2026-12-03",
    "to-cancel",
    "guarded-run",
];

/// Task 1: holds each chunk of the [`PACED_BATCHES`] for a while, so that their runs last long
/// enough to watch and to act on.
struct Paced(Duration);

#[async_trait]
impl ChunkTask for Paced {
    async fn process(&self, input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError> {
        if PACED_BATCHES.contains(&input.batch_id.as_str()) {
            tokio::time::sleep(self.0).await;
        }
        Ok(vec![ItemOutcome::Succeeded; input.items.len()])
    }
}

/// Task 2: fails the items whose ID says so (`bad-price-...`, `bad-sku-...`).
struct FailsBadItems;

#[async_trait]
impl ChunkTask for FailsBadItems {
    async fn process(&self, input: TaskInput<'_>) -> Result<Vec<ItemOutcome>, TaskError> {
        Ok(input
            .items
            .iter()
            .map(|item| {
                let id = item.as_str();
                if id.starts_with("bad-price-") {
                    ItemOutcome::Failed("price: must be greater than 0".into())
                } else if id.starts_with("bad-sku-") {
                    ItemOutcome::Failed("sku: not in the catalogue".into())
                } else {
                    ItemOutcome::Succeeded
                }
            })
            .collect())
    }
}

async fn spawn_dashboard_app() -> TestApp {
    spawn_app_with(Tasks {
        task1: Arc::new(Paced(Duration::from_millis(250))),
        task2: Arc::new(FailsBadItems),
    })
    .await
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i:05}")).collect()
}

async fn submit(test: &mut TestApp, batch_id: &str, items: Vec<String>, max_concurrency: u32) {
    test.client
        .submit_batch(pb::SubmitBatchRequest {
            max_concurrency,
            ..submit_request(batch_id, items, 10)
        })
        .await
        .expect("batch submitted");
}

/// chromedriver and the chromium it starts, in a process group of their own that is killed
/// when this is dropped, a failed test included.
struct Browser {
    client: Option<Client>,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(width: u32, height: u32) -> Self {
        let port = free_port();
        let profile = tempfile::tempdir().expect("profile directory");
        let driver = {
            use std::os::unix::process::CommandExt;
            std::process::Command::new(binary(&["chromedriver"]))
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver starts (install chromium and chromium-driver)")
        };
        let mut browser = Self {
            client: None,
            driver,
            _profile: profile,
        };
        let chromium = binary(&["chromium", "chromium-browser", "google-chrome"]);
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    "--no-first-run",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                    format!("--window-size={width},{height}"),
                ]
            }
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("no WebDriver session: {err}"),
            }
        };
        client
            .set_window_size(width, height)
            .await
            .expect("window size");
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("session")
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }

    /// Runs `script` in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.client()
            .execute(script, vec![])
            .await
            .unwrap_or_else(|err| panic!("script {script:?} failed: {err}"))
    }

    /// Waits until `script` returns true; panics with `what` after [`UI_DEADLINE`].
    async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + UI_DEADLINE;
        loop {
            if self.client().execute(script, vec![]).await.ok() == Some(Value::Bool(true)) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Presses the batch's `action` button and waits for its confirmation to open.
    async fn open_confirmation(&self, action: &str) {
        self.click(&format!("button[data-action={action}]")).await;
        self.wait_until(
            "the confirmation",
            "return document.getElementById('confirm').open",
        )
        .await;
    }

    async fn text(&self, selector: &str) -> String {
        self.client()
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|err| panic!("{selector}: {err}"))
            .text()
            .await
            .expect("text")
    }

    async fn click(&self, selector: &str) {
        self.client()
            .wait()
            .at_most(UI_DEADLINE)
            .for_element(Locator::Css(selector))
            .await
            .unwrap_or_else(|err| panic!("{selector}: {err}"))
            .click()
            .await
            .unwrap_or_else(|err| panic!("click {selector}: {err}"));
    }

    /// Saves a screenshot as `name` under `target/`, or `docs/` when asked to.
    async fn screenshot(&self, name: &str) {
        let png = self.client().screenshot().await.expect("screenshot");
        let directory = if std::env::var_os("BATCH_MANAGER_UPDATE_SCREENSHOTS").is_some() {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs")
        } else {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target")
        };
        std::fs::create_dir_all(&directory).expect("screenshot directory");
        std::fs::write(directory.join(name), png).expect("screenshot written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads its own process group: chromium and its child processes are in it.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The first of `names` found on PATH.
fn binary(names: &[&str]) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for directory in std::env::split_paths(&path) {
            let candidate = directory.join(name);
            if candidate.is_file() {
                return candidate.display().to_string();
            }
        }
    }
    panic!("none of {names:?} is installed (apt-get install chromium chromium-driver)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_batch_counts_up_live_without_a_reload_until_it_completes() {
    let _one = ONE_BROWSER.lock().await;
    let mut test = spawn_dashboard_app().await;
    submit(&mut test, "orders-2026-12-04", ids("order-", 480), 0).await;
    let mut with_failures = ids("order-", 300);
    with_failures.extend(ids("bad-price-", 23));
    with_failures.extend(ids("bad-sku-", 9));
    submit(&mut test, "orders-2026-12-05", with_failures, 0).await;
    test.wait_terminal("orders-2026-12-04").await;
    test.wait_terminal("orders-2026-12-05").await;
    submit(&mut test, "returns-2026-12-03", ids("item-", 200), 1).await;
    test.client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: "returns-2026-12-03".into(),
        })
        .await
        .expect("cancelled");
    test.wait_terminal("returns-2026-12-03").await;
    let mut price_update = ids("price-", 600);
    for (i, id) in price_update.iter_mut().enumerate() {
        match i % 40 {
            7 => *id = format!("bad-price-{i:05}"),
            23 | 31 => *id = format!("bad-sku-{i:05}"),
            _ => {}
        }
    }
    submit(&mut test, "price-update", price_update, 2).await;
    submit(&mut test, "catalogue-sync", ids("sku-", 600), 1).await;

    let browser = Browser::start(1280, 860).await;
    let deadline = Instant::now() + UI_DEADLINE;
    while test.status("price-update").await.failed_items < 12 {
        assert!(Instant::now() < deadline, "no failures yet");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .client()
        .goto(&test.http_url("/"))
        .await
        .expect("list loads");
    let rows = browser
        .eval("return document.querySelectorAll('table.batches tbody tr').length")
        .await;
    assert_eq!(rows, json!(5), "every batch is listed");
    let first = browser
        .text("table.batches tbody tr:first-child a.id")
        .await;
    assert_eq!(first, "catalogue-sync", "newest first");
    browser
        .wait_until(
            "the running batch to show progress in the list",
            "return document.querySelector('table.batches tbody tr .pct').textContent !== '0%'",
        )
        .await;
    browser.screenshot("dashboard-batches.png").await;

    browser
        .client()
        .goto(&test.http_url("/batches/price-update"))
        .await
        .expect("batch page loads");
    browser
        .wait_until(
            "the live note on a running batch with failures",
            "return !document.querySelector('[data-live-note]').hidden \
             && !!document.querySelector('#failed details.group')",
        )
        .await;
    browser.screenshot("dashboard-batch.png").await;

    browser.click("header nav a[href='/']").await;
    browser
        .wait_until(
            "the list",
            "return !!document.querySelector('table.batches')",
        )
        .await;
    browser.click("a[href='/batches/catalogue-sync']").await;
    browser
        .wait_until(
            "the batch page",
            "return !!document.getElementById('batch') && document.getElementById('batch').dataset.batch === 'catalogue-sync'",
        )
        .await;
    browser
        .eval("window.noReloadMarker = 'still here'; return null")
        .await;
    let succeeded = |browser: &Browser| {
        let browser = browser.client().clone();
        async move {
            let value = browser
                .execute(
                    "return document.querySelector('[data-field=succeeded]').textContent",
                    vec![],
                )
                .await
                .expect("counter");
            value
                .as_str()
                .unwrap_or_default()
                .replace(',', "")
                .parse::<u64>()
                .unwrap_or(0)
        }
    };
    let before = succeeded(&browser).await;
    assert!(before < 600, "the batch is still running: {before}");
    let deadline = Instant::now() + UI_DEADLINE;
    while succeeded(&browser).await <= before {
        assert!(
            Instant::now() < deadline,
            "the counter never advanced past {before}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .wait_until(
            "the live note",
            "return !document.querySelector('[data-live-note]').hidden",
        )
        .await;
    browser
        .wait_until(
            "COMPLETED, live",
            "return document.querySelector('#batch [data-field=status]').textContent === 'COMPLETED'",
        )
        .await;
    assert_eq!(succeeded(&browser).await, 600);
    assert_eq!(
        browser.eval("return window.noReloadMarker").await,
        json!("still here"),
        "the page was never reloaded"
    );
    assert_eq!(
        browser
            .eval(
                "return document.querySelector('[role=progressbar]').getAttribute('aria-valuenow')"
            )
            .await,
        json!("600")
    );
    let status = test.wait_terminal("catalogue-sync").await;
    assert_eq!(status.status(), pb::BatchStatus::Completed);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_items_are_grouped_by_message_and_the_item_filter_shows_only_failures() {
    let _one = ONE_BROWSER.lock().await;
    let mut test = spawn_dashboard_app().await;
    let mut items = ids("ok-", 120);
    items.extend(ids("bad-price-", 12));
    items.extend(ids("bad-sku-", 5));
    submit(&mut test, "mixed", items, 0).await;
    let ended = test.wait_terminal("mixed").await;
    assert_eq!(ended.status(), pb::BatchStatus::CompletedWithFailures);

    let browser = Browser::start(1280, 860).await;
    browser
        .client()
        .goto(&test.http_url("/batches/mixed"))
        .await
        .expect("batch page loads");
    let groups = browser
        .eval(
            "return [...document.querySelectorAll('#failed details.group')].map(g => \
             [g.querySelector('summary code').textContent, g.querySelectorAll('li').length])",
        )
        .await;
    assert_eq!(
        groups,
        json!([
            ["price: must be greater than 0", 12],
            ["sku: not in the catalogue", 5]
        ])
    );
    let top_errors = browser
        .eval("return [...document.querySelectorAll('#errors tbody tr')].map(r => r.children[1].textContent)")
        .await;
    assert_eq!(top_errors, json!(["12", "5"]));
    assert!(browser
        .eval("return document.querySelector('button[data-action=redrive]').hidden === false")
        .await
        .as_bool()
        .unwrap());
    assert!(browser
        .eval("return document.querySelector('button[data-action=cancel]').hidden")
        .await
        .as_bool()
        .unwrap());

    browser
        .client()
        .find(Locator::Css("#item-status"))
        .await
        .expect("item filter")
        .select_by_value("FAILED")
        .await
        .expect("FAILED chosen");
    browser
        .wait_until(
            "the filtered item list",
            "return location.search.includes('items=FAILED') && document.readyState === 'complete' \
             && !!document.querySelector('table.items')",
        )
        .await;
    let rows = browser
        .eval(
            "return [...document.querySelectorAll('table.items tbody tr')].map(r => \
             [r.children[1].textContent, r.children[4].textContent])",
        )
        .await;
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 17, "{rows:?}");
    for row in rows {
        assert_eq!(row[0], json!("FAILED"), "{row:?}");
        assert!(row[1].as_str().unwrap().contains(": "), "{row:?}");
    }
    assert_eq!(
        browser
            .eval("return document.querySelector('label[for=item-status]').textContent")
            .await,
        json!("Item status")
    );

    // With a token stored (as after signing in), links load through fetch with the token.
    browser
        .eval(
            "sessionStorage.setItem('batch-manager-token', 'any'); \
             window.noReloadMarker = 'kept'; return null",
        )
        .await;
    browser.click("header a.brand").await;
    browser
        .wait_until(
            "the list, loaded in place",
            "return location.pathname === '/' && !!document.querySelector('table.batches')",
        )
        .await;
    assert_eq!(
        browser.eval("return window.noReloadMarker").await,
        json!("kept")
    );
    browser.eval("sessionStorage.clear(); return null").await;

    browser
        .client()
        .set_window_size(390, 844)
        .await
        .expect("phone width");
    browser
        .client()
        .goto(&test.http_url("/"))
        .await
        .expect("list loads");
    let fits = browser
        .eval("return document.documentElement.scrollWidth <= window.innerWidth")
        .await;
    assert_eq!(fits, json!(true), "the list fits a phone's width");
    browser
        .client()
        .goto(&test.http_url("/batches/mixed"))
        .await
        .expect("batch page loads");
    let fits = browser
        .eval("return document.documentElement.scrollWidth <= window.innerWidth")
        .await;
    assert_eq!(fits, json!(true), "the batch page fits a phone's width");
    browser.screenshot("dashboard-phone.png").await;

    browser
        .client()
        .goto(&test.http_url("/batches/no-such-batch"))
        .await
        .expect("page loads");
    assert!(browser
        .text("main")
        .await
        .contains("batch no-such-batch not found"));
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buttons_pause_resume_cancel_and_redrive_a_batch_after_their_confirmation() {
    let _one = ONE_BROWSER.lock().await;
    let mut test = spawn_dashboard_app().await;
    submit(&mut test, "to-cancel", ids("item-", 300), 1).await;

    let browser = Browser::start(1280, 860).await;
    browser
        .client()
        .goto(&test.http_url("/batches/to-cancel"))
        .await
        .expect("batch page loads");
    let shown = "return [...document.querySelectorAll('#batch button[data-action]')]\
                 .filter(b => !b.hidden).map(b => b.dataset.action).join(' ')";
    assert_eq!(browser.eval(shown).await, json!("pause cancel"));

    browser.open_confirmation("pause").await;
    browser.click("#confirm [data-confirm-yes]").await;
    browser
        .wait_until(
            "PAUSED",
            "return document.querySelector('#batch [data-field=status]').textContent === 'PAUSED'",
        )
        .await;
    assert_eq!(
        test.status("to-cancel").await.status(),
        pb::BatchStatus::Paused
    );
    assert_eq!(browser.eval(shown).await, json!("resume cancel"));
    browser.open_confirmation("resume").await;
    browser.click("#confirm [data-confirm-yes]").await;
    browser
        .wait_until(
            "RUNNING again",
            "return document.querySelector('#batch [data-field=status]').textContent !== 'PAUSED'",
        )
        .await;

    browser.open_confirmation("cancel").await;
    let question = browser.text("#confirm [data-confirm-text]").await;
    assert!(question.starts_with("Cancel this batch?"), "{question}");
    browser.click("#confirm [data-confirm-yes]").await;
    browser
        .wait_until(
            "the batch to show CANCELLED",
            "return document.querySelector('#batch [data-field=status]').textContent === 'CANCELLED'",
        )
        .await;
    let flash = browser.text("#flash").await;
    assert!(flash.starts_with("Cancel requested."), "{flash}");
    let status = test.wait_terminal("to-cancel").await;
    assert_eq!(status.status(), pb::BatchStatus::Cancelled);
    assert!(status.cancelled_items > 0, "{status:?}");

    // Only cancelled items: a redrive without them is refused, as over gRPC.
    browser
        .wait_until(
            "the redrive button",
            "return !document.querySelector('button[data-action=redrive]').hidden",
        )
        .await;
    browser.open_confirmation("redrive").await;
    browser.click("#confirm [data-confirm-yes]").await;
    browser
        .wait_until(
            "the refusal",
            "return document.getElementById('flash').textContent.startsWith('Refused: ')",
        )
        .await;
    browser.open_confirmation("redrive").await;
    browser.click("#include-cancelled").await;
    browser.click("#confirm [data-confirm-yes]").await;
    browser
        .wait_until(
            "the redrive",
            "return document.getElementById('flash').textContent.startsWith('Redriving ')",
        )
        .await;
    let ended = test.wait_terminal("to-cancel").await;
    assert_eq!(ended.redrive_count, 1);
    assert_eq!(ended.status(), pb::BatchStatus::Completed, "{ended:?}");
    assert_eq!(ended.succeeded_items, 300);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_answer_html_even_for_errors_and_buttons_keep_the_browser_guards() {
    let mut test = spawn_dashboard_app().await;
    submit(&mut test, "guarded", ids("ok-", 20), 0).await;
    test.wait_terminal("guarded").await;
    let http = reqwest::Client::new();

    let missing = http
        .get(test.http_url("/batches/no-such-batch"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(missing
        .text()
        .await
        .unwrap()
        .contains("batch no-such-batch not found"));
    let bad_token = http
        .get(test.http_url("/?page=not-a-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status(), 400);
    assert!(bad_token.text().await.unwrap().contains("<!DOCTYPE html>"));

    let cancel = test.http_url("/batches/guarded/cancel");
    let form_post = http.post(&cancel).body("{}").send().await.unwrap();
    assert_eq!(form_post.status(), 415, "a POST must say it is JSON");
    let cross_site = http
        .post(&cancel)
        .header("content-type", "application/json")
        .header("origin", "https://evil.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403, "cross-origin POSTs are refused");
    let foreign_host = http
        .get(test.http_url("/"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign_host.status(), 403, "DNS rebinding is refused");

    let refused = http
        .post(&cancel)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409, "FAILED_PRECONDITION, as over gRPC");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["message"], json!("batch guarded is already COMPLETED"));
    let redrive = http
        .post(test.http_url("/batches/guarded/redrive"))
        .header("content-type", "application/json")
        .body(r#"{"includeCancelled": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(redrive.status(), 409, "nothing to redrive");

    let events = http
        .get(test.http_url("/batches/guarded/events"))
        .send()
        .await
        .unwrap();
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let stream = tokio::time::timeout(UI_DEADLINE, events.text())
        .await
        .expect("a terminal batch's stream ends")
        .unwrap();
    assert!(stream.starts_with("event: batch\ndata: {"), "{stream}");
    assert!(stream.contains(r#""status":"COMPLETED""#), "{stream}");

    let seed_error = http.get(test.http_url("/nowhere")).send().await.unwrap();
    assert_eq!(seed_error.status(), 404);
    let body: Value = seed_error.json().await.unwrap();
    assert!(body["message"].is_string(), "other routes keep JSON errors");
}

const WRITER_TOKEN: &str = "dashboard-writer-7f3e91c0a2";
const READER_TOKEN: &str = "dashboard-reader-52d8b6e14f";

/// A server that asks for tokens (a read-write and a read-only one), and a client holding the
/// read-write token.
async fn spawn_guarded_app(
    directory: &std::path::Path,
) -> (
    batch_manager::app::LocalApp,
    batch_manager::grpc::client::AdminClient,
) {
    let tokens = directory.join("tokens");
    std::fs::write(
        &tokens,
        format!("{WRITER_TOKEN} operator\nro:{READER_TOKEN} wallboard\n"),
    )
    .unwrap();
    let loopback: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    let app = batch_manager::app::LocalApp::spawn(
        batch_manager::app::LocalConfig {
            grpc_addr: loopback,
            http_addr: loopback,
            db: directory.join("guarded.db"),
            engine: Default::default(),
            connections: Default::default(),
            jobs: Default::default(),
            items_buckets: Default::default(),
            access: batch_manager::app::AccessConfig {
                control: batch_manager::access::AccessControl::from_file(&tokens).unwrap(),
                tls: None,
            },
        },
        Tasks {
            task1: Arc::new(Paced(Duration::from_millis(250))),
            task2: Arc::new(FailsBadItems),
        },
    )
    .await
    .expect("server starts");
    let client = batch_manager::grpc::client::AdminClient::connect_with(
        &format!("http://{}", app.grpc_addr),
        &batch_manager::grpc::client::ConnectOptions {
            token: Some(WRITER_TOKEN.to_owned()),
            ca_cert: None,
        },
    )
    .await
    .unwrap();
    (app, client)
}

async fn sign_in(browser: &Browser, token: &str) {
    browser
        .wait_until(
            "the sign-in form",
            "return !!document.getElementById('sign-in')",
        )
        .await;
    let input = browser
        .client()
        .find(Locator::Css("#sign-in input[type=password]"))
        .await
        .expect("token field");
    input.clear().await.expect("cleared");
    input.send_keys(token).await.expect("token typed");
    browser.click("#sign-in button[type=submit]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_tokens_shows_nothing_before_sign_in_and_a_read_only_token_only_reads() {
    let _one = ONE_BROWSER.lock().await;
    let directory = tempfile::tempdir().unwrap();
    let (app, mut client) = spawn_guarded_app(directory.path()).await;
    let batch_id = batch_manager::domain::BatchId::parse("guarded-run").unwrap();
    client
        .submit(batch_manager::grpc::client::BatchSubmission {
            batch_id: batch_id.clone(),
            batch_size: batch_manager::domain::BatchSize::parse(10).unwrap(),
            items: ids("sku-", 400)
                .into_iter()
                .map(|id| batch_manager::domain::ItemId::parse(id).unwrap())
                .collect(),
            max_concurrency: Some(1),
            failure_budget: Default::default(),
            callback_url: None,
        })
        .await
        .expect("submitted with the read-write token");

    let browser = Browser::start(1280, 860).await;
    let page = format!("http://{}/batches/guarded-run", app.http_addr);
    browser.client().goto(&page).await.expect("page loads");
    sign_in(&browser, "not-a-token-at-all-000").await;
    browser
        .wait_until(
            "the refusal of a wrong token",
            "return !document.getElementById('sign-in-error').hidden",
        )
        .await;
    assert_eq!(
        browser
            .eval("return document.body.innerText.includes('guarded-run')")
            .await,
        json!(false),
        "nothing of the batch is shown before sign-in"
    );

    sign_in(&browser, READER_TOKEN).await;
    browser
        .wait_until(
            "the batch page after sign-in",
            "return document.getElementById('batch')?.dataset.batch === 'guarded-run'",
        )
        .await;
    browser
        .wait_until(
            "live counters with the token",
            "return document.querySelector('[data-field=succeeded]').textContent !== '0'",
        )
        .await;
    browser.open_confirmation("cancel").await;
    browser.click("#confirm [data-confirm-yes]").await;
    browser
        .wait_until(
            "the read-only refusal",
            "return (document.getElementById('flash')?.textContent || '').startsWith('Not allowed')",
        )
        .await;
    assert_ne!(
        client.status(&batch_id).await.unwrap().status.as_str(),
        "CANCELLED",
        "a read-only token cancels nothing"
    );

    // Signing out forgets the token: the sign-in page again, and nothing of the batch.
    browser.click("#sign-out").await;
    browser
        .wait_until(
            "the sign-in page after signing out",
            "return !!document.getElementById('sign-in') \
             && !document.body.innerText.includes('guarded-run')",
        )
        .await;
    sign_in(&browser, WRITER_TOKEN).await;
    browser
        .wait_until(
            "the batch page after sign-in",
            "return document.getElementById('batch')?.dataset.batch === 'guarded-run'",
        )
        .await;
    browser.open_confirmation("cancel").await;
    browser.click("#confirm [data-confirm-yes]").await;
    browser
        .wait_until(
            "CANCELLED",
            "return document.querySelector('#batch [data-field=status]').textContent === 'CANCELLED'",
        )
        .await;
    assert_eq!(
        client.status(&batch_id).await.unwrap().status.as_str(),
        "CANCELLED"
    );
    browser.close().await;
    app.shutdown().await.unwrap();
}
