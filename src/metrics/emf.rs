//! The Lambda roles' metrics: one CloudWatch embedded-metric-format (EMF) line on stdout per
//! step, which CloudWatch Logs turns into metrics with no API call and no IAM permission
//! beyond writing the function's logs. Namespace [`NAMESPACE`], dimension `Role`.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::role_name;
use crate::pipeline::dispatch::StepRole;
use crate::store::ItemTally;

/// The CloudWatch namespace of the metrics.
pub const NAMESPACE: &str = "BatchManager";

/// What one step invocation did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StepReport {
    /// The step's role.
    pub role: StepRole,
    /// How long the step took.
    pub duration: Duration,
    /// Whether it failed.
    pub failed: bool,
    /// The items it recorded into their batch's counts (the update role, once per chunk).
    pub items: ItemTally,
}

impl StepReport {
    /// The report as one EMF document, stamped `timestamp_ms` (milliseconds since the epoch).
    pub(crate) fn emf_document(&self, timestamp_ms: u64) -> Value {
        json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Role"]],
                    "Metrics": [
                        { "Name": "StepDuration", "Unit": "Milliseconds" },
                        { "Name": "StepErrors", "Unit": "Count" },
                        { "Name": "ItemsSucceeded", "Unit": "Count" },
                        { "Name": "ItemsFailed", "Unit": "Count" },
                        { "Name": "ItemsCancelled", "Unit": "Count" },
                    ],
                }],
            },
            "Role": role_name(self.role),
            "StepDuration": self.duration.as_secs_f64() * 1000.0,
            "StepErrors": u64::from(self.failed),
            "ItemsSucceeded": self.items.succeeded,
            "ItemsFailed": self.items.failed,
            "ItemsCancelled": self.items.cancelled,
        })
    }

    /// Writes the report to stdout as one EMF line.
    pub(crate) fn emit(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        let line = self.emf_document(now).to_string();
        let mut stdout = std::io::stdout().lock();
        // Metrics are best effort: a closed stdout must not fail the step.
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    }
}

/// The items recorded between two readings of the process's counters.
pub(crate) fn recorded_between(before: &ItemTally, after: &ItemTally) -> ItemTally {
    ItemTally {
        succeeded: after.succeeded.saturating_sub(before.succeeded),
        failed: after.failed.saturating_sub(before.failed),
        cancelled: after.cancelled.saturating_sub(before.cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_an_emf_document_whose_metrics_are_top_level_members() {
        let report = StepReport {
            role: StepRole::Update,
            duration: Duration::from_millis(12),
            failed: false,
            items: ItemTally {
                succeeded: 3,
                failed: 2,
                cancelled: 0,
            },
        };
        let document = report.emf_document(1_700_000_000_000);
        let directive = &document["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], NAMESPACE);
        assert_eq!(directive["Dimensions"], json!([["Role"]]));
        for metric in directive["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            assert!(document[name].is_number(), "{name} has no value");
        }
        assert_eq!(document["Role"], "update");
        assert_eq!(document["ItemsSucceeded"], 3);
        assert_eq!(document["ItemsFailed"], 2);
        assert_eq!(document["StepDuration"], 12.0);
        assert_eq!(document["_aws"]["Timestamp"], 1_700_000_000_000_u64);
    }
}
