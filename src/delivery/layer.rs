use std::any::type_name;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::backend::DeliveryBackend;
use super::lease::LeaseBackend;
use super::run::RunLimits;
use super::service::DeliveryService;
use super::shutdown::{Lifecycle, ShutdownHandle};
use crate::dispatch::{MissingResource, Provided, ResourceType, Webhooks};
use crate::store::{IdempotencyStore, MemoryStore};
use crate::verify::VerifiedDelivery;

/// How long handlers may run before the sender is answered `503` by
/// default: Cariosan gives up on an answer after 10 s.
pub const DEFAULT_HANDLER_BUDGET: Duration = Duration::from_secs(9);

/// The hard limit of a run by default: past it, the handlers' future is
/// dropped and the delivery freed.
pub const DEFAULT_MAX_RUN_TIME: Duration = Duration::from_secs(5 * 60);

/// The longest `max_run_time` accepted.
pub const MAX_MAX_RUN_TIME: Duration = Duration::from_secs(24 * 60 * 60);

/// How many handler runs may be under way at once by default.
pub const DEFAULT_MAX_CONCURRENCY: usize = 256;

/// The `Retry-After` sent with `503` answers by default.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// How long the backend may take to begin a delivery by default, before
/// the sender is answered `503 store_unavailable`.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Layer`] that gives verified deliveries their semantics: each is run
/// at most once at a time and, while the backend remembers it, never again
/// after it was handled, detached
/// from the client, within a budget and a hard limit, under a concurrency
/// bound, and shut down gracefully. See the [module docs](crate::delivery).
///
/// It acts only on requests that carry a
/// [`VerifiedDelivery`](crate::VerifiedDelivery) (put there by a
/// [`VerificationLayer`](crate::verification::VerificationLayer)), and
/// answers `500 not_verified` to any other.
///
/// Cheap to clone; the clones share one lifecycle, which a
/// [`ShutdownHandle`] drains.
#[derive(Clone, Debug)]
#[must_use]
pub struct DeliveryLayer {
    pub(crate) config: Arc<DeliveryConfig>,
}

#[derive(Clone)]
pub(crate) struct DeliveryConfig {
    pub(crate) backend: Backend,
    /// The backend's type, for messages.
    pub(crate) backend_name: String,
    pub(crate) limits: RunLimits,
    pub(crate) retry_after: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) limiter: Arc<tokio::sync::Semaphore>,
    pub(crate) lifecycle: Lifecycle,
}

#[derive(Clone)]
pub(crate) enum Backend {
    Lease(LeaseBackend),
    Custom(Arc<dyn DeliveryBackend>),
}

impl Backend {
    pub(crate) fn get(&self) -> &dyn DeliveryBackend {
        match self {
            Self::Lease(lease) => lease,
            Self::Custom(custom) => &**custom,
        }
    }
}

impl std::fmt::Debug for DeliveryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("DeliveryConfig");
        if let Backend::Lease(lease) = &self.backend {
            s.field("backend", lease);
        }
        s.field("limits", &self.limits)
            .field("retry_after", &self.retry_after)
            .field("available_permits", &self.limiter.available_permits())
            .finish_non_exhaustive()
    }
}

