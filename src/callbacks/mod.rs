//! Completion callbacks: delivering each outbox record (one per terminal transition of a
//! batch, see [`crate::store::outbox`]) as a signed HTTP POST to the batch's callback URL and,
//! on AWS, as a `Batch Finished` event on the default EventBridge bus.
//!
//! A delivery is claimed in the store before it is attempted (one attempt per claim, whoever
//! runs it), and within a process only one attempt per record is in flight. A 2xx answer
//! delivers it; anything else, or no answer within the timeout, is retried on the
//! [`RetrySchedule`] until its window closes. The receiver tells repeats apart by the delivery
//! ID, the same on every attempt of a transition. `serve` runs [`Deliverer::run`]; the `init`
//! Lambda delivers a record when its stream record arrives and sweeps due ones on its schedule.

mod body;
mod destination;

pub use self::destination::AllowedHosts;
pub mod events;
mod http;
mod retry;
mod signing;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

pub use self::body::body;
pub use self::events::EventSink;
pub use self::http::{Sender, DELIVERY_HEADER, SIGNATURE_HEADER};
pub use self::retry::RetrySchedule;
pub use self::signing::{delivery_id, SecretTooShort, SigningSecret, MIN_SECRET_BYTES};
use crate::domain::Timestamp;
use crate::store::{AttemptResult, Delivery, DeliveryKey, OutboxStore, StoreError};

/// Records read per sweep of due deliveries, all attempted at once: a sweep that waits for
/// its attempts (the Lambda schedule) takes at most one attempt's time.
const SWEEP_BATCH: usize = 64;

/// How callbacks are delivered.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    /// The secret callbacks are signed with; without it no part may name a callback URL.
    pub secret: Option<SigningSecret>,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// When failed attempts are retried, and until when.
    pub retry: RetrySchedule,
    /// How often `serve` looks for due deliveries.
    pub poll: Duration,
    /// Whether every batch's end gets an outbox record, for its completion event (a server
    /// on a stack whose `CompletionNotification` includes EventBridge).
    pub completion_events: bool,
    /// Whether callbacks may go to private and link-local addresses (by default only public
    /// and loopback ones).
    pub allow_private_networks: bool,
    /// The hosts a batch's callback URL may name (any when unset).
    pub allowed_hosts: AllowedHosts,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        Self {
            secret: None,
            timeout: Duration::from_secs(10),
            retry: RetrySchedule::default(),
            poll: Duration::from_secs(1),
            completion_events: false,
            allow_private_networks: false,
            allowed_hosts: AllowedHosts::default(),
        }
    }
}

/// Delivers outbox records. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn OutboxStore>,
    settings: CallbackSettings,
    sender: Sender,
    events: Option<EventSink>,
    in_flight: Mutex<HashSet<DeliveryKey>>,
}

