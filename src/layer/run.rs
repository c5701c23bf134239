//! Running the inner service for one claimed delivery: detached from the
//! client, within a time budget, under a concurrency bound, and settled in
//! the idempotency store however it ends.

use std::collections::HashMap;
use std::future::poll_fn;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use http::{HeaderValue, Response};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::store::{ClaimToken, IdempotencyStore};

/// The delivery semantics a layer enforces, shared by its clones.
#[derive(Clone)]
pub(crate) struct Deliveries {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    pub(crate) lease: Duration,
    pub(crate) retention: Duration,
    pub(crate) budget: Duration,
    pub(crate) retry_after: Duration,
    pub(crate) limiter: Arc<tokio::sync::Semaphore>,
    pub(crate) tracker: Arc<Tracker>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries")
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .field("budget", &self.budget)
            .field("available_permits", &self.limiter.available_permits())
            .finish_non_exhaustive()
    }
}

/// How a detached run ended.
pub(crate) enum RunOutcome<T> {
    Finished(T),
    Panicked,
    /// Aborted by a shutdown that could not wait for it.
    Abandoned,
}

impl Deliveries {
    /// Runs `future` (the inner service's call for a claimed delivery) so
    /// that it runs to completion whatever happens to the client, renews the
    /// claim while it runs, and then completes the id on a 2xx answer or
    /// releases it otherwise. Waits at most the budget for it: `None` when
    /// the budget ran out first.
    ///
    /// The run is polled once here first: most handlers and the in-memory
    /// store finish without waiting on anything, and then no task, timer or
    /// tracker entry is needed. A run that has to wait is moved, boxed and
    /// already started, into a task of its own.
    pub(crate) async fn run<F, B, E>(
        &self,
        id: HeaderValue,
        token: ClaimToken,
        permit: OwnedSemaphorePermit,
        future: F,
    ) -> Option<RunOutcome<Result<Response<B>, E>>>
    where
        F: Future<Output = Result<Response<B>, E>> + Send + 'static,
        B: Send + 'static,
        E: Send + 'static,
    {
        let claim = Running { id, token };
        let this = self.clone();
        let run_claim = claim.clone();
        let mut run = Box::pin(
            async move {
                let _permit = permit;
                let (id, token) = (run_claim.id(), &run_claim.token);
                let result = this.run_renewing(id, token, future).await;
                let handled = matches!(&result, Ok(Ok(response)) if response.status().is_success());
                this.settle(id, token, handled).await;
                result
            }
            .in_current_span(),
        );
        if let Poll::Ready(result) = poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await {
            return Some(finished(result));
        }
        let key = self.tracker.register(claim);
        let registered = Registered(self.tracker.clone(), key);
        let task = tokio::spawn(async move {
            let _registered = registered;
            run.await
        });
        self.tracker.set_abort(key, task.abort_handle());
        match tokio::time::timeout(self.budget, task).await {
            Err(_elapsed) => None,
            Ok(Ok(result)) => Some(finished(result)),
            Ok(Err(join_error)) if join_error.is_cancelled() => Some(RunOutcome::Abandoned),
            Ok(Err(_panic)) => Some(RunOutcome::Panicked),
        }
    }

    async fn run_renewing<F: Future>(
        &self,
        id: &str,
        token: &ClaimToken,
        future: F,
    ) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
        let mut future = pin!(AssertUnwindSafe(future).catch_unwind());
        let every = (self.lease / 3).max(Duration::from_millis(1));
        loop {
            tokio::select! {
                // The handler first: when it is ready, no timer is armed.
                biased;
                result = &mut future => return result,
                () = tokio::time::sleep(every) => match self.store.renew(id, token, self.lease).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("the delivery's claim was lost: another copy may run"),
                    Err(error) => tracing::warn!(%error, "could not renew the delivery's claim"),
                },
            }
        }
    }

    /// Records the outcome. A completion that cannot be written still lets
    /// the 2xx through: the handlers did succeed, and answering 503 would
    /// run them again on the retry.
    async fn settle(&self, id: &str, token: &ClaimToken, handled: bool) {
        if handled {
            if let Err(error) = self.store.complete(id, self.retention).await {
                tracing::error!(%error, "handled, but the completion was not recorded: a redelivery would run again");
            }
        } else if let Err(error) = self.store.release(id, token).await {
            tracing::warn!(%error, "could not release the claim; it frees itself when its lease runs out");
        }
    }
}

