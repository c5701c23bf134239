//! Shared by the examples: handlers for every event type that report one
//! line per delivery, a tiny HTTP client, and the sample deliveries.
#![allow(dead_code)]

pub mod secrets_file;
pub mod serve;

use std::fmt::Write;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cariosan_webhooks::model::{MembersChanged, Message, UserRef};
use cariosan_webhooks::protocol::{
    ATTEMPT_HEADER, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER,
};
use cariosan_webhooks::{Delivery, HandlerResult, Webhooks};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Where a handler reports `handled <type> <id> <summary>`.
pub type Report = Arc<dyn Fn(String) + Send + Sync>;

fn handled<T>(
    delay: Option<Duration>,
    report: &Report,
    delivery: &Delivery<T>,
    event_type: &str,
    summary: String,
) -> impl Future<Output = HandlerResult> + Send + 'static {
    let line = format!("handled {event_type} {} {summary}", delivery.id);
    let report = report.clone();
    async move {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        report(line);
        Ok(())
    }
}

fn who<'a>(user: Option<&'a UserRef>, nobody: &'a str) -> &'a str {
    user.map_or(nobody, |u| u.external_id.as_str())
}

/// `user_a,user_b joined ch_1 (by user_c)`.
fn members(event: &MembersChanged, verb: &str) -> String {
    let users: Vec<_> = event
        .members
        .iter()
        .map(|m| m.user.external_id.as_str())
        .collect();
    let actor = who(event.actor.as_ref(), "the backend API");
    format!(
        "{} {verb} {} (by {actor})",
        users.join(","),
        event.channel.id
    )
}

/// `text`'s first 40 characters, quoted on one line: line breaks and other
/// control characters become spaces.
fn quote(summary: &mut String, text: &str) {
    let cut = text.char_indices().nth(40).map_or(text.len(), |(at, _)| at);
    summary.push('"');
    summary.extend(
        text[..cut]
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c }),
    );
    if cut < text.len() {
        summary.push('…');
    }
    summary.push('"');
}

fn message(message: &Message) -> String {
    let mut summary = format!(
        "{} {} by {}: ",
        message.message_type,
        message.id,
        who(message.sender.as_ref(), "system"),
    );
    quote(&mut summary, &message.content);
    if let Some(quoted) = &message.quoted_message {
        let state = if quoted.deleted { "unsent" } else { "quoting" };
        let _ = write!(summary, " (reply to {} {state} ", quoted.id);
        quote(&mut summary, &quoted.content);
        summary.push(')');
    }
    for (n, user) in message.mentions.iter().enumerate() {
        summary.push_str(if n == 0 { " mentions " } else { "," });
        summary.push_str(&user.external_id);
    }
    summary
}

/// Handlers for every event type and for unknown ones; each delivery whose
/// handler runs reports exactly one line.
/// `delay`, if any, makes every handler take that long first.
pub fn webhooks(report: Report, delay: Option<Duration>) -> Webhooks {
    webhooks_after(Webhooks::new(), report, delay)
}

/// The same handlers, registered after those `first` has: they run after
/// them, and only if they succeed.
pub fn webhooks_after(first: Webhooks, report: Report, delay: Option<Duration>) -> Webhooks {
    let r = report;
    let (r1, r2, r3, r4, r5, r6) = (
        r.clone(),
        r.clone(),
        r.clone(),
        r.clone(),
        r.clone(),
        r.clone(),
    );
    let (r7, r8, r9, r10, r11, r12) = (
        r.clone(),
        r.clone(),
        r.clone(),
        r.clone(),
        r.clone(),
        r.clone(),
    );
    first
        .on_message_created(move |e| {
            handled(delay, &r1, &e, "message.created", message(&e.message))
        })
        .on_message_updated(move |e| {
            handled(delay, &r2, &e, "message.updated", message(&e.message))
        })
        .on_message_deleted(move |e| {
            handled(
                delay,
                &r3,
                &e,
                "message.deleted",
                format!("{} unsent", e.message.id),
            )
        })
        .on_message_mentioned(move |e| {
            handled(delay, &r4, &e, "message.mentioned", message(&e.message))
        })
        .on_channel_created(move |e| {
            let c = &e.channel;
            handled(
                delay,
                &r5,
                &e,
                "channel.created",
                format!(
                    "{} {} {:?} with {} members",
                    c.channel_type,
                    c.id,
                    c.name.as_deref().unwrap_or(""),
                    c.members.len()
                ),
            )
        })
        .on_channel_updated(move |e| {
            handled(
                delay,
                &r6,
                &e,
                "channel.updated",
                format!(
                    "{} now {:?}",
                    e.channel.id,
                    e.channel.name.as_deref().unwrap_or("")
                ),
            )
        })
        .on_channel_deleted(move |e| {
            handled(
                delay,
                &r7,
                &e,
                "channel.deleted",
                format!("{} {}", e.channel.channel_type, e.channel.id),
            )
        })
        .on_member_added(move |e| {
            let summary = members(&e, "joined");
            handled(delay, &r8, &e, "member.added", summary)
        })
        .on_member_removed(move |e| {
            let summary = members(&e, "left");
            handled(delay, &r9, &e, "member.removed", summary)
        })
        .on_member_updated(move |e| {
            let m = &e.member;
            handled(
                delay,
                &r10,
                &e,
                "member.updated",
                format!(
                    "{} {} -> {} in {}",
                    m.user.external_id, e.previous_role, m.role, e.channel.id
                ),
            )
        })
        .on_moderation_action(move |e| {
            handled(
                delay,
                &r11,
                &e,
                "moderation.action",
                format!("{} {} for {}", e.action, e.user.external_id, e.reason),
            )
        })
        .on_webhook_ping(move |e| {
            handled(
                delay,
                &r12,
                &e,
                "webhook.ping",
                format!(
                    "webhook {} for {} event types",
                    e.webhook_id,
                    e.events.len()
                ),
            )
        })
        .on_unknown(move |e| {
            let summary = format!("unknown type, {} bytes of data", e.data_json().len());
            handled(delay, &r, &e, e.event_type(), summary)
        })
}

