//! The dispatcher called directly, with no HTTP: every fixture through
//! `Webhooks::handle`, and every outcome.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cariosan_webhooks::dispatch::State;
use cariosan_webhooks::model::{Event, EventType, MessageCreated, UnknownEvent};
use cariosan_webhooks::verify::{DeliveryHeaders, FixedClock, VerifiedDelivery, Verifier};
use cariosan_webhooks::{Delivery, HandlerError, HandlerResult, Outcome, Webhooks};
use common::*;
use serde_json::Value;

type Log = Arc<Mutex<Vec<String>>>;

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

/// A fixture delivery as the independent sender signed it, verified the way
/// the layer verifies it.
fn verified(delivery: &Value) -> VerifiedDelivery {
    let text = |k: &str| delivery[k].as_str().unwrap().to_owned();
    let body = fixture(&format!("events/{}", text("file")));
    let verifier = Verifier::new(SECRET)
        .unwrap()
        .clock(FixedClock(delivery["timestamp"].as_i64().unwrap()));
    let (id, event_type, signature) = (text("delivery"), text("type"), text("signature"));
    verifier
        .verify_delivery(
            &DeliveryHeaders::new(&id, &event_type, &signature).attempt(Some(2)),
            &body,
        )
        .unwrap_or_else(|e| panic!("{id}: {e}"))
}

fn fixtures() -> Vec<Value> {
    let index: Value = serde_json::from_slice(&fixture("events/index.json")).unwrap();
    index["deliveries"].as_array().unwrap().clone()
}

/// Logs `<type> <id> attempt <n>` from the typed handler of each type.
fn typed(log: &Log) -> Webhooks {
    macro_rules! logging {
        ($webhooks:expr, $( $method:ident => $wire:literal ),* $(,)?) => {
            $webhooks
            $(
                .$method({
                    let log = log.clone();
                    move |event| {
                        let line = format!("{} {} attempt {:?}", $wire, event.id, event.attempt);
                        log.lock().unwrap().push(line);
                        async { Ok(()) }
                    }
                })
            )*
        };
    }
    logging!(Webhooks::new(),
        on_message_created => "message.created",
        on_message_updated => "message.updated",
        on_message_deleted => "message.deleted",
        on_message_mentioned => "message.mentioned",
        on_channel_created => "channel.created",
        on_channel_updated => "channel.updated",
        on_channel_deleted => "channel.deleted",
        on_member_added => "member.added",
        on_member_removed => "member.removed",
        on_member_updated => "member.updated",
        on_moderation_action => "moderation.action",
        on_webhook_ping => "webhook.ping",
    )
}

#[tokio::test]
async fn every_fixture_runs_its_typed_handler_without_http() {
    let log = Log::default();
    let webhooks = typed(&log);
    let plain = Webhooks::new();
    let fixtures = fixtures();
    assert!(fixtures.len() >= 17, "the full set, got {}", fixtures.len());
    for delivery in &fixtures {
        let verified = verified(delivery);
        let (id, event_type) = (
            delivery["delivery"].as_str().unwrap(),
            delivery["type"].as_str().unwrap(),
        );
        let before = entries(&log).len();
        let outcome = webhooks.handle(&verified).await;
        assert!(matches!(outcome, Outcome::Handled), "{id}: {outcome:?}");
        assert_eq!(
            (outcome.status().as_u16(), outcome.code()),
            (200, "handled")
        );
        assert_eq!(
            entries(&log)[before..],
            [format!("{event_type} {id} attempt Some(2)")],
            "exactly the handler of {event_type} ran"
        );
        let ignored = plain.handle(&verified).await;
        assert!(matches!(ignored, Outcome::Ignored), "{id}: {ignored:?}");
        assert!(ignored.is_acknowledged());
    }
}

fn one_delivery(body: &str) -> VerifiedDelivery {
    let verifier = Verifier::new(SECRET).unwrap();
    let t = now();
    let value: Value = serde_json::from_str(body).unwrap();
    let (id, event_type) = (
        value["id"].as_str().unwrap(),
        value["type"].as_str().unwrap(),
    );
    let signature = independent_signature(SECRET, id, t, body.as_bytes());
    verifier
        .verify_delivery(
            &DeliveryHeaders::new(id, event_type, &signature),
            body.as_bytes(),
        )
        .unwrap()
}

