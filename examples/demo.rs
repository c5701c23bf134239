//! The whole job in one command, with no setup: starts a receiver on a free
//! port of 127.0.0.1, sends it a signed sample delivery of every event type,
//! an event type it does not know, a duplicate, a delivery whose handler
//! asks for a later retry, and forged, stale and tampered ones, prints what
//! the handlers saw and what was answered, and exits.
//!
//! ```text
//! cargo run --example demo
//! ```

mod support;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::time::Duration;

use axum::Router;
use cariosan_webhooks::verify::{sign, Secret};
use cariosan_webhooks::{CariosanWebhookLayer, HandlerError, Webhooks};

const SECRET: &str = "whsec_DEMO_ONLY_not_a_real_secret_0000";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let report: support::Report = Arc::new(|line| println!("  {line}"));
    // Runs before the printing handlers: a CRM that is down on the first
    // attempt of one delivery, so that it is retried and then handled.
    let crm = Webhooks::new().on_message_created(|event| async move {
        if event.id == "evt_demo_crm" && event.attempt == Some(1) {
            return Err(HandlerError::retry_later(
                Duration::from_secs(30),
                "the CRM is down",
            ));
        }
        Ok(())
    });
    let app = Router::new().route(
        "/webhooks/cariosan",
        CariosanWebhookLayer::new(SECRET).route(support::webhooks_after(crm, report, None)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("receiver listening on http://{addr}/webhooks/cariosan\n");

    let secret = Secret::new(SECRET)?;
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
    let mut acknowledged = 0;
    for (event_type, id, body) in support::samples() {
        let signature = sign(std::slice::from_ref(&secret), id, now, body);
        let (status, answer) = support::post(
            addr,
            &support::headers(id, event_type, 1, signature),
            body.to_vec(),
        )
        .await?;
        println!("{event_type:<18} {id} -> {status} {answer}");
        acknowledged += usize::from(status == 200);
    }

    println!("\nan event type this version does not know:");
    let unknown = br#"{"id":"evt_demo_poll","type":"poll.closed","created_at":"2026-11-22T10:00:00+07:00","workspace_id":"ws_demo","data":{"poll_id":"poll_1","winner":"Nasi goreng"}}"#;
    let signature = sign(std::slice::from_ref(&secret), "evt_demo_poll", now, unknown);
    let (status, answer) = support::post(
        addr,
        &support::headers("evt_demo_poll", "poll.closed", 1, signature),
        unknown.to_vec(),
    )
    .await?;
    println!("poll.closed        evt_demo_poll -> {status} {answer}");

    println!("\nthe same delivery again, as Cariosan redelivers (nothing runs):");
    let (event_type, id, body) = support::samples()[0];
    let signature = sign(std::slice::from_ref(&secret), id, now, body);
    let (status, answer) = support::post(
        addr,
        &support::headers(id, event_type, 2, signature),
        body.to_vec(),
    )
    .await?;
    println!("{event_type:<18} {id} attempt 2 -> {status} {answer}");
    let duplicate_ok = (status, answer.as_str()) == (200, "duplicate");

    println!("\na handler asks for a later retry (the CRM is down), and the retry is handled:");
    let crm_body = String::from_utf8(body.to_vec())?.replace(id, "evt_demo_crm");
    let mut retried_ok = true;
    for (attempt, expected) in [(1, (503, "retry_later")), (2, (200, "handled"))] {
        let signature = sign(
            std::slice::from_ref(&secret),
            "evt_demo_crm",
            now,
            crm_body.as_bytes(),
        );
        let (status, answer) = support::post(
            addr,
            &support::headers("evt_demo_crm", event_type, attempt, signature),
            crm_body.clone().into_bytes(),
        )
        .await?;
        println!("{event_type:<18} evt_demo_crm attempt {attempt} -> {status} {answer}");
        retried_ok &= (status, answer.as_str()) == expected;
    }

    println!("\nforged, stale and tampered deliveries (no handler runs):");
    let forger = Secret::new("whsec_attacker")?;
    let mut tampered = body.to_vec();
    tampered[60] ^= 0x01;
    let attempts: [(&str, String, Vec<u8>); 4] = [
        (
            "signed with another secret",
            sign(&[forger], id, now, body),
            body.to_vec(),
        ),
        (
            "signed 10 minutes ago",
            sign(std::slice::from_ref(&secret), id, now - 600, body),
            body.to_vec(),
        ),
        (
            "body changed after signing",
            sign(std::slice::from_ref(&secret), id, now, body),
            tampered,
        ),
        (
            "signature cut short",
            sign(std::slice::from_ref(&secret), id, now, body)[..60].to_owned(),
            body.to_vec(),
        ),
    ];
    let mut rejected = 0;
    for (what, signature, body) in attempts {
        let (status, answer) =
            support::post(addr, &support::headers(id, event_type, 1, signature), body).await?;
        println!("{what:<27} -> {status} {answer}");
        rejected += usize::from(status == 401);
    }

    println!(
        "\n{acknowledged} of {} sample deliveries acknowledged, {rejected} of 4 forgeries rejected",
        support::samples().len()
    );
    if acknowledged != support::samples().len() || rejected != 4 || !duplicate_ok || !retried_ok {
        return Err("the demo did not go as expected".into());
    }
    Ok(())
}
