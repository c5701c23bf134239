//! The `channel.*` events.

use serde::{Deserialize, Serialize};

use super::common::Channel;

/// The data of every `channel.*` event: the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChannelEvent {
    /// The channel; `members` is filled on `channel.created` only.
    pub channel: Channel,
}

/// `channel.created`: a channel was created (a direct channel only the first
/// time).
pub type ChannelCreated = ChannelEvent;
/// `channel.updated`: its name or avatar changed.
pub type ChannelUpdated = ChannelEvent;
/// `channel.deleted`: it was deleted.
pub type ChannelDeleted = ChannelEvent;
