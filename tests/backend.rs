//! The two layers apart, and the delivery backend contract with a backend
//! of the test's own: begin -> a guard that hands each handler a
//! per-delivery resource -> finish with the outcome, the shape a database
//! transaction takes. Driven through the real layers with `oneshot`.
#![cfg(feature = "test-util")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cariosan_webhooks::delivery::{
    Begin, DeliveryBackend, DeliveryGuard, DeliveryLayer, Finish, LeaseBackend,
};
use cariosan_webhooks::dispatch::Resource;
use cariosan_webhooks::model::{EventType, MessageCreated};
use cariosan_webhooks::store::{MemoryStore, StoreError};
use cariosan_webhooks::test_util::{samples, TestDelivery};
use cariosan_webhooks::verification::VerificationLayer;
use cariosan_webhooks::verify::VerifiedDelivery;
use cariosan_webhooks::{BytesBody, CariosanWebhookLayer, Delivery, HandlerResult, Webhooks};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};

const SECRET: &str = "whsec_test";

/// What a handler may write for its delivery: kept only if the delivery
/// finishes as handled, like a transaction's writes.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<String>>>);

#[derive(Default)]
struct Backend {
    running: Mutex<HashMap<String, ()>>,
    done: Mutex<HashMap<String, Finish>>,
    committed: Mutex<Vec<String>>,
    events: Mutex<Vec<String>>,
    lease: Option<Duration>,
    begin_delay: Duration,
    renewals: AtomicUsize,
    refuse_renewals: AtomicBool,
}

impl Backend {
    fn log(&self, event: String) {
        self.events.lock().unwrap().push(event);
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    fn committed(&self) -> Vec<String> {
        self.committed.lock().unwrap().clone()
    }
}

#[derive(Clone)]
struct Shared(Arc<Backend>);

impl DeliveryBackend for Shared {
    fn begin<'a>(
        &'a self,
        delivery: &'a VerifiedDelivery,
        _max_run_time: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>> {
        Box::pin(async move {
            tokio::time::sleep(self.0.begin_delay).await;
            let id = delivery.id().to_string();
            if self.0.done.lock().unwrap().contains_key(&id) {
                return Ok(Begin::Duplicate);
            }
            if self
                .0
                .running
                .lock()
                .unwrap()
                .insert(id.clone(), ())
                .is_some()
            {
                return Ok(Begin::InProgress { remaining: None });
            }
            self.0.log(format!("begin {id}"));
            Ok(Begin::Started(Arc::new(Guard {
                backend: self.0.clone(),
                id,
                journal: Journal::default(),
            })))
        })
    }
}

struct Guard {
    backend: Arc<Backend>,
    id: String,
    journal: Journal,
}

impl DeliveryGuard for Guard {
    fn provide(&self, resources: &mut http::Extensions) {
        resources.insert(self.journal.clone());
    }

    fn lease(&self) -> Option<Duration> {
        self.backend.lease
    }

    fn renew(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.backend.renewals.fetch_add(1, Ordering::SeqCst);
        let held = !self.backend.refuse_renewals.load(Ordering::SeqCst);
        Box::pin(async move { Ok(held) })
    }

    fn finish(&self, finish: Finish) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.backend.log(format!("finish {} {finish:?}", self.id));
            self.backend.running.lock().unwrap().remove(&self.id);
            if finish != Finish::Released {
                let written = std::mem::take(&mut *self.journal.0.lock().unwrap());
                self.backend.committed.lock().unwrap().extend(written);
                self.backend
                    .done
                    .lock()
                    .unwrap()
                    .insert(self.id.clone(), finish);
            }
            Ok(())
        })
    }
}

/// Logs when a handler's future is dropped, to order it against `finish`.
struct OnDrop(Arc<Backend>, String);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.log(format!("dropped {}", self.1));
    }
}

