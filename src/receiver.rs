//! The whole receiving contract for a framework that is not tower-based:
//! verification, then the delivery semantics (claim, complete, release,
//! budget, `max_run_time`, concurrency, shutdown), then your handlers,
//! with the answer as a status, a short code and headers.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower_layer::Layer;
use tower_service::Service;

use crate::delivery::ShutdownHandle;
use crate::dispatch::{MissingResource, Webhooks};
use crate::layer::{CariosanWebhookLayer, CariosanWebhookService};

/// A [`CariosanWebhookLayer`] around [`Webhooks`], callable from any
/// framework: hand it the request's method, path, headers and raw body,
/// and send back the [`Answer`]. Every delivery then gets exactly what the
/// tower layer gives it: a duplicate is `200 duplicate`, concurrent copies
/// run once, the budget and `max_run_time` hold, a drain stops it.
///
/// ```no_run
/// use cariosan_webhooks::{CariosanWebhookLayer, Receiver, Webhooks};
///
/// # async fn example(body: bytes::Bytes) {
/// let receiver = Receiver::new(
///     CariosanWebhookLayer::new("whsec_..."),
///     Webhooks::new().on_message_created(|_| async { Ok(()) }),
/// );
/// // In the framework's handler, from its request:
/// let headers = [("x-cariosan-delivery", b"evt_1".as_slice())];
/// let answer = receiver
///     .receive("POST", "/webhooks/cariosan", headers, body)
///     .await;
/// // Answer with answer.status(), answer.headers() and answer.code().
/// # }
/// ```
///
/// Cheap to clone: the configuration and the handlers are shared.
#[derive(Clone, Debug)]
pub struct Receiver<S = ()> {
    service: CariosanWebhookService<Webhooks<S>>,
    shutdown: ShutdownHandle,
}

impl<S> Receiver<S>
where
    S: Clone + Send + Sync + 'static,
{
    /// `webhooks` behind `layer`.
    ///
    /// # Panics
    ///
    /// If a handler takes a resource the layer's backend does not provide
    /// (see [`CariosanWebhookLayer::check`]). [`try_new`](Self::try_new)
    /// returns the error.
    pub fn new(layer: CariosanWebhookLayer, webhooks: Webhooks<S>) -> Self {
        Self::try_new(layer, webhooks).unwrap_or_else(|missing| panic!("{missing}"))
    }

    /// `webhooks` behind `layer`, or the resource a handler takes that the
    /// layer's backend does not provide.
    pub fn try_new(
        layer: CariosanWebhookLayer,
        webhooks: Webhooks<S>,
    ) -> Result<Self, MissingResource> {
        layer.check(&webhooks)?;
        Ok(Self {
            shutdown: layer.shutdown_handle(),
            service: layer.layer(webhooks),
        })
    }

    /// The handle to drain this receiver on shutdown; see
    /// [`ShutdownHandle::drain`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Receives one request: `method` and `path` (with its query, if any)
    /// as the framework saw them, every header as a name and raw value,
    /// and the body as received. Headers that are not valid HTTP are
    /// dropped; a request that is not a valid HTTP request at all is
    /// answered `400`.
    pub async fn receive<'a>(
        &self,
        method: &str,
        path: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        body: Bytes,
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes());
            let value = http::HeaderValue::from_bytes(value);
            if let (Ok(name), Ok(value)) = (name, value) {
                builder = builder.header(name, value);
            }
        }
        match builder.body(Full::new(body)) {
            Ok(request) => self.receive_request(request).await,
            Err(_) => Answer {
                status: StatusCode::BAD_REQUEST,
                code: "bad_request".to_owned(),
                headers: HeaderMap::new(),
            },
        }
    }

    /// [`receive`](Self::receive), for a framework that has an
    /// `http::Request` already.
    pub async fn receive_request(&self, request: Request<Full<Bytes>>) -> Answer {
        let mut service = self.service.clone();
        let response = match service.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let code = match body.collect().await {
            Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            Err(never) => match never {},
        };
        Answer {
            status: parts.status,
            code,
            headers: parts.headers,
        }
    }
}

/// What a [`Receiver`] answers: send the status, the headers and the code
/// as a `text/plain` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    status: StatusCode,
    code: String,
    headers: HeaderMap,
}

impl Answer {
    /// The status, as a number.
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// The short code (`handled`, `duplicate`, `signature_mismatch`, ...),
    /// which is also the body.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// When the sender should retry, for a `503`.
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
        value.parse().ok().map(Duration::from_secs)
    }

    /// Every header to send (`Content-Type`, `Retry-After`, `Allow`), as
    /// names and text values.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
    }
}
