use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_service::Service;
use tracing::{field, Instrument, Span};

use super::layer::VerifyConfig;
use super::rejection::Rejection;
use super::tenant::TenantQuery;
use crate::future::ResponseFuture;
use crate::response::{code_of, own, BytesBody, ResponseBody};
use crate::verify::{Clock, DeliveryHeaders};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The [`Service`] made by [`VerificationLayer`](super::VerificationLayer).
///
/// The inner service receives only verified requests: a
/// `Request<`[`BytesBody`]`>` holding the raw body, with a
/// [`VerifiedDelivery`](crate::VerifiedDelivery) extension holding the parsed envelope.
#[derive(Clone, Debug)]
pub struct VerificationService<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<VerifyConfig>,
}

crate::macros::accessors!(VerificationService);

impl<S> VerificationService<S> {
    /// `inner` behind a verification layer with the defaults, verifying
    /// with `verifier`.
    pub fn new(inner: S, verifier: crate::verify::Verifier) -> Self {
        tower_layer::Layer::layer(&Self::layer(verifier), inner)
    }

    /// A [`VerificationLayer`](super::VerificationLayer) with the defaults,
    /// verifying with `verifier`.
    pub fn layer(verifier: crate::verify::Verifier) -> super::VerificationLayer {
        super::VerificationLayer::from_verifier(verifier)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for VerificationService<S>
where
    S: Service<Request<BytesBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let span = tracing::info_span!(
            "cariosan_webhook",
            tenant = field::Empty,
            delivery_id = field::Empty,
            event_type = field::Empty,
            attempt = field::Empty,
            status = field::Empty,
            outcome = field::Empty,
        );
        if let Err(rejection) = span.in_scope(|| check_request(&request, &self.config)) {
            let event_type = header_event_type(request.headers());
            return ResponseFuture::ready(own(span.in_scope(|| reject(&rejection, event_type))));
        }
        // The service that was polled ready is the one to call; a fresh
        // clone stays behind for the next request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        ResponseFuture::running(Box::pin(
            verify_and_call(inner, config, request).instrument(span),
        ))
    }
}

async fn verify_and_call<S, ReqBody, ResBody>(
    mut inner: S,
    config: Arc<VerifyConfig>,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<BytesBody>, Response = Response<ResBody>>,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let deadline = tokio::time::Instant::now() + config.body_timeout;
    let tenant = match &config.tenants {
        None => None,
        Some(resolver) => {
            let query = TenantQuery {
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
            };
            let rejection = match tokio::time::timeout_at(deadline, resolver.resolve(query)).await {
                Ok(Ok(Some(tenant))) => {
                    let (id, verifier) = tenant.into_parts();
                    Span::current().record("tenant", &*id);
                    Ok((id, verifier.inheriting(&config.verifier)))
                }
                Ok(Ok(None)) => {
                    tracing::warn!(
                        path = crate::truncated(parts.uri.path(), 200),
                        "no tenant for this request's path or headers"
                    );
                    Err(Rejection::UnknownTenant)
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "the tenant resolver failed");
                    Err(Rejection::TenantUnavailable)
                }
                Err(_elapsed) => {
                    tracing::error!("the tenant resolver did not answer within the body timeout");
                    Err(Rejection::TenantUnavailable)
                }
            };
            match rejection {
                Ok(tenant) => Some(tenant),
                Err(rejection) => {
                    return Ok(own(reject(&rejection, header_event_type(&parts.headers))))
                }
            }
        }
    };
    let bytes = match read_body(body, &config, deadline).await {
        Ok(bytes) => bytes,
        Err(rejection) => return Ok(own(reject(&rejection, header_event_type(&parts.headers)))),
    };
    let verifier = tenant
        .as_ref()
        .map_or(&config.verifier, |(_, verifier)| verifier);
    let verified = DeliveryHeaders::from_header_map(&parts.headers)
        .and_then(|headers| verifier.verify_delivery(&headers, &bytes));
    let delivery = match verified {
        Ok(delivery) => delivery.with_tenant(tenant.map(|(id, _)| id)),
        Err(error) => {
            let event_type = header_event_type(&parts.headers);
            return Ok(own(reject(&Rejection::Delivery(error), event_type)));
        }
    };
    crate::metrics::verified(
        delivery.signed_at(),
        crate::verify::SystemClock.now(),
        delivery.secret_index(),
    );
    let event_type = crate::metrics::event_label(delivery.event_type());
    if let Some(malformed) = delivery.malformed() {
        tracing::error!(error = %malformed.error(), "event data does not fit the model");
    }
    parts.extensions.insert(delivery);
    let response = inner
        .call(Request::from_parts(parts, BytesBody::from(bytes)))
        .await?;
    let status = response.status().as_u16();
    let outcome = code_of(&response).unwrap_or(if response.status().is_success() {
        "handled"
    } else {
        "failed"
    });
    record(status, outcome);
    crate::metrics::delivery_answered(status, outcome, event_type);
    tracing::info!(status, outcome, "delivery answered");
    Ok(response.map(ResponseBody::inner))
}

/// Reads the body within the limit, by the deadline.
async fn read_body<B>(
    body: B,
    config: &VerifyConfig,
    deadline: tokio::time::Instant,
) -> Result<Bytes, Rejection>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let collected =
        tokio::time::timeout_at(deadline, Limited::new(body, config.body_limit).collect()).await;
    match collected {
        Err(_elapsed) => Err(Rejection::BodyTimeout),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(Rejection::BodyTooLarge),
        Ok(Err(_)) => Err(Rejection::BodyReadFailed),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Records the answer on the delivery's span.
fn record(status: u16, outcome: &str) {
    let span = Span::current();
    span.record("status", status);
    span.record("outcome", outcome);
}

/// The `X-Cariosan-Event` value, for a label: `unknown` unless it is a
/// type this version knows.
fn header_event_type(headers: &http::HeaderMap) -> &'static str {
    headers
        .get(&crate::protocol::header::EVENT)
        .and_then(|v| v.to_str().ok())
        .map_or("unknown", crate::metrics::event_label)
}

/// Logs a rejection on the delivery's span and builds its response.
fn reject(rejection: &Rejection, event_type: &str) -> Response<BytesBody> {
    record(rejection.status().as_u16(), rejection.code());
    crate::metrics::delivery_answered(rejection.status().as_u16(), rejection.code(), event_type);
    tracing::warn!(code = rejection.code(), "delivery rejected: {rejection}");
    rejection.to_response()
}

/// Everything that can be checked before reading the body, in order.
fn check_request<B: Body>(request: &Request<B>, config: &VerifyConfig) -> Result<(), Rejection> {
    if request.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed);
    }
    let headers = request.headers();
    let delivery = DeliveryHeaders::from_header_map(headers)?;
    let span = Span::current();
    if crate::protocol::is_valid_delivery_id(delivery.delivery_id) {
        span.record("delivery_id", delivery.delivery_id);
    }
    if crate::protocol::is_valid_event_type(delivery.event_type) {
        span.record("event_type", delivery.event_type);
    }
    if let Some(attempt) = delivery.attempt {
        span.record("attempt", attempt);
    }
    delivery.check()?;
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|encoding| !encoding.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(Rejection::UnsupportedEncoding);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let limit = config.body_limit as u64;
    if declared.is_some_and(|len| len > limit) || request.body().size_hint().lower() > limit {
        return Err(Rejection::BodyTooLarge);
    }
    Ok(())
}
