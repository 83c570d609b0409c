//! Following a batch to its end for `watch` and `submit --watch`: a progress bar or a JSON line
//! per snapshot, and new attempts with growing pauses when the server goes away (it stops,
//! restarts, or the connection breaks), within a time budget.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tonic::Code;

use super::{pace, print_batch, Output};
use crate::domain::{Batch, BatchId};
use crate::grpc::client::{AdminClient, BatchWatch, ClientError};

/// First and longest pause before a watch tries to reach a server that went away again.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(500);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(8);

/// Following one batch to its end: a progress bar, or a JSON line per snapshot.
pub(super) struct Watch {
    pub(super) batch_id: BatchId,
    pub(super) output: Output,
    /// How long to keep trying to reach a server that went away before giving up.
    pub(super) reconnect_timeout: Duration,
}

/// Where an attempt to follow the batch was when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Opening the watch: the server was not reached.
    Opening,
    /// Reading snapshots: the server was reached, so the pauses start over.
    Streaming,
}

/// How one attempt to follow the batch ended short of its terminal snapshot.
enum Interrupted {
    /// The server went away (it stopped, restarted, or the connection broke): worth another
    /// attempt.
    ServerAway { stage: Stage, cause: ClientError },
    /// The server ended the stream before the batch ended.
    EndedEarly,
    /// No new attempt can cure this (a batch that does not exist stays so).
    Failed(ClientError),
}

impl Watch {
    /// Follows the batch until its terminal snapshot. When the server goes away (it stops,
    /// restarts, or the connection breaks), says so on stderr and tries again with a growing
    /// pause, for at most `reconnect_timeout` in a row; then fails naming the last error.
    pub(super) async fn run(&self, client: &mut AdminClient) -> anyhow::Result<()> {
        let bar = (self.output == Output::Human).then(progress_bar);
        let mut last = None;
        let mut delays = Backoff::new(self.reconnect_timeout);
        loop {
            let cause = match self.follow(client, bar.as_ref(), &mut last).await {
                Ok(()) => break,
                Err(Interrupted::Failed(err)) => return Err(err.into()),
                Err(Interrupted::EndedEarly) => {
                    delays = Backoff::new(self.reconnect_timeout);
                    anyhow::anyhow!("the server ended the watch before the batch ended")
                }
                Err(Interrupted::ServerAway { stage, cause }) => {
                    if stage == Stage::Streaming {
                        delays = Backoff::new(self.reconnect_timeout);
                    }
                    cause.into()
                }
            };
            let Some(delay) = delays.next() else {
                return Err(cause.context(format!(
                    "gave up watching batch {}: the server stayed unreachable for {}",
                    self.batch_id,
                    humantime::format_duration(self.reconnect_timeout)
                )));
            };
            let notice = format!(
                "lost the server ({cause:#}); trying again in {}",
                humantime::format_duration(delay)
            );
            match &bar {
                Some(bar) => bar.suspend(|| eprintln!("{notice}")),
                None => eprintln!("{notice}"),
            }
            tokio::time::sleep(delay).await;
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
            if let Some(batch) = &last {
                print_summary(batch);
            }
        }
        Ok(())
    }

    /// One attempt: opens a watch and shows each snapshot until the terminal one.
    async fn follow(
        &self,
        client: &mut AdminClient,
        bar: Option<&ProgressBar>,
        last: &mut Option<Batch>,
    ) -> Result<(), Interrupted> {
        let mut stream: BatchWatch = client
            .watch(&self.batch_id)
            .await
            .map_err(|err| interruption(err, Stage::Opening))?;
        loop {
            match stream.next().await {
                Ok(Some(batch)) => {
                    show_progress(&batch, bar);
                    let terminal = batch.status.is_terminal();
                    *last = Some(batch);
                    if terminal {
                        return Ok(());
                    }
                }
                Ok(None) => return Err(Interrupted::EndedEarly),
                Err(err) => return Err(interruption(err, Stage::Streaming)),
            }
        }
    }
}

/// Sorts an error that ended an attempt: the server going away is worth another attempt.
fn interruption(err: ClientError, stage: Stage) -> Interrupted {
    if matches!(err.code(), Code::Unavailable | Code::Cancelled) {
        Interrupted::ServerAway { stage, cause: err }
    } else {
        Interrupted::Failed(err)
    }
}

/// Pauses before new attempts: from [`RECONNECT_FIRST_DELAY`], doubling up to
/// [`RECONNECT_MAX_DELAY`], while their sum stays within the budget.
struct Backoff {
    next: Duration,
    left: Duration,
}

impl Backoff {
    fn new(budget: Duration) -> Self {
        Self {
            next: RECONNECT_FIRST_DELAY,
            left: budget,
        }
    }

    fn next(&mut self) -> Option<Duration> {
        if self.left.is_zero() {
            return None;
        }
        let delay = self.next.min(self.left);
        self.left -= delay;
        self.next = (self.next * 2).min(RECONNECT_MAX_DELAY);
        Some(delay)
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} items {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn show_progress(batch: &Batch, bar: Option<&ProgressBar>) {
    match bar {
        Some(bar) => {
            bar.set_length(batch.total_items);
            bar.set_position(batch.total_items - batch.pending_items());
            bar.set_message(format!(
                "{} ({} failed, {} cancelled) {}",
                batch.status,
                batch.failed_items,
                batch.cancelled_items,
                pace(batch)
            ));
        }
        None => println!("{}", batch.to_json()),
    }
}

fn print_summary(batch: &Batch) {
    print_batch(batch);
    if let Some(done) = batch.completed_at {
        let seconds = (done.0 - batch.created_at.0) as f64 / 1e6;
        println!("took       {seconds:.2}s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnection_pauses_grow_and_stay_within_the_budget() {
        let delays: Vec<Duration> = std::iter::from_fn({
            let mut backoff = Backoff::new(Duration::from_secs(30));
            move || backoff.next()
        })
        .collect();
        let secs: Vec<f64> = delays.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, vec![0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 6.5]);
        assert_eq!(delays.iter().sum::<Duration>(), Duration::from_secs(30));
        assert_eq!(Backoff::new(Duration::ZERO).next(), None);
    }
}
