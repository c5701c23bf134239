use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::BytesBody;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`CariosanWebhookService`](super::CariosanWebhookService).
    pub struct ResponseFuture<B, E> {
        #[pin]
        state: State<B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, E> {
        Rejected { response: Option<Response<ResponseBody<B>>> },
        Running { #[pin] future: BoxFuture<Result<Response<ResponseBody<B>>, E>> },
    }
}

impl<B, E> ResponseFuture<B, E> {
    pub(crate) fn rejected(response: Response<BytesBody>) -> Self {
        let response = response.map(ResponseBody::own);
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    pub(crate) fn running(future: BoxFuture<Result<Response<ResponseBody<B>>, E>>) -> Self {
        Self {
            state: State::Running { future },
        }
    }
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            StateProj::Running { future } => future.poll(cx),
        }
    }
}

pin_project! {
    /// The response body of [`CariosanWebhookService`](super::CariosanWebhookService):
    /// the inner service's, or the layer's own answer.
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
            KindProj::Own { body } => body.poll_frame(cx).map(|frame| {
                frame.map(|result| result.map_err(|never: Infallible| match never {}))
            }),
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
