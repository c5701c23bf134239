//! The Redis store under real faults, with two replicas sharing one
//! `redis-server` that the test kills, pauses and restarts. Each test counts
//! the handler runs per delivery and checks them for overlap in time.
//! Timings are compressed: leases of a second, handlers of a few.

#![cfg(feature = "redis")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::store::{Claim, ClaimToken, IdempotencyStore, RedisStore};
use cariosan_webhooks::{CariosanWebhookLayer, Webhooks};
use common::redis_server::RedisServer;
use common::*;

/// One handler run: when it started, when it ended, and whether it finished
/// (or was dropped: cancelled).
#[derive(Debug, Clone)]
struct Run {
    attempt: Option<u32>,
    started: Instant,
    ended: Option<Instant>,
    finished: bool,
}

#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<Run>>>);

impl Runs {
    fn all(&self) -> Vec<Run> {
        self.0.lock().unwrap().clone()
    }
}

/// Records the end of a run however it ends.
struct Ending(Runs, usize, bool);

impl Drop for Ending {
    fn drop(&mut self) {
        let mut runs = (self.0).0.lock().unwrap();
        runs[self.1].ended = Some(Instant::now());
        runs[self.1].finished = self.2;
    }
}

/// `sleep:<ms>` sleeps that long; `hang1` never finishes on attempt 1.
fn webhooks(runs: Runs) -> Webhooks {
    Webhooks::new().on_message_created(move |event| {
        let runs = runs.clone();
        async move {
            let index = {
                let mut all = runs.0.lock().unwrap();
                all.push(Run {
                    attempt: event.attempt,
                    started: Instant::now(),
                    ended: None,
                    finished: false,
                });
                all.len() - 1
            };
            let mut ending = Ending(runs.clone(), index, false);
            let content = event.message.content.as_str();
            if let Some(ms) = content.strip_prefix("sleep:") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            } else if content == "hang1" && event.attempt == Some(1) {
                std::future::pending::<()>().await;
            }
            ending.2 = true;
            Ok(())
        }
    })
}

async fn replica(
    redis: &RedisServer,
    layer: CariosanWebhookLayer,
    runs: &Runs,
) -> std::net::SocketAddr {
    let store = RedisStore::connect(&redis.url())
        .await
        .unwrap()
        .prefix("faults:");
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(webhooks(runs.clone())).layer(layer.store(store)),
    );
    serve(app).await
}

/// Retries as the sender would, from `attempt` on, every `pause`, until a
/// 2xx or `within` passes; the answers.
async fn retry_until_acknowledged(
    addr: std::net::SocketAddr,
    id: &str,
    mut attempt: u32,
    body: &[u8],
    pause: Duration,
    within: Duration,
) -> Vec<(u16, String)> {
    let started = Instant::now();
    let mut answers = Vec::new();
    loop {
        let reply = send_attempt(addr, id, attempt, body).await;
        answers.push((reply.status, reply.body.clone()));
        if (200..300).contains(&reply.status) || started.elapsed() > within {
            return answers;
        }
        attempt += 1;
        tokio::time::sleep(pause).await;
    }
}

