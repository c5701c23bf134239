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

/// Completes at the first `SIGTERM` (what Docker, Kubernetes and systemd
/// send to stop a process) or Ctrl-C (`SIGINT`). On Unix the handlers are
/// installed when this is called, so a signal that arrives before the
/// future is first polled still counts; elsewhere it waits for Ctrl-C,
/// from its first poll.
///
/// Start the drain on it, beside the server's own graceful stop, so that
/// the time from the signal to exit is at most the drain's deadline plus
/// [`CANCEL_GRACE`]:
///
/// ```no_run
/// use std::time::Duration;
/// use cariosan_webhooks::delivery::shutdown_signal;
///
/// # async fn serve(layer: cariosan_webhooks::CariosanWebhookLayer) {
/// let shutdown = layer.shutdown_handle();
/// // docker stop waits 10 s: 8 s for the runs, 1 s to cancel the rest.
/// let drained = tokio::spawn(async move {
///     shutdown_signal().await;
///     shutdown.drain(Duration::from_secs(8)).await
/// });
/// // axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
/// let _ = drained.await;
/// # }
/// ```
///
/// # Panics
///
/// If the signal handlers cannot be installed (no tokio runtime with its
/// signal driver): a start-up error.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        let mut interrupt = signal(SignalKind::interrupt()).expect("a SIGINT handler");
        async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
