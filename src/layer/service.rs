use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_service::Service;
use tracing::{field, Instrument, Span};

use super::future::{ResponseBody, ResponseFuture};
use super::layer::Config;
use super::run::RunOutcome;
use crate::body::BytesBody;
use crate::delivery::VerifiedDelivery;
use crate::model::{Envelope, EventId, ParseError};
use crate::rejection::{acknowledge, Outcome, Rejection};
use crate::store::Claim;
use crate::verify::is_valid_delivery_id;

/// `X-Cariosan-Delivery`.
pub const DELIVERY_HEADER: HeaderName = HeaderName::from_static("x-cariosan-delivery");
/// `X-Cariosan-Event`.
pub const EVENT_HEADER: HeaderName = HeaderName::from_static("x-cariosan-event");
/// `X-Cariosan-Attempt`.
pub const ATTEMPT_HEADER: HeaderName = HeaderName::from_static("x-cariosan-attempt");
/// `X-Cariosan-Signature`.
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("x-cariosan-signature");

/// Longest `X-Cariosan-Event` value accepted.
const MAX_EVENT_TYPE_LEN: usize = 128;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The [`Service`] made by [`CariosanWebhookLayer`](super::CariosanWebhookLayer).
///
/// The inner service receives only verified requests: a
/// `Request<`[`BytesBody`]`>` holding the raw body, with a
/// [`VerifiedDelivery`] extension holding the parsed envelope.
#[derive(Clone, Debug)]
pub struct CariosanWebhookService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> CariosanWebhookService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }
}

/// The headers a delivery must carry, checked before the body is read.
/// The values share the request's buffer: no copies.
struct DeliveryHeaders {
    id: HeaderValue,
    event_type: HeaderValue,
    signature: HeaderValue,
    attempt: Option<u32>,
}

impl DeliveryHeaders {
    fn text(value: &HeaderValue) -> &str {
        // Checked to be visible ASCII in check_request.
        value.to_str().unwrap_or_default()
    }

    fn id(&self) -> &str {
        Self::text(&self.id)
    }

    fn event_type(&self) -> &str {
        Self::text(&self.event_type)
    }

    fn signature(&self) -> &str {
        Self::text(&self.signature)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CariosanWebhookService<S>
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
            delivery_id = field::Empty,
            event_type = field::Empty,
            attempt = field::Empty,
            status = field::Empty,
            outcome = field::Empty,
        );
        let headers = match span.in_scope(|| check_request(&request, &self.config)) {
            Ok(headers) => headers,
            Err(rejection) => {
                return ResponseFuture::rejected(span.in_scope(|| reject(&rejection)));
            }
        };
        // The service that was polled ready is the one to call; a fresh
        // clone stays behind for the next request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let future = verify_and_call(inner, config, request, headers);
        ResponseFuture::running(Box::pin(future.instrument(span)))
    }
}

async fn verify_and_call<S, ReqBody, ResBody>(
    mut inner: S,
    config: Arc<Config>,
    request: Request<ReqBody>,
    headers: DeliveryHeaders,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<BytesBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    let (mut parts, body) = request.into_parts();
    let (bytes, delivery) = match read_and_verify(body, &config, &headers).await {
        Ok(verified) => verified,
        Err(rejection) => return Ok(own(reject(&rejection))),
    };
    let deliveries = &config.deliveries;
    let retry_after = deliveries.retry_after;
    if deliveries.tracker.is_closing() {
        return Ok(own(reject(&Rejection::ShuttingDown { retry_after })));
    }
    let Ok(permit) = deliveries.limiter.clone().try_acquire_owned() else {
        return Ok(own(reject(&Rejection::Overloaded { retry_after })));
    };
    let token = match deliveries.store.claim(headers.id(), deliveries.lease).await {
        Ok(Claim::Claimed(token)) => token,
        Ok(Claim::Completed) => {
            record(200, "duplicate");
            tracing::info!(
                "duplicate of a handled delivery: acknowledged without running handlers"
            );
            return Ok(own(acknowledge("duplicate")));
        }
        Ok(Claim::InProgress { .. }) => {
            return Ok(own(reject(&Rejection::DeliveryInProgress { retry_after })));
        }
        Err(error) => {
            tracing::error!(%error, "the idempotency store is unavailable");
            return Ok(own(reject(&Rejection::StoreUnavailable { retry_after })));
        }
    };
    parts.extensions.insert(delivery);
    let call = inner.call(Request::from_parts(parts, BytesBody::from(bytes)));
    let outcome = deliveries
        .run(headers.id.clone(), token, permit, call)
        .await;
    let response = match outcome {
        Some(RunOutcome::Finished(result)) => result?,
        Some(RunOutcome::Panicked) => return Ok(own(reject(&Rejection::HandlerPanicked))),
        Some(RunOutcome::Abandoned) => {
            return Ok(own(reject(&Rejection::ShuttingDown { retry_after })))
        }
        None => return Ok(own(reject(&Rejection::HandlerStillRunning { retry_after }))),
    };
    let outcome = response.extensions().get::<Outcome>().map_or_else(
        || {
            if response.status().is_success() {
                "handled"
            } else {
                "failed"
            }
        },
        |outcome| outcome.0,
    );
    record(response.status().as_u16(), outcome);
    tracing::debug!(
        status = response.status().as_u16(),
        outcome,
        "delivery answered"
    );
    Ok(response.map(ResponseBody::inner))
}