/// Writes `wrote <id>` into the delivery's journal, then does what the
/// message says: `hang` never finishes, `block:<ms>` blocks its thread,
/// `sleep:<ms>` waits, `fail` fails after writing.
fn webhooks(backend: Arc<Backend>) -> Webhooks {
    Webhooks::new().on(
        EventType::MessageCreated,
        move |event: Delivery<MessageCreated>, Resource(journal): Resource<Journal>| {
            let backend = backend.clone();
            async move {
                let id = event.id.to_string();
                journal.0.lock().unwrap().push(format!("wrote {id}"));
                let _drop = OnDrop(backend, id);
                let content = event.message.content.as_str();
                if content == "hang" {
                    std::future::pending::<()>().await;
                } else if let Some(ms) = content.strip_prefix("block:") {
                    std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
                } else if let Some(ms) = content.strip_prefix("sleep:") {
                    tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                } else if content == "fail" {
                    return Err("the handler failed after writing".into());
                }
                HandlerResult::Ok(())
            }
        },
    )
}

fn message(id: &str, content: &str) -> TestDelivery {
    let mut envelope = samples::message_created();
    envelope.id = id.into();
    let cariosan_webhooks::model::Event::MessageCreated(created) = &mut envelope.event else {
        unreachable!()
    };
    Arc::make_mut(created).message.content = content.into();
    TestDelivery::event(envelope).secret(SECRET)
}

