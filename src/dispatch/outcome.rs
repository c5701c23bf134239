use std::time::Duration;

use http::{Response, StatusCode};

use super::error::HandlerError;
use super::resources::MissingResource;
use crate::response::{answer, Answer, BytesBody};

/// How [`Webhooks::handle`](super::Webhooks::handle) ended for one
/// delivery, and what the sender is told over HTTP.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Outcome {
    /// Every matching handler returned `Ok(())`. `200 handled`.
    Handled,
    /// No handler matched. `200 ignored`.
    Ignored,
    /// A handler returned [`HandlerError::give_up`]: acknowledged
    /// unhandled, and reported to the `on_give_up` hook. `200 given_up`.
    GivenUp(HandlerError),
    /// A handler (or the `on_give_up` hook) returned an error.
    /// `500 handler_failed`.
    Failed(HandlerError),
    /// A handler panicked. `500 handler_panicked`.
    Panicked,
    /// The envelope's data does not fit the model and no `on_malformed`
    /// handler took it. `500 event_malformed`, so the sender keeps it for
    /// two days of retries while the receiver is fixed.
    Malformed,
    /// A handler returned [`HandlerError::retry_later`].
    /// `503 retry_later` with `Retry-After`.
    RetryLater(HandlerError),
    /// A matching handler takes a resource that what runs it did not
    /// provide (see [`Webhooks::check_resources`](super::Webhooks::check_resources)):
    /// no handler ran. `500 resource_missing`.
    ResourceMissing(MissingResource),
}

impl Outcome {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Handled | Self::Ignored | Self::GivenUp(_) => StatusCode::OK,
            Self::Failed(_) | Self::Panicked | Self::Malformed | Self::ResourceMissing(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::RetryLater(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short, stable code: the whole answer's body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Ignored => "ignored",
            Self::GivenUp(_) => "given_up",
            Self::Failed(_) => "handler_failed",
            Self::Panicked => "handler_panicked",
            Self::Malformed => "event_malformed",
            Self::RetryLater(_) => "retry_later",
            Self::ResourceMissing(_) => "resource_missing",
        }
    }

    /// Whether the sender is told the delivery is done (a 2xx).
    pub fn is_acknowledged(&self) -> bool {
        self.status().is_success()
    }

    /// The `Retry-After` of a [`RetryLater`](Self::RetryLater).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RetryLater(error) => error.retry_after(),
            _ => None,
        }
    }

    /// The answer as an HTTP response.
    pub fn to_response(&self) -> Response<BytesBody> {
        let mut response = answer(self.status(), self.code(), self.retry_after());
        if let Self::GivenUp(_) = self {
            response.extensions_mut().insert(Answer {
                code: self.code(),
                given_up: true,
            });
        }
        response
    }
}