/// The crate's own response, in the layer's body type.
fn own<B>(response: Response<BytesBody>) -> Response<ResponseBody<B>> {
    response.map(ResponseBody::own)
}

/// Records the answer on the delivery's span.
fn record(status: u16, outcome: &str) {
    let span = Span::current();
    span.record("status", status);
    span.record("outcome", outcome);
}

/// Reads the body within the limits, verifies it, parses it, and checks the
/// envelope against the headers: everything between the headers and the
/// inner service.
async fn read_and_verify<B>(
    body: B,
    config: &Config,
    headers: &DeliveryHeaders,
) -> Result<(Bytes, VerifiedDelivery), Rejection>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let collected = tokio::time::timeout(
        config.body_timeout,
        Limited::new(body, config.body_limit).collect(),
    )
    .await;
    let bytes = match collected {
        Err(_elapsed) => return Err(Rejection::BodyTimeout),
        Ok(Err(error)) if error.is::<LengthLimitError>() => return Err(Rejection::BodyTooLarge),
        Ok(Err(_)) => return Err(Rejection::BodyReadFailed),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let verified = config
        .verifier
        .verify(headers.id(), headers.signature(), &bytes)
        .map_err(Rejection::Verification)?;
    let payload = match Envelope::from_slice(&bytes) {
        Ok(envelope) => Ok(envelope),
        Err(ParseError::MalformedData(malformed)) => Err(malformed),
        Err(error) => return Err(Rejection::InvalidEnvelope(error)),
    };
    let (id, event_type) = match &payload {
        Ok(envelope) => (envelope.id.as_str(), envelope.event_type()),
        Err(malformed) => (malformed.id().as_str(), malformed.event_type()),
    };
    if id != headers.id() {
        return Err(Rejection::EnvelopeMismatch { field: "id" });
    }
    if event_type != headers.event_type() {
        return Err(Rejection::EnvelopeMismatch { field: "type" });
    }
    if let Err(malformed) = &payload {
        tracing::error!(error = %malformed.error(), "event data does not fit the model");
    }
    let delivery = VerifiedDelivery::new(
        EventId::new(headers.id()),
        headers.attempt,
        verified.timestamp(),
        payload,
    );
    Ok((bytes, delivery))
}

/// Logs a rejection on the delivery's span and builds its response.
fn reject(rejection: &Rejection) -> Response<BytesBody> {
    record(rejection.status().as_u16(), rejection.code());
    tracing::warn!(code = rejection.code(), "delivery rejected: {rejection}");
    rejection.to_response()
}

/// Everything that can be checked before reading the body, in order.
fn check_request<B: Body>(
    request: &Request<B>,
    config: &Config,
) -> Result<DeliveryHeaders, Rejection> {
    if request.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed);
    }
    let headers = request.headers();
    let id = match single(headers, &DELIVERY_HEADER) {
        Ok(None) => return Err(Rejection::MissingDeliveryId),
        Ok(Some(value)) => value
            .to_str()
            .ok()
            .filter(|id| is_valid_delivery_id(id))
            .ok_or(Rejection::InvalidDeliveryId)?,
        Err(()) => return Err(Rejection::InvalidDeliveryId),
    };
    let span = Span::current();
    span.record("delivery_id", id);
    let event_type = match single(headers, &EVENT_HEADER) {
        Ok(None) => return Err(Rejection::MissingEventType),
        Ok(Some(value)) => value
            .to_str()
            .ok()
            .filter(|t| is_valid_event_type(t))
            .ok_or(Rejection::InvalidEventType)?,
        Err(()) => return Err(Rejection::InvalidEventType),
    };
    span.record("event_type", event_type);
    let attempt = headers
        .get(&ATTEMPT_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
    if let Some(attempt) = attempt {
        span.record("attempt", attempt);
    }
    match single(headers, &SIGNATURE_HEADER) {
        Ok(None) => {
            return Err(Rejection::Verification(
                crate::verify::VerifyError::MissingSignature,
            ))
        }
        Ok(Some(value)) if value.to_str().is_err() => return Err(malformed_signature()),
        Ok(Some(_)) => {}
        Err(()) => return Err(malformed_signature()),
    }
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
    // Each was found exactly once and checked above; cloning a value shares
    // its bytes.
    let value = |name: &HeaderName| {
        headers
            .get(name)
            .cloned()
            .unwrap_or(HeaderValue::from_static(""))
    };
    Ok(DeliveryHeaders {
        id: value(&DELIVERY_HEADER),
        event_type: value(&EVENT_HEADER),
        signature: value(&SIGNATURE_HEADER),
        attempt,
    })
}

/// The header's only value; `Err` when it is repeated.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a HeaderValue>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (first, None) => Ok(first),
        (Some(_), Some(_)) | (None, Some(_)) => Err(()),
    }
}

fn malformed_signature() -> Rejection {
    Rejection::Verification(crate::verify::VerifyError::MalformedSignature(
        crate::verify::MalformedSignature::BadElement,
    ))
}

/// A plain token such as `message.created`: visible ASCII, no spaces.
fn is_valid_event_type(event_type: &str) -> bool {
    (1..=MAX_EVENT_TYPE_LEN).contains(&event_type.len())
        && event_type.bytes().all(|b| b.is_ascii_graphic())
}
