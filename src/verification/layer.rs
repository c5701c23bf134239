use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::service::VerificationService;
use super::tenant::TenantResolver;
use crate::protocol::MAX_BODY_LEN;
use crate::verify::{Clock, ConfigError, Secret, Verifier};

/// The largest body accepted by default: 1 MiB, the protocol's maximum.
pub const DEFAULT_BODY_LIMIT: usize = MAX_BODY_LEN;

/// How long a body may take to arrive by default.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A [`Layer`] that lets through only signed, well-formed deliveries, each
/// with a [`VerifiedDelivery`](crate::VerifiedDelivery) extension. See the
/// [module docs](crate::verification) for what it checks, in which order.
///
/// Cheap to clone: the configuration is shared.
#[derive(Clone, Debug)]
#[must_use]
pub struct VerificationLayer {
    pub(crate) config: Arc<VerifyConfig>,
}

#[derive(Clone)]
pub(crate) struct VerifyConfig {
    pub(crate) verifier: Verifier,
    pub(crate) tenants: Option<Arc<dyn TenantResolver>>,
    pub(crate) body_limit: usize,
    pub(crate) body_timeout: Duration,
}

impl std::fmt::Debug for VerifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyConfig")
            .field("verifier", &self.verifier)
            .field("tenants", &self.tenants.is_some())
            .field("body_limit", &self.body_limit)
            .field("body_timeout", &self.body_timeout)
            .finish()
    }
}

impl VerificationLayer {
    /// A layer that verifies with `secret`.
    ///
    /// # Panics
    ///
    /// If `secret` is empty: a configuration error, found at start-up rather
    /// than as a 401 on every delivery. [`try_new`](Self::try_new) returns it.
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
            config: Arc::new(VerifyConfig {
                verifier,
                tenants: None,
                body_limit: DEFAULT_BODY_LIMIT,
                body_timeout: DEFAULT_BODY_TIMEOUT,
            }),
        }
    }

    /// A layer for several workspaces: `resolver` chooses each request's
    /// tenant, and its secrets, before the body is read. See
    /// [`TenantResolver`].
    ///
    /// [`tolerance`](Self::tolerance) and [`clock`](Self::clock) set on this
    /// layer apply to every tenant whose [`Verifier`] does not set its own.
    /// Secrets are per tenant: [`secret`](Self::secret) and
    /// [`secrets`](Self::secrets) are refused here.
    pub fn for_tenants(resolver: impl TenantResolver) -> Self {
        // Its secret is never used: every request is verified with its
        // tenant's secrets, and this verifier's tolerance and clock.
        let unused = Verifier::new(crate::store::ClaimToken::random().as_str())
            .expect("a token is never empty");
        let mut layer = Self::from_verifier(unused);
        layer.config_mut().tenants = Some(Arc::new(resolver));
        layer
    }

    fn config_mut(&mut self) -> &mut VerifyConfig {
        Arc::make_mut(&mut self.config)
    }

    /// Whether this layer serves several workspaces
    /// ([`for_tenants`](Self::for_tenants)).
    pub fn is_for_tenants(&self) -> bool {
        self.config.tenants.is_some()
    }

    fn refuse_on_tenant_layer(&self, what: &str) {
        assert!(
            !self.is_for_tenants(),
            "{what} on a tenant layer: each tenant is verified with its own secrets, \
             so give them to the Tenant's Verifier in the resolver"
        );
    }

    /// Also accepts deliveries signed with `secret`, for rolling secrets
    /// without downtime.
    ///
    /// # Panics
    ///
    /// If `secret` is empty, like [`new`](Self::new), and on a layer made
    /// by [`for_tenants`](Self::for_tenants), whose secrets are each
    /// tenant's: a secret here would never be used.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.refuse_on_tenant_layer("secret()");
        let secret = Secret::new(secret).unwrap_or_else(|e| panic!("{e}"));
        let config = self.config_mut();
        config.verifier = config.verifier.clone().with_secret(secret);
        self
    }

    /// How far the signature's timestamp may be from now, either way
    /// (default 300 s). On a tenant layer, for every tenant whose verifier
    /// sets none.
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        let config = self.config_mut();
        config.verifier = config.verifier.clone().tolerance(tolerance);
        self
    }

    /// Where "now" comes from (default: the system clock). On a tenant
    /// layer, for every tenant whose verifier sets none.
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

    /// The verifier this layer uses. On a tenant layer, the one whose
    /// tolerance and clock the tenants' verifiers inherit; its secret is
    /// never used.
    pub fn verifier(&self) -> &Verifier {
        &self.config.verifier
    }

    /// The handle to this layer's secrets, to add, replace and remove them
    /// while it serves. Take it once the layer is configured: a later
    /// [`secret`](Self::secret) gives the layer a new set.
    ///
    /// # Panics
    ///
    /// On a layer made by [`for_tenants`](Self::for_tenants): its secrets
    /// are each tenant's, behind the resolver (keep each tenant's
    /// [`Verifier::secrets`] handle there). See
    /// [`try_secrets`](Self::try_secrets).
    pub fn secrets(&self) -> &crate::verify::Secrets {
        self.refuse_on_tenant_layer("secrets()");
        self.config.verifier.secrets()
    }

    /// The handle to this layer's secrets, or `None` on a tenant layer.
    pub fn try_secrets(&self) -> Option<&crate::verify::Secrets> {
        (!self.is_for_tenants()).then(|| self.config.verifier.secrets())
    }
}

impl<S> Layer<S> for VerificationLayer {
    type Service = VerificationService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerificationService {
            inner,
            config: self.config.clone(),
        }
    }
}
