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
                    // The layer's one `info` line per delivery says
                    // `outcome="duplicate"`.
                    tracing::debug!(
                        "duplicate of a handled delivery: acknowledged without running handlers"
                    );
                    return Ok(own(answer(StatusCode::OK, "duplicate", None)));
                }
                Ok(Ok(Begin::InProgress { .. })) => {
                    return Ok(own(refuse(&Rejection::DeliveryInProgress { retry_after })));
                }
                Ok(Err(error)) => {
                    crate::metrics::store_error("begin");
                    tracing::error!(%error, "the delivery backend is unavailable");
                    return Ok(own(refuse(&Rejection::StoreUnavailable { retry_after })));
                }
                Err(_elapsed) => {
                    crate::metrics::store_error("begin");
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
                event_type: crate::metrics::event_label(delivery.event_type()),
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

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    use super::super::DeliveryLayer;
    use crate::model::Envelope;
    use crate::response::BytesBody;
    use crate::test_util::samples;
    use crate::verify::VerifiedDelivery;

    fn request(envelope: Envelope) -> http::Request<BytesBody> {
        let mut request = http::Request::new(BytesBody::default());
        request
            .extensions_mut()
            .insert(VerifiedDelivery::new(Some(1), 0, 0, Ok(envelope)));
        request
    }

    /// Answers with the status it is given, counting its calls and noting
    /// how many tasks were alive while it ran.
    fn inner(
        status: u16,
        calls: Arc<AtomicUsize>,
        tasks: Arc<AtomicUsize>,
    ) -> impl tower::Service<
        http::Request<BytesBody>,
        Response = http::Response<BytesBody>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_request: http::Request<BytesBody>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let alive = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            tasks.store(alive, Ordering::SeqCst);
            let mut response = http::Response::new(BytesBody::default());
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            std::future::ready(Ok(response))
        })
    }

    async fn answer<S>(service: S, request: http::Request<BytesBody>) -> (u16, String)
    where
        S: tower::Service<
            http::Request<BytesBody>,
            Response = http::Response<crate::ResponseBody<BytesBody>>,
            Error = Infallible,
        >,
    {
        let response = service.oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_2xx_completes_and_anything_else_frees_the_delivery() {
        let (calls, tasks): (Arc<AtomicUsize>, Arc<AtomicUsize>) = Default::default();
        let ok = DeliveryLayer::new().layer(inner(200, calls.clone(), tasks.clone()));
        let envelope = samples::webhook_ping();
        assert_eq!(answer(ok.clone(), request(envelope.clone())).await.0, 200);
        assert_eq!(
            answer(ok.clone(), request(envelope.clone())).await,
            (200, "duplicate".into())
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            tasks.load(Ordering::SeqCst),
            0,
            "an inline run on the in-memory store spawns no task"
        );

        let failed_calls = Arc::new(AtomicUsize::new(0));
        let failing = DeliveryLayer::new().layer(inner(500, failed_calls.clone(), tasks));
        let envelope = samples::channel_created();
        assert_eq!(
            answer(failing.clone(), request(envelope.clone())).await.0,
            500
        );
        assert_eq!(answer(failing, request(envelope)).await.0, 500);
        assert_eq!(
            failed_calls.load(Ordering::SeqCst),
            2,
            "the retry ran again"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn refusals_before_the_run() {
        let (calls, tasks): (Arc<AtomicUsize>, Arc<AtomicUsize>) = Default::default();
        let layer = DeliveryLayer::new().max_concurrency(0);
        let service = layer.layer(inner(200, calls.clone(), tasks));
        assert_eq!(
            answer(service.clone(), http::Request::new(BytesBody::default())).await,
            (500, "not_verified".into())
        );
        assert_eq!(
            answer(service.clone(), request(samples::webhook_ping())).await,
            (503, "overloaded".into())
        );
        layer.shutdown_handle().close();
        assert_eq!(
            answer(service, request(samples::webhook_ping())).await,
            (503, "shutting_down".into())
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_inner_service_is_500_and_frees_the_delivery() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let panicking = tower::service_fn(move |_request: http::Request<BytesBody>| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("a bug in the inner service");
                }
                Ok::<_, Infallible>(http::Response::new(BytesBody::default()))
            }
        });
        let service = DeliveryLayer::new().layer(panicking);
        let envelope = samples::webhook_ping();
        assert_eq!(
            answer(service.clone(), request(envelope.clone())).await,
            (500, "handler_panicked".into())
        );
        assert_eq!(answer(service, request(envelope)).await.0, 200);
    }
}
