//! The typed event model (protocol sections 4 to 6).
//!
//! Parse a verified body with [`Envelope::from_slice`]. The model is built to
//! survive a sender that grows: unknown fields are ignored, unknown enum
//! values are kept in an `Other` variant, unknown event types become
//! [`Event::Unknown`], absent and `null` optionals are `None`, and absent
//! arrays are empty.
//!
//! ```
//! use cariosan_webhooks::model::{Envelope, Event, MessageType};
//!
//! let body = br#"{"id":"evt_1","type":"message.created",
//!   "created_at":"2026-11-22T10:15:02+07:00","workspace_id":"ws_1",
//!   "data":{"channel":{"id":"ch_1","type":"group"},
//!           "message":{"id":"msg_1","channel_id":"ch_1","type":"sticker",
//!                      "content":"hi","created_at":"2026-11-22T03:15:02Z"}}}"#;
//! let envelope = Envelope::from_slice(body)?;
//! let Event::MessageCreated(created) = &envelope.event else { unreachable!() };
//! assert_eq!(created.message.message_type, MessageType::Other("sticker".into()));
//! assert!(created.message.mentions.is_empty());
//! # Ok::<(), cariosan_webhooks::model::ParseError>(())
//! ```

mod channel;
mod common;
mod event;
pub(crate) mod macros;
mod member;
mod message;
mod moderation;
mod ping;

pub use channel::{ChannelCreated, ChannelDeleted, ChannelEvent, ChannelUpdated};
pub use common::{
    Channel, ChannelId, ChannelRef, ChannelType, EventId, Member, MemberRole, MessageId, UserRef,
    WebhookId, WorkspaceId,
};
pub use event::{
    Envelope, Event, EventType, JsonError, MalformedEvent, ParseError, Payload, UnknownEvent,
};
pub use member::{MemberAdded, MemberRemoved, MemberUpdated, MembersChanged};
pub use message::{
    Message, MessageCreated, MessageDeleted, MessageEvent, MessageMentioned, MessageType,
    MessageUpdated, QuotedMessage, Reaction,
};
pub use moderation::{ModerationAction, ModerationActionKind, ModerationReason};
pub use ping::WebhookPing;
