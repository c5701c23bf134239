//! The verification layer: nothing but signed, well-formed deliveries get
//! through.
//!
//! [`VerificationLayer`] works on a request in this order, answering at the
//! first failure:
//!
//! 1. the method is `POST` (else `405`, with `Allow: POST`);
//! 2. `X-Cariosan-Delivery` and `X-Cariosan-Event` are present once and
//!    well-formed (else `400`), `X-Cariosan-Signature` is present once
//!    (else `401`), and the body has no `Content-Encoding` (else `415`);
//! 3. a `Content-Length` over the limit is answered `413` before any byte
//!    of the body is read;
//! 4. the body is read within the limit (`413`, chunked bodies included)
//!    and the read timeout (`408`);
//! 5. the signature and its timestamp are verified (`401`);
//! 6. the signed body is parsed once into the typed model (`400` when it is
//!    not an envelope) and its `id` and `type` must equal the headers
//!    (`400`);
//! 7. the request goes on with the raw body and a
//!    [`VerifiedDelivery`](crate::VerifiedDelivery) extension.
//!
//! Steps 2, 5 and 6 are [`Verifier::verify_delivery`](crate::verify::Verifier::verify_delivery),
//! which any framework can call. Every rejection is a [`Rejection`]. The
//! layer opens the `cariosan_webhook` tracing span of the delivery (with
//! its id, event type, attempt, status and outcome) and logs each outcome
//! at `info`; bodies, secrets and MACs are never logged.

mod layer;
mod rejection;
mod service;
mod tenant;

pub use layer::{VerificationLayer, DEFAULT_BODY_LIMIT, DEFAULT_BODY_TIMEOUT};
pub use rejection::Rejection;
pub use service::VerificationService;
pub use tenant::{Tenant, TenantQuery, TenantResolver};