fn acknowledged(answers: &[(u16, String)]) -> bool {
    answers
        .last()
        .is_some_and(|(status, _)| (200..300).contains(status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server on PATH; .ci/run installs it and runs the ignored tests"]
async fn redis_paused_past_the_lease_the_first_run_is_cancelled_before_the_second_starts() {
    let redis = RedisServer::start();
    let runs = Runs::default();
    let body = message_with("evt_pause", "sleep:6000");
    let (_, b) =
        two_replicas_running(&redis, Duration::from_secs(1), &runs, "evt_pause", &body).await;
    redis.pause();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.resume();
    let answers = retry_until_acknowledged(
        b,
        "evt_pause",
        2,
        &body,
        Duration::from_millis(300),
        Duration::from_secs(20),
    )
    .await;
    assert!(acknowledged(&answers), "{answers:?}");
    let all = runs.all();
    assert_eq!(all.len(), 2, "{all:?}");
    let (first, second) = (&all[0], &all[1]);
    let first_end = first.ended.expect("the first run ended");
    assert!(!first.finished, "the first run was cancelled: {all:?}");
    assert!(
        first_end - first.started < Duration::from_secs(1),
        "cancelled within its 1 s lease: {all:?}"
    );
    assert!(
        first_end <= second.started,
        "the two runs never overlap: {all:?}"
    );
    assert!(second.finished, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server on PATH; .ci/run installs it and runs the ignored tests"]
async fn a_graceful_restart_with_persistence_mid_handler_loses_no_completion() {
    let mut redis = RedisServer::start_persistent();
    let runs = Runs::default();
    let body = message_with("evt_graceful", "sleep:2000");
    let (a, b) =
        two_replicas_running(&redis, Duration::from_secs(3), &runs, "evt_graceful", &body).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| {
        redis.shutdown();
        redis.restart();
    });
    // Cariosan's retries, compressed.
    let answers = retry_until_acknowledged(
        b,
        "evt_graceful",
        2,
        &body,
        Duration::from_millis(500),
        Duration::from_secs(20),
    )
    .await;
    assert!(acknowledged(&answers), "{answers:?}");
    let again = send_attempt(a, "evt_graceful", 99, &body).await;
    assert_eq!((again.status, again.body.as_str()), (200, "duplicate"));
    let all = runs.all();
    assert_eq!(all.len(), 1, "exactly one run: {all:?}");
    assert!(all[0].finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server on PATH; .ci/run installs it and runs the ignored tests"]
async fn redis_killed_and_restarted_empty_mid_handler_cancels_the_first_run_within_a_renewal() {
    let mut redis = RedisServer::start();
    let runs = Runs::default();
    let lease = Duration::from_secs(1);
    let body = message_with("evt_lost", "sleep:3000");
    let (a, b) = two_replicas_running(&redis, lease, &runs, "evt_lost", &body).await;
    tokio::task::block_in_place(|| redis.restart());
    let answers = retry_until_acknowledged(
        b,
        "evt_lost",
        2,
        &body,
        Duration::from_millis(100),
        Duration::from_secs(20),
    )
    .await;
    assert!(acknowledged(&answers), "{answers:?}");
    let all = runs.all();
    assert_eq!(all.len(), 2, "{all:?}");
    let (first, second) = (&all[0], &all[1]);
    assert!(
        !first.finished,
        "the first run learned its claim was gone and was cancelled: {all:?}"
    );
    assert!(second.finished, "{all:?}");
    // The bound: the first run renews every third of the lease, and stops at
    // the first renewal refused; allow the store's latency on top.
    let bound = lease / 3 + Duration::from_millis(250);
    let first_end = first.ended.unwrap();
    let overlap = first_end.saturating_duration_since(second.started);
    assert!(
        overlap <= bound,
        "overlap {overlap:?} over the bound {bound:?}: {all:?}"
    );
    let again = send_attempt(a, "evt_lost", 99, &body).await;
    assert_eq!((again.status, again.body.as_str()), (200, "duplicate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server on PATH; .ci/run installs it and runs the ignored tests"]
async fn a_hung_handler_is_cancelled_at_the_hard_limit_and_its_retry_runs_once() {
    let redis = RedisServer::start();
    let runs = Runs::default();
    let layer = || {
        CariosanWebhookLayer::new(SECRET)
            .max_run_time(Duration::from_secs(1))
            .max_concurrency(1)
    };
    let (a, b) = (
        replica(&redis, layer(), &runs).await,
        replica(&redis, layer(), &runs).await,
    );
    let body = message_with("evt_hung", "hang1");
    let started = Instant::now();
    let first = send_attempt(a, "evt_hung", 1, &body).await;
    assert_eq!((first.status, first.body.as_str()), (503, "run_cancelled"));
    assert!(started.elapsed() < Duration::from_secs(3));
    let retry = send_attempt(b, "evt_hung", 2, &body).await;
    assert_eq!(
        (retry.status, retry.body.as_str()),
        (200, "handled"),
        "the claim was released"
    );
    // The permit was freed too: replica A (one permit) takes new work.
    let other = send_attempt(a, "evt_other", 1, &message_with("evt_other", "sleep:10")).await;
    assert_eq!((other.status, other.body.as_str()), (200, "handled"));
    let all = runs.all();
    assert_eq!(all.iter().filter(|r| r.finished).count(), 2, "{all:?}");
    assert_eq!(all.iter().filter(|r| !r.finished).count(), 1, "{all:?}");
    assert_eq!(all[0].attempt, Some(1));
}

/// Two replicas with this lease and a 200 ms budget, and the first attempt
/// of `id` sent to the first: it is still running when the sender gives up.
async fn two_replicas_running(
    redis: &RedisServer,
    lease: Duration,
    runs: &Runs,
    id: &str,
    body: &[u8],
) -> (std::net::SocketAddr, std::net::SocketAddr) {
    let layer = || {
        CariosanWebhookLayer::new(SECRET)
            .lease(lease)
            .handler_budget(Duration::from_millis(200))
    };
    let (a, b) = (
        replica(redis, layer(), runs).await,
        replica(redis, layer(), runs).await,
    );
    let first = send_attempt(a, id, 1, body).await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (503, "handler_still_running")
    );
    (a, b)
}

fn claimed(claim: Claim) -> ClaimToken {
    match claim {
        Claim::Claimed(token) => token,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs redis-server on PATH; .ci/run installs it and runs the ignored tests"]
async fn a_late_completion_after_redis_lost_its_data_never_overwrites_the_new_claim() {
    let mut redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let first = claimed(store.claim("evt_late", lease).await.unwrap());
    redis.restart();
    // The first command after the restart meets a broken connection and is
    // retried on the fresh one: a claim, not a spurious error.
    let second = claimed(store.claim("evt_late", lease).await.unwrap());
    assert!(
        second.generation() > first.generation(),
        "the generation grows across the loss"
    );
    assert!(!store.complete("evt_late", &first, lease).await.unwrap());
    assert!(matches!(
        store.claim("evt_late", lease).await.unwrap(),
        Claim::InProgress { .. }
    ));
    assert!(store.complete("evt_late", &second, lease).await.unwrap());
    assert_eq!(
        store.claim("evt_late", lease).await.unwrap(),
        Claim::Completed
    );
}

#[tokio::test]
#[ignore = "needs redis-server on PATH; .ci/run installs it and runs the ignored tests"]
async fn a_completion_redis_cannot_take_is_kept_answered_as_duplicate_and_written_later() {
    let mut redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let token = claimed(
        store
            .claim("evt_pending", Duration::from_secs(30))
            .await
            .unwrap(),
    );
    redis.stop();
    assert!(store
        .complete("evt_pending", &token, Duration::from_secs(60))
        .await
        .unwrap());
    assert_eq!(store.pending_completions(), 1);
    assert_eq!(
        store
            .claim("evt_pending", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Completed,
        "this process answers duplicate meanwhile"
    );
    redis.restart();
    let started = Instant::now();
    while store.pending_completions() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the completion was never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = RedisStore::connect(&redis.url()).await.unwrap();
    assert_eq!(
        other
            .claim("evt_pending", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Completed
    );
}

#[tokio::test]
#[ignore = "needs redis-server on PATH; .ci/run installs it and runs the ignored tests"]
async fn a_replica_starts_while_redis_is_down_and_errors_name_redis_without_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}/");
    let error = RedisStore::connect(&url).await.unwrap_err().to_string();
    assert!(
        error.contains(&format!("Redis at 127.0.0.1:{port}")),
        "{error}"
    );
    assert!(!error.contains("hunter2"), "{error}");

    let lazy = RedisStore::connect_lazy(&format!("redis://127.0.0.1:{port}/")).unwrap();
    let down = lazy
        .claim("evt_lazy", Duration::from_secs(30))
        .await
        .unwrap_err()
        .to_string();
    assert!(down.contains("Redis at 127.0.0.1"), "{down}");
    // Redis comes up on that port: the same store works, no restart needed.
    let redis = RedisServer::start_on(port);
    let started = Instant::now();
    let claim = loop {
        match lazy.claim("evt_lazy", Duration::from_secs(30)).await {
            Ok(claim) => break claim,
            Err(_) if started.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(error) => panic!("{error}"),
        }
    };
    claimed(claim);
    drop(redis);
}
