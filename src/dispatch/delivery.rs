use std::ops::Deref;

use time::OffsetDateTime;

use crate::model::{Envelope, Event, EventId, WorkspaceId};

/// What a handler receives: the event's payload and the delivery around it.
///
/// It dereferences to the payload, so `event.message` reads the message of a
/// [`MessageCreated`](crate::model::MessageCreated) directly; the id, the
/// event time and the attempt are there for de-duplication and ordering.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery<T> {
    /// The event id (`X-Cariosan-Delivery`), the same on every retry.
    pub id: EventId,
    /// When the event happened; deliveries are unordered, so order by this
    /// where order matters.
    pub created_at: OffsetDateTime,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// `X-Cariosan-Attempt`, 1 on the first try; informational and unsigned.
    pub attempt: Option<u32>,
    /// The payload.
    pub data: T,
}

impl<T> Delivery<T> {
    pub(crate) fn new(
        id: EventId,
        created_at: OffsetDateTime,
        workspace_id: WorkspaceId,
        attempt: Option<u32>,
        data: T,
    ) -> Self {
        Self {
            id,
            created_at,
            workspace_id,
            attempt,
            data,
        }
    }

    /// The payload, without the delivery around it.
    pub fn into_inner(self) -> T {
        self.data
    }
}

impl Delivery<Event> {
    /// The envelope this delivery carried, to store or serialise as sent.
    pub fn into_envelope(self) -> Envelope {
        Envelope {
            id: self.id,
            created_at: self.created_at,
            workspace_id: self.workspace_id,
            event: self.data,
        }
    }
}

impl<T> Deref for Delivery<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.data
    }
}
