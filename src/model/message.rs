//! Messages, quoted replies and the `message.*` events.

use serde::{Deserialize, Serialize};

use super::macros::payload_newtype;
use time::OffsetDateTime;

use super::common::{null_as_empty, ChannelId, ChannelRef, MessageId, UserRef};
use super::macros::open_enum;

open_enum! {
    /// A message's `type`.
    MessageType {
        /// A text message.
        Text = "text",
        /// An image, with its caption as `content`.
        Image = "image",
        /// A message written by Cariosan itself (someone joined, say); it has
        /// no sender.
        System = "system",
    }
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message {
    /// The message id.
    pub id: MessageId,
    /// The channel the message is in.
    pub channel_id: ChannelId,
    /// Text, image, system, or a newer kind.
    #[serde(rename = "type")]
    pub message_type: MessageType,
    /// Who sent it; `None` for system messages.
    #[serde(default)]
    pub sender: Option<UserRef>,
    /// The text, or an image's caption; empty once unsent.
    pub content: String,
    /// The image, on image messages; `None` once unsent.
    #[serde(default)]
    pub attachment_url: Option<String>,
    /// The message this one replies to.
    #[serde(default)]
    pub parent_id: Option<MessageId>,
    /// A preview of the parent, present exactly when `parent_id` is.
    #[serde(default)]
    pub quoted_message: Option<QuotedMessage>,
    /// Resolved @-mentions, in the order the client sent them.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub mentions: Vec<UserRef>,
    /// Reactions, aggregated per emoji.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub reactions: Vec<Reaction>,
    /// When the message was sent.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last edited.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub edited_at: Option<OffsetDateTime>,
    /// When it was unsent.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub deleted_at: Option<OffsetDateTime>,
}

/// A preview of the message a reply quotes, resolved at delivery time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QuotedMessage {
    /// The parent's id.
    pub id: MessageId,
    /// The parent's type.
    #[serde(rename = "type")]
    pub message_type: MessageType,
    /// The parent's sender; `None` for system messages.
    #[serde(default)]
    pub sender: Option<UserRef>,
    /// At most 200 characters of the parent's text; empty when it was
    /// unsent.
    pub content: String,
    /// The parent's image, if any.
    #[serde(default)]
    pub attachment_url: Option<String>,
    /// Whether the parent was unsent.
    pub deleted: bool,
    /// When the parent was sent.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One emoji's reactions on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// How many users reacted with it.
    pub count: u64,
}

/// The data of every `message.*` event: the channel and the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MessageEvent {
    /// The channel the message is in.
    pub channel: ChannelRef,
    /// The message as it is now.
    pub message: Message,
}

payload_newtype! {
    /// `message.created`: a message was sent.
    MessageCreated(MessageEvent);
    /// `message.updated`: its author edited it (`edited_at` is set).
    MessageUpdated(MessageEvent);
    /// `message.deleted`: its author unsent it (blanked, `deleted_at` set).
    MessageDeleted(MessageEvent);
    /// `message.mentioned`: a message mentions someone (`mentions` non-empty).
    MessageMentioned(MessageEvent);
}