/// Leaves the in-flight set when the attempt ends, however it ends.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<DeliveryKey>>,
    key: DeliveryKey,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl Deliverer {
    /// A deliverer over `store`'s outbox.
    pub fn new(store: Arc<dyn OutboxStore>, settings: CallbackSettings) -> Self {
        let sender = Sender::new(settings.timeout, settings.allow_private_networks);
        Self {
            inner: Arc::new(Inner {
                store,
                settings,
                sender,
                events: None,
                in_flight: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// This deliverer, also putting each record as a completion event.
    pub fn with_events(self, events: EventSink) -> Self {
        let inner = Arc::into_inner(self.inner).expect("events are added before any clone");
        Self {
            inner: Arc::new(Inner {
                events: Some(events),
                ..inner
            }),
        }
    }

    /// How long a claim keeps others off a record: past the longest an attempt takes (the
    /// event, then the POST, each within the timeout).
    fn lease(&self) -> Duration {
        self.inner.settings.timeout * 2 + Duration::from_secs(1)
    }

    /// Makes one attempt at `read` if it is still due and no one else claimed it.
    pub async fn attempt(&self, read: &Delivery) -> Result<(), StoreError> {
        let inner = &self.inner;
        {
            let mut in_flight = inner.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if !in_flight.insert(read.key.clone()) {
                return Ok(());
            }
        }
        let _in_flight = InFlight {
            set: &inner.in_flight,
            key: read.key.clone(),
        };
        let now = Timestamp::now();
        let lease_until = Timestamp(now.0 + self.lease().as_micros() as i64);
        if !inner.store.claim_delivery(read, now, lease_until).await? {
            return Ok(());
        }
        let attempt = read.attempts + 1;
        let id = delivery_id(&read.key);
        let body = body(&read.batch, &id);
        let mut failure = None;
        if let (false, Some(events)) = (read.event_sent, &inner.events) {
            match tokio::time::timeout(inner.settings.timeout, events.put(&body)).await {
                Ok(Ok(())) => inner.store.mark_event_sent(&read.key).await?,
                Ok(Err(error)) => failure = Some(format!("event: {error}")),
                Err(_) => failure = Some("event: timed out".to_owned()),
            }
        }
        if let Some(url) = &read.batch.callback.url {
            let posted = match &inner.settings.secret {
                Some(secret) => {
                    let signature = secret.signature(&body);
                    inner
                        .sender
                        .post(http::Post {
                            url: url.as_str(),
                            body,
                            signature,
                            delivery_id: &id,
                        })
                        .await
                }
                None => Err("no signing secret is configured".to_owned()),
            };
            if let Err(error) = posted {
                failure = Some(error);
            }
        }
        let result = match failure {
            None => AttemptResult::Delivered,
            Some(error) => {
                match inner
                    .settings
                    .retry
                    .next(read.key.completed_at, attempt, Timestamp::now())
                {
                    Some(due_at) => AttemptResult::Retry { due_at, error },
                    None => AttemptResult::GaveUp { error },
                }
            }
        };
        match &result {
            AttemptResult::Delivered => {
                tracing::info!(batch_id = %read.key.batch_id, delivery_id = %id, attempt, "completion callback delivered")
            }
            AttemptResult::Retry { error, .. } => {
                tracing::warn!(batch_id = %read.key.batch_id, delivery_id = %id, attempt, error = %error, "completion callback failed; retrying later")
            }
            AttemptResult::GaveUp { error } => {
                tracing::error!(batch_id = %read.key.batch_id, delivery_id = %id, attempt, error = %error, "completion callback failed; giving up")
            }
        }
        inner
            .store
            .finish_attempt(&read.key, attempt, &result)
            .await
    }

    /// Attempts the record `key` now if it is due (its stream record arrived, on AWS).
    pub async fn attempt_key(&self, key: &DeliveryKey) -> Result<(), StoreError> {
        match self.inner.store.load_delivery(key).await? {
            Some(delivery) => self.attempt(&delivery).await,
            None => Ok(()),
        }
    }

    /// Attempts every due record, waiting for the attempts; how many were due.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        let due = self
            .inner
            .store
            .due_deliveries(Timestamp::now(), SWEEP_BATCH)
            .await?;
        let count = due.len();
        let failures = futures::stream::iter(due)
            .map(|delivery| async move { self.attempt(&delivery).await })
            .buffer_unordered(SWEEP_BATCH)
            .filter_map(|outcome| async move { outcome.err() })
            .collect::<Vec<_>>()
            .await;
        match failures.into_iter().next() {
            Some(err) => Err(err),
            None => Ok(count),
        }
    }

    /// Delivers due records until `stopping` turns true: looks every `poll`, each attempt on
    /// a task of its own so a slow receiver holds up no other.
    pub async fn run(self, mut stopping: watch::Receiver<bool>) {
        loop {
            match self
                .inner
                .store
                .due_deliveries(Timestamp::now(), SWEEP_BATCH)
                .await
            {
                Ok(due) => {
                    for delivery in due {
                        let deliverer = self.clone();
                        tokio::spawn(async move {
                            if let Err(err) = deliverer.attempt(&delivery).await {
                                tracing::error!(batch_id = %delivery.key.batch_id, error = %err, "completion callback could not be recorded");
                            }
                        });
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "could not read due completion callbacks")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.inner.settings.poll) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    }
}
