use std::error::Error;
use std::fmt;

/// What a handler returns: `Ok(())` once the event is durably handled (the
/// delivery is then acknowledged), an error otherwise (answered `500`, so
/// Cariosan retries).
pub type HandlerResult = Result<(), HandlerError>;

/// A handler's failure: any error, converted by `?`.
///
/// Like `anyhow::Error`, it is made from any `std::error::Error` and does not
/// implement that trait itself; [`HandlerError::msg`] makes one from text.
pub struct HandlerError {
    source: Box<dyn Error + Send + Sync + 'static>,
}

impl HandlerError {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            source: Box::new(Message(message.to_string())),
        }
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
