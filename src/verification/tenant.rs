//! Several workspaces behind one receiver, each with its own secrets.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::verify::Verifier;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a [`TenantResolver`] sees of a request: everything but the body,
/// which is not read until the tenant is known.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TenantQuery {
    /// The request's URI: a path parameter (`/webhooks/{tenant}`) is in it.
    pub uri: http::Uri,
    /// The request's headers: the `Host`, or a header of your choice.
    pub headers: http::HeaderMap,
}

impl TenantQuery {
    /// The last segment of the path: `acme` for `/webhooks/acme`.
    pub fn last_path_segment(&self) -> Option<&str> {
        self.uri
            .path()
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
    }

    /// The `Host` header without its port.
    pub fn host(&self) -> Option<&str> {
        let host = self.headers.get(http::header::HOST)?.to_str().ok()?;
        Some(host.split(':').next().unwrap_or(host))
    }
}

/// One workspace: its name, which joins the delivery id in every store's
/// key (Cariosan's delivery ids are unique per endpoint only), and the
/// verifier of its secrets.
#[derive(Clone, Debug)]
pub struct Tenant {
    id: Arc<str>,
    verifier: Verifier,
}

impl Tenant {
    /// A tenant named `id`, verified by `verifier`.
    pub fn new(id: impl Into<Arc<str>>, verifier: Verifier) -> Self {
        Self {
            id: id.into(),
            verifier,
        }
    }

    /// The tenant's name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The tenant's verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub(crate) fn into_parts(self) -> (Arc<str>, Verifier) {
        (self.id, self.verifier)
    }
}

/// Chooses the tenant of a request before its body is read: from a path
/// parameter, the host, or a header. It is async, so that it can look the
/// secrets up in a database (behind a cache of yours). `Ok(None)` is an
/// unknown tenant, answered `404 unknown_tenant`; an error, or no answer
/// within the layer's body timeout, is `503 store_unavailable`.
///
/// Any `Fn(TenantQuery) -> impl Future<Output = Result<Option<Tenant>, E>>`
/// is a resolver.
pub trait TenantResolver: Send + Sync + 'static {
    /// The tenant of this request, if any.
    fn resolve(&self, query: TenantQuery) -> BoxFuture<'static, Result<Option<Tenant>, BoxError>>;
}

impl<F, Fut, E> TenantResolver for F
where
    F: Fn(TenantQuery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Tenant>, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn resolve(&self, query: TenantQuery) -> BoxFuture<'static, Result<Option<Tenant>, BoxError>> {
        let resolving = self(query);
        Box::pin(async move { resolving.await.map_err(Into::into) })
    }
}
