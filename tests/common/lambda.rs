//! The Lambda side of the tests: a Runtime API emulator on loopback, the real `batch-manager`
//! binary running under it in one of its roles, and a stack on moto (the two DynamoDB tables
//! and a Step Functions state machine with the shipped definition) for the functions to use.
//!
//! The emulator implements what a runtime calls: `GET .../invocation/next` (a long poll that
//! hands out queued events), `POST .../invocation/{id}/response`, `POST .../invocation/{id}/error`
//! and `POST .../init/error`. One emulator serves one function process, as Lambda does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use async_trait::async_trait;
use batch_manager::domain::Timestamp;
use batch_manager::engine::local::asl::{
    ExecutionContext, StateMachine, Step, TaskFailure, TaskInvoker,
};
use batch_manager::engine::STATE_MACHINE_DEFINITION;
use serde_json::json;

use super::moto;

/// Longest a test waits for one invocation's answer.
pub(crate) const INVOKE_DEADLINE: Duration = Duration::from_secs(60);
/// Longest a test waits for a function to reach its first poll, report an init error, or exit.
pub(crate) const START_DEADLINE: Duration = Duration::from_secs(20);

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";

/// An error a function reported, as the Runtime API receives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FunctionError {
    pub error_type: String,
    pub error_message: String,
}

type Outcome = Result<Value, FunctionError>;

struct Invocation {
    request_id: String,
    event: Value,
}

struct ApiState {
    function_arn: String,
    queue: mpsc::UnboundedSender<Invocation>,
    next: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_error: watch::Sender<Option<FunctionError>>,
    first_poll: watch::Sender<Option<Instant>>,
}

