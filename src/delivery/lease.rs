//! Any [`IdempotencyStore`] as a delivery backend: the guard is a claim
//! under a lease.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::backend::{Begin, DeliveryBackend, DeliveryGuard, Finish, Generation};
use crate::dispatch::ResourceType;
use crate::store::{Claim, ClaimToken, IdempotencyStore, StoreError};
use crate::verify::VerifiedDelivery;

/// How long a claim holds without renewal by default: how soon a crashed
/// receiver's deliveries can run elsewhere.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long handled delivery ids are remembered by default: longer than
/// Cariosan's two days of retries.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3 * 24 * 60 * 60);

/// The longest lease accepted.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest retention accepted.
pub const MAX_RETENTION: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// A delivery backend over an [`IdempotencyStore`]: begin claims the id
/// under a lease, the run renews the lease while the handlers run, and
/// finish completes the id (remembered for the retention) or releases the
/// claim.
///
/// A store that [needs no renewal](IdempotencyStore::needs_renewal) (the
/// in-memory one, whose claims die with the process) is claimed for the
/// lease plus the run's hard limit, so that no claim can run out under a
/// live run.
#[derive(Clone)]
pub struct LeaseBackend {
    store: Arc<dyn IdempotencyStore>,
    lease: Duration,
    retention: Duration,
}

impl LeaseBackend {
    /// A backend over `store`, with the default lease and retention.
    pub fn new(store: impl IdempotencyStore) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// A backend over a shared store.
    pub fn from_arc(store: Arc<dyn IdempotencyStore>) -> Self {
        Self {
            store,
            lease: DEFAULT_LEASE,
            retention: DEFAULT_RETENTION,
        }
    }

    /// How long a claim holds without renewal (default 30 s).
    ///
    /// # Panics
    ///
    /// If `lease` is zero or over [`MAX_LEASE`]: a configuration error. A
    /// zero lease would let a second copy claim a running delivery at once.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        assert!(
            !lease.is_zero() && lease <= MAX_LEASE,
            "the lease must be more than zero and at most {MAX_LEASE:?}, not {lease:?}"
        );
        self.lease = lease;
        self
    }

    /// How long handled ids are remembered (default 3 days).
    ///
    /// # Panics
    ///
    /// If `retention` is zero or over [`MAX_RETENTION`]: a configuration
    /// error.
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        assert!(
            !retention.is_zero() && retention <= MAX_RETENTION,
            "the retention must be more than zero and at most {MAX_RETENTION:?}, not {retention:?}"
        );
        self.retention = retention;
        self
    }

    /// The same lease and retention over another store.
    pub(crate) fn with_store(mut self, store: Arc<dyn IdempotencyStore>) -> Self {
        self.store = store;
        self
    }

    /// The store behind this backend.
    pub fn store(&self) -> &Arc<dyn IdempotencyStore> {
        &self.store
    }
}

impl std::fmt::Debug for LeaseBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseBackend")
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl DeliveryBackend for LeaseBackend {
    fn provides(&self) -> Option<Vec<ResourceType>> {
        Some(vec![ResourceType::of::<Generation>()])
    }

    fn begin<'a>(
        &'a self,
        delivery: &'a VerifiedDelivery,
        max_run_time: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>> {
        let renews = self.store.needs_renewal();
        let lease = if renews {
            self.lease
        } else {
            self.lease.saturating_add(max_run_time)
        };
        // Delivery ids are unique per endpoint only: a tenant's joins its
        // name, after a separator no id may contain.
        let key = delivery
            .tenant()
            .map(|tenant| format!("{tenant}\u{1f}{}", delivery.id()));
        Box::pin(async move {
            let id = key.as_deref().unwrap_or(delivery.id().as_str());
            Ok(match self.store.claim(id, lease).await? {
                Claim::Claimed(token) => Begin::Started(Arc::new(LeaseGuard {
                    store: self.store.clone(),
                    delivery: delivery.clone(),
                    key,
                    token,
                    lease: renews.then_some(self.lease),
                    retention: self.retention,
                })),
                Claim::Completed => Begin::Duplicate,
                Claim::InProgress { remaining } => Begin::InProgress { remaining },
            })
        })
    }
}

/// A claim held by one run.
struct LeaseGuard {
    store: Arc<dyn IdempotencyStore>,
    delivery: VerifiedDelivery,
    /// The store key, when it is not the delivery id alone.
    key: Option<String>,
    token: ClaimToken,
    lease: Option<Duration>,
    retention: Duration,
}

impl LeaseGuard {
    fn id(&self) -> &str {
        self.key.as_deref().unwrap_or(self.delivery.id().as_str())
    }
}

impl DeliveryGuard for LeaseGuard {
    fn provide(&self, resources: &mut http::Extensions) {
        resources.insert(Generation(self.token.generation()));
    }

    fn lease(&self) -> Option<Duration> {
        self.lease
    }

    fn renew(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        let lease = self.lease.unwrap_or(DEFAULT_LEASE);
        self.store.renew(self.id(), &self.token, lease)
    }

    /// A completion that cannot be written still lets the acknowledgement
    /// through: the handlers' effects are outside the store, so answering
    /// 503 would only run them again on the retry.
    fn finish(&self, finish: Finish) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match finish {
                Finish::Handled | Finish::GivenUp => {
                    match self.store.complete(self.id(), &self.token, self.retention).await {
                        Ok(true) => {}
                        Ok(false) => tracing::error!(
                            "handled, but another copy holds the claim now: its outcome, not this one, is recorded"
                        ),
                        Err(error) => tracing::error!(%error, "handled, but the completion was not recorded: a redelivery would run again"),
                    }
                }
                Finish::Released => {
                    if let Err(error) = self.store.release(self.id(), &self.token).await {
                        tracing::warn!(%error, "could not release the claim; it frees itself when its lease runs out");
                    }
                }
            }
            Ok(())
        })
    }
}
