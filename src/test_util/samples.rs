//! A realistic event of every type, as the protocol's fixtures describe
//! them: a marketplace order chat with a quoted reply, @-mentions,
//! reactions, an image in a direct channel, moderation of a phone number.
//!
//! Each call returns a fresh [`Envelope`]; change its fields to fit a test.

use crate::model::Envelope;

macro_rules! samples {
    ($( $(#[$doc:meta])* $name:ident => $file:literal; )*) => {
        $(
            $(#[$doc])*
            pub fn $name() -> Envelope {
                let json = include_str!(concat!("fixtures/events/", $file));
                Envelope::from_slice(json.as_bytes()).expect("the sample parses")
            }
        )*

        /// Every sample, one per fixture.
        pub fn all() -> Vec<Envelope> {
            vec![$( $name() ),*]
        }
    };
}

samples! {
    /// `message.created`: a text message in an order's group channel.
    message_created => "message.created.json";
    /// `message.created`: a reply quoting a message, with two @-mentions and
    /// reactions.
    message_created_reply => "message.created.reply.json";
    /// `message.created`: a reply to a message that was unsent.
    message_created_reply_to_unsent => "message.created.reply_to_deleted.json";
    /// `message.created`: an image with a caption, in a direct channel.
    message_created_image => "message.created.image.json";
    /// `message.created`: a system message, with no sender.
    message_created_system => "message.created.system.json";
    /// `message.updated`: an edited message.
    message_updated => "message.updated.json";
    /// `message.deleted`: an unsent message.
    message_deleted => "message.deleted.json";
    /// `message.mentioned`: a message mentioning two members.
    message_mentioned => "message.mentioned.json";
    /// `channel.created`: a group channel with its first members.
    channel_created => "channel.created.json";
    /// `channel.updated`: a renamed channel.
    channel_updated => "channel.updated.json";
    /// `channel.deleted`: a deleted direct channel.
    channel_deleted => "channel.deleted.json";
    /// `member.added`: a member added by the backend API.
    member_added => "member.added.json";
    /// `member.removed`: a member removed by an admin.
    member_removed => "member.removed.json";
    /// `member.updated`: a member promoted to admin.
    member_updated => "member.updated.json";
    /// `moderation.action`: a message blocked for a phone number.
    moderation_blocked => "moderation.action.json";
    /// `moderation.action`: a user muted by hand.
    moderation_muted => "moderation.action.mute.json";
    /// `webhook.ping`: a test delivery.
    webhook_ping => "webhook.ping.json";
}

/// The sample of an event type, for tools that take the type by name.
pub fn of_type(event_type: &str) -> Option<Envelope> {
    Some(match event_type {
        "message.created" => message_created_reply(),
        "message.updated" => message_updated(),
        "message.deleted" => message_deleted(),
        "message.mentioned" => message_mentioned(),
        "channel.created" => channel_created(),
        "channel.updated" => channel_updated(),
        "channel.deleted" => channel_deleted(),
        "member.added" => member_added(),
        "member.removed" => member_removed(),
        "member.updated" => member_updated(),
        "moderation.action" => moderation_blocked(),
        "webhook.ping" => webhook_ping(),
        _ => return None,
    })
}