/// A Runtime API emulator on 127.0.0.1, port chosen by the system.
pub(crate) struct RuntimeApi {
    pub addr: SocketAddr,
    state: Arc<ApiState>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    pub(crate) async fn start(function_name: &str) -> Self {
        let (queue, next) = mpsc::unbounded_channel();
        let state = Arc::new(ApiState {
            function_arn: format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"),
            queue,
            next: tokio::sync::Mutex::new(next),
            waiting: Mutex::new(HashMap::new()),
            init_error: watch::channel(None).0,
            first_poll: watch::channel(None).0,
        });
        let router = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(invocation_response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Runtime API emulator");
        let addr = listener.local_addr().expect("emulator address");
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("emulator serves");
        });
        Self {
            addr,
            state,
            server,
        }
    }

    /// Queues `event` for the function and waits for its response or error.
    pub(crate) async fn invoke(&self, event: Value) -> Result<Value, FunctionError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let (answer, answered) = oneshot::channel();
        self.state
            .waiting
            .lock()
            .unwrap()
            .insert(request_id.clone(), answer);
        self.state
            .queue
            .send(Invocation { request_id, event })
            .unwrap_or_else(|_| panic!("the emulator stopped"));
        tokio::time::timeout(INVOKE_DEADLINE, answered)
            .await
            .expect("the function answers in time")
            .expect("the emulator keeps the answer")
    }

    /// The error the function reported at init, once it does (None if not within `deadline`).
    pub(crate) async fn init_error(&self, deadline: Duration) -> Option<FunctionError> {
        let mut reported = self.state.init_error.subscribe();
        let waited = tokio::time::timeout(deadline, reported.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(error)) => error.clone(),
            _ => None,
        }
    }

    /// When the function first asked for an event (None if not within `deadline`).
    pub(crate) async fn first_poll(&self, deadline: Duration) -> Option<Instant> {
        let mut polled = self.state.first_poll.subscribe();
        let waited = tokio::time::timeout(deadline, polled.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(at)) => *at,
            _ => None,
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn next_invocation(State(state): State<Arc<ApiState>>) -> Response {
    state.first_poll.send_if_modified(|first| {
        if first.is_none() {
            *first = Some(Instant::now());
            true
        } else {
            false
        }
    });
    let Some(invocation) = state.next.lock().await.recv().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        + INVOKE_DEADLINE;
    let trace_id = format!(
        "Root=1-{:08x}-{};Parent={};Sampled=0",
        deadline.as_secs(),
        &uuid::Uuid::new_v4().simple().to_string()[..24],
        &uuid::Uuid::new_v4().simple().to_string()[..16],
    );
    (
        [
            ("lambda-runtime-aws-request-id", invocation.request_id),
            (
                "lambda-runtime-deadline-ms",
                deadline.as_millis().to_string(),
            ),
            (
                "lambda-runtime-invoked-function-arn",
                state.function_arn.clone(),
            ),
            ("lambda-runtime-trace-id", trace_id),
            ("content-type", "application/json".to_owned()),
        ],
        invocation.event.to_string(),
    )
        .into_response()
}

fn answer(state: &ApiState, request_id: &str, outcome: Outcome) -> StatusCode {
    match state.waiting.lock().unwrap().remove(request_id) {
        Some(waiter) => {
            let _ = waiter.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn invocation_response(
    State(state): State<Arc<ApiState>>,
    Path(request_id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let outcome = serde_json::from_slice(&body).unwrap_or_else(|err| {
        panic!(
            "the response is not JSON ({err}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    answer(&state, &request_id, Ok(outcome))
}

fn reported_error(headers: &HeaderMap, body: &[u8]) -> FunctionError {
    serde_json::from_slice(body).unwrap_or_else(|_| FunctionError {
        error_type: headers
            .get("lambda-runtime-function-error-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("Unknown")
            .to_owned(),
        error_message: String::from_utf8_lossy(body).into_owned(),
    })
}

async fn invocation_error(
    State(state): State<Arc<ApiState>>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let error = reported_error(&headers, &body);
    answer(&state, &request_id, Err(error))
}

async fn init_error(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let error = reported_error(&headers, &body);
    state.init_error.send_replace(Some(error));
    StatusCode::ACCEPTED
}

/// The binary the tests run: `BATCH_MANAGER_BIN` when set (e.g. a release build), else the
/// build under test.
pub(crate) fn binary() -> String {
    std::env::var("BATCH_MANAGER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_batch-manager").to_owned())
}

/// A function process under its own Runtime API emulator.
pub(crate) struct LambdaFunction {
    pub api: RuntimeApi,
    /// Just before the process was spawned.
    pub started_at: Instant,
    child: Child,
    logs: Arc<Mutex<String>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl LambdaFunction {
    /// Starts the binary with only `vars` (plus what Lambda itself sets) in its environment, as
    /// on Lambda; `handler` is the Handler property (`_HANDLER`), if any.
    pub(crate) async fn start(handler: Option<&str>, vars: &[(String, String)]) -> Self {
        let function_name = format!("batch-manager-{}", handler.unwrap_or("unset"));
        let api = RuntimeApi::start(&function_name).await;
        let mut command = Command::new(binary());
        command
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &function_name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("RUST_LOG", "info")
            .envs(vars.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(handler) = handler {
            command.env("_HANDLER", handler);
        }
        let started_at = Instant::now();
        let mut child = command.spawn().expect("spawn batch-manager");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            use std::io::{BufRead, BufReader};
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let out_sink = Arc::clone(&stdout);
        std::thread::spawn(move || {
            use std::io::{BufRead, BufReader};
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                out_sink.lock().unwrap().push(line);
            }
        });
        Self {
            api,
            started_at,
            child,
            logs,
            stdout,
        }
    }

    pub(crate) async fn invoke(&self, event: Value) -> Result<Value, FunctionError> {
        self.api.invoke(event).await
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the function has written to stderr so far.
    pub(crate) fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The function's stderr once it contains `needle`, or as it stands after `deadline`
    /// (stderr is collected by a thread, so a line may land just after the response).
    pub(crate) async fn logs_containing(&self, needle: &str, deadline: Duration) -> String {
        let until = Instant::now() + deadline;
        loop {
            let logs = self.logs();
            if logs.contains(needle) || Instant::now() >= until {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The lines the function has written to stdout (its metrics) once there are at least
    /// `count`, or as they stand after `deadline`.
    pub(crate) async fn stdout_lines(&self, count: usize, deadline: Duration) -> Vec<String> {
        let until = Instant::now() + deadline;
        loop {
            let lines = self.stdout.lock().unwrap().clone();
            if lines.len() >= count || Instant::now() >= until {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the process to exit (None if it is still running after `deadline`).
    pub(crate) async fn exit_status(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LambdaFunction {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Lambda ARNs the test state machine's Task states name.
pub(crate) fn function_arn(role: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:batch-manager-{role}")
}

/// The definition's substitutions, as the stack template sets them.
pub(crate) fn definition_substitutions() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        ("Task1FunctionArn".to_owned(), function_arn("task1")),
        ("Task2FunctionArn".to_owned(), function_arn("task2")),
        ("UpdateFunctionArn".to_owned(), function_arn("update")),
    ])
}

/// A stack on moto: both tables and a state machine with the shipped definition. moto stores
/// the executions the init function starts but does not run them; the tests play Step
/// Functions.
pub(crate) struct MotoStack {
    pub endpoint: String,
    pub sdk_config: aws_config::SdkConfig,
    pub batch_table: String,
    pub request_table: String,
    pub state_machine_arn: String,
    /// The request table's stream, delivered to `init` as the stack's mapping would.
    pub stream: super::stream::StreamPoller,
}

impl MotoStack {
    pub(crate) async fn deploy(prefix: &str) -> Self {
        Self::deploy_on(moto::moto_endpoint().await, prefix).await
    }

    /// As [`Self::deploy`], on the moto server at `endpoint`.
    pub(crate) async fn deploy_on(endpoint: String, prefix: &str) -> Self {
        let sdk_config = moto::sdk_config(&endpoint).await;
        let (batch_table, request_table) = moto::table_names(prefix);
        moto::create_tables(
            &aws_sdk_dynamodb::Client::new(&sdk_config),
            &batch_table,
            &request_table,
        )
        .await;
        let mut definition = batch_manager::engine::STATE_MACHINE_DEFINITION.to_owned();
        for (name, value) in definition_substitutions() {
            definition = definition.replace(&format!("${{{name}}}"), &value);
        }
        let state_machine_arn = aws_sdk_sfn::Client::new(&sdk_config)
            .create_state_machine()
            .name(format!("{batch_table}-chunks"))
            .definition(definition)
            .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/batch-manager-chunks"))
            .r#type(aws_sdk_sfn::types::StateMachineType::Standard)
            .send()
            .await
            .expect("create the state machine")
            .state_machine_arn;
        let stream = super::stream::StreamPoller::new(&sdk_config, &request_table).await;
        Self {
            endpoint,
            sdk_config,
            batch_table,
            request_table,
            state_machine_arn,
            stream,
        }
    }

    /// A function's environment, as the stack template sets it, plus moto's endpoint and
    /// credentials.
    pub(crate) fn function_env(&self) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = moto::aws_env(&self.endpoint)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        vars.push(("BATCH_TABLE".to_owned(), self.batch_table.clone()));
        vars.push(("REQUEST_TABLE".to_owned(), self.request_table.clone()));
        vars.push((
            "STATE_MACHINE_ARN".to_owned(),
            self.state_machine_arn.clone(),
        ));
        vars
    }

    /// Starts the binary in `role` against this stack and waits for its first poll.
    pub(crate) async fn function(&self, role: &str) -> LambdaFunction {
        self.function_with(role, &[]).await
    }

    /// As [`Self::function`], with `extra` in the function's environment.
    pub(crate) async fn function_with(
        &self,
        role: &str,
        extra: &[(String, String)],
    ) -> LambdaFunction {
        let mut vars = self.function_env();
        vars.extend(extra.iter().cloned());
        let function = LambdaFunction::start(Some(role), &vars).await;
        assert!(
            function.api.first_poll(START_DEADLINE).await.is_some(),
            "the {role} function did not start: {}",
            function.logs()
        );
        function
    }

    /// The stack's settings, as `serve --backend aws` reads them.
    pub(crate) fn aws_settings(&self) -> batch_manager::config::AwsSettings {
        batch_manager::config::AwsSettings {
            tables: batch_manager::store::dynamo::DynamoTables {
                batch_table: self.batch_table.clone(),
                request_table: self.request_table.clone(),
            },
            state_machine_arn: self.state_machine_arn.clone(),
        }
    }

    /// The store on this stack's tables.
    /// The admin service on this stack (`serve --backend aws`), on loopback ports, reading
    /// items objects from no bucket.
    pub(crate) async fn serve(&self) -> batch_manager::app::AwsApp {
        let loopback: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
        batch_manager::app::AwsApp::spawn(
            batch_manager::app::AwsConfig {
                grpc_addr: loopback,
                http_addr: loopback,
                stack: self.aws_settings(),
                connections: batch_manager::config::ConnectionConfig::default(),
                jobs: batch_manager::app::JobConfig::default(),
                items_buckets: batch_manager::items_uri::s3::BucketPolicy::only_listed(""),
                access: Default::default(),
            },
            &self.sdk_config,
        )
        .await
        .expect("the server starts")
    }

    pub(crate) fn store(&self) -> batch_manager::store::dynamo::DynamoStore {
        batch_manager::store::dynamo::DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&self.sdk_config),
            batch_manager::store::dynamo::DynamoTables {
                batch_table: self.batch_table.clone(),
                request_table: self.request_table.clone(),
            },
        )
    }

    pub(crate) fn sfn(&self) -> aws_sdk_sfn::Client {
        aws_sdk_sfn::Client::new(&self.sdk_config)
    }

    /// Delivers the request table's new stream records to `init`, which starts chunks;
    /// how many records it delivered.
    pub(crate) async fn deliver_stream(&self, init: &LambdaFunction) -> usize {
        self.stream.deliver(init).await
    }

    /// The names of the executions started so far, every page.
    pub(crate) async fn execution_names(&self) -> Vec<String> {
        let sfn = self.sfn();
        let mut names = Vec::new();
        let mut next_token = None;
        loop {
            let listed = sfn
                .list_executions()
                .state_machine_arn(&self.state_machine_arn)
                .max_results(1000)
                .set_next_token(next_token)
                .send()
                .await
                .expect("ListExecutions");
            names.extend(listed.executions().iter().map(|e| e.name().to_owned()));
            next_token = listed.next_token;
            if next_token.is_none() {
                return names;
            }
        }
    }

    /// The executions started so far: name and parsed input, by name.
    pub(crate) async fn executions(&self) -> Vec<(String, Value)> {
        let sfn = self.sfn();
        let listed = sfn
            .list_executions()
            .state_machine_arn(&self.state_machine_arn)
            .max_results(1000)
            .send()
            .await
            .expect("ListExecutions");
        let mut executions = Vec::new();
        for execution in listed.executions() {
            let described = sfn
                .describe_execution()
                .execution_arn(execution.execution_arn())
                .send()
                .await
                .expect("DescribeExecution");
            let input = serde_json::from_str(described.input().expect("execution input"))
                .expect("execution input is JSON");
            executions.push((execution.name().to_owned(), input));
        }
        executions.sort_by(|a, b| a.0.cmp(&b.0));
        executions
    }
}

/// The three chunk functions, each its own process, as deployed.
pub(crate) struct ChunkFunctions {
    pub task1: LambdaFunction,
    pub task2: LambdaFunction,
    pub update: LambdaFunction,
}

impl ChunkFunctions {
    pub(crate) async fn start(stack: &MotoStack) -> Self {
        Self::start_with(stack, &[]).await
    }

    /// The three functions with `extra` in their environment besides the stack's.
    pub(crate) async fn start_with(stack: &MotoStack, extra: &[(String, String)]) -> Self {
        let (task1, task2, update) = tokio::join!(
            stack.function_with("task1", extra),
            stack.function_with("task2", extra),
            stack.function_with("update", extra),
        );
        Self {
            task1,
            task2,
            update,
        }
    }
}

/// Step Functions' side of a Lambda Task state: the function's error becomes the state's
/// error, with the error object as JSON in the cause, as Step Functions reports it.
#[async_trait]
impl TaskInvoker for ChunkFunctions {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskFailure> {
        let function = if resource == function_arn("task1") {
            &self.task1
        } else if resource == function_arn("task2") {
            &self.task2
        } else if resource == function_arn("update") {
            &self.update
        } else {
            panic!("the definition names an unknown resource {resource}");
        };
        function.invoke(input).await.map_err(|err| TaskFailure {
            cause: json!({"errorMessage": err.error_message, "errorType": err.error_type})
                .to_string(),
            error: err.error_type,
        })
    }
}

/// Runs one execution through the definition to its end, sleeping where it says to.
pub(crate) async fn play_execution(
    machine: &StateMachine,
    tasks: &dyn TaskInvoker,
    name: &str,
    input: Value,
) -> Step {
    let context = ExecutionContext::new(
        name,
        input.clone(),
        Timestamp::now().to_rfc3339(),
        "batch-manager-chunks",
    );
    let mut cursor = machine.start(input);
    loop {
        match machine.step(cursor, &context, tasks).await {
            Step::Continue(next) => cursor = next,
            Step::Sleep { duration, then } => {
                tokio::time::sleep(duration).await;
                cursor = then;
            }
            end => return end,
        }
    }
}

/// Plays every execution `init` starts until no more start: delivers the request table's
/// stream to `init` (which starts chunks within each batch's slots), plays the executions it
/// started, in order of name, and again, as their recorded chunks free slots. Returns how
/// each execution ended.
pub(crate) async fn play_all_executions(
    stack: &MotoStack,
    init: &LambdaFunction,
    functions: &ChunkFunctions,
) -> Vec<Step> {
    let machine = StateMachine::from_json(STATE_MACHINE_DEFINITION, &definition_substitutions())
        .expect("the shipped definition parses");
    let mut played = std::collections::HashSet::new();
    let mut ends = Vec::new();
    loop {
        stack.deliver_stream(init).await;
        let fresh: Vec<(String, Value)> = stack
            .executions()
            .await
            .into_iter()
            .filter(|(name, _)| !played.contains(name))
            .collect();
        if fresh.is_empty() {
            return ends;
        }
        for (name, input) in fresh {
            ends.push(play_execution(&machine, functions, &name, input).await);
            played.insert(name);
        }
    }
}

/// What [`run_to_end`] saw each round: the batch's executions started so far and its chunks
/// recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Round {
    pub started: u64,
    pub recorded: u64,
}

impl Round {
    /// Chunk executions started and not yet recorded. The batch is read before the executions
    /// are listed, and recorded chunks only grow, so this never undercounts.
    pub(crate) fn in_flight(&self) -> u64 {
        self.started.saturating_sub(self.recorded)
    }
}

/// Plays a batch's chunk executions concurrently as `init` starts them (the request table's
/// stream delivered to it every round, as the stack's mapping would) until the batch ends.
/// Each played execution is stopped in moto, so only unplayed ones are listed as RUNNING.
/// Executions of other batches on the stack are played too, and not counted.
/// `each_round` sees every round's counts; returns the batch as it ended.
pub(crate) async fn run_to_end(
    stack: &MotoStack,
    init: &LambdaFunction,
    functions: Arc<ChunkFunctions>,
    batch_id: &batch_manager::domain::BatchId,
    deadline: Duration,
    mut each_round: impl FnMut(Round),
) -> batch_manager::domain::Batch {
    use batch_manager::store::BatchStore;
    let machine = Arc::new(
        StateMachine::from_json(STATE_MACHINE_DEFINITION, &definition_substitutions())
            .expect("the shipped definition parses"),
    );
    let store = stack.store();
    let sfn = stack.sfn();
    let mut seen = std::collections::HashSet::new();
    // Execution names end in `-<chunk>`; the rest names the batch.
    let own_prefix = batch_manager::engine::stepfunctions::execution_name(batch_id, 0)
        .trim_end_matches('0')
        .to_owned();
    let mut started_own = 0u64;
    let mut plays = tokio::task::JoinSet::new();
    let until = Instant::now() + deadline;
    loop {
        assert!(
            Instant::now() < until,
            "the batch {batch_id} did not end in time"
        );
        stack.deliver_stream(init).await;
        let batch = store
            .get_batch(batch_id)
            .await
            .expect("GetBatch")
            .expect("the batch is stored");
        let mut next_token = None;
        loop {
            let listed = sfn
                .list_executions()
                .state_machine_arn(&stack.state_machine_arn)
                .status_filter(aws_sdk_sfn::types::ExecutionStatus::Running)
                .max_results(1000)
                .set_next_token(next_token)
                .send()
                .await
                .expect("ListExecutions");
            for execution in listed.executions() {
                let arn = execution.execution_arn().to_owned();
                if !seen.insert(arn.clone()) {
                    continue;
                }
                let (machine, functions, sfn) =
                    (Arc::clone(&machine), Arc::clone(&functions), sfn.clone());
                let name = execution.name().to_owned();
                if name.starts_with(&own_prefix) {
                    started_own += 1;
                }
                plays.spawn(async move {
                    let described = sfn
                        .describe_execution()
                        .execution_arn(&arn)
                        .send()
                        .await
                        .expect("DescribeExecution");
                    let input: Value =
                        serde_json::from_str(described.input().expect("input")).expect("JSON");
                    let end = play_execution(&machine, functions.as_ref(), &name, input).await;
                    assert!(matches!(end, Step::Succeeded(_)), "{name}: {end:?}");
                    sfn.stop_execution()
                        .execution_arn(&arn)
                        .send()
                        .await
                        .expect("StopExecution");
                });
            }
            next_token = listed.next_token;
            if next_token.is_none() {
                break;
            }
        }
        each_round(Round {
            started: started_own,
            recorded: batch.completed_chunks,
        });
        if batch.status.is_terminal() && batch.completed_chunks == batch.total_chunks {
            while let Some(played) = plays.join_next().await {
                played.expect("an execution played to its end");
            }
            return batch;
        }
        while let Some(played) = plays.try_join_next() {
            played.expect("an execution played to its end");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A JSON fixture of `tests/fixtures/`.
pub(crate) fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// Status and parsed JSON body of an API Gateway proxy response.
pub(crate) fn http_reply(response: Result<Value, FunctionError>) -> (u64, Value) {
    let response = response.expect("init answers API Gateway events");
    let status = response["statusCode"].as_u64().expect("statusCode");
    let body = serde_json::from_str(response["body"].as_str().expect("body is text"))
        .expect("body is JSON");
    (status, body)
}
