//! The contract between the delivery layer and where deliveries are
//! recorded: begin → a guard the run holds → finish with the outcome.
//!
//! A lease store fits it (the guard is a claim that is renewed while the
//! handlers run), and so does a database transaction (the guard is the open
//! transaction, handed to the handlers, committed with the outcome).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::dispatch::ResourceType;
use crate::store::StoreError;
use crate::verify::VerifiedDelivery;

/// Where the delivery layer records deliveries: it begins each one before
/// the handlers run and finishes it with their outcome.
///
/// [`LeaseBackend`](super::LeaseBackend) adapts any
/// [`IdempotencyStore`](crate::store::IdempotencyStore) (memory, Redis) to
/// it; implement it directly for a store whose guard is something else,
/// such as a transaction.
pub trait DeliveryBackend: Send + Sync + 'static {
    /// Begins `delivery`, unless it was handled before or another copy of it
    /// is running. `max_run_time` is the hard limit of the run that follows:
    /// whatever the guard holds must outlive it.
    ///
    /// Must not wait for another copy: answer [`Begin::InProgress`] instead.
    fn begin<'a>(
        &'a self,
        delivery: &'a VerifiedDelivery,
        max_run_time: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>>;

    /// The resource types its guards [`provide`](DeliveryGuard::provide),
    /// so that handlers taking one it lacks are refused when they are
    /// mounted ([`Webhooks::check_resources`](crate::Webhooks::check_resources)).
    /// `None` (the default) declares nothing: the check then happens at
    /// each delivery, answered `500 resource_missing` when it fails.
    fn provides(&self) -> Option<Vec<ResourceType>> {
        None
    }
}

/// What [`DeliveryBackend::begin`] found.
#[non_exhaustive]
pub enum Begin {
    /// The delivery is this run's now; the run holds the guard until it
    /// finishes it.
    Started(Arc<dyn DeliveryGuard>),
    /// The delivery was handled before: it is acknowledged and nothing runs.
    Duplicate,
    /// Another copy is running now.
    InProgress {
        /// When that copy's hold runs out, if known.
        remaining: Option<Duration>,
    },
}

impl std::fmt::Debug for Begin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Started(_) => f.write_str("Started(..)"),
            Self::Duplicate => f.write_str("Duplicate"),
            Self::InProgress { remaining } => f
                .debug_struct("InProgress")
                .field("remaining", remaining)
                .finish(),
        }
    }
}

/// What a run holds while its handlers run: a lease, an open transaction.
///
/// The run calls [`finish`](Self::finish) exactly once, after the handlers'
/// future has been dropped, however the run ended: handled, given up,
/// failed, panicked or cancelled.
pub trait DeliveryGuard: Send + Sync + 'static {
    /// Puts what the handlers may use for this delivery (a transaction
    /// handle, say) into `resources`; they reach it through a
    /// [`Resource`](crate::dispatch::Resource) argument.
    fn provide(&self, resources: &mut http::Extensions) {
        let _ = resources;
    }

    /// The lease this guard holds, when it must be renewed to stay valid.
    /// The run then renews it every third of the lease from a task of its
    /// own, and cancels the handlers before the lease can run out unrenewed.
    fn lease(&self) -> Option<Duration> {
        None
    }

    /// A future that completes if the guard stops holding the delivery by
    /// itself, without a renewal (its database session ended, say): the
    /// run is then cancelled as if its lease were lost. `None` when that
    /// cannot happen.
    fn lost(&self) -> Option<BoxFuture<'static, ()>> {
        None
    }

    /// The run was cut off (past `max_run_time`, a shutdown, a lost guard):
    /// its handlers' future was dropped. Stop what they may have left
    /// running on the guard's behalf, such as a statement on a database
    /// server, before [`finish`](Self::finish) frees the delivery with
    /// [`Finish::Released`].
    fn cancel(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Renews the lease: `Ok(false)` when the guard no longer holds the
    /// delivery.
    fn renew(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(true)))
    }

    /// Records how the run ended. An error on [`Finish::Handled`] or
    /// [`Finish::GivenUp`] means the outcome is not recorded: the sender is
    /// answered `503 store_unavailable` and retries.
    fn finish(&self, finish: Finish) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The fencing generation of a delivery's claim, which a guard may
/// [`provide`](DeliveryGuard::provide): handlers read it as
/// [`Delivery::generation`](crate::Delivery::generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Generation(pub u64);

/// How a run ended, as a backend records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finish {
    /// The handlers succeeded: never run this delivery again.
    Handled,
    /// A handler gave up: acknowledged unhandled, never run again.
    GivenUp,
    /// Not handled (an error, a panic, a retry later, a cancellation): free
    /// the delivery for the sender's retry.
    Released,
}
