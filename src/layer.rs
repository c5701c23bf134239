//! The one-liner: both layers, stacked with the defaults.

use std::time::Duration;

use tower_layer::Layer;

use crate::delivery::{DeliveryBackend, DeliveryLayer, DeliveryService, ShutdownHandle};
use crate::dispatch::{MissingResource, Webhooks};
use crate::store::IdempotencyStore;
use crate::verification::{VerificationLayer, VerificationService};
use crate::verify::{Clock, ConfigError, Verifier};

/// The service [`CariosanWebhookLayer`] makes: verification, then delivery
/// semantics, then your service.
pub type CariosanWebhookService<S> = VerificationService<DeliveryService<S>>;

/// A [`VerificationLayer`] and a [`DeliveryLayer`], stacked: everything that
/// is not a signed, well-formed delivery is answered before your code runs,
/// and every verified delivery runs at most once at a time and, while the
/// store remembers it, never again after it was handled.
///
/// Its builder methods configure one layer or the other; use the two
/// layers apart to put something of your own between them, or to give
/// delivery semantics to requests another authenticator verified.
///
/// Cheap to clone: the configuration is shared.
///
/// ```
/// use std::time::Duration;
/// use axum::routing::post_service;
/// use cariosan_webhooks::{CariosanWebhookLayer, Webhooks};
/// use cariosan_webhooks::verify::FixedClock;
///
/// let layer = CariosanWebhookLayer::new("whsec_new")
///     .secret("whsec_old")                 // accept both while rolling
///     .tolerance(Duration::from_secs(120))
///     .body_limit(256 * 1024)
///     .max_run_time(Duration::from_secs(60))
///     .clock(FixedClock(1_795_000_000));  // verify "as of", in tests
/// let app: axum::Router = axum::Router::new()
///     .route("/webhooks/cariosan", post_service(Webhooks::new()).layer(layer));
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct CariosanWebhookLayer {
    verification: VerificationLayer,
    delivery: DeliveryLayer,
}

impl CariosanWebhookLayer {
    /// Both layers with the defaults, verifying with `secret`.
    ///
    /// # Panics
    ///
    /// If `secret` is empty: a configuration error, found at start-up rather
    /// than as a 401 on every delivery. [`try_new`](Self::try_new) returns it.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self::from_layers(VerificationLayer::new(secret), DeliveryLayer::new())
    }

    /// Both layers with the defaults, or an error if `secret` is empty.
    pub fn try_new(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        Ok(Self::from_layers(
            VerificationLayer::try_new(secret)?,
            DeliveryLayer::new(),
        ))
    }

    /// Both layers, verifying with a configured [`Verifier`].
    pub fn from_verifier(verifier: Verifier) -> Self {
        Self::from_layers(
            VerificationLayer::from_verifier(verifier),
            DeliveryLayer::new(),
        )
    }

    /// Both layers with the defaults, for several workspaces: `resolver`
    /// chooses each request's tenant and its secrets. See
    /// [`TenantResolver`](crate::verification::TenantResolver) and
    /// [`VerificationLayer::for_tenants`] for which settings apply to every
    /// tenant.
    pub fn for_tenants(resolver: impl crate::verification::TenantResolver) -> Self {
        Self::from_layers(
            VerificationLayer::for_tenants(resolver),
            DeliveryLayer::new(),
        )
    }

    /// These two layers, stacked.
    pub fn from_layers(verification: VerificationLayer, delivery: DeliveryLayer) -> Self {
        Self {
            verification,
            delivery,
        }
    }

    /// The two layers.
    pub fn into_layers(self) -> (VerificationLayer, DeliveryLayer) {
        (self.verification, self.delivery)
    }

    /// The verification layer.
    pub fn verification(&self) -> &VerificationLayer {
        &self.verification
    }

    /// The delivery layer.
    pub fn delivery(&self) -> &DeliveryLayer {
        &self.delivery
    }

    fn verifying(mut self, f: impl FnOnce(VerificationLayer) -> VerificationLayer) -> Self {
        self.verification = f(self.verification);
        self
    }

    fn delivering(mut self, f: impl FnOnce(DeliveryLayer) -> DeliveryLayer) -> Self {
        self.delivery = f(self.delivery);
        self
    }

    /// Also accepts deliveries signed with `secret`: see
    /// [`VerificationLayer::secret`].
    ///
    /// # Panics
    ///
    /// If `secret` is empty, and on a layer made by
    /// [`for_tenants`](Self::for_tenants).
    pub fn secret(self, secret: impl AsRef<[u8]>) -> Self {
        self.verifying(|v| v.secret(secret))
    }

    /// See [`VerificationLayer::tolerance`].
    pub fn tolerance(self, tolerance: Duration) -> Self {
        self.verifying(|v| v.tolerance(tolerance))
    }

    /// See [`VerificationLayer::clock`].
    pub fn clock(self, clock: impl Clock) -> Self {
        self.verifying(|v| v.clock(clock))
    }

    /// See [`VerificationLayer::body_limit`].
    pub fn body_limit(self, limit: usize) -> Self {
        self.verifying(|v| v.body_limit(limit))
    }

    /// See [`VerificationLayer::body_timeout`].
    pub fn body_timeout(self, timeout: Duration) -> Self {
        self.verifying(|v| v.body_timeout(timeout))
    }

    /// See [`DeliveryLayer::store`].
    pub fn store(self, store: impl IdempotencyStore) -> Self {
        self.delivering(|d| d.store(store))
    }

    /// See [`DeliveryLayer::backend`].
    pub fn backend(self, backend: impl DeliveryBackend) -> Self {
        self.delivering(|d| d.backend(backend))
    }

    /// See [`DeliveryLayer::lease`].
    pub fn lease(self, lease: Duration) -> Self {
        self.delivering(|d| d.lease(lease))
    }

    /// See [`DeliveryLayer::retention`].
    pub fn retention(self, retention: Duration) -> Self {
        self.delivering(|d| d.retention(retention))
    }

    /// See [`DeliveryLayer::handler_budget`].
    pub fn handler_budget(self, budget: Duration) -> Self {
        self.delivering(|d| d.handler_budget(budget))
    }

    /// See [`DeliveryLayer::max_run_time`].
    pub fn max_run_time(self, limit: Duration) -> Self {
        self.delivering(|d| d.max_run_time(limit))
    }

    /// See [`DeliveryLayer::max_concurrency`].
    pub fn max_concurrency(self, runs: usize) -> Self {
        self.delivering(|d| d.max_concurrency(runs))
    }

    /// See [`DeliveryLayer::retry_after`].
    pub fn retry_after(self, retry_after: Duration) -> Self {
        self.delivering(|d| d.retry_after(retry_after))
    }

    /// See [`DeliveryLayer::store_timeout`].
    pub fn store_timeout(self, timeout: Duration) -> Self {
        self.delivering(|d| d.store_timeout(timeout))
    }

    /// The handle to the verification layer's secrets: see
    /// [`VerificationLayer::secrets`].
    ///
    /// # Panics
    ///
    /// On a layer made by [`for_tenants`](Self::for_tenants), as
    /// [`VerificationLayer::secrets`] does.
    pub fn secrets(&self) -> &crate::verify::Secrets {
        self.verification.secrets()
    }

    /// A handle to shut the delivery layer (and its clones) down gracefully;
    /// it stays valid however the layer is configured afterwards.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.delivery.shutdown_handle()
    }
}

