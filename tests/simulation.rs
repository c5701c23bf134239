//! 10,000 deliveries from a simulated Cariosan sender, with duplicates,
//! concurrent copies, handler failures, panics, slow handlers and "retry
//! later", on the retry schedule in compressed time: every event's handler
//! succeeds exactly once, nothing is acknowledged before it did, and copies
//! never run concurrently.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::CariosanWebhookLayer;
use common::simulation::{check_acknowledged, deliver_all, webhooks, Tally, BUDGET};
use common::*;

const DELIVERIES: usize = 10_000;

fn check(report: &common::simulation::Report, tally: &Tally) {
    check_acknowledged(report, tally, DELIVERIES);
    for n in 0..DELIVERIES {
        let id = format!("evt_sim_{n:05}");
        assert_eq!(
            tally.successes(&id),
            1,
            "{id} succeeded {} times",
            tally.successes(&id)
        );
    }
    let runs = tally.runs.load(Ordering::SeqCst);
    assert!(
        runs > DELIVERIES,
        "the plan makes handlers fail and retry: {runs} runs"
    );
    eprintln!(
        "{} requests, {runs} handler runs, {} deliveries each handled once",
        report.requests, DELIVERIES
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_deliveries_against_the_in_memory_store() {
    let tally = Arc::new(Tally::default());
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(webhooks(tally.clone()))
            .layer(CariosanWebhookLayer::new(SECRET).handler_budget(BUDGET)),
    );
    let addr = serve(app).await;
    let report = deliver_all(&[addr], tally.clone(), DELIVERIES, 64).await;
    check(&report, &tally);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server on PATH; .ci/run installs it and runs the ignored tests"]
async fn ten_thousand_deliveries_against_two_replicas_sharing_redis() {
    use cariosan_webhooks::store::RedisStore;
    use common::redis_server::RedisServer;

    let redis = RedisServer::start();
    let tally = Arc::new(Tally::default());
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::connect(&redis.url())
            .await
            .unwrap()
            .prefix("sim:");
        let app = Router::new().route(
            "/webhooks/cariosan",
            post_service(webhooks(tally.clone())).layer(
                CariosanWebhookLayer::new(SECRET)
                    .handler_budget(BUDGET)
                    .store(store),
            ),
        );
        replicas.push(serve(app).await);
    }
    let report = deliver_all(&replicas, tally.clone(), DELIVERIES, 64).await;
    check(&report, &tally);
}
