//! The `moderation.action` event.

use serde::{Deserialize, Serialize};

use super::common::{ChannelRef, MessageId, UserRef};
use super::macros::open_enum;

open_enum! {
    /// What moderation did.
    ModerationActionKind {
        /// A message was blocked before it was stored.
        MessageBlocked = "message_blocked",
        /// A message was stored and flagged for review.
        MessageFlagged = "message_flagged",
        /// A user was muted.
        UserMuted = "user_muted",
        /// A user was unmuted.
        UserUnmuted = "user_unmuted",
        /// A user was blocked.
        UserBlocked = "user_blocked",
        /// A user was unblocked.
        UserUnblocked = "user_unblocked",
    }
}

open_enum! {
    /// Why moderation acted.
    ModerationReason {
        /// A word list matched.
        Wordlist = "wordlist",
        /// A link was sent.
        Link = "link",
        /// A phone number was sent.
        Phone = "phone",
        /// Too many messages too fast.
        Flood = "flood",
        /// A person acted.
        Manual = "manual",
    }
}

/// `moderation.action`: automatic moderation or a block or mute acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModerationAction {
    /// What was done.
    pub action: ModerationActionKind,
    /// Why.
    pub reason: ModerationReason,
    /// Where, when it concerns a channel.
    #[serde(default)]
    pub channel: Option<ChannelRef>,
    /// The subject.
    pub user: UserRef,
    /// Who acted; `None` when automatic.
    #[serde(default)]
    pub actor: Option<UserRef>,
    /// The message acted on; `None` for a blocked message, never stored.
    #[serde(default)]
    pub message_id: Option<MessageId>,
    /// At most 200 characters of the offending text.
    #[serde(default)]
    pub excerpt: Option<String>,
}
