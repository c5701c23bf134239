//! One run of a delivery's handlers: detached from the client, within the
//! budget, under a hard time limit, with the guard renewed from a task of
//! its own, and finished in the backend however it ends.

use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use http::Response;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use super::backend::{DeliveryGuard, Finish};
use super::shutdown::Lifecycle;
use crate::response::Answer;

/// The limits of every run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunLimits {
    pub(crate) budget: Duration,
    pub(crate) max_run_time: Duration,
}

/// Why a run was cancelled: its handlers' future was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// The receiver is shutting down and could not wait for it.
    Shutdown,
    /// Its guard could not be renewed before its lease ran out.
    GuardLost,
    /// It passed `max_run_time`.
    MaxRunTime,
}

/// How a run ended, as the sender is to be told.
pub(crate) enum RunEnd<T> {
    /// The handlers' future finished, and its outcome was recorded.
    Finished(T),
    /// The handlers finished with a success that the backend could not
    /// record: the sender must retry.
    NotRecorded,
    Panicked,
    Cancelled(Cancelled),
    /// The budget ran out first; the run goes on.
    StillRunning,
}

/// What is held for a run from its start to its end.
pub(crate) struct Held {
    pub(crate) guard: Arc<dyn DeliveryGuard>,
    pub(crate) permit: OwnedSemaphorePermit,
    pub(crate) token: TaskTrackerToken,
    /// For the metrics' labels.
    pub(crate) event_type: &'static str,
}

/// Runs `handlers` (the inner service's call for a begun delivery) to the
/// end whatever happens to the client, and finishes the guard with the
/// outcome. Waits at most the budget for it.
///
/// The run is polled once here first: when the handlers and the backend
/// finish without waiting (the in-memory store and most handlers), no task,
/// timer or renewal is set up. A guard with a lease is renewed from a task
/// started before the first poll, so that a handler that blocks its thread
/// on a multi-threaded runtime does not also stop the renewal.
pub(crate) async fn run<F, B, E>(
    limits: RunLimits,
    lifecycle: &Lifecycle,
    held: Held,
    handlers: F,
) -> RunEnd<Result<Response<B>, E>>
where
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Send + 'static,
    E: Send + 'static,
{
    let deadline = Instant::now() + limits.max_run_time;
    let lost = held.guard.lease().map(|lease| {
        let lost = CancellationToken::new();
        tokio::spawn(renew(held.guard.clone(), lease, deadline, lost.clone()).in_current_span());
        lost
    });
    let lost_by_itself = held.guard.lost();
    let shutdown = lifecycle.shutdown.clone();
    let mut settled = Box::pin(
        async move {
            let Held {
                guard,
                permit: _permit,
                token: _token,
                event_type,
            } = held;
            let started = Instant::now();
            crate::metrics::run_started();
            let guard_lost = async {
                let lease_lost = async {
                    match &lost {
                        Some(lost) => lost.cancelled().await,
                        None => std::future::pending().await,
                    }
                };
                let by_itself = async {
                    match lost_by_itself {
                        Some(lost) => lost.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = lease_lost => {}
                    () = by_itself => {}
                }
            };
            let end = tokio::select! {
                // The handlers first: when they are ready, no timer is armed.
                biased;
                result = AssertUnwindSafe(handlers).catch_unwind() => match result {
                    Ok(result) => RunEnd::Finished(result),
                    Err(_panic) => RunEnd::Panicked,
                },
                () = guard_lost => RunEnd::Cancelled(Cancelled::GuardLost),
                () = shutdown.cancelled() => RunEnd::Cancelled(Cancelled::Shutdown),
                () = tokio::time::sleep_until(deadline) => RunEnd::Cancelled(Cancelled::MaxRunTime),
            };
            if let Some(lost) = &lost {
                lost.cancel();
            }
            crate::metrics::run_finished(event_type, started.elapsed());
            if let RunEnd::Cancelled(why) = end {
                crate::metrics::run_cancelled(match why {
                    Cancelled::Shutdown => "shutdown",
                    Cancelled::GuardLost => "guard_lost",
                    Cancelled::MaxRunTime => "max_run_time",
                });
                tracing::error!(reason = ?why, "the run was cancelled: its handlers were dropped and the delivery freed for a retry");
            }
            let finish = match &end {
                RunEnd::Finished(Ok(response)) if response.status().is_success() => {
                    match response.extensions().get::<Answer>() {
                        Some(answer) if answer.given_up => Finish::GivenUp,
                        _ => Finish::Handled,
                    }
                }
                _ => Finish::Released,
            };
            if let RunEnd::Cancelled(_) = end {
                guard.cancel().await;
            }
            match guard.finish(finish).await {
                Ok(()) => end,
                Err(error) if finish == Finish::Released => {
                    crate::metrics::store_error("finish");
                    tracing::warn!(%error, "could not free the delivery in the backend");
                    end
                }
                Err(error) => {
                    crate::metrics::store_error("finish");
                    tracing::error!(%error, "the handlers succeeded but the backend could not record it: answering 503");
                    RunEnd::NotRecorded
                }
            }
        }
        .in_current_span(),
    );
    if let Poll::Ready(end) = poll_fn(|cx| Poll::Ready(settled.as_mut().poll(cx))).await {
        return end;
    }
    // The run holds its tracker token, so the task needs no entry of its own.
    let task = tokio::spawn(settled);
    match tokio::time::timeout(limits.budget, task).await {
        Err(_elapsed) => RunEnd::StillRunning,
        Ok(Ok(end)) => end,
        // The run catches the handlers' panics; one here came from the
        // backend's finish.
        Ok(Err(_join_error)) => RunEnd::Panicked,
    }
}

/// Renews a guard's lease every third of it until the run ends (`lost` is
/// cancelled) or passes its hard limit. When a renewal is refused, or none
/// succeeds before the lease would run out (less a margin for clock drift
/// and the store's latency), it cancels `lost`, which cancels the run.
async fn renew(
    guard: Arc<dyn DeliveryGuard>,
    lease: Duration,
    deadline: Instant,
    lost: CancellationToken,
) {
    let every = lease / 3;
    let margin = lease / 5;
    let mut valid_until = Instant::now() + (lease - margin);
    loop {
        let next = (Instant::now() + every).min(valid_until);
        tokio::select! {
            () = lost.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        if sent >= deadline {
            // The run is cancelled at its hard limit; a run that blocks its
            // thread past it is let go of, with its lease.
            return;
        }
        if sent < valid_until {
            match tokio::time::timeout(valid_until - sent, guard.renew()).await {
                Ok(Ok(true)) => valid_until = sent + (lease - margin),
                Ok(Ok(false)) => {
                    if !lost.is_cancelled() {
                        tracing::error!(
                            "the delivery's claim is held by another copy now: cancelling this run"
                        );
                        lost.cancel();
                    }
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "could not renew the delivery's claim; retrying")
                }
                Err(_elapsed) => {}
            }
        }
        if Instant::now() >= valid_until {
            tracing::error!("could not renew the delivery's claim before its lease ran out: cancelling this run");
            lost.cancel();
            return;
        }
    }
}
