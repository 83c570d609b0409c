//! The real `batch-manager` binary as a child process, for tests that kill it, signal it, or
//! start it under a lowered open-file limit.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A `batch-manager serve` child process.
pub(crate) struct ServerProcess {
    pub child: Child,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// The address logged as `key=ADDR` (text logs) or `"key":"ADDR"` (JSON logs).
fn address_after(line: &str, key: &str) -> Option<SocketAddr> {
    let text_key = format!("{key}=");
    let json_key = format!("\"{key}\":\"");
    if let Some(start) = line.find(&text_key) {
        let rest = &line[start + text_key.len()..];
        return rest.split_whitespace().next()?.parse().ok();
    }
    let start = line.find(&json_key)? + json_key.len();
    line[start..].split('"').next()?.parse().ok()
}

/// How to start a server beyond its database.
#[derive(Debug, Default, Clone)]
pub(crate) struct Launch<'a> {
    /// Extra `serve` flags.
    pub args: &'a [&'a str],
    /// Soft and hard open-file limit to start the server under.
    pub open_file_limit: Option<u64>,
    /// Soft open-file limit only (the hard one unchanged) to start the server under.
    pub soft_open_file_limit: Option<u64>,
    /// Extra environment variables (e.g. an AWS endpoint).
    pub env: &'a [(&'a str, String)],
}

impl ServerProcess {
    /// Starts `serve` on loopback port 0 with the given database, and waits until it listens.
    pub(crate) fn start(db: &Path) -> Self {
        Self::start_with(db, Launch::default())
    }

    /// Starts `serve` as [`Self::start`] does, with extra flags or a lowered open-file limit.
    pub(crate) fn start_with(db: &Path, launch: Launch<'_>) -> Self {
        let binary = env!("CARGO_BIN_EXE_batch-manager");
        let ulimit = match (launch.open_file_limit, launch.soft_open_file_limit) {
            (Some(limit), _) => Some(format!("ulimit -n {limit}")),
            (None, Some(soft)) => Some(format!("ulimit -S -n {soft}")),
            (None, None) => None,
        };
        let mut command = match ulimit {
            Some(ulimit) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("{ulimit} && exec \"$0\" \"$@\""))
                    .arg(binary);
                shell
            }
            None => Command::new(binary),
        };
        command
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--db",
            ])
            .arg(db)
            .args(launch.args)
            .env("RUST_LOG", "info")
            .envs(launch.env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn batch-manager serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, addresses) = mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let (Some(grpc), Some(http)) = (
                        address_after(&line, "grpc_addr"),
                        address_after(&line, "http_addr"),
                    ) {
                        let _ = found.send((grpc, http));
                        sent = true;
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (grpc_addr, http_addr) = addresses
            .recv_timeout(Duration::from_secs(30))
            .expect("the server reports its addresses");
        Self {
            child,
            grpc_addr,
            http_addr,
            log,
        }
    }

    /// The lines the server logged so far.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: no shutdown code runs.
    pub(crate) fn kill_hard(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// Sends SIGTERM and returns at once.
    pub(crate) fn signal_terminate(&self) {
        self.signal("-TERM");
    }

    /// Sends SIGHUP and returns at once.
    #[allow(dead_code)]
    pub(crate) fn signal_hangup(&self) {
        self.signal("-HUP");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("send a signal");
    }

    /// The exit status, once the process exited within `limit`; None if it is still running.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        self.signal_terminate();
        match self.wait_exit(Duration::from_secs(30)) {
            Some(status) => status,
            None => {
                self.child.kill().expect("kill");
                panic!("the server did not stop within 30 s of SIGTERM");
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the process runs (a zombie, dead but not yet reaped, does not).
pub(crate) fn is_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Runs the CLI against `server`: whether it succeeded, its stdout and its stderr.
pub(crate) fn run_cli(server: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_batch-manager"))
        .args(args)
        .env("BATCH_MANAGER_SERVER", server)
        .output()
        .expect("run batch-manager");
    (
        output.status.success(),
        String::from_utf8(output.stdout).expect("UTF-8"),
        String::from_utf8(output.stderr).expect("UTF-8"),
    )
}

/// [`run_cli`] on a blocking thread.
pub(crate) async fn cli(server: &str, args: &[&str]) -> (bool, String, String) {
    let server = server.to_owned();
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&server, &args)
    })
    .await
    .expect("the CLI ran")
}
