//! Objects shared by several events (protocol section 5).

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

use super::macros::{id_newtype, open_enum};

id_newtype! {
    /// An event id, `evt_...`: the envelope's `id` and the
    /// `X-Cariosan-Delivery` header, identical on every retry.
    EventId
}

id_newtype! {
    /// A workspace id, `ws_...`.
    WorkspaceId
}

id_newtype! {
    /// A channel id, `ch_...`.
    ChannelId
}

id_newtype! {
    /// A message id, `msg_...`.
    MessageId
}

id_newtype! {
    /// A webhook endpoint id, `wh_...`.
    WebhookId
}

open_enum! {
    /// A channel's `type`.
    ChannelType {
        /// A channel with any number of members.
        Group = "group",
        /// A one-to-one channel.
        Direct = "direct",
    }
}

open_enum! {
    /// A member's `role` in a channel.
    MemberRole {
        /// May manage the channel and its members.
        Admin = "admin",
        /// An ordinary member.
        Member = "member",
    }
}

/// A user as the consumer backend knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UserRef {
    /// The backend's own id for the user.
    pub external_id: String,
    /// The display name.
    pub name: String,
    /// The avatar, when the user has one.
    #[serde(default)]
    pub avatar_url: Option<String>,
}

/// A channel reference, as carried by message and member events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChannelRef {
    /// Cariosan's id for the channel.
    pub id: ChannelId,
    /// The backend's own id (an order number, say); direct channels have
    /// none unless one was given.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Group or direct.
    #[serde(rename = "type")]
    pub channel_type: ChannelType,
}

/// A whole channel, as carried by `channel.*` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Channel {
    /// Cariosan's id for the channel.
    pub id: ChannelId,
    /// The backend's own id, if any.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Group or direct.
    #[serde(rename = "type")]
    pub channel_type: ChannelType,
    /// The channel's name, if it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// The channel's avatar, if it has one.
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// When the channel was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// How many members the channel has.
    pub member_count: u64,
    /// The first members (at most 100), on `channel.created` only; empty
    /// otherwise.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub members: Vec<Member>,
}

impl Channel {
    /// The reference form of this channel, as message events carry it.
    pub fn to_ref(&self) -> ChannelRef {
        ChannelRef {
            id: self.id.clone(),
            external_id: self.external_id.clone(),
            channel_type: self.channel_type.clone(),
        }
    }
}

/// A member of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Member {
    /// Who the member is.
    pub user: UserRef,
    /// Their role in the channel.
    pub role: MemberRole,
    /// When they joined.
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
}

/// An absent array and a `null` one both mean empty.
pub(crate) fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}