/// POSTs a body with headers to `http://addr/webhooks/cariosan`; the status
/// and the response body.
pub async fn post(
    addr: SocketAddr,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = http::Request::post("/webhooks/cariosan").header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = sender
        .send_request(request.body(Full::new(bytes::Bytes::from(body)))?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The protocol's sample deliveries: (event type, delivery id, body).
pub fn samples() -> Vec<(&'static str, &'static str, &'static [u8])> {
    macro_rules! sample {
        ($type:literal, $id:literal, $file:literal) => {
            (
                $type,
                $id,
                &include_bytes!(concat!("../../src/test_util/fixtures/events/", $file))[..],
            )
        };
    }
    vec![
        sample!(
            "message.created",
            "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A",
            "message.created.json"
        ),
        sample!(
            "message.created",
            "evt_01JDB7R0AAAAAAAAAAAAAAAAAA",
            "message.created.reply.json"
        ),
        sample!(
            "message.created",
            "evt_01JDB7S1IMAGEIMAGEIMAGE01",
            "message.created.image.json"
        ),
        sample!(
            "message.created",
            "evt_01JDB7S2SYSTEMSYSTEMSYS01",
            "message.created.system.json"
        ),
        sample!(
            "message.created",
            "evt_01JDB7U5REPLYDELETED0001",
            "message.created.reply_to_deleted.json"
        ),
        sample!(
            "message.updated",
            "evt_01JDB7T3UPDATEUPDATEUPD01",
            "message.updated.json"
        ),
        sample!(
            "message.deleted",
            "evt_01JDB7U4DELETEDELETEDEL01",
            "message.deleted.json"
        ),
        sample!(
            "message.mentioned",
            "evt_01JDB7V6MENTIONMENTION01",
            "message.mentioned.json"
        ),
        sample!(
            "channel.created",
            "evt_01JDB7W7CHANNELCREATED01",
            "channel.created.json"
        ),
        sample!(
            "channel.updated",
            "evt_01JDB7X8CHANNELUPDATED01",
            "channel.updated.json"
        ),
        sample!(
            "channel.deleted",
            "evt_01JDB7Y9CHANNELDELETED01",
            "channel.deleted.json"
        ),
        sample!(
            "member.added",
            "evt_01JDB7Z0MEMBERADDED00001",
            "member.added.json"
        ),
        sample!(
            "member.removed",
            "evt_01JDB800MEMBERREMOVED001",
            "member.removed.json"
        ),
        sample!(
            "member.updated",
            "evt_01JDB811MEMBERUPDATED001",
            "member.updated.json"
        ),
        sample!(
            "moderation.action",
            "evt_01JDB822MODERATION00001",
            "moderation.action.json"
        ),
        sample!(
            "moderation.action",
            "evt_01JDB833MODERATIONMUTE1",
            "moderation.action.mute.json"
        ),
        sample!(
            "webhook.ping",
            "evt_01JDB844PINGPINGPINGPIN01",
            "webhook.ping.json"
        ),
    ]
}

/// The headers Cariosan sends with a delivery.
pub fn headers(
    id: &str,
    event_type: &str,
    attempt: u32,
    signature: String,
) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("user-agent", "Cariosan-Webhook/1".into()),
        (DELIVERY_HEADER, id.into()),
        (EVENT_HEADER, event_type.into()),
        (ATTEMPT_HEADER, attempt.to_string()),
        (SIGNATURE_HEADER, signature),
    ]
}