impl Default for DeliveryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl DeliveryLayer {
    /// A layer with the defaults: an in-memory store of its own.
    pub fn new() -> Self {
        Self {
            config: Arc::new(DeliveryConfig {
                backend: Backend::Lease(LeaseBackend::new(MemoryStore::new())),
                backend_name: store_name::<MemoryStore>(),
                limits: RunLimits {
                    budget: DEFAULT_HANDLER_BUDGET,
                    max_run_time: DEFAULT_MAX_RUN_TIME,
                },
                retry_after: DEFAULT_RETRY_AFTER,
                store_timeout: DEFAULT_STORE_TIMEOUT,
                limiter: Arc::new(tokio::sync::Semaphore::new(DEFAULT_MAX_CONCURRENCY)),
                lifecycle: Lifecycle::default(),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut DeliveryConfig {
        Arc::make_mut(&mut self.config)
    }

    fn lease_backend(&mut self, what: &str) -> &mut LeaseBackend {
        match &mut self.config_mut().backend {
            Backend::Lease(lease) => lease,
            Backend::Custom(_) => panic!(
                "{what} configures an idempotency store's lease backend, but this layer has a custom backend"
            ),
        }
    }

    /// Where delivery ids are claimed and remembered, under a lease
    /// (default: a [`MemoryStore`] of this layer's own; a `RedisStore` to
    /// share them between replicas).
    pub fn store<T: IdempotencyStore>(mut self, store: T) -> Self {
        self.config_mut().backend_name = store_name::<T>();
        let store: Arc<dyn IdempotencyStore> = Arc::new(store);
        let backend = match &self.config.backend {
            Backend::Lease(lease) => lease.clone().with_store(store),
            Backend::Custom(_) => LeaseBackend::from_arc(store),
        };
        self.config_mut().backend = Backend::Lease(backend);
        self
    }

    /// Records deliveries in `backend` instead of an idempotency store.
    pub fn backend<B: DeliveryBackend>(mut self, backend: B) -> Self {
        let config = self.config_mut();
        config.backend = Backend::Custom(Arc::new(backend));
        config.backend_name = format!("the delivery backend {}", type_name::<B>());
        self
    }

    /// Whether this layer's backend provides every resource that
    /// `webhooks`' handlers take (a `Tx` needs a `PostgresBackend`): see
    /// [`Webhooks::check_resources`]. [`CariosanWebhookLayer::route`](crate::CariosanWebhookLayer::route)
    /// calls it when it mounts them.
    pub fn check<S: Clone + Send + Sync + 'static>(
        &self,
        webhooks: &Webhooks<S>,
    ) -> Result<(), MissingResource> {
        let provided = self.config.backend.get().provides().map(|mut types| {
            // What the verification layer puts beside them.
            types.push(ResourceType::of::<VerifiedDelivery>());
            types
        });
        webhooks.check_resources(&Provided {
            types: provided.as_deref(),
            provider: &self.config.backend_name,
        })
    }

    /// How long a claim holds without renewal (default 30 s). Running
    /// handlers renew it; after a crash, the delivery can run again once it
    /// runs out.
    ///
    /// # Panics
    ///
    /// If `lease` is zero or over a day, or the layer has a custom
    /// [`backend`](Self::backend): configuration errors.
    pub fn lease(mut self, lease: Duration) -> Self {
        let backend = self.lease_backend("lease()");
        *backend = backend.clone().lease(lease);
        self
    }

    /// How long handled ids are remembered (default 3 days).
    ///
    /// # Panics
    ///
    /// If `retention` is zero or over a year, or the layer has a custom
    /// [`backend`](Self::backend).
    pub fn retention(mut self, retention: Duration) -> Self {
        let backend = self.lease_backend("retention()");
        *backend = backend.clone().retention(retention);
        self
    }

    /// How long the sender waits for the handlers (default 9 s) before it is
    /// answered `503 handler_still_running`; the handlers keep running, and
    /// their outcome answers the retry.
    pub fn handler_budget(mut self, budget: Duration) -> Self {
        self.config_mut().limits.budget = budget;
        self
    }

    /// The hard limit of a run (default 5 minutes): past it, the handlers'
    /// future is dropped, the delivery is freed in the backend, and the
    /// sender's retry can run it again.
    ///
    /// # Panics
    ///
    /// If `limit` is zero or over a day.
    pub fn max_run_time(mut self, limit: Duration) -> Self {
        assert!(
            !limit.is_zero() && limit <= MAX_MAX_RUN_TIME,
            "max_run_time must be more than zero and at most {MAX_MAX_RUN_TIME:?}, not {limit:?}"
        );
        self.config_mut().limits.max_run_time = limit;
        self
    }

    /// How many runs may be under way at once (default 256); past that,
    /// deliveries are answered `503 overloaded` instead of queueing.
    pub fn max_concurrency(mut self, runs: usize) -> Self {
        self.config_mut().limiter = Arc::new(tokio::sync::Semaphore::new(runs));
        self
    }

    /// The `Retry-After` of `503` answers (default 10 s).
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.config_mut().retry_after = retry_after;
        self
    }

    /// How long the backend may take to begin a delivery (default 5 s)
    /// before the sender is answered `503 store_unavailable`.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().store_timeout = timeout;
        self
    }

    /// A handle to shut this layer and all its clones down gracefully.
    /// Configuring the layer further keeps the handle valid.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            lifecycle: self.config.lifecycle.clone(),
        }
    }
}

fn store_name<T>() -> String {
    format!("the idempotency store {}", type_name::<T>())
}

impl<S> Layer<S> for DeliveryLayer {
    type Service = DeliveryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeliveryService {
            inner,
            config: self.config.clone(),
        }
    }
}
