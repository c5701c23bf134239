//! The crate's own answers: a body held in memory, the response body type
//! of both layers, and the one way a short-code answer is built.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

/// A body whose bytes are all in memory: the verified request body handed
/// to the inner service, and the crate's own responses.
#[derive(Debug, Clone, Default)]
pub struct BytesBody(Full<Bytes>);

impl BytesBody {
    /// A body of these bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(Full::new(bytes.into()))
    }
}

impl From<Bytes> for BytesBody {
    fn from(bytes: Bytes) -> Self {
        Self::new(bytes)
    }
}

impl From<&'static str> for BytesBody {
    fn from(text: &'static str) -> Self {
        Self::new(Bytes::from_static(text.as_bytes()))
    }
}

impl http_body::Body for BytesBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// The code of an answer the crate built, and whether it acknowledged a
/// delivery that a handler gave up on; a response extension read by the
/// layers to log the outcome and to settle the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) code: &'static str,
    pub(crate) given_up: bool,
}

/// A short-code answer: the status, the code as `text/plain`, and
/// `Retry-After` in whole seconds (rounded up, at least 1) when given.
pub(crate) fn answer(
    status: StatusCode,
    code: &'static str,
    retry_after: Option<Duration>,
) -> Response<BytesBody> {
    let mut response = Response::new(BytesBody::from(code));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(retry_after) = retry_after {
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response.extensions_mut().insert(Answer {
        code,
        given_up: false,
    });
    response
}

/// The code the crate put on `response`, if it built the answer.
pub(crate) fn code_of<B>(response: &Response<B>) -> Option<&'static str> {
    response.extensions().get::<Answer>().map(|a| a.code)
}

pin_project! {
    /// The response body of the crate's services: the inner service's, or
    /// the crate's own short-code answer.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Own { #[pin] body: BytesBody },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn own(body: BytesBody) -> Self {
        Self {
            kind: Kind::Own { body },
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::Inner { .. } => "ResponseBody::Inner",
            Kind::Own { .. } => "ResponseBody::Own",
        })
    }
}

impl<B> http_body::Body for ResponseBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Own { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Own { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Own { body } => body.size_hint(),
        }
    }
}

/// The crate's own response, in the layers' body type.
pub(crate) fn own<B>(response: Response<BytesBody>) -> Response<ResponseBody<B>> {
    response.map(ResponseBody::own)
}
