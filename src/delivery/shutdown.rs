//! Graceful shutdown: stop starting runs, let the running ones finish
//! within a deadline, then cancel the rest.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long [`ShutdownHandle::drain`] waits, after cancelling the runs it
/// could not wait for, for them to free their deliveries. A run whose
/// handler blocks its thread cannot be cancelled, and must not hang the
/// shutdown.
pub const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// The runs of one delivery layer and all its clones: every delivery holds
/// a token of the tracker from before the closing check to the end of its
/// run, so that a drain waits for all of them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lifecycle {
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

/// Shuts a delivery layer (and every clone of it) down gracefully.
///
/// It shares the layer's lifecycle, not its configuration: a layer
/// configured further after the handle was taken (another store, say) is
/// still the one it shuts down, since every run finishes in the backend it
/// began in. Get one from
/// [`CariosanWebhookLayer::shutdown_handle`](crate::CariosanWebhookLayer::shutdown_handle)
/// or [`DeliveryLayer::shutdown_handle`](super::DeliveryLayer::shutdown_handle).
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    pub(crate) lifecycle: Lifecycle,
}

/// What a [`ShutdownHandle::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drained {
    /// Runs still under way at the deadline: cancelled, their deliveries
    /// freed for Cariosan's retry.
    pub abandoned: usize,
    /// Of those, runs that had not ended [`CANCEL_GRACE`] after being
    /// cancelled (a handler blocking its thread): their deliveries free
    /// themselves when their lease runs out, or with the process.
    pub stuck: usize,
}

impl ShutdownHandle {
    /// From now on, deliveries are answered `503 shutting_down` before any
    /// handler starts.
    pub fn close(&self) {
        self.lifecycle.tracker.close();
    }

    /// Whether [`close`](Self::close) or [`drain`](Self::drain) was called.
    pub fn is_closed(&self) -> bool {
        self.lifecycle.tracker.is_closed()
    }

    /// How many deliveries are being begun or run now.
    pub fn running(&self) -> usize {
        self.lifecycle.tracker.len()
    }

    /// Closes, waits up to `deadline` for the deliveries under way, then
    /// cancels the rest: each drops its handlers' future and frees its
    /// delivery in the backend (a released claim, a rolled-back
    /// transaction) before it ends, so that the retry runs it elsewhere.
    /// Waits at most [`CANCEL_GRACE`] more for those.
    pub async fn drain(&self, deadline: Duration) -> Drained {
        let tracker = &self.lifecycle.tracker;
        tracker.close();
        if tokio::time::timeout(deadline, tracker.wait()).await.is_ok() {
            return Drained {
                abandoned: 0,
                stuck: 0,
            };
        }
        let abandoned = tracker.len();
        self.lifecycle.shutdown.cancel();
        let stuck = match tokio::time::timeout(CANCEL_GRACE, tracker.wait()).await {
            Ok(()) => 0,
            Err(_elapsed) => tracker.len(),
        };
        tracing::warn!(
            abandoned,
            stuck,
            "shutdown cancelled running handlers; their deliveries will be retried"
        );
        Drained { abandoned, stuck }
    }
}
