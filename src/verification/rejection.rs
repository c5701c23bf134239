//! What the verification layer answers instead of passing a request on.

use std::fmt;

use http::{header, HeaderValue, Response, StatusCode};

use crate::response::{answer, BytesBody};
use crate::verify::DeliveryError;

/// Why the verification layer refused a request: it is not a signed,
/// well-formed Cariosan delivery. Nothing behind the layer saw it.
///
/// Each variant has a fixed [`status`](Self::status) and
/// [`code`](Self::code); the response body is the code alone.
#[derive(Debug)]
#[non_exhaustive]
pub enum Rejection {
    /// Not a `POST`. `405 method_not_allowed`, with `Allow: POST`.
    MethodNotAllowed,
    /// The body has a `Content-Encoding`: the signature covers the bytes as
    /// sent, which the protocol never encodes.
    /// `415 content_encoding_unsupported`.
    UnsupportedEncoding,
    /// The body is over the limit. `413 body_too_large`.
    BodyTooLarge,
    /// The body did not arrive within the read timeout. `408 body_timeout`.
    BodyTimeout,
    /// Reading the body failed (the client went away, say).
    /// `400 body_read_failed`.
    BodyReadFailed,
    /// The headers, the signature or the envelope did not verify: `400` or
    /// `401` with the [`DeliveryError::code`].
    Delivery(DeliveryError),
    /// The tenant resolver knows no tenant for this request.
    /// `404 unknown_tenant`.
    UnknownTenant,
    /// The tenant resolver failed or did not answer in time.
    /// `503 store_unavailable` with `Retry-After`.
    TenantUnavailable,
}

impl Rejection {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyReadFailed => StatusCode::BAD_REQUEST,
            Self::Delivery(error) => {
                StatusCode::from_u16(error.status_code()).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::UnknownTenant => StatusCode::NOT_FOUND,
            Self::TenantUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short, stable, machine-readable code: the whole response body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UnsupportedEncoding => "content_encoding_unsupported",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::BodyReadFailed => "body_read_failed",
            Self::Delivery(error) => error.code(),
            Self::UnknownTenant => "unknown_tenant",
            Self::TenantUnavailable => "store_unavailable",
        }
    }

    /// The body of the answer: the code.
    pub fn body_text(&self) -> &'static str {
        self.code()
    }

    /// The answer as an HTTP response: the status, the code as
    /// `text/plain`, and `Allow: POST` on a 405.
    pub fn to_response(&self) -> Response<BytesBody> {
        let retry_after =
            matches!(self, Self::TenantUnavailable).then_some(crate::delivery::DEFAULT_RETRY_AFTER);
        let mut response = answer(self.status(), self.code(), retry_after);
        if matches!(self, Self::MethodNotAllowed) {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MethodNotAllowed => f.write_str("Failed to accept the delivery: not a POST"),
            Self::UnsupportedEncoding => {
                f.write_str("Failed to accept the delivery: the body has a content encoding")
            }
            Self::BodyTooLarge => f.write_str("Failed to read the body: it is over the limit"),
            Self::BodyTimeout => f.write_str("Failed to read the body in time"),
            Self::BodyReadFailed => f.write_str("Failed to read the body"),
            Self::Delivery(error) => fmt::Display::fmt(error, f),
            Self::UnknownTenant => {
                f.write_str("Failed to accept the delivery: no tenant for this request")
            }
            Self::TenantUnavailable => {
                f.write_str("Failed to resolve the request's tenant in time")
            }
        }
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // `Delivery` shows its error in `Display` already.
        None
    }
}

impl From<DeliveryError> for Rejection {
    fn from(error: DeliveryError) -> Self {
        Self::Delivery(error)
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Rejection {
    fn into_response(self) -> axum_core::response::Response {
        self.to_response().map(axum_core::body::Body::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{EnvelopeField, MalformedSignature, VerifyError};

    #[test]
    fn each_rejection_has_its_status_code_and_headers() {
        let cases: [(Rejection, u16, &str); 9] = [
            (Rejection::MethodNotAllowed, 405, "method_not_allowed"),
            (
                Rejection::UnsupportedEncoding,
                415,
                "content_encoding_unsupported",
            ),
            (Rejection::BodyTooLarge, 413, "body_too_large"),
            (Rejection::BodyTimeout, 408, "body_timeout"),
            (Rejection::BodyReadFailed, 400, "body_read_failed"),
            (
                DeliveryError::MissingDeliveryId.into(),
                400,
                "delivery_header_missing",
            ),
            (
                DeliveryError::Signature(VerifyError::MalformedSignature(
                    MalformedSignature::TooLong,
                ))
                .into(),
                401,
                "signature_malformed",
            ),
            (
                DeliveryError::Signature(VerifyError::NoMatchingSignature).into(),
                401,
                "signature_mismatch",
            ),
            (
                DeliveryError::EnvelopeMismatch(EnvelopeField::Type).into(),
                400,
                "envelope_mismatch",
            ),
        ];
        for (rejection, status, code) in cases {
            let response = rejection.to_response();
            assert_eq!(
                (response.status().as_u16(), rejection.code()),
                (status, code)
            );
            assert_eq!(
                response.headers().contains_key(header::ALLOW),
                status == 405,
                "{code}"
            );
            assert!(
                !response.headers().contains_key(header::RETRY_AFTER),
                "{code}"
            );
        }
    }

    #[test]
    fn display_names_the_detail_once() {
        let rejection = Rejection::from(DeliveryError::Signature(VerifyError::MalformedSignature(
            MalformedSignature::TooLong,
        )));
        let text = rejection.to_string();
        assert_eq!(text.matches("too long").count(), 1, "{text}");
        assert!(std::error::Error::source(&rejection).is_none());
    }
}
