//! One status request for many jobs: [`BatchedPolls`] wraps a runner whose service answers
//! for many jobs at once (AWS Batch's `DescribeJobs` takes 100) and gathers the polls that
//! arrive within a short window into one call. Chunks submitted together poll together (their
//! waits grow alike), so a server with thousands of jobs in flight asks about them a hundred
//! at a time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::{JobError, JobHandle, JobRunner, JobSpec, JobState, PollRequest};
use crate::domain::ItemId;

/// How long the first poll of a gathering waits for others to join it.
pub(crate) const GATHER_WINDOW: Duration = Duration::from_millis(50);

/// A poll waiting to be sent, and where its answer goes.
struct Waiting {
    handle: JobHandle,
    items: Vec<ItemId>,
    answer: oneshot::Sender<Result<JobState, String>>,
}

/// A runner whose polls are gathered, up to `limit` jobs per call (see the module docs).
pub struct BatchedPolls {
    inner: Arc<dyn JobRunner>,
    limit: usize,
    waiting: Arc<Mutex<Vec<Waiting>>>,
}

impl BatchedPolls {
    /// `inner`'s polls, gathered `limit` jobs to a call at most.
    pub fn new(inner: Arc<dyn JobRunner>, limit: usize) -> Self {
        Self {
            inner,
            limit: limit.max(1),
            waiting: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn lock(waiting: &Mutex<Vec<Waiting>>) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends every poll waiting now, `limit` jobs to a call.
    async fn flush(inner: Arc<dyn JobRunner>, waiting: Arc<Mutex<Vec<Waiting>>>, limit: usize) {
        loop {
            let group: Vec<Waiting> = {
                let mut waiting = Self::lock(&waiting);
                let take = waiting.len().min(limit);
                waiting.drain(..take).collect()
            };
            if group.is_empty() {
                return;
            }
            let requests: Vec<PollRequest<'_>> = group
                .iter()
                .map(|waiting| PollRequest {
                    handle: &waiting.handle,
                    items: &waiting.items,
                })
                .collect();
            let answered = inner.poll(&requests).await;
            drop(requests);
            match answered {
                Ok(states) if states.len() == group.len() => {
                    for (waiting, state) in group.into_iter().zip(states) {
                        let _ = waiting.answer.send(Ok(state));
                    }
                }
                Ok(states) => {
                    let message = format!(
                        "the job service answered {} states for {} jobs",
                        states.len(),
                        group.len()
                    );
                    for waiting in group {
                        let _ = waiting.answer.send(Err(message.clone()));
                    }
                }
                Err(err) => {
                    let message = err.to_string();
                    for waiting in group {
                        let _ = waiting.answer.send(Err(message.clone()));
                    }
                }
            }
        }
    }
}

#[async_trait]
impl JobRunner for BatchedPolls {
    async fn submit(&self, spec: &JobSpec) -> Result<JobHandle, JobError> {
        self.inner.submit(spec).await
    }

    async fn find(&self, name: &str) -> Result<Option<JobHandle>, JobError> {
        self.inner.find(name).await
    }

    async fn poll(&self, jobs: &[PollRequest<'_>]) -> Result<Vec<JobState>, JobError> {
        let mut answers = Vec::with_capacity(jobs.len());
        let starts_gathering = {
            let mut waiting = Self::lock(&self.waiting);
            let was_empty = waiting.is_empty();
            for job in jobs {
                let (answer, answered) = oneshot::channel();
                waiting.push(Waiting {
                    handle: job.handle.clone(),
                    items: job.items.to_vec(),
                    answer,
                });
                answers.push(answered);
            }
            was_empty
        };
        if starts_gathering {
            let (inner, waiting, limit) = (
                Arc::clone(&self.inner),
                Arc::clone(&self.waiting),
                self.limit,
            );
            tokio::spawn(async move {
                tokio::time::sleep(GATHER_WINDOW).await;
                Self::flush(inner, waiting, limit).await;
            });
        }
        let mut states = Vec::with_capacity(answers.len());
        for answered in answers {
            match answered.await {
                Ok(Ok(state)) => states.push(state),
                Ok(Err(message)) => return Err(JobError::Service(message)),
                Err(_) => {
                    return Err(JobError::Service(
                        "the poll was dropped before it was sent".to_owned(),
                    ))
                }
            }
        }
        Ok(states)
    }

    async fn stop(&self, handle: &JobHandle, reason: &str) -> Result<(), JobError> {
        self.inner.stop(handle, reason).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::pipeline::jobs::RunnerKind;

    /// Answers every job RUNNING, counting calls and the largest call.
    #[derive(Default)]
    struct CountingRunner {
        calls: AtomicUsize,
        largest: AtomicUsize,
    }

    #[async_trait]
    impl JobRunner for CountingRunner {
        async fn submit(&self, _spec: &JobSpec) -> Result<JobHandle, JobError> {
            unreachable!("not submitted in these tests")
        }

        async fn find(&self, _name: &str) -> Result<Option<JobHandle>, JobError> {
            Ok(None)
        }

        async fn poll(&self, jobs: &[PollRequest<'_>]) -> Result<Vec<JobState>, JobError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.largest.fetch_max(jobs.len(), Ordering::SeqCst);
            Ok(jobs
                .iter()
                .map(|job| {
                    if job.handle.job_id.ends_with("-lost") {
                        JobState::Lost
                    } else {
                        JobState::Running
                    }
                })
                .collect())
        }

        async fn stop(&self, _handle: &JobHandle, _reason: &str) -> Result<(), JobError> {
            Ok(())
        }
    }

    fn handle(id: String) -> JobHandle {
        JobHandle {
            runner: RunnerKind::AwsBatch,
            name: id.clone(),
            job_id: id,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn polls_arriving_together_share_one_call_of_at_most_the_limit() {
        let counting = Arc::new(CountingRunner::default());
        let batched = Arc::new(BatchedPolls::new(counting.clone(), 100));
        let mut polls = tokio::task::JoinSet::new();
        for index in 0..250 {
            let batched = Arc::clone(&batched);
            polls.spawn(async move {
                let id = if index == 7 {
                    "job-7-lost".to_owned()
                } else {
                    format!("job-{index}")
                };
                let job = handle(id);
                let items = [ItemId::parse("a").unwrap()];
                let state = batched
                    .poll(&[PollRequest {
                        handle: &job,
                        items: &items,
                    }])
                    .await
                    .unwrap();
                (index, state)
            });
        }
        while let Some(joined) = polls.join_next().await {
            let (index, state) = joined.unwrap();
            let expected = if index == 7 {
                JobState::Lost
            } else {
                JobState::Running
            };
            assert_eq!(state, vec![expected], "each poll gets its own job's state");
        }
        assert_eq!(counting.calls.load(Ordering::SeqCst), 3);
        assert_eq!(counting.largest.load(Ordering::SeqCst), 100);
    }
}
