//! The `webhook.ping` event.

use serde::{Deserialize, Serialize};

use super::common::{null_as_empty, WebhookId};
use super::event::EventType;

/// `webhook.ping`: the endpoint was created, or a test delivery was asked
/// for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WebhookPing {
    /// The webhook endpoint's id.
    pub webhook_id: WebhookId,
    /// The URL it delivers to.
    pub url: String,
    /// The event types it subscribes to.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub events: Vec<EventType>,
}
