//! The `receiver` example as a user deploys it: a real process on
//! 127.0.0.1, fed every fixture by the independent signer; it must print
//! exactly one `handled <type> <id> ...` line per handler run, and nothing
//! for a forgery or a duplicate.

mod common;

use std::time::Duration;

use common::process::ReceiverProcess;
use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn the_receiver_prints_one_line_per_handled_delivery() {
    let receiver = ReceiverProcess::start(&[]);
    let addr = receiver.addr;
    let index: Value = serde_json::from_slice(&fixture("events/index.json")).unwrap();
    for delivery in index["deliveries"].as_array().unwrap() {
        let field = |k: &str| delivery[k].as_str().unwrap().to_owned();
        let body = fixture(&format!("events/{}", field("file")));
        let reply = send_signed(addr, &field("delivery"), &field("type"), &body).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "handled"),
            "{}",
            field("name")
        );
        let line = receiver
            .line(Duration::from_secs(10))
            .expect("a line per delivery");
        let prefix = format!("handled {} {} ", field("type"), field("delivery"));
        assert!(
            line.starts_with(&prefix),
            "{line:?} should start with {prefix:?}"
        );
        assert!(line.len() > prefix.len(), "a summary follows: {line:?}");
    }

    let body = fixture("events/message.created.json");
    let id = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
    let forged = independent_signature("whsec_forger", id, now(), &body);
    let reply = send(
        addr,
        &delivery_headers(id, "message.created", &forged),
        &body,
    )
    .await;
    assert_eq!(reply.status, 401);
    let duplicate = send_signed(addr, id, "message.created", &body).await;
    assert_eq!(
        (duplicate.status, duplicate.body.as_str()),
        (200, "duplicate")
    );
    let unknown = br#"{"id":"evt_u1","type":"poll.closed","created_at":"2026-11-22T03:15:02Z","workspace_id":"ws_1","data":{}}"#;
    assert_eq!(
        send_signed(addr, "evt_u1", "poll.closed", unknown)
            .await
            .status,
        200
    );
    let line = receiver.line(Duration::from_secs(10)).unwrap();
    assert!(
        line.starts_with("handled poll.closed evt_u1 "),
        "the forgery and the duplicate printed nothing, the unknown event one line: {line:?}"
    );
}
