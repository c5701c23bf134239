//! A simulated Cariosan sender and an instrumented application: deliveries
//! with duplicates, concurrent copies, handler failures, panics, slow
//! handlers and "retry later", on the protocol's retry schedule in
//! compressed time (1 s of the schedule is 1 ms here).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cariosan_webhooks::model::Event;
use cariosan_webhooks::{Delivery, HandlerError, Webhooks};
use futures_util::StreamExt;

use super::{fixture, send_attempt, with_id, Reply};

/// The protocol's retry schedule, in seconds (section 7).
const SCHEDULE: [u64; 10] = [10, 30, 120, 600, 1800, 3600, 10_800, 21_600, 43_200, 86_400];

/// The handler budget the receivers under simulation use; slow handlers
/// take longer.
pub const BUDGET: Duration = Duration::from_millis(50);
const SLOW: Duration = Duration::from_millis(120);

/// What the application saw.
#[derive(Default)]
pub struct Tally {
    in_flight: Mutex<HashSet<String>>,
    successes: Mutex<HashMap<String, u32>>,
    pub overlapping_runs: AtomicUsize,
    pub runs: AtomicUsize,
}

impl Tally {
    pub fn successes(&self, id: &str) -> u32 {
        self.successes.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

/// Takes a delivery out of the in-flight set however its handler ends,
/// panics included.
struct InFlight(Arc<Tally>, String);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.lock().unwrap().remove(&self.1);
    }
}

#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    Fail,
    Panic,
    Slow,
    RetryLater,
}

/// Event `n` misbehaves on its first `n % 4` attempts, in one of four ways.
fn plan(n: usize, attempt: u32) -> Option<Misbehaviour> {
    let bad_attempts = (n % 4) as u32;
    let kind = [
        Misbehaviour::Fail,
        Misbehaviour::Panic,
        Misbehaviour::Slow,
        Misbehaviour::RetryLater,
    ][(n / 4) % 4];
    (attempt <= bad_attempts).then_some(kind)
}

fn event_number(id: &str) -> usize {
    id.trim_start_matches("evt_sim_").parse().unwrap()
}

/// The application: one handler that follows the plan and records every
/// run, every overlap and every success.
pub fn webhooks(tally: Arc<Tally>) -> Webhooks {
    webhooks_after(Webhooks::new(), tally)
}

/// The same handler, after those `first` has.
pub fn webhooks_after(first: Webhooks, tally: Arc<Tally>) -> Webhooks {
    quiet_simulated_panics();
    first.on_any(move |delivery: Delivery<Event>| {
        let tally = tally.clone();
        async move {
            let id = delivery.id.to_string();
            tally.runs.fetch_add(1, Ordering::SeqCst);
            if !tally.in_flight.lock().unwrap().insert(id.clone()) {
                tally.overlapping_runs.fetch_add(1, Ordering::SeqCst);
            }
            let _in_flight = InFlight(tally.clone(), id.clone());
            match plan(event_number(&id), delivery.attempt.unwrap_or(1)) {
                Some(Misbehaviour::Fail) => return Err(HandlerError::msg("simulated failure")),
                Some(Misbehaviour::Panic) => panic!("simulated panic"),
                Some(Misbehaviour::RetryLater) => {
                    return Err(HandlerError::retry_later(
                        Duration::from_secs(20),
                        "simulated outage",
                    ))
                }
                Some(Misbehaviour::Slow) => tokio::time::sleep(SLOW).await,
                None => {}
            }
            *tally.successes.lock().unwrap().entry(id).or_default() += 1;
            Ok(())
        }
    })
}

fn quiet_simulated_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let simulated = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|m| *m == "simulated panic");
            if !simulated {
                default(info);
            }
        }));
    });
}

fn retry_after_secs(reply: &Reply) -> u64 {
    reply
        .head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("retry-after")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// What went wrong, from the sender's side.
#[derive(Default, Debug)]
pub struct Report {
    pub acknowledged: usize,
    pub acknowledged_without_success: Vec<String>,
    pub never_acknowledged: Vec<String>,
    pub redeliveries_not_duplicate: Vec<String>,
    pub requests: usize,
}

/// Delivers `count` events to the replicas (in turn) as Cariosan would, at
/// most `parallel` at a time.
pub async fn deliver_all(
    replicas: &[SocketAddr],
    tally: Arc<Tally>,
    count: usize,
    parallel: usize,
) -> Report {
    let template = fixture("events/message.created.json");
    let report = Arc::new(Mutex::new(Report::default()));
    futures_util::stream::iter(0..count)
        .for_each_concurrent(parallel, |n| {
            let (tally, report, template) = (tally.clone(), report.clone(), template.clone());
            async move {
                let id = format!("evt_sim_{n:05}");
                let body = with_id(&template, &id);
                for try_number in 1..=11u32 {
                    // Every seventh event's first attempt arrives twice at
                    // once, at different replicas when there are several.
                    let copies = if n % 7 == 0 && try_number == 1 { 2 } else { 1 };
                    let replies = futures_util::future::join_all((0..copies).map(|copy| {
                        let addr = replicas[(n + try_number as usize + copy) % replicas.len()];
                        send_attempt(addr, &id, try_number, &body)
                    }))
                    .await;
                    let acked = replies.iter().any(|r| (200..300).contains(&r.status));
                    {
                        let mut report = report.lock().unwrap();
                        report.requests += replies.len();
                        if acked && tally.successes(&id) == 0 {
                            report.acknowledged_without_success.push(id.clone());
                        }
                    }
                    if acked {
                        report.lock().unwrap().acknowledged += 1;
                        // Every fifth event is redelivered by hand later.
                        if n % 5 == 0 {
                            let again = send_attempt(
                                replicas[n % replicas.len()],
                                &id,
                                try_number + 1,
                                &body,
                            )
                            .await;
                            if (again.status, again.body.as_str()) != (200, "duplicate") {
                                report
                                    .lock()
                                    .unwrap()
                                    .redeliveries_not_duplicate
                                    .push(format!("{id}: {} {}", again.status, again.body));
                            }
                        }
                        return;
                    }
                    if try_number == 11 {
                        break;
                    }
                    let wait = replies
                        .iter()
                        .map(retry_after_secs)
                        .max()
                        .unwrap_or(0)
                        .max(SCHEDULE[try_number as usize - 1]);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                report.lock().unwrap().never_acknowledged.push(id);
            }
        })
        .await;
    Arc::try_unwrap(report).unwrap().into_inner().unwrap()
}

/// What every store must show after `count` deliveries: each acknowledged,
/// none before a handler succeeded, every redelivery a duplicate, and no two
/// copies ever running at once.
pub fn check_acknowledged(report: &Report, tally: &Tally, count: usize) {
    assert_eq!(report.acknowledged, count, "{report:?}");
    assert!(report.never_acknowledged.is_empty(), "{report:?}");
    assert!(report.acknowledged_without_success.is_empty(), "{report:?}");
    assert!(report.redeliveries_not_duplicate.is_empty(), "{report:?}");
    assert_eq!(
        tally.overlapping_runs.load(Ordering::SeqCst),
        0,
        "copies ran concurrently"
    );
}
