//! The wire contract in constants: header names, limits and the validators
//! for the values the protocol constrains.
//!
//! Always compiled: the verifier, the layers, the test kit, the CLI, the
//! benches and the examples all spell the protocol from here.

use std::time::Duration;

/// `X-Cariosan-Delivery`: the event id, the same on every retry.
pub const DELIVERY_HEADER: &str = "x-cariosan-delivery";
/// `X-Cariosan-Event`: the event type, equal to the body's `type`.
pub const EVENT_HEADER: &str = "x-cariosan-event";
/// `X-Cariosan-Attempt`: 1, 2, ...; informational and not signed.
pub const ATTEMPT_HEADER: &str = "x-cariosan-attempt";
/// `X-Cariosan-Signature`: `t=<unix seconds>,v1=<hex MAC>[,v1=...]`.
pub const SIGNATURE_HEADER: &str = "x-cariosan-signature";

/// The largest body the sender posts: 1 MiB.
pub const MAX_BODY_LEN: usize = 1024 * 1024;

/// The longest delivery id the protocol allows.
pub const MAX_DELIVERY_ID_LEN: usize = 128;

/// The longest `X-Cariosan-Event` value accepted.
pub const MAX_EVENT_TYPE_LEN: usize = 128;

/// The timestamp tolerance the protocol recommends: 300 s either way.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// How long the sender waits for an answer before it counts a timeout.
pub const SENDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `id` is a delivery id the protocol allows: 1 to 128 characters of
/// `A-Z a-z 0-9 _ -`.
pub fn is_valid_delivery_id(id: &str) -> bool {
    (1..=MAX_DELIVERY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `event_type` is a plain token such as `message.created`: 1 to 128
/// visible ASCII characters, no spaces.
pub fn is_valid_event_type(event_type: &str) -> bool {
    (1..=MAX_EVENT_TYPE_LEN).contains(&event_type.len())
        && event_type.bytes().all(|b| b.is_ascii_graphic())
}

/// The header names as [`http::HeaderName`]s (feature `layer`).
#[cfg(feature = "layer")]
pub mod header {
    use http::HeaderName;

    /// `X-Cariosan-Delivery`.
    pub const DELIVERY: HeaderName = HeaderName::from_static(super::DELIVERY_HEADER);
    /// `X-Cariosan-Event`.
    pub const EVENT: HeaderName = HeaderName::from_static(super::EVENT_HEADER);
    /// `X-Cariosan-Attempt`.
    pub const ATTEMPT: HeaderName = HeaderName::from_static(super::ATTEMPT_HEADER);
    /// `X-Cariosan-Signature`.
    pub const SIGNATURE: HeaderName = HeaderName::from_static(super::SIGNATURE_HEADER);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_follow_the_grammar() {
        assert!(is_valid_delivery_id("evt_01JDB7R0-x"));
        assert!(is_valid_delivery_id(&"a".repeat(MAX_DELIVERY_ID_LEN)));
        for bad in [
            "",
            "evt 1",
            "evt.1",
            "évt",
            &"a".repeat(MAX_DELIVERY_ID_LEN + 1),
        ] {
            assert!(!is_valid_delivery_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn event_types_are_visible_tokens() {
        assert!(is_valid_event_type("message.created"));
        assert!(is_valid_event_type("poll.closed"));
        for bad in [
            "",
            "message created",
            "tab\there",
            &"a".repeat(MAX_EVENT_TYPE_LEN + 1),
        ] {
            assert!(!is_valid_event_type(bad), "{bad:?}");
        }
    }
}
