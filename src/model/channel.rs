//! The `channel.*` events.

use serde::{Deserialize, Serialize};

use super::common::Channel;
use super::macros::payload_newtype;

/// The data of every `channel.*` event: the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChannelEvent {
    /// The channel; `members` is filled on `channel.created` only.
    pub channel: Channel,
}

payload_newtype! {
    /// `channel.created`: a channel was created (a direct channel only the
    /// first time).
    ChannelCreated(ChannelEvent);
    /// `channel.updated`: its name or avatar changed.
    ChannelUpdated(ChannelEvent);
    /// `channel.deleted`: it was deleted.
    ChannelDeleted(ChannelEvent);
}
