//! The protocol's fixtures, produced by an independent sender: every
//! signature vector and every event body.

use std::path::PathBuf;
use std::time::Duration;

use cariosan_webhooks::model::{
    ChannelType, Envelope, Event, MemberRole, MessageType, ModerationActionKind, ModerationReason,
};
use cariosan_webhooks::verify::{FixedClock, Secret, Verifier, VerifyError};
use serde_json::Value;
use time::macros::datetime;

fn fixture(path: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/test_util/fixtures")
        .join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn json(path: &str) -> Value {
    serde_json::from_slice(&fixture(path)).unwrap()
}

fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .to_owned()
}

/// The reason each rejected vector must be rejected for.
fn expected_error(name: &str) -> Option<&'static str> {
    Some(match name {
        "stale_past" => "timestamp_too_old",
        "too_far_future" => "timestamp_too_new",
        "wrong_secret" | "tampered_body_one_bit" | "other_delivery_id" | "timestamp_swapped" => {
            "signature_mismatch"
        }
        "empty" => "signature_missing",
        "missing_t" | "two_t" | "negative_t" | "t_not_decimal" | "t_overflow" | "no_v1"
        | "short_v1" | "long_v1" | "non_hex_v1" | "garbage" => "signature_malformed",
        _ => return None,
    })
}

