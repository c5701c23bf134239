//! Forward compatibility and strictness of the typed model.

use cariosan_webhooks::model::{
    ChannelType, Envelope, Event, EventType, MemberRole, MessageType, ModerationActionKind,
    ModerationReason, ParseError,
};

fn message_body(message_extra: &str) -> String {
    format!(
        r#"{{"id":"evt_1","type":"message.created","created_at":"2026-11-22T03:15:02Z",
        "workspace_id":"ws_1","data":{{"channel":{{"id":"ch_1","type":"group"}},
        "message":{{"id":"msg_1","channel_id":"ch_1","type":"text","content":"hi",
        "created_at":"2026-11-22T03:15:02Z"{message_extra}}}}}}}"#
    )
}

fn message(message_extra: &str) -> cariosan_webhooks::model::Message {
    match Envelope::from_slice(message_body(message_extra).as_bytes())
        .unwrap()
        .event
    {
        Event::MessageCreated(created) => created.message.clone(),
        other => panic!("wrong variant {other:?}"),
    }
}

#[test]
fn absent_optionals_and_arrays_are_none_and_empty() {
    let message = message("");
    assert_eq!(message.sender, None);
    assert_eq!(message.quoted_message, None);
    assert!(message.mentions.is_empty() && message.reactions.is_empty());
    assert_eq!(message.edited_at, None);
}

#[test]
fn null_optionals_and_null_arrays_are_none_and_empty() {
    let message = message(
        r#","sender":null,"attachment_url":null,"parent_id":null,"quoted_message":null,
        "mentions":null,"reactions":null,"edited_at":null,"deleted_at":null"#,
    );
    assert_eq!(message.sender, None);
    assert!(message.mentions.is_empty() && message.reactions.is_empty());
    assert_eq!(message.deleted_at, None);
}

#[test]
fn unknown_fields_are_ignored_everywhere() {
    let body = message_body(r#","translation":{"en":"hi"},"pinned":true"#)
        .replacen(r#""workspace_id""#, r#""region":"id-1","workspace_id""#, 1)
        .replacen(r#""type":"group""#, r#""type":"group","archived":false"#, 1);
    let envelope = Envelope::from_slice(body.as_bytes()).unwrap();
    assert_eq!(envelope.event_type(), "message.created");
}

#[test]
fn unknown_enum_values_are_kept() {
    let body = message_body("")
        .replace(r#""type":"text""#, r#""type":"voice_note""#)
        .replace(r#""type":"group""#, r#""type":"broadcast""#);
    let Event::MessageCreated(created) = Envelope::from_slice(body.as_bytes()).unwrap().event
    else {
        panic!("wrong variant")
    };
    assert_eq!(
        created.message.message_type,
        MessageType::Other("voice_note".into())
    );
    assert_eq!(created.message.message_type.as_str(), "voice_note");
    assert_eq!(
        created.channel.channel_type,
        ChannelType::Other("broadcast".into())
    );
    assert_eq!(MemberRole::from("owner"), MemberRole::Other("owner".into()));
    assert_eq!(
        ModerationActionKind::from("user_banned").as_str(),
        "user_banned"
    );
    assert_eq!(ModerationReason::from("link"), ModerationReason::Link);
    assert_eq!(
        EventType::from("message.created"),
        EventType::MessageCreated
    );
}

#[test]
fn escaped_enum_values_are_decoded() {
    let body = message_body("").replace(r#""type":"text""#, r#""type":"te\u0078t""#);
    let Event::MessageCreated(created) = Envelope::from_slice(body.as_bytes()).unwrap().event
    else {
        panic!("wrong variant")
    };
    assert_eq!(created.message.message_type, MessageType::Text);
}

#[test]
fn unknown_event_types_keep_their_type_and_raw_data() {
    let body = br#"{"id":"evt_9","type":"poll.closed","created_at":"2026-11-22T03:15:02Z",
        "workspace_id":"ws_1","data":{"poll_id":"p1","votes":[1,2]}}"#;
    let envelope = Envelope::from_slice(body).unwrap();
    let Event::Unknown(unknown) = &envelope.event else {
        panic!("wrong variant")
    };
    assert_eq!(unknown.event_type(), "poll.closed");
    assert_eq!(unknown.data_json(), r#"{"poll_id":"p1","votes":[1,2]}"#);
    assert_eq!(
        envelope.event.kind(),
        EventType::Other("poll.closed".into())
    );
}

#[test]
fn data_before_type_is_still_typed() {
    let body = br#"{"data":{"webhook_id":"wh_1","url":"https://x","events":[]},
        "id":"evt_2","created_at":"2026-11-22T03:15:02Z","workspace_id":"ws_1","type":"webhook.ping"}"#;
    let envelope = Envelope::from_slice(body).unwrap();
    let Event::WebhookPing(ping) = envelope.event else {
        panic!("wrong variant")
    };
    assert_eq!(ping.webhook_id, "wh_1");
}

#[test]
fn a_body_that_is_not_an_envelope_is_invalid() {
    let cases: &[&[u8]] = &[
        b"",
        b"not json",
        b"[]",
        b"{\"id\":\"evt_1\"}",
        b"\xEF\xBB\xBF{}",
        b"\xff\xfe",
        br#"{"id":"evt_1","type":"webhook.ping","created_at":"yesterday","workspace_id":"ws","data":{}}"#,
        br#"{"id":"evt_1","id":"evt_2","type":"x","created_at":"2026-11-22T03:15:02Z","workspace_id":"ws","data":{}}"#,
        br#"{"id":"evt_1","type":"x","created_at":"2026-11-22T03:15:02Z","workspace_id":"ws","data":{}} trailing"#,
    ];
    for body in cases {
        match Envelope::from_slice(body) {
            Err(ParseError::InvalidEnvelope(_)) => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
        }
    }
}

#[test]
fn data_that_does_not_fit_a_known_type_is_malformed_not_invalid() {
    let body = message_body("").replace(r#""content":"hi","#, "");
    match Envelope::from_slice(body.as_bytes()) {
        Err(ParseError::MalformedData(malformed)) => {
            assert_eq!(malformed.id(), "evt_1");
            assert_eq!(malformed.event_type(), "message.created");
            assert!(malformed.data_json().contains("msg_1"));
            assert!(
                malformed.error().detail().contains("content"),
                "{}",
                malformed.error().detail()
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn parse_errors_never_quote_the_body() {
    let body = message_body("").replace(r#""content":"hi""#, r#""content":["SECRET-TEXT-123"]"#);
    let error = Envelope::from_slice(body.as_bytes()).unwrap_err();
    let ParseError::MalformedData(malformed) = &error else {
        panic!("{error:?}")
    };
    assert!(malformed.error().detail().contains("invalid type"));
    assert!(!error.to_string().contains("SECRET-TEXT-123"), "{error}");
    assert!(
        !format!("{error:?}").contains("SECRET-TEXT-123"),
        "{error:?}"
    );
    assert!(!malformed.error().to_string().contains("SECRET-TEXT-123"));
}
