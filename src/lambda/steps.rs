//! The `task1`, `task2` and `update` roles: the state machine's Task events in, the step's
//! result out. A failure leaves as a [`Diagnostic`] whose `errorType` is the step error's
//! stable name, the one the definition's Retry and Catch rules match; the conversion below is
//! the only place a step error meets Lambda. Each step writes its metrics to stdout as one
//! embedded-metric-format line ([`crate::metrics::emf`]).

use std::time::Instant;

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;

use crate::metrics::emf::{self, StepReport};
use crate::pipeline::dispatch;
pub(crate) use crate::pipeline::dispatch::StepRole;
use crate::pipeline::steps::{KeptChunk, StepError};
use crate::pipeline::Steps;

/// Serves Task events until the Runtime API stops the process. Each event is dispatched on its
/// own: a Lambda invocation holds one step, so no chunk is kept between events.
pub(crate) async fn serve(role: StepRole, steps: Steps) -> Result<(), lambda_runtime::Error> {
    let steps = &steps;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let metrics = crate::metrics::global();
        let items_before = metrics.items_recorded_so_far();
        let started = Instant::now();
        let output = dispatch::invoke(steps, role, event.payload, &mut KeptChunk::default()).await;
        // The runtime runs one event at a time, so the counters moved for this event only.
        StepReport {
            role,
            duration: started.elapsed(),
            failed: output.is_err(),
            items: emf::recorded_between(&items_before, &metrics.items_recorded_so_far()),
        }
        .emit();
        output.map_err(Diagnostic::from)
    }))
    .await
}

impl From<StepError> for Diagnostic {
    fn from(err: StepError) -> Self {
        // The store's details stay in this function's log; the state machine sees the name.
        if matches!(
            err,
            StepError::StoreUnavailable(_) | StepError::StoreCorrupt(_)
        ) {
            tracing::error!(error = ?err, "step failed");
        }
        Diagnostic {
            error_type: err.error_type().to_owned(),
            error_message: err.cause(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn a_step_error_becomes_its_stable_name_and_hides_store_details() {
        let diagnostic = Diagnostic::from(StepError::from(StoreError::Unavailable(
            "dispatch failure: connection refused to 10.0.0.7".to_owned(),
        )));
        assert_eq!(diagnostic.error_type, "BatchManager.StoreUnavailable");
        assert_eq!(diagnostic.error_message, "store unavailable");

        let diagnostic = Diagnostic::from(StepError::TransientTask("upstream timed out".into()));
        assert_eq!(diagnostic.error_type, "BatchManager.TransientTaskError");
        assert_eq!(diagnostic.error_message, "upstream timed out");
    }
}
