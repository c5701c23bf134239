use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::run::{Deliveries, ShutdownHandle};
use super::service::CariosanWebhookService;
use crate::store::{IdempotencyStore, MemoryStore};
use crate::verify::{Clock, ConfigError, Secret, Verifier};

/// The largest body accepted by default: 1 MiB, the protocol's maximum.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// How long a body may take to arrive by default.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long handlers may run before the sender is answered `503` by
/// default: Cariosan gives up on an answer after 10 s.
pub const DEFAULT_HANDLER_BUDGET: Duration = Duration::from_secs(9);

/// How long a claim holds without renewal by default: how soon a crashed
/// receiver's deliveries can run elsewhere.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long handled delivery ids are remembered by default: longer than
/// Cariosan's two days of retries.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3 * 24 * 60 * 60);

/// How many handler runs may be under way at once by default.
pub const DEFAULT_MAX_CONCURRENCY: usize = 256;

/// The `Retry-After` sent with `503` answers by default.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// A [`Layer`] that verifies Cariosan deliveries before anything downstream
/// sees them. See the [module docs](crate::layer) for what it checks, in
/// which order, and what it answers.
///
/// Cheap to clone: the configuration is shared.
#[derive(Clone, Debug)]
#[must_use]
pub struct CariosanWebhookLayer {
    config: Arc<Config>,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) verifier: Verifier,
    pub(crate) body_limit: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) deliveries: Deliveries,
}

impl CariosanWebhookLayer {
    /// A layer that verifies with `secret`.
    ///
    /// # Panics
    ///
    /// If `secret` is empty: that is a configuration error, found at start-up
    /// rather than as a 401 on every delivery. Use
    /// [`try_new`](Self::try_new) to handle it instead.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self::try_new(secret).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A layer that verifies with `secret`, or an error if it is empty.
    pub fn try_new(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        Verifier::new(secret).map(Self::from_verifier)
    }

    /// A layer around a configured [`Verifier`].
    pub fn from_verifier(verifier: Verifier) -> Self {
        Self {
            config: Arc::new(Config {
                verifier,
                body_limit: DEFAULT_BODY_LIMIT,
                body_timeout: DEFAULT_BODY_TIMEOUT,
                deliveries: Deliveries {
                    store: Arc::new(MemoryStore::new()),
                    lease: DEFAULT_LEASE,
                    retention: DEFAULT_RETENTION,
                    budget: DEFAULT_HANDLER_BUDGET,
                    retry_after: DEFAULT_RETRY_AFTER,
                    limiter: Arc::new(tokio::sync::Semaphore::new(DEFAULT_MAX_CONCURRENCY)),
                    tracker: Arc::default(),
                },
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Also accepts deliveries signed with `secret`, for rolling secrets
    /// without downtime.
    ///
    /// # Panics
    ///
    /// If `secret` is empty, like [`new`](Self::new).
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        let secret = Secret::new(secret).unwrap_or_else(|e| panic!("{e}"));
        let config = self.config_mut();
        config.verifier = config.verifier.clone().with_secret(secret);
        self
    }

    /// How far the signature's timestamp may be from now, either way
    /// (default 300 s).
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        let config = self.config_mut();
        config.verifier = config.verifier.clone().tolerance(tolerance);
        self
    }

    /// Where "now" comes from (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        let config = self.config_mut();
        config.verifier = config.verifier.clone().clock(clock);
        self
    }

    /// The largest body accepted, in bytes (default 1 MiB).
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.config_mut().body_limit = limit;
        self
    }

    /// How long the whole body may take to arrive (default 30 s); a slower
    /// client is answered `408`.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().body_timeout = timeout;
        self
    }

    /// Where delivery ids are claimed and remembered (default: a
    /// [`MemoryStore`] of this layer's own; a `RedisStore` to share them
    /// between replicas).
    pub fn store(mut self, store: impl IdempotencyStore) -> Self {
        self.config_mut().deliveries.store = Arc::new(store);
        self
    }

    /// How long a claim holds without renewal (default 30 s). Running
    /// handlers renew it; after a crash, the delivery can run again once it
    /// runs out.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config_mut().deliveries.lease = lease;
        self
    }

    /// How long handled ids are remembered (default 3 days).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config_mut().deliveries.retention = retention;
        self
    }

    /// How long the sender waits for the handlers (default 9 s) before it is
    /// answered `503 handler_still_running`; the handlers keep running, and
    /// their outcome answers the retry.
    pub fn handler_budget(mut self, budget: Duration) -> Self {
        self.config_mut().deliveries.budget = budget;
        self
    }

    /// How many handler runs may be under way at once (default 256); past
    /// that, deliveries are answered `503 overloaded` instead of queueing.
    pub fn max_concurrency(mut self, runs: usize) -> Self {
        self.config_mut().deliveries.limiter = Arc::new(tokio::sync::Semaphore::new(runs));
        self
    }

    /// The `Retry-After` of `503` answers (default 10 s).
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.config_mut().deliveries.retry_after = retry_after;
        self
    }

    /// A handle to shut this layer (and its clones) down gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            deliveries: self.config.deliveries.clone(),
        }
    }
}

impl<S> Layer<S> for CariosanWebhookLayer {
    type Service = CariosanWebhookService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CariosanWebhookService::new(inner, self.config.clone())
    }
}
