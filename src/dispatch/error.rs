use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What a handler returns: `Ok(())` once the event is durably handled (the
/// delivery is then acknowledged), an error otherwise.
pub type HandlerResult = Result<(), HandlerError>;

type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// A handler's failure, and what the sender should be told.
///
/// `?` converts any error into one, keeping its chain: every
/// `std::error::Error`, `anyhow::Error`, `Box<dyn Error + Send + Sync>`,
/// and plain text. It answers `500 handler_failed`, so Cariosan retries.
/// [`retry_later`](Self::retry_later) answers `503` with `Retry-After`;
/// [`give_up`](Self::give_up) acknowledges the delivery without handling it
/// and reports it to the [`on_give_up`](crate::Webhooks::on_give_up) hook.
///
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself.
/// Cloning is cheap: the error is shared.
#[derive(Clone)]
pub struct HandlerError {
    error: Arc<dyn Error + Send + Sync + 'static>,
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
    /// Wraps an error (answered `500`), keeping its chain.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self::with(Directive::Fail, error.into())
    }

    /// An error with this message (answered `500`).
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::new(message.to_string())
    }

    /// Asks Cariosan to retry after `after` (answered `503` with
    /// `Retry-After`): a dependency is down, say, and retrying sooner is
    /// pointless.
    pub fn retry_later(after: Duration, reason: impl Into<BoxError>) -> Self {
        Self::with(Directive::RetryAfter(after), reason.into())
    }

    /// Gives up on this delivery: it is acknowledged (`200 given_up`) so
    /// Cariosan stops retrying, and reported to the `on_give_up` hook. For
    /// events the application can never handle.
    pub fn give_up(reason: impl Into<BoxError>) -> Self {
        Self::with(Directive::GiveUp, reason.into())
    }

    fn with(directive: Directive, error: BoxError) -> Self {
        Self {
            error: Arc::from(error),
            directive,
        }
    }

    pub(crate) fn directive(&self) -> Directive {
        self.directive
    }

    /// The underlying error; its own `source()` chain follows it.
    pub fn source(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.error
    }

    /// The `Retry-After` a [`retry_later`](Self::retry_later) asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.directive {
            Directive::RetryAfter(after) => Some(after),
            _ => None,
        }
    }

    /// Whether this is a [`give_up`](Self::give_up).
    pub fn is_give_up(&self) -> bool {
        self.directive == Directive::GiveUp
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::new(error)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    fn fails() -> HandlerResult {
        Err(Outer(std::io::Error::other("inner")))?;
        Ok(())
    }

    #[test]
    fn question_mark_keeps_the_error_chain() {
        let error = fails().unwrap_err();
        assert_eq!(error.to_string(), "outer");
        assert_eq!(error.source().source().unwrap().to_string(), "inner");
        let boxed: Box<dyn Error + Send + Sync> = "boxed".into();
        assert_eq!(HandlerError::from(boxed).to_string(), "boxed");
        let text = HandlerError::from("plain text");
        assert_eq!(text.to_string(), "plain text");
    }

    #[test]
    fn directives_are_kept() {
        let later = HandlerError::retry_later(Duration::from_secs(7), "down");
        assert_eq!(later.retry_after(), Some(Duration::from_secs(7)));
        assert!(HandlerError::give_up("never").is_give_up());
        assert!(!HandlerError::msg("x").is_give_up());
    }
}
