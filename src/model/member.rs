//! The `member.*` events.

use serde::{Deserialize, Serialize};

use super::common::{null_as_empty, ChannelRef, Member, MemberRole, UserRef};
use super::macros::payload_newtype;

/// The data of `member.added` and `member.removed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MembersChanged {
    /// The channel.
    pub channel: ChannelRef,
    /// The members who joined or left.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub members: Vec<Member>,
    /// Who acted; `None` when the backend API did it.
    #[serde(default)]
    pub actor: Option<UserRef>,
}

payload_newtype! {
    /// `member.added`: members joined.
    MemberAdded(MembersChanged);
    /// `member.removed`: members left or were removed.
    MemberRemoved(MembersChanged);
}

/// `member.updated`: a member's role changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemberUpdated {
    /// The channel.
    pub channel: ChannelRef,
    /// The member, with the new role.
    pub member: Member,
    /// The role before the change.
    pub previous_role: MemberRole,
    /// Who changed it; `None` when the backend API did it.
    #[serde(default)]
    pub actor: Option<UserRef>,
}