async fn answer<S>(service: S, delivery: TestDelivery) -> (u16, String)
where
    S: tower::Service<
        http::Request<BytesBody>,
        Response = http::Response<
            cariosan_webhooks::ResponseBody<cariosan_webhooks::ResponseBody<BytesBody>>,
        >,
    >,
    S::Error: std::fmt::Debug,
{
    let response = service
        .oneshot(delivery.into_request("/webhooks/cariosan"))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn layer(backend: &Arc<Backend>) -> CariosanWebhookLayer {
    CariosanWebhookLayer::new(SECRET).backend(Shared(backend.clone()))
}

#[tokio::test]
async fn each_handler_gets_its_deliverys_resource_and_only_a_handled_run_keeps_its_writes() {
    let backend = Arc::new(Backend::default());
    let service = layer(&backend).layer(webhooks(backend.clone()));
    assert_eq!(
        answer(service.clone(), message("evt_ok", "hi")).await,
        (200, "handled".into())
    );
    assert_eq!(
        answer(service.clone(), message("evt_bad", "fail")).await,
        (500, "handler_failed".into())
    );
    assert_eq!(
        backend.committed(),
        ["wrote evt_ok"],
        "the failed run's write is dropped"
    );
    assert_eq!(
        answer(service.clone(), message("evt_ok", "hi")).await,
        (200, "duplicate".into())
    );
    assert_eq!(
        answer(service.clone(), message("evt_bad", "hi")).await,
        (200, "handled".into())
    );
    assert_eq!(backend.committed(), ["wrote evt_ok", "wrote evt_bad"]);
    assert_eq!(
        backend.events(),
        [
            "begin evt_ok",
            "dropped evt_ok",
            "finish evt_ok Handled",
            "begin evt_bad",
            "dropped evt_bad",
            "finish evt_bad Released",
            "begin evt_bad",
            "dropped evt_bad",
            "finish evt_bad Handled",
        ]
    );
}

#[tokio::test]
async fn a_run_that_never_finishes_is_cancelled_at_max_run_time_and_its_retry_is_handled() {
    let backend = Arc::new(Backend::default());
    let service = layer(&backend)
        .max_run_time(Duration::from_millis(300))
        .handler_budget(Duration::from_secs(5))
        .layer(webhooks(backend.clone()));
    let started = Instant::now();
    assert_eq!(
        answer(service.clone(), message("evt_hung", "hang")).await,
        (503, "run_cancelled".into())
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        backend.events(),
        [
            "begin evt_hung",
            "dropped evt_hung",
            "finish evt_hung Released"
        ],
        "the handlers' future is dropped before the delivery is freed"
    );
    assert!(backend.committed().is_empty());
    assert_eq!(
        answer(service.clone(), message("evt_hung", "hi")).await,
        (200, "handled".into())
    );
    assert_eq!(backend.committed(), ["wrote evt_hung"]);
}

#[tokio::test]
async fn past_the_budget_the_sender_hears_503_while_the_run_goes_on_to_its_outcome() {
    let backend = Arc::new(Backend::default());
    let service = layer(&backend)
        .handler_budget(Duration::from_millis(100))
        .layer(webhooks(backend.clone()));
    assert_eq!(
        answer(service.clone(), message("evt_slow", "sleep:400")).await,
        (503, "handler_still_running".into())
    );
    assert_eq!(
        answer(service.clone(), message("evt_slow", "sleep:400")).await,
        (503, "delivery_in_progress".into())
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(backend.committed(), ["wrote evt_slow"]);
    assert_eq!(
        answer(service.clone(), message("evt_slow", "sleep:400")).await,
        (200, "duplicate".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_renewed_from_its_own_task_while_the_handler_blocks_its_thread() {
    let backend = Arc::new(Backend {
        lease: Some(Duration::from_millis(300)),
        ..Backend::default()
    });
    let service = layer(&backend).layer(webhooks(backend.clone()));
    assert_eq!(
        answer(service, message("evt_block", "block:1000")).await,
        (200, "handled".into())
    );
    let renewals = backend.renewals.load(Ordering::SeqCst);
    assert!(
        renewals >= 5,
        "renewed every 100 ms during a 1 s block, got {renewals}"
    );
}

#[tokio::test]
async fn a_lease_that_is_refused_cancels_the_run_before_it_runs_out() {
    let backend = Arc::new(Backend {
        lease: Some(Duration::from_millis(300)),
        ..Backend::default()
    });
    backend.refuse_renewals.store(true, Ordering::SeqCst);
    let service = layer(&backend).layer(webhooks(backend.clone()));
    let started = Instant::now();
    assert_eq!(
        answer(service, message("evt_lost", "sleep:5000")).await,
        (503, "run_cancelled".into())
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(300),
        "cancelled within the lease, after {took:?}"
    );
    assert_eq!(
        backend.events(),
        [
            "begin evt_lost",
            "dropped evt_lost",
            "finish evt_lost Released"
        ]
    );
}

#[tokio::test]
async fn drain_cancels_what_it_cannot_wait_for_and_frees_it_after_dropping_its_handlers() {
    let backend = Arc::new(Backend::default());
    let layer = layer(&backend);
    let shutdown = layer.shutdown_handle();
    // Configured further after the handle was taken: the handle still
    // drains this layer.
    let service = layer
        .handler_budget(Duration::from_secs(5))
        .layer(webhooks(backend.clone()));
    let quick = tokio::spawn(answer(service.clone(), message("evt_quick", "sleep:100")));
    let hung = tokio::spawn(answer(service.clone(), message("evt_hung", "hang")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(shutdown.running(), 2);
    let drained = shutdown.drain(Duration::from_millis(300)).await;
    assert_eq!((drained.abandoned, drained.stuck), (1, 0));
    assert_eq!(quick.await.unwrap(), (200, "handled".into()));
    assert_eq!(hung.await.unwrap(), (503, "shutting_down".into()));
    let events = backend.events();
    let dropped = events.iter().position(|e| e == "dropped evt_hung").unwrap();
    let freed = events
        .iter()
        .position(|e| e == "finish evt_hung Released")
        .unwrap();
    assert!(dropped < freed, "{events:?}");
    assert_eq!(
        answer(service, message("evt_new", "hi")).await,
        (503, "shutting_down".into())
    );
}

#[tokio::test]
async fn drain_waits_for_a_delivery_that_passed_the_closing_check_and_is_still_beginning() {
    let backend = Arc::new(Backend {
        begin_delay: Duration::from_millis(300),
        ..Backend::default()
    });
    let layer = layer(&backend);
    let shutdown = layer.shutdown_handle();
    let service = layer.layer(webhooks(backend.clone()));
    let beginning = tokio::spawn(answer(service, message("evt_begin", "hi")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(backend.events().is_empty(), "still beginning");
    let drained = shutdown.drain(Duration::from_secs(5)).await;
    assert_eq!(drained.abandoned, 0);
    assert_eq!(
        backend.events(),
        [
            "begin evt_begin",
            "dropped evt_begin",
            "finish evt_begin Handled"
        ],
        "drain returned only after the run ended"
    );
    assert_eq!(beginning.await.unwrap(), (200, "handled".into()));
}

#[tokio::test]
async fn a_handler_blocking_its_thread_does_not_hang_the_shutdown() {
    let backend = Arc::new(Backend::default());
    let layer = layer(&backend).handler_budget(Duration::from_secs(10));
    let shutdown = layer.shutdown_handle();
    let service = layer.layer(webhooks(backend.clone()));
    // The blocking handler runs on a runtime of its own, which it blocks;
    // the drain runs here. (A handler that blocks a worker of the drain's
    // own runtime can stall that runtime's timers too: never block.)
    let blocked = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(answer(service, message("evt_blocked", "block:3000")))
    });
    while backend.events().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let drained = shutdown.drain(Duration::from_millis(200)).await;
    let took = started.elapsed();
    assert_eq!((drained.abandoned, drained.stuck), (1, 1));
    assert!(
        took < Duration::from_millis(200) + Duration::from_millis(1500),
        "drain waits the deadline and the cancel grace only: {took:?}"
    );
    // Once its thread is free again, the handler that could not be
    // cancelled completes, and its outcome is recorded once.
    let answered = tokio::task::spawn_blocking(move || blocked.join().unwrap())
        .await
        .unwrap();
    assert_eq!(answered, (200, "handled".into()));
    assert_eq!(
        backend.events(),
        [
            "begin evt_blocked",
            "dropped evt_blocked",
            "finish evt_blocked Handled"
        ]
    );
}

#[tokio::test]
async fn the_verification_layer_alone_passes_on_the_proof() {
    let inner = tower::service_fn(|request: http::Request<BytesBody>| async move {
        let delivery = request.extensions().get::<VerifiedDelivery>().cloned();
        let text = match delivery {
            Some(d) => format!("{} {} {:?}", d.event_type(), d.id(), d.attempt()),
            None => "unverified".to_owned(),
        };
        Ok::<_, std::convert::Infallible>(http::Response::new(BytesBody::new(text)))
    });
    let service = VerificationLayer::new(SECRET).layer(inner);
    let response = service
        .clone()
        .oneshot(
            message("evt_v", "hi")
                .attempt(3)
                .into_request("/webhooks/cariosan"),
        )
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "message.created evt_v Some(3)");
    let forged = service
        .oneshot(
            message("evt_v", "hi")
                .secret("whsec_other")
                .into_request("/webhooks/cariosan"),
        )
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
}

#[tokio::test]
async fn the_delivery_layer_alone_refuses_what_nothing_verified() {
    let (webhooks, runs) = {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        (
            Webhooks::new().on_any(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            }),
            runs,
        )
    };
    let service = DeliveryLayer::new().layer(webhooks);
    let signed = message("evt_d", "hi").into_request("/webhooks/cariosan");
    let response = service.oneshot(signed).await.unwrap();
    assert_eq!(response.status(), 500);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "not_verified");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "a signature alone is not the layer's proof"
    );
}

#[test]
#[should_panic(expected = "the lease must be more than zero")]
fn a_zero_lease_is_a_configuration_error() {
    let _ = CariosanWebhookLayer::new(SECRET).lease(Duration::ZERO);
}

#[test]
#[should_panic(expected = "the lease must be more than zero")]
fn a_lease_that_would_overflow_the_clock_is_a_configuration_error() {
    let _ = LeaseBackend::new(MemoryStore::new()).lease(Duration::MAX);
}

#[test]
#[should_panic(expected = "max_run_time must be more than zero")]
fn a_zero_max_run_time_is_a_configuration_error() {
    let _ = DeliveryLayer::new().max_run_time(Duration::ZERO);
}

#[test]
#[should_panic(expected = "custom backend")]
fn a_lease_on_a_custom_backend_is_a_configuration_error() {
    let _ = layer(&Arc::default()).lease(Duration::from_secs(5));
}