impl CariosanWebhookLayer {
    /// Whether the delivery layer's backend provides every resource that
    /// `webhooks`' handlers take: see [`DeliveryLayer::check`].
    pub fn check<S: Clone + Send + Sync + 'static>(
        &self,
        webhooks: &Webhooks<S>,
    ) -> Result<(), MissingResource> {
        self.delivery.check(webhooks)
    }
}

/// Mounting on an axum route (feature `axum`).
#[cfg(feature = "axum")]
impl CariosanWebhookLayer {
    /// `webhooks` behind this layer, as the webhook route's method router:
    /// `.route("/webhooks/cariosan", layer.route(webhooks))`. Every method
    /// reaches the layer, so a `GET` gets its `405 method_not_allowed`.
    ///
    /// It checks the handlers against the backend first, which
    /// `post_service(webhooks).layer(layer)` cannot do (axum hands the
    /// layer a type-erased route): mounted that way, the check happens at
    /// each delivery instead, answered `500 resource_missing`.
    ///
    /// # Panics
    ///
    /// If a handler takes a resource the backend does not provide (a `Tx`
    /// behind the default memory store), naming the event type, the
    /// argument's type and the backend. [`try_route`](Self::try_route)
    /// returns the error.
    ///
    /// ```
    /// use cariosan_webhooks::{CariosanWebhookLayer, Webhooks};
    ///
    /// let layer = CariosanWebhookLayer::new("whsec_...");
    /// let webhooks = Webhooks::new().on_message_created(|_| async { Ok(()) });
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/webhooks/cariosan", layer.route(webhooks));
    /// ```
    pub fn route<S, RS>(&self, webhooks: Webhooks<S>) -> axum::routing::MethodRouter<RS>
    where
        S: Clone + Send + Sync + 'static,
        RS: Clone + Send + Sync + 'static,
    {
        self.try_route(webhooks)
            .unwrap_or_else(|missing| panic!("{missing}"))
    }

    /// [`route`](Self::route), or the resource a handler takes that the
    /// backend does not provide.
    pub fn try_route<S, RS>(
        &self,
        webhooks: Webhooks<S>,
    ) -> Result<axum::routing::MethodRouter<RS>, MissingResource>
    where
        S: Clone + Send + Sync + 'static,
        RS: Clone + Send + Sync + 'static,
    {
        self.check(&webhooks)?;
        Ok(axum::routing::post_service(webhooks).layer(self.clone()))
    }
}

impl<S> Layer<S> for CariosanWebhookLayer {
    type Service = CariosanWebhookService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.verification.layer(self.delivery.layer(inner))
    }
}