fn created(content: &str) -> VerifiedDelivery {
    let body = String::from_utf8(fixture("events/message.created.json")).unwrap();
    let value: Value = serde_json::from_str(&body).unwrap();
    let original = value["data"]["message"]["content"].as_str().unwrap();
    one_delivery(&body.replace(
        &serde_json::to_string(original).unwrap(),
        &serde_json::to_string(content).unwrap(),
    ))
}

fn by_content() -> Webhooks {
    Webhooks::new().on_message_created(|event| async move {
        match event.message.content.as_str() {
            "fail" => Err(HandlerError::msg("the database is down")),
            "retry" => Err(HandlerError::retry_later(
                Duration::from_secs(42),
                "the CRM is down",
            )),
            "give_up" => Err(HandlerError::give_up("this customer was deleted")),
            "panic" => panic!("a bug"),
            "anyhow" => {
                let result: anyhow::Result<()> =
                    Err(anyhow::anyhow!("connection reset").context("saving the reply"));
                result?;
                Ok(())
            }
            _ => Ok(()),
        }
    })
}

#[tokio::test]
async fn each_outcome_is_typed_and_maps_to_its_answer() {
    let webhooks = by_content();
    let cases: [(&str, u16, &str); 5] = [
        ("ok", 200, "handled"),
        ("fail", 500, "handler_failed"),
        ("retry", 503, "retry_later"),
        ("panic", 500, "handler_panicked"),
        ("anyhow", 500, "handler_failed"),
    ];
    for (content, status, code) in cases {
        let outcome = webhooks.handle(&created(content)).await;
        assert_eq!(
            (outcome.status().as_u16(), outcome.code()),
            (status, code),
            "{content}"
        );
    }
    match webhooks.handle(&created("retry")).await {
        Outcome::RetryLater(error) => {
            assert_eq!(error.retry_after(), Some(Duration::from_secs(42)));
            assert_eq!(error.to_string(), "the CRM is down");
        }
        other => panic!("{other:?}"),
    }
    match webhooks.handle(&created("anyhow")).await {
        Outcome::Failed(error) => {
            assert_eq!(error.to_string(), "saving the reply");
            assert_eq!(
                error.source().source().unwrap().to_string(),
                "connection reset",
                "the chain is kept"
            );
        }
        other => panic!("{other:?}"),
    }
    let response = webhooks.handle(&created("retry")).await.to_response();
    assert_eq!(response.headers()["retry-after"], "42");
}

#[tokio::test]
async fn a_give_up_reaches_the_async_hook_and_a_failing_hook_is_not_acknowledged() {
    let log = Log::default();
    let hook_log = log.clone();
    let webhooks = by_content().on_give_up(move |given_up| {
        let log = hook_log.clone();
        async move {
            tokio::task::yield_now().await;
            log.lock().unwrap().push(format!(
                "{} {} {}",
                given_up.id, given_up.event_type, given_up.error
            ));
            Ok(())
        }
    });
    let outcome = webhooks.handle(&created("give_up")).await;
    assert!(
        matches!(&outcome, Outcome::GivenUp(e) if e.to_string() == "this customer was deleted"),
        "{outcome:?}"
    );
    assert_eq!(
        entries(&log),
        ["evt_01JDB7Q3KX2W9V0M4T8R6N5P1A message.created this customer was deleted"]
    );

    let failing = by_content()
        .on_give_up(|_| async { Err(HandlerError::msg("the dead-letter table is down")) });
    let outcome = failing.handle(&created("give_up")).await;
    assert_eq!(
        (outcome.status().as_u16(), outcome.code()),
        (500, "handler_failed")
    );
}

#[tokio::test]
async fn malformed_data_reaches_on_malformed_with_its_attempt_or_is_500() {
    let body = String::from_utf8(fixture("events/message.created.json"))
        .unwrap()
        .replace("\"content\":", "\"content\": 42, \"was\":");
    let delivery = one_delivery(&body);
    assert!(delivery.malformed().is_some());
    assert!(matches!(
        Webhooks::new().handle(&delivery).await,
        Outcome::Malformed
    ));
    let log = Log::default();
    let seen = log.clone();
    let webhooks = Webhooks::new().on_malformed(move |event| {
        seen.lock().unwrap().push(format!(
            "{} {} {:?}",
            event.event_type(),
            event.id,
            event.attempt
        ));
        async { Ok(()) }
    });
    assert!(matches!(webhooks.handle(&delivery).await, Outcome::Handled));
    assert_eq!(
        entries(&log),
        ["message.created evt_01JDB7Q3KX2W9V0M4T8R6N5P1A None"]
    );
}

