//! The crate's `metrics` facade calls, in one place (feature `metrics`).
//! Without the feature each is a no-op the compiler removes. The crate
//! emits and never installs a recorder: install one (Prometheus, say) in
//! your application.
//!
//! | metric | kind | labels | what it counts |
//! |---|---|---|---|
//! | `cariosan_webhook_deliveries_total` | counter | `outcome` (a code of the status table), `status`, `event_type` | every answer |
//! | `cariosan_webhook_delivery_lag_seconds` | histogram | | now minus the signed `t`, for every verified delivery |
//! | `cariosan_webhook_secret_matches_total` | counter | `slot` (`primary`, `older`) | which secret verified a delivery: when `older` stays at zero, a rotation can be finished |
//! | `cariosan_webhook_runs_in_flight` | gauge | | runs begun and not yet finished |
//! | `cariosan_webhook_handler_duration_seconds` | histogram | `event_type` | how long a run's handlers took |
//! | `cariosan_webhook_runs_cancelled_total` | counter | `reason` (`max_run_time`, `guard_lost`, `shutdown`, `session_lost`) | runs whose handlers were dropped |
//! | `cariosan_webhook_store_errors_total` | counter | `operation` (`begin`, `finish`, `inbox_ingest`, `inbox_claim`, `inbox_finish`, `commit_ambiguous`) | the delivery backend or the inbox failing or not answering; `commit_ambiguous` is a commit whose answer was lost |
//! | `cariosan_webhook_inbox_out_of_order_total` | counter | `reason` (`stale`, `dead_predecessor`), `event_type` | ordered inbox rows that ran (or were superseded) out of their key's order: a later row of the key was handled first, or an earlier one is dead |
//! | `cariosan_webhook_inbox_runs_total` | counter | `result` (`done`, `retry`, `dead`, `lost`), `event_type` | inbox runs by how they ended; `lost` is a run whose process died or whose connection dropped |
//!
//! `event_type` is a type this version knows, or `unknown`: never an id.
//!
//! Exporters render a histogram without buckets as a summary, which a
//! `histogram_quantile(.. _bucket ..)` rule never matches: give them
//! [`HISTOGRAM_BUCKETS`]. With `metrics-exporter-prometheus`:
//!
//! ```ignore
//! let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
//! for (name, buckets) in cariosan_webhooks::metrics::HISTOGRAM_BUCKETS {
//!     builder = builder.set_buckets_for_metric(
//!         metrics_exporter_prometheus::Matcher::Full((*name).to_owned()),
//!         buckets,
//!     )?;
//! }
//! let handle = builder.install_recorder()?;
//! ```
#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use std::time::Duration;

use crate::model::EventType;

/// The recommended buckets, in seconds, of each histogram the crate
/// records: dense up to the 9 s budget for the handlers' duration, and up
/// to a day for the lag (Cariosan retries for two days).
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    (
        "cariosan_webhook_handler_duration_seconds",
        &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 9.0, 30.0, 300.0,
        ],
    ),
    (
        "cariosan_webhook_delivery_lag_seconds",
        &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0],
    ),
];

/// A known event type's name, or `unknown`: labels stay few.
pub(crate) fn event_label(event_type: &str) -> &'static str {
    EventType::KNOWN
        .iter()
        .map(EventType::as_str)
        .find(|known| *known == event_type)
        .unwrap_or("unknown")
}

pub(crate) fn delivery_answered(status: u16, outcome: &'static str, event_type: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "cariosan_webhook_deliveries_total",
        "outcome" => outcome,
        "status" => status_label(status),
        "event_type" => event_label(event_type),
    )
    .increment(1);
}

#[cfg(feature = "metrics")]
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        415 => "415",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

pub(crate) fn verified(signed_at: i64, now: i64, secret_index: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::histogram!("cariosan_webhook_delivery_lag_seconds")
            .record(now.saturating_sub(signed_at) as f64);
        let slot = if secret_index == 0 {
            "primary"
        } else {
            "older"
        };
        metrics::counter!("cariosan_webhook_secret_matches_total", "slot" => slot).increment(1);
    }
}

pub(crate) fn run_started() {
    #[cfg(feature = "metrics")]
    metrics::gauge!("cariosan_webhook_runs_in_flight").increment(1.0);
}

pub(crate) fn run_finished(event_type: &str, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!("cariosan_webhook_runs_in_flight").decrement(1.0);
        metrics::histogram!(
            "cariosan_webhook_handler_duration_seconds",
            "event_type" => event_label(event_type),
        )
        .record(took.as_secs_f64());
    }
}

pub(crate) fn run_cancelled(reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("cariosan_webhook_runs_cancelled_total", "reason" => reason).increment(1);
}

pub(crate) fn store_error(operation: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("cariosan_webhook_store_errors_total", "operation" => operation).increment(1);
}

/// An ordered inbox row that runs (or is superseded) out of its key's
/// order: `stale` (a later row of its key was handled first) or
/// `dead_predecessor` (an earlier row of its key is dead).
#[cfg(feature = "postgres")]
pub(crate) fn inbox_out_of_order(reason: &'static str, event_type: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "cariosan_webhook_inbox_out_of_order_total",
        "reason" => reason,
        "event_type" => event_label(event_type),
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (reason, event_type);
}

/// An inbox run's end: `done`, `retry`, `dead`, or `lost` (a run that did
/// not finish, found by the next claim).
#[cfg(feature = "postgres")]
pub(crate) fn inbox_run(result: &'static str, event_type: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "cariosan_webhook_inbox_runs_total",
        "result" => result,
        "event_type" => event_label(event_type),
    )
    .increment(1);
}
