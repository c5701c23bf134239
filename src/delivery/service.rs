use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tower_service::Service;

use super::backend::Begin;
use super::layer::DeliveryConfig;
use super::rejection::{not_verified, Rejection};
use super::run::{run, Cancelled, Held, RunEnd};
use crate::future::ResponseFuture;
use crate::response::{answer, own, BytesBody, ResponseBody};
use crate::verify::VerifiedDelivery;

/// The [`Service`] made by [`DeliveryLayer`](super::DeliveryLayer).
#[derive(Clone, Debug)]
pub struct DeliveryService<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<DeliveryConfig>,
}

crate::macros::accessors!(DeliveryService);

impl<S> DeliveryService<S> {
    /// `inner` behind a delivery layer with the defaults.
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&super::DeliveryLayer::new(), inner)
    }

    /// A [`DeliveryLayer`](super::DeliveryLayer) with the defaults.
    pub fn layer() -> super::DeliveryLayer {
        super::DeliveryLayer::new()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for DeliveryService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(delivery) = request.extensions().get::<VerifiedDelivery>().cloned() else {
            return ResponseFuture::ready(own(not_verified()));
        };
        let config = &self.config;
        let retry_after = config.retry_after;
        // Taken before the closing check and held to the end of the run, so
        // that a drain waits for a delivery that passed the check.
        let token = config.lifecycle.tracker.token();
        if config.lifecycle.tracker.is_closed() {
            return ResponseFuture::ready(own(refuse(&Rejection::ShuttingDown { retry_after })));
        }
        let Ok(permit) = config.limiter.clone().try_acquire_owned() else {
            return ResponseFuture::ready(own(refuse(&Rejection::Overloaded { retry_after })));
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = config.clone();
        ResponseFuture::running(Box::pin(async move {
            let begun = tokio::time::timeout(
                config.store_timeout,
                config
                    .backend
                    .get()
                    .begin(&delivery, config.limits.max_run_time),
            )
            .await;
            let guard = match begun {
                Ok(Ok(Begin::Started(guard))) => guard,
                Ok(Ok(Begin::Duplicate)) => {
                    tracing::info!(
                        "duplicate of a handled delivery: acknowledged without running handlers"
                    );
                    return Ok(own(answer(StatusCode::OK, "duplicate", None)));
                }
                Ok(Ok(Begin::InProgress { .. })) => {
                    return Ok(own(refuse(&Rejection::DeliveryInProgress { retry_after })));
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "the delivery backend is unavailable");
                    return Ok(own(refuse(&Rejection::StoreUnavailable { retry_after })));
                }
                Err(_elapsed) => {
                    tracing::error!("the delivery backend did not answer in time");
                    return Ok(own(refuse(&Rejection::StoreUnavailable { retry_after })));
                }
            };
            if config.lifecycle.shutdown.is_cancelled() {
                let _ = guard.finish(super::Finish::Released).await;
                return Ok(own(refuse(&Rejection::ShuttingDown { retry_after })));
            }
            let mut request = request;
            guard.provide(request.extensions_mut());
            let mut inner = inner;
            let handlers = inner.call(request);
            let held = Held {
                guard,
                permit,
                token,
            };
            let rejection = match run(config.limits, &config.lifecycle, held, handlers).await {
                RunEnd::Finished(result) => return result.map(|r| r.map(ResponseBody::inner)),
                RunEnd::NotRecorded => Rejection::StoreUnavailable { retry_after },
                RunEnd::Panicked => Rejection::HandlerPanicked,
                RunEnd::Cancelled(Cancelled::Shutdown) => Rejection::ShuttingDown { retry_after },
                RunEnd::Cancelled(Cancelled::GuardLost | Cancelled::MaxRunTime) => {
                    Rejection::RunCancelled { retry_after }
                }
                RunEnd::StillRunning => Rejection::HandlerStillRunning { retry_after },
            };
            Ok(own(refuse(&rejection)))
        }))
    }
}

/// Logs a refusal on the delivery's span and builds its response.
fn refuse(rejection: &Rejection) -> Response<BytesBody> {
    tracing::warn!(code = rejection.code(), "delivery not handled: {rejection}");
    rejection.to_response()
}
