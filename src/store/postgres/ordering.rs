//! Ordered processing in the inbox: which deliveries share a key, and what
//! happens to one that arrives after a later one of its key ran.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Envelope, Event};
use crate::verify::VerifiedDelivery;

/// Which deliveries the inbox runs in order: those that share a key run
/// one at a time, in the order of their envelope's `created_at` (ties by
/// delivery id, which is not causal order); deliveries of different keys
/// run in parallel. A delivery
/// without a key runs as soon as it is due.
///
/// [`OrderingKeys::default`] keys, per event type:
///
/// | event types | key |
/// |---|---|
/// | `message.created`, `message.updated`, `message.deleted`, `message.mentioned` | `message:<message id>` |
/// | `moderation.action` on a message (`message_id` set) | `message:<message id>`, so a block runs after the creation it blocks |
/// | `moderation.action` on a user | `user:<user's external id>` |
/// | `member.added`, `member.removed`, `member.updated` | `members:<channel id>`: one event may name several members, and one key per delivery keeps an addition of several ordered with a later removal of one |
/// | `channel.created`, `channel.updated`, `channel.deleted` | `channel:<channel id>` |
/// | `webhook.ping`, event types this version does not know | none |
///
/// A delivery whose data does not fit the model is keyed by its message's
/// id when its type is a `message.*` and that id can be read, and has no
/// key otherwise.
#[derive(Clone)]
pub struct OrderingKeys {
    key: Arc<KeyFn>,
}

type KeyFn = dyn Fn(&Envelope) -> Option<String> + Send + Sync;

impl Default for OrderingKeys {
    fn default() -> Self {
        Self::by(default_key)
    }
}

impl fmt::Debug for OrderingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OrderingKeys(..)")
    }
}

impl OrderingKeys {
    /// Keys of your own: `key` gives an envelope's key, or `None` for a
    /// delivery that runs unordered. Keys are compared within a tenant.
    pub fn by(key: impl Fn(&Envelope) -> Option<String> + Send + Sync + 'static) -> Self {
        Self { key: Arc::new(key) }
    }

    /// The key of `delivery`.
    pub fn key_of(&self, delivery: &VerifiedDelivery) -> Option<String> {
        match delivery.envelope() {
            Some(envelope) => (self.key)(envelope),
            None => {
                if !delivery.event_type().starts_with("message.") {
                    return None;
                }
                let ids = super::inbox::message_ids(delivery);
                let own = ids.into_iter().next().filter(|id| !id.is_empty())?;
                Some(format!("message:{own}"))
            }
        }
    }
}

/// The default keys: see [`OrderingKeys`].
pub fn default_key(envelope: &Envelope) -> Option<String> {
    Some(match &envelope.event {
        Event::MessageCreated(e) => format!("message:{}", e.message.id.as_str()),
        Event::MessageUpdated(e) => format!("message:{}", e.message.id.as_str()),
        Event::MessageDeleted(e) => format!("message:{}", e.message.id.as_str()),
        Event::MessageMentioned(e) => format!("message:{}", e.message.id.as_str()),
        Event::ModerationAction(action) => match &action.message_id {
            Some(message) => format!("message:{}", message.as_str()),
            None => format!("user:{}", action.user.external_id),
        },
        Event::MemberAdded(e) => format!("members:{}", e.channel.id.as_str()),
        Event::MemberRemoved(e) => format!("members:{}", e.channel.id.as_str()),
        Event::MemberUpdated(e) => format!("members:{}", e.channel.id.as_str()),
        Event::ChannelCreated(e) => format!("channel:{}", e.channel.id.as_str()),
        Event::ChannelUpdated(e) => format!("channel:{}", e.channel.id.as_str()),
        Event::ChannelDeleted(e) => format!("channel:{}", e.channel.id.as_str()),
        _ => return None,
    })
}

/// What becomes of a *stale* delivery: one older (by `created_at`, then
/// id) than a delivery of its key that was already handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StalePolicy {
    /// It runs, with [`Delivery::is_stale`](crate::Delivery::is_stale)
    /// true: the handlers decide (the default).
    #[default]
    Run,
    /// It ends `superseded` without running, its body dropped as a done
    /// row's is. A `message.deleted` runs all the same: its message's text
    /// must go.
    Supersede,
}

/// How the inbox orders deliveries: set with
/// [`Inbox::ordered`](super::Inbox::ordered).
#[derive(Debug, Clone)]
pub(super) struct Ordering {
    pub(super) keys: OrderingKeys,
    pub(super) hold_for: Duration,
    pub(super) stale: StalePolicy,
    pub(super) dead_wait: Duration,
}

impl Ordering {
    pub(super) fn new(keys: OrderingKeys) -> Self {
        Self {
            keys,
            hold_for: Duration::ZERO,
            stale: StalePolicy::Run,
            dead_wait: Duration::ZERO,
        }
    }
}
