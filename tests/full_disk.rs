//! A server whose disk fills up mid-batch waits quietly (a few summary lines, not a line per
//! chunk per second) and, once space is freed, finishes the batch with every item counted once.
//!
//! The database lives on a small tmpfs mounted for the test, which needs root (as in CI).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batch_manager::grpc::pb;
use common::*;

const ITEMS: usize = 10_000;
const BATCH_SIZE: u32 = 1;
/// Free space left for the batch's rows and the first chunks' writes.
const SPARE_BYTES: u64 = 4 << 20;
/// How long the log is watched while the disk is full.
const FULL_DISK_WATCH: Duration = Duration::from_secs(8);
/// Most ERROR or WARN lines allowed over that time (two per waiting chunk per second before).
const MOST_LINES_WHILE_FULL: usize = 8;

/// A tmpfs of a few megabytes, unmounted on drop.
struct SmallDisk {
    _directory: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Self {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().to_path_buf();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {megabytes} MB tmpfs failed ({status}); this test needs root"
        );
        Self {
            _directory: directory,
            path,
        }
    }

    /// Writes a file until the disk is full, then gives `spare` bytes back.
    fn fill_leaving(&self, spare: u64) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create filler");
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let length = file.metadata().expect("filler size").len();
        file.set_len(length.saturating_sub(spare))
            .expect("shrink filler");
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// `batch-manager serve` with its log lines kept.
struct LoggedServer {
    child: Child,
    grpc_addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl LoggedServer {
    fn start(db: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_batch-manager"))
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .arg("--db")
            .arg(db)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn batch-manager serve");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let grpc_addr = loop {
            let found = lines.lock().unwrap().iter().find_map(|line| {
                let start = line.find("grpc_addr=")? + "grpc_addr=".len();
                line[start..].split_whitespace().next()?.parse().ok()
            });
            if let Some(addr) = found {
                break addr;
            }
            assert!(
                Instant::now() < deadline,
                "the server never said where it listens"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            grpc_addr,
            lines,
        }
    }

    fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// ERROR and WARN lines from the `from`-th line on.
    fn complaints_since(&self, from: usize) -> Vec<String> {
        self.lines.lock().unwrap()[from..]
            .iter()
            .filter(|line| line.contains("ERROR") || line.contains("WARN"))
            .cloned()
            .collect()
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_the_batch_quietly_and_it_completes_once_space_is_freed() {
    let disk = SmallDisk::mount(96);
    let server = LoggedServer::start(&disk.path.join("full.db"));
    let mut client = connect(server.grpc_addr).await;
    // Room for the batch, not for processing it: writes fail once the database's log needs
    // a page the disk no longer has.
    let filler = disk.fill_leaving(SPARE_BYTES);
    let ids = uuids(ITEMS);
    client
        .submit_batch(submit_request("full-disk", ids.clone(), BATCH_SIZE))
        .await
        .expect("SubmitBatch");

    let deadline = Instant::now() + BATCH_DEADLINE;
    let stalled_at = loop {
        let lines = server.line_count();
        let complaints = server.complaints_since(0);
        if complaints
            .iter()
            .any(|line| line.contains("journal writes failing"))
        {
            break lines;
        }
        let batch = fetch_status(&mut client, "full-disk").await;
        assert!(
            batch.completed_chunks < batch.total_chunks,
            "the batch finished before the disk filled up; the test proves nothing: {batch:?}"
        );
        assert!(
            Instant::now() < deadline,
            "writes never failed on the full disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(FULL_DISK_WATCH).await;
    let stalled = fetch_status(&mut client, "full-disk").await;
    assert!(
        stalled.completed_chunks < stalled.total_chunks,
        "{stalled:?}"
    );
    let complaints = server.complaints_since(stalled_at);
    assert!(
        complaints.len() <= MOST_LINES_WHILE_FULL,
        "{} complaints in {FULL_DISK_WATCH:?} on a full disk:\n{}",
        complaints.len(),
        complaints.join("\n")
    );

    std::fs::remove_file(filler).expect("free space");
    let batch = wait_terminal(&mut client, "full-disk").await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed, "{batch:?}");
    assert_eq!(batch.succeeded_items, ITEMS as u64);
    assert_eq!(batch.failed_items, 0);
    assert_eq!(batch.pending_items, 0);
    assert_eq!(batch.completed_chunks, batch.total_chunks);
    let items = all_items(&mut client, "full-disk", pb::ItemStatus::Succeeded).await;
    let listed: Vec<String> = items.into_iter().map(|item| item.item_id).collect();
    assert_eq!(listed, ids, "every item succeeded exactly once, in order");
}
