use std::ops::Deref;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::model::{Envelope, Event, EventId, MalformedEvent, Payload, WorkspaceId};
use crate::verify::VerifiedDelivery;

/// What a handler receives: the event's payload and the delivery around it.
///
/// It dereferences to the payload, so `event.message` reads the message of a
/// [`MessageCreated`](crate::model::MessageCreated) directly; the id, the
/// event time and the attempt are there for de-duplication and ordering.
/// The payload is shared: every handler of one delivery sees the same
/// parse, and cloning a `Delivery` copies no event data.
///
/// Build one in a unit test with
/// [`test_util::delivery`](crate::test_util::delivery) (feature
/// `test-util`).
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
    /// When the sender signed this attempt (the signature's `t`), in Unix
    /// seconds.
    pub signed_at: i64,
    /// The generation of this run's claim, when the delivery backend has one
    /// (the lease stores): larger for every later claim of the same
    /// delivery. A handler that writes to a system of its own can store it
    /// with the write and refuse a write with a smaller one: a run whose
    /// claim was taken over can then not overwrite its successor's work.
    pub generation: Option<u64>,
    stale: bool,
    tenant: Option<Arc<str>>,
    data: Arc<T>,
}

impl<T> Delivery<T> {
    /// The tenant this delivery came for, when one receiver serves several
    /// workspaces ([`CariosanWebhookLayer::for_tenants`](crate::CariosanWebhookLayer::for_tenants),
    /// or an inbox row stored by one); `None` otherwise.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Whether the inbox, ordering deliveries by key, already handled a
    /// later delivery of this one's key (by `created_at`, then id): this
    /// one arrived late. A handler that keeps the latest state should then
    /// not overwrite it. Always `false` outside an ordered inbox.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// This delivery, marked stale or not: for unit tests of a handler
    /// that reads [`is_stale`](Self::is_stale).
    #[must_use]
    pub fn with_stale(mut self, stale: bool) -> Self {
        self.stale = stale;
        self
    }

    /// This delivery, as if it came for `tenant`: for unit tests of a
    /// handler that reads [`tenant`](Self::tenant).
    #[must_use]
    pub fn with_tenant(mut self, tenant: impl Into<Arc<str>>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The payload.
    pub fn data(&self) -> &T {
        &self.data
    }

    /// The payload, shared.
    pub fn shared(&self) -> &Arc<T> {
        &self.data
    }

    /// The payload, without the delivery around it: moved out when this is
    /// its last holder, cloned otherwise.
    pub fn into_inner(self) -> T
    where
        T: Clone,
    {
        Arc::try_unwrap(self.data).unwrap_or_else(|shared| (*shared).clone())
    }
}

impl<T: Payload> Delivery<T> {
    /// The delivery of `envelope`'s payload, if its event carries a `T`.
    pub(crate) fn of(
        envelope: &Envelope,
        attempt: Option<u32>,
        signed_at: i64,
    ) -> Option<Delivery<T>> {
        Some(Self {
            id: envelope.id.clone(),
            created_at: envelope.created_at,
            workspace_id: envelope.workspace_id.clone(),
            attempt,
            signed_at,
            generation: None,
            stale: false,
            tenant: None,
            data: T::from_event(&envelope.event)?,
        })
    }

    pub(crate) fn from_verified(
        delivery: &VerifiedDelivery,
        envelope: &Envelope,
        resources: &http::Extensions,
    ) -> Option<Self> {
        let mut typed = Self::of(envelope, delivery.attempt(), delivery.signed_at())?;
        typed.generation = generation(resources);
        typed.stale = resources.get::<Stale>().is_some();
        typed.tenant = delivery.shared_tenant().cloned();
        Some(typed)
    }
}

/// Put in a run's resources by an ordered inbox: see [`Delivery::is_stale`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stale;

fn generation(resources: &http::Extensions) -> Option<u64> {
    resources
        .get::<crate::delivery::Generation>()
        .map(|generation| generation.0)
}

impl Delivery<MalformedEvent> {
    pub(crate) fn malformed(
        delivery: &VerifiedDelivery,
        malformed: &Arc<MalformedEvent>,
        resources: &http::Extensions,
    ) -> Self {
        Self {
            id: malformed.id().clone(),
            created_at: malformed.created_at(),
            workspace_id: malformed.workspace_id().clone(),
            attempt: delivery.attempt(),
            signed_at: delivery.signed_at(),
            generation: generation(resources),
            stale: resources.get::<Stale>().is_some(),
            tenant: delivery.shared_tenant().cloned(),
            data: malformed.clone(),
        }
    }
}

impl Delivery<Event> {
    /// The envelope this delivery carried, to store or serialise as sent.
    pub fn into_envelope(self) -> Envelope {
        Envelope {
            id: self.id,
            created_at: self.created_at,
            workspace_id: self.workspace_id,
            event: Arc::try_unwrap(self.data).unwrap_or_else(|shared| (*shared).clone()),
        }
    }
}

impl<T> Deref for Delivery<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.data
    }
}