#[test]
fn every_signature_vector_gets_its_verdict() {
    let vectors = json("signature-vectors.json");
    let cases = vectors["cases"].as_array().unwrap();
    assert!(
        cases.len() >= 25,
        "expected the full set, got {}",
        cases.len()
    );
    for case in cases {
        let name = text(case, "name");
        let body = fixture(&text(case, "body_file"));
        let secrets: Vec<Secret> = case["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Secret::new(s.as_str().unwrap()).unwrap())
            .collect();
        let mut verifier = Verifier::from_secret(secrets[0].clone())
            .tolerance(Duration::from_secs(case["tolerance_s"].as_u64().unwrap()))
            .clock(FixedClock(case["now"].as_i64().unwrap()));
        for secret in &secrets[1..] {
            verifier = verifier.with_secret(secret.clone());
        }
        let verdict = verifier.verify(&text(case, "delivery"), &text(case, "signature"), &body);
        match text(case, "expect").as_str() {
            "accept" => assert!(verdict.is_ok(), "{name}: {verdict:?}"),
            "reject" => {
                let error = verdict.expect_err(&name);
                if let Some(code) = expected_error(&name) {
                    assert_eq!(error.code(), code, "{name}: {error:?}");
                }
            }
            other => panic!("{name}: unknown expectation {other}"),
        }
    }
}

#[test]
fn a_vector_stops_verifying_when_its_body_changes() {
    let vectors = json("signature-vectors.json");
    let case = &vectors["cases"][0];
    let mut body = fixture(&text(case, "body_file"));
    let verifier = Verifier::new(case["secrets"][0].as_str().unwrap())
        .unwrap()
        .clock(FixedClock(case["now"].as_i64().unwrap()));
    let (id, header) = (text(case, "delivery"), text(case, "signature"));
    assert!(verifier.verify(&id, &header, &body).is_ok());
    body[10] ^= 1;
    assert_eq!(
        verifier.verify(&id, &header, &body),
        Err(VerifyError::NoMatchingSignature)
    );
}

#[test]
fn every_event_fixture_verifies_and_parses_into_its_variant() {
    let index = json("events/index.json");
    let secret = text(&index, "secret");
    let deliveries = index["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 17);
    for delivery in deliveries {
        let name = text(delivery, "name");
        let body = fixture(&format!("events/{}", text(delivery, "file")));
        let verifier = Verifier::new(&secret)
            .unwrap()
            .clock(FixedClock(delivery["timestamp"].as_i64().unwrap()));
        let id = text(delivery, "delivery");
        verifier
            .verify(&id, &text(delivery, "signature"), &body)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let envelope = Envelope::from_slice(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(envelope.id, id.as_str(), "{name}");
        assert_eq!(envelope.event_type(), text(delivery, "type"), "{name}");
        assert!(!matches!(envelope.event, Event::Unknown(_)), "{name}");
        assert_eq!(envelope.workspace_id, "ws_01JD9ZK2M7", "{name}");
    }
}

fn event(file: &str) -> Event {
    Envelope::from_slice(&fixture(&format!("events/{file}")))
        .unwrap()
        .event
}

#[test]
fn plain_message_created() {
    let Event::MessageCreated(created) = event("message.created.json") else {
        panic!("wrong variant")
    };
    let message = &created.message;
    assert_eq!(created.channel.external_id.as_deref(), Some("order_123"));
    assert_eq!(created.channel.channel_type, ChannelType::Group);
    assert_eq!(message.message_type, MessageType::Text);
    assert_eq!(message.content, "Halo, pesanan saya sudah dikirim?");
    assert_eq!(message.sender.as_ref().unwrap().external_id, "user_alice");
    assert!(message.quoted_message.is_none() && message.parent_id.is_none());
    assert!(message.mentions.is_empty() && message.reactions.is_empty());
    assert_eq!(
        message.created_at,
        datetime!(2026-11-22 03:15:02.123456 UTC)
    );
    assert_eq!(message.edited_at, None);
}

#[test]
fn reply_with_quote_mentions_reactions_and_offset() {
    let Event::MessageCreated(created) = event("message.created.reply.json") else {
        panic!("wrong variant")
    };
    let message = &created.message;
    assert_eq!(
        message.content,
        "Sudah, @Alice — nomor resi JNE 1234 🚚. cc @Budi Santoso"
    );
    assert_eq!(message.parent_id.as_ref().unwrap(), "msg_01JDB7Q3M0");
    let quoted = message.quoted_message.as_ref().unwrap();
    assert_eq!(quoted.id, "msg_01JDB7Q3M0");
    assert!(!quoted.deleted);
    assert_eq!(quoted.content, "Halo, pesanan saya sudah dikirim?");
    assert_eq!(quoted.sender.as_ref().unwrap().name, "Alice");
    let mentioned: Vec<_> = message
        .mentions
        .iter()
        .map(|u| u.external_id.as_str())
        .collect();
    assert_eq!(mentioned, ["user_alice", "user_budi"]);
    assert_eq!(message.mentions[1].avatar_url, None);
    let reactions: Vec<_> = message
        .reactions
        .iter()
        .map(|r| (r.emoji.as_str(), r.count))
        .collect();
    assert_eq!(reactions, [("👍", 2), ("🙏", 1)]);
    assert_eq!(message.created_at, datetime!(2026-11-22 10:16:40 +07:00));
    assert_eq!(message.created_at, datetime!(2026-11-22 03:16:40 UTC));
    assert_eq!(message.created_at.offset().whole_hours(), 7);
}

#[test]
fn reply_to_an_unsent_parent() {
    let Event::MessageCreated(created) = event("message.created.reply_to_deleted.json") else {
        panic!("wrong variant")
    };
    let quoted = created.message.quoted_message.as_ref().unwrap();
    assert!(quoted.deleted);
    assert_eq!(quoted.content, "");
    assert_eq!(created.message.content, "Kenapa dihapus?");
}

#[test]
fn image_in_a_direct_channel_without_external_id() {
    let Event::MessageCreated(created) = event("message.created.image.json") else {
        panic!("wrong variant")
    };
    assert_eq!(created.channel.channel_type, ChannelType::Direct);
    assert_eq!(created.channel.external_id, None);
    assert_eq!(created.message.message_type, MessageType::Image);
    assert_eq!(
        created.message.attachment_url.as_deref(),
        Some("https://media.chat.example.com/ws_01JD9ZK2M7/a1b2c3.jpg")
    );
    assert_eq!(created.message.content, "Foto paketnya");
}

#[test]
fn system_message_has_no_sender() {
    let Event::MessageCreated(created) = event("message.created.system.json") else {
        panic!("wrong variant")
    };
    assert_eq!(created.message.message_type, MessageType::System);
    assert_eq!(created.message.sender, None);
}

#[test]
fn edited_and_unsent_messages() {
    let Event::MessageUpdated(updated) = event("message.updated.json") else {
        panic!("wrong variant")
    };
    assert_eq!(
        updated.message.edited_at,
        Some(datetime!(2026-11-22 03:17:00 UTC))
    );
    let Event::MessageDeleted(deleted) = event("message.deleted.json") else {
        panic!("wrong variant")
    };
    assert_eq!(deleted.message.content, "");
    let deleted_at = deleted.message.deleted_at.unwrap();
    assert_eq!(deleted_at, datetime!(2026-11-22 03:18:00.000000001 UTC));
    assert_eq!(deleted_at.nanosecond(), 1);
}

#[test]
fn mentioned_message() {
    let Event::MessageMentioned(mentioned) = event("message.mentioned.json") else {
        panic!("wrong variant")
    };
    assert_eq!(mentioned.message.mentions.len(), 2);
    assert_eq!(mentioned.message.mentions[0].name, "Alice");
}

#[test]
fn channel_events() {
    let Event::ChannelCreated(created) = event("channel.created.json") else {
        panic!("wrong variant")
    };
    let channel = &created.channel;
    assert_eq!(channel.name.as_deref(), Some("Order #123"));
    assert_eq!(channel.member_count, 2);
    let roles: Vec<_> = channel.members.iter().map(|m| m.role.clone()).collect();
    assert_eq!(roles, [MemberRole::Member, MemberRole::Admin]);
    assert_eq!(channel.members[1].user.name, "Dukungan Pelanggan");

    let Event::ChannelUpdated(updated) = event("channel.updated.json") else {
        panic!("wrong variant")
    };
    assert_eq!(
        updated.channel.name.as_deref(),
        Some("Order #123 (dikirim)")
    );
    assert!(
        updated.channel.members.is_empty(),
        "absent members are empty"
    );
    assert_eq!(updated.channel.member_count, 3);

    let Event::ChannelDeleted(deleted) = event("channel.deleted.json") else {
        panic!("wrong variant")
    };
    assert_eq!(deleted.channel.channel_type, ChannelType::Direct);
    assert_eq!(deleted.channel.external_id, None);
    assert_eq!(deleted.channel.name, None);
    assert_eq!(deleted.channel.to_ref().id, "ch_01JDA2DMXK4P");
}

#[test]
fn member_events() {
    let Event::MemberAdded(added) = event("member.added.json") else {
        panic!("wrong variant")
    };
    assert_eq!(added.members[0].user.external_id, "user_budi");
    assert_eq!(added.actor, None);
    let Event::MemberRemoved(removed) = event("member.removed.json") else {
        panic!("wrong variant")
    };
    assert_eq!(removed.actor.as_ref().unwrap().external_id, "user_support");
    let Event::MemberUpdated(updated) = event("member.updated.json") else {
        panic!("wrong variant")
    };
    assert_eq!(updated.member.role, MemberRole::Admin);
    assert_eq!(updated.previous_role, MemberRole::Member);
}

#[test]
fn moderation_events() {
    let Event::ModerationAction(blocked) = event("moderation.action.json") else {
        panic!("wrong variant")
    };
    assert_eq!(blocked.action, ModerationActionKind::MessageBlocked);
    assert_eq!(blocked.reason, ModerationReason::Phone);
    assert_eq!(blocked.message_id, None);
    assert_eq!(
        blocked.excerpt.as_deref(),
        Some("hubungi saya di 0812-3456-7890")
    );
    assert_eq!(blocked.actor, None);
    let Event::ModerationAction(muted) = event("moderation.action.mute.json") else {
        panic!("wrong variant")
    };
    assert_eq!(muted.action, ModerationActionKind::UserMuted);
    assert_eq!(muted.reason, ModerationReason::Manual);
    assert_eq!(muted.channel, None);
    assert_eq!(muted.actor.as_ref().unwrap().name, "Alice");
}

#[test]
fn ping() {
    let Event::WebhookPing(ping) = event("webhook.ping.json") else {
        panic!("wrong variant")
    };
    assert_eq!(ping.webhook_id, "wh_01JD9ZZZ01");
    let events: Vec<_> = ping.events.iter().map(|e| e.as_str()).collect();
    assert_eq!(events, ["message.created", "channel.created"]);
}

#[test]
fn every_fixture_survives_a_serialise_parse_round_trip() {
    let index = json("events/index.json");
    for delivery in index["deliveries"].as_array().unwrap() {
        let body = fixture(&format!("events/{}", text(delivery, "file")));
        let envelope = Envelope::from_slice(&body).unwrap();
        let again = Envelope::from_slice(&serde_json::to_vec(&envelope).unwrap()).unwrap();
        assert_eq!(envelope, again, "{}", text(delivery, "name"));
    }
}
