use std::error::Error;
use std::fmt;
use std::time::Duration;

/// What a handler returns: `Ok(())` once the event is durably handled (the
/// delivery is then acknowledged), an error otherwise.
pub type HandlerResult = Result<(), HandlerError>;

/// A handler's failure, and what the sender should be told.
///
/// Any `std::error::Error` converts with `?` and answers `500`, so Cariosan
/// retries. [`retry_later`](Self::retry_later) answers `503` with
/// `Retry-After`; [`give_up`](Self::give_up) acknowledges the delivery
/// without handling it and reports it to the
/// [`on_give_up`](crate::Webhooks::on_give_up) hook.
///
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself.
pub struct HandlerError {
    source: Box<dyn Error + Send + Sync + 'static>,
    directive: Directive,
}

/// What the sender is told about a failed handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Directive {
    Fail,
    RetryAfter(Duration),
    GiveUp,
}

impl HandlerError {
    /// An error with this message (answered `500`).
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::with(Directive::Fail, message)
    }

    /// Asks Cariosan to retry after `after` (answered `503` with
    /// `Retry-After`): a dependency is down, say, and retrying sooner is
    /// pointless.
    pub fn retry_later(after: Duration, reason: impl fmt::Display) -> Self {
        Self::with(Directive::RetryAfter(after), reason)
    }

    /// Gives up on this delivery: it is acknowledged (`200 given_up`) so
    /// Cariosan stops retrying, and reported to the `on_give_up` hook. For
    /// events the application can never handle.
    pub fn give_up(reason: impl fmt::Display) -> Self {
        Self::with(Directive::GiveUp, reason)
    }

    fn with(directive: Directive, message: impl fmt::Display) -> Self {
        Self {
            source: Box::new(Message(message.to_string())),
            directive,
        }
    }

    pub(crate) fn directive(&self) -> Directive {
        self.directive
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl<E> From<E> for HandlerError
where
    E: Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        Self {
            source: Box::new(error),
            directive: Directive::Fail,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.source, f)
    }
}

#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Message {}