/// A run's result, with a panic in the handlers (caught in
/// `run_renewing`) told apart.
fn finished<T>(result: Result<T, Box<dyn std::any::Any + Send>>) -> RunOutcome<T> {
    match result {
        Ok(result) => RunOutcome::Finished(result),
        Err(_panic) => RunOutcome::Panicked,
    }
}

/// The runs under way, so that a shutdown can wait for them or abandon them
/// and release their claims.
#[derive(Default)]
pub(crate) struct Tracker {
    closing: AtomicBool,
    next: AtomicU64,
    running: Mutex<HashMap<u64, Tracked>>,
}

/// The claim a run holds. Cloning it allocates nothing: the id shares the
/// request header's bytes and the token is inline.
#[derive(Clone)]
struct Running {
    id: HeaderValue,
    token: ClaimToken,
}

impl Running {
    fn id(&self) -> &str {
        // Checked to be visible ASCII before the body was read.
        self.id.to_str().unwrap_or_default()
    }
}

struct Tracked {
    claim: Running,
    abort: Option<AbortHandle>,
}

/// Removes its run from the tracker when the run ends, however it ends.
struct Registered(Arc<Tracker>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn register(&self, claim: Running) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, Tracked { claim, abort: None });
        key
    }

    fn set_abort(&self, key: u64, abort: AbortHandle) {
        if let Some(running) = self.lock().get_mut(&key) {
            running.abort = Some(abort);
        }
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub(crate) fn running(&self) -> usize {
        self.lock().len()
    }
}

/// Shuts a layer down gracefully: stops starting handlers, lets the running
/// ones finish within a deadline, and releases the claims of those it has
/// to abandon so that Cariosan's retry runs them elsewhere.
///
/// Get one from [`CariosanWebhookLayer::shutdown_handle`](super::CariosanWebhookLayer::shutdown_handle).
#[derive(Clone)]
pub struct ShutdownHandle {
    pub(crate) deliveries: Deliveries,
}

/// What a [`ShutdownHandle::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drained {
    /// Runs abandoned at the deadline, their claims released.
    pub abandoned: usize,
}

impl ShutdownHandle {
    /// From now on, deliveries are answered `503 shutting_down` before any
    /// handler starts.
    pub fn close(&self) {
        self.deliveries
            .tracker
            .closing
            .store(true, Ordering::SeqCst);
    }

    /// How many handler runs are under way.
    pub fn running(&self) -> usize {
        self.deliveries.tracker.running()
    }

    /// Closes, waits up to `deadline` for running handlers, then aborts the
    /// rest and releases their claims.
    pub async fn drain(&self, deadline: Duration) -> Drained {
        self.close();
        let until = tokio::time::Instant::now() + deadline;
        while self.running() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let abandoned: Vec<Tracked> = self
            .deliveries
            .tracker
            .lock()
            .drain()
            .map(|(_, r)| r)
            .collect();
        for running in &abandoned {
            if let Some(abort) = &running.abort {
                abort.abort();
            }
            if let Err(error) = self
                .deliveries
                .store
                .release(running.claim.id(), &running.claim.token)
                .await
            {
                tracing::warn!(%error, delivery_id = running.claim.id(), "could not release an abandoned claim; its lease will");
            }
        }
        if !abandoned.is_empty() {
            tracing::warn!(
                count = abandoned.len(),
                "shutdown abandoned running handlers; their deliveries will be retried"
            );
        }
        Drained {
            abandoned: abandoned.len(),
        }
    }
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("closing", &self.deliveries.tracker.is_closing())
            .field("running", &self.running())
            .finish()
    }
}