#[tokio::test]
async fn one_handler_for_several_types_and_one_for_a_single_unknown_type() {
    let log = Log::default();
    let (several, poll, rest) = (log.clone(), log.clone(), log.clone());
    let webhooks = Webhooks::new()
        .on(
            [EventType::ChannelCreated, EventType::ChannelDeleted],
            move |event: Delivery<Event>| {
                several
                    .lock()
                    .unwrap()
                    .push(format!("channel {}", event.event_type()));
                async { Ok(()) }
            },
        )
        .on(
            EventType::Other("poll.closed".into()),
            move |event: Delivery<UnknownEvent>| {
                poll.lock()
                    .unwrap()
                    .push(format!("poll {}", event.data_json()));
                async { Ok(()) }
            },
        )
        .on_unknown(move |event| {
            rest.lock()
                .unwrap()
                .push(format!("unknown {}", event.event_type()));
            async { Ok(()) }
        });
    for file in ["channel.created", "channel.deleted", "channel.updated"] {
        let body = String::from_utf8(fixture(&format!("events/{file}.json"))).unwrap();
        webhooks.handle(&one_delivery(&body)).await;
    }
    let poll_body = r#"{"id":"evt_poll","type":"poll.closed","created_at":"2026-11-22T10:00:00Z","workspace_id":"ws_1","data":{"poll":1}}"#;
    let other_body = r#"{"id":"evt_vote","type":"vote.cast","created_at":"2026-11-22T10:00:00Z","workspace_id":"ws_1","data":{}}"#;
    assert!(matches!(
        webhooks.handle(&one_delivery(poll_body)).await,
        Outcome::Handled
    ));
    assert!(matches!(
        webhooks.handle(&one_delivery(other_body)).await,
        Outcome::Handled
    ));
    assert_eq!(
        entries(&log),
        [
            "channel channel.created",
            "channel channel.deleted",
            r#"poll {"poll":1}"#,
            "unknown poll.closed",
            "unknown vote.cast",
        ],
        "channel.updated has no handler; poll.closed runs its own, then the catch-all, in registration order"
    );
}

#[test]
#[should_panic(expected = "cannot take channel.created events")]
fn a_handler_cannot_take_a_type_whose_payload_it_does_not_take() {
    let _ = Webhooks::new().on(
        EventType::ChannelCreated,
        |_: Delivery<MessageCreated>| async { Ok(()) },
    );
}

#[derive(Clone)]
struct Shop {
    name: &'static str,
    saved: Log,
}

async fn save_with_state(
    event: Delivery<MessageCreated>,
    State(shop): State<Shop>,
) -> HandlerResult {
    shop.saved
        .lock()
        .unwrap()
        .push(format!("{} saved {}", shop.name, event.message.id));
    Ok(())
}

#[tokio::test]
async fn handlers_take_the_state_and_share_one_parse() {
    let saved = Log::default();
    let seen: Arc<Mutex<Vec<Arc<MessageCreated>>>> = Arc::default();
    let (first, second) = (seen.clone(), seen.clone());
    let webhooks = Webhooks::with_state(Shop {
        name: "toko",
        saved: saved.clone(),
    })
    .on(EventType::MessageCreated, save_with_state)
    .on_message_created(move |event| {
        first.lock().unwrap().push(event.shared().clone());
        async { Ok(()) }
    })
    .on_message_created(move |event| {
        second.lock().unwrap().push(event.shared().clone());
        async { Ok(()) }
    });
    assert!(matches!(
        webhooks.handle(&created("hi")).await,
        Outcome::Handled
    ));
    assert_eq!(entries(&saved), ["toko saved msg_01JDB7Q3M0"]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(
        Arc::ptr_eq(&seen[0], &seen[1]),
        "both handlers got the same parsed payload"
    );
}
