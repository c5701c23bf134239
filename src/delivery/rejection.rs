//! What the delivery layer answers instead of (or after) running the
//! handlers.

use std::fmt;
use std::time::Duration;

use http::{Response, StatusCode};

use crate::response::{answer, BytesBody};

/// Why the delivery layer did not acknowledge a verified delivery. Every
/// answer but [`NotVerified`](Self::NotVerified) is a `503` with
/// `Retry-After` or a `500`, so Cariosan retries.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Rejection {
    /// The request did not pass a verification layer: the layers are
    /// stacked wrongly. `500 not_verified`, logged as an error.
    NotVerified,
    /// Another copy of this delivery is being handled right now.
    /// `503 delivery_in_progress`.
    DeliveryInProgress {
        /// When to try again.
        retry_after: Duration,
    },
    /// The handlers passed the time budget; they go on, and their outcome
    /// answers the retry. `503 handler_still_running`.
    HandlerStillRunning {
        /// When to try again.
        retry_after: Duration,
    },
    /// As many runs as allowed are under way. `503 overloaded`.
    Overloaded {
        /// When to try again.
        retry_after: Duration,
    },
    /// The receiver is shutting down. `503 shutting_down`.
    ShuttingDown {
        /// When to try again.
        retry_after: Duration,
    },
    /// The delivery backend (a pool, Redis) did not answer in time or
    /// failed: nothing ran, or what ran was not recorded and is rolled back.
    /// `503 store_unavailable`.
    StoreUnavailable {
        /// When to try again.
        retry_after: Duration,
    },
    /// The run was cancelled: it passed `max_run_time`, or its guard was
    /// lost (a lease that could not be renewed). Its handlers' future was
    /// dropped and the delivery freed. `503 run_cancelled`.
    RunCancelled {
        /// When to try again.
        retry_after: Duration,
    },
    /// The inner service panicked. `500 handler_panicked`.
    HandlerPanicked,
}

impl Rejection {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotVerified | Self::HandlerPanicked => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short, stable, machine-readable code: the whole response body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotVerified => "not_verified",
            Self::DeliveryInProgress { .. } => "delivery_in_progress",
            Self::HandlerStillRunning { .. } => "handler_still_running",
            Self::Overloaded { .. } => "overloaded",
            Self::ShuttingDown { .. } => "shutting_down",
            Self::StoreUnavailable { .. } => "store_unavailable",
            Self::RunCancelled { .. } => "run_cancelled",
            Self::HandlerPanicked => "handler_panicked",
        }
    }

    /// How long the sender should wait before retrying, on a `503`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::DeliveryInProgress { retry_after }
            | Self::HandlerStillRunning { retry_after }
            | Self::Overloaded { retry_after }
            | Self::ShuttingDown { retry_after }
            | Self::StoreUnavailable { retry_after }
            | Self::RunCancelled { retry_after } => Some(*retry_after),
            Self::NotVerified | Self::HandlerPanicked => None,
        }
    }

    /// The body of the answer: the code.
    pub fn body_text(&self) -> &'static str {
        self.code()
    }

    /// The answer as an HTTP response, with `Retry-After` on a `503`.
    pub fn to_response(&self) -> Response<BytesBody> {
        answer(self.status(), self.code(), self.retry_after())
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotVerified => "Failed to handle the request: no verification layer passed it on",
            Self::DeliveryInProgress { .. } => {
                "Failed to start the handlers: another copy of this delivery is being handled"
            }
            Self::HandlerStillRunning { .. } => {
                "Failed to finish the handlers within the time budget; they go on running"
            }
            Self::Overloaded { .. } => "Failed to start the handlers: too many are running",
            Self::ShuttingDown { .. } => {
                "Failed to start the handlers: the receiver is shutting down"
            }
            Self::StoreUnavailable { .. } => "Failed to reach the delivery store",
            Self::RunCancelled { .. } => "Failed to finish the handlers: the run was cancelled",
            Self::HandlerPanicked => "Failed to handle the event: the inner service panicked",
        })
    }
}

impl std::error::Error for Rejection {}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Rejection {
    fn into_response(self) -> axum_core::response::Response {
        self.to_response().map(axum_core::body::Body::new)
    }
}

/// The answer, and the loud log, for a request that reached the delivery
/// layer, a dispatcher or an extractor without passing verification.
pub(crate) fn not_verified() -> Response<BytesBody> {
    tracing::error!(
        "a Cariosan webhook route was reached by a request that no verification layer verified: \
         add CariosanWebhookLayer (or VerificationLayer) to this route; answering 500"
    );
    Rejection::NotVerified.to_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_503_carries_retry_after_in_whole_seconds() {
        let retry_after = Duration::from_millis(1500);
        let cases = [
            (
                Rejection::DeliveryInProgress { retry_after },
                "delivery_in_progress",
            ),
            (
                Rejection::HandlerStillRunning { retry_after },
                "handler_still_running",
            ),
            (Rejection::Overloaded { retry_after }, "overloaded"),
            (Rejection::ShuttingDown { retry_after }, "shutting_down"),
            (
                Rejection::StoreUnavailable { retry_after },
                "store_unavailable",
            ),
            (Rejection::RunCancelled { retry_after }, "run_cancelled"),
        ];
        for (rejection, code) in cases {
            let response = rejection.to_response();
            assert_eq!((response.status().as_u16(), rejection.code()), (503, code));
            assert_eq!(response.headers()[http::header::RETRY_AFTER], "2", "{code}");
        }
        for (rejection, code) in [
            (Rejection::NotVerified, "not_verified"),
            (Rejection::HandlerPanicked, "handler_panicked"),
        ] {
            let response = rejection.to_response();
            assert_eq!((response.status().as_u16(), rejection.code()), (500, code));
            assert!(!response.headers().contains_key(http::header::RETRY_AFTER));
        }
    }
}
