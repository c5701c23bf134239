//! The envelope, the `Event` enum and parsing.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::channel::{ChannelCreated, ChannelDeleted, ChannelUpdated};
use super::common::{EventId, WorkspaceId};
use super::macros::open_enum;
use super::member::{MemberAdded, MemberRemoved, MemberUpdated};
use super::message::{MessageCreated, MessageDeleted, MessageMentioned, MessageUpdated};
use super::moderation::ModerationAction;
use super::ping::WebhookPing;

/// One table drives the `Event` enum, `EventType`, parsing and serialising,
/// so a new event type is one line here.
macro_rules! events {
    ($( $(#[$doc:meta])* $variant:ident($payload:ty) = $wire:literal, )*) => {
        open_enum! {
            /// An event type, as in the envelope's `type` and the
            /// `X-Cariosan-Event` header.
            EventType {
                $( $(#[$doc])* $variant = $wire, )*
            }
        }

        /// A Cariosan event: one variant per event type of the protocol, and
        /// [`Event::Unknown`] for types this version does not know.
        ///
        /// Payloads are shared (`Arc`), so a delivery that several handlers
        /// take is parsed once and never deep-copied.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Event {
            $( $(#[$doc])* $variant(Arc<$payload>), )*
            /// An event type this version of the crate does not know. The
            /// sender may add types at any time; they are acknowledged and
            /// offered here with their raw data.
            Unknown(UnknownEvent),
        }

        impl Event {
            /// The event type as on the wire, e.g. `message.created`.
            pub fn event_type(&self) -> &str {
                match self {
                    $( Self::$variant(_) => $wire, )*
                    Self::Unknown(unknown) => &unknown.event_type,
                }
            }

            /// The event type, with unknown types as [`EventType::Other`].
            pub fn kind(&self) -> EventType {
                match self {
                    $( Self::$variant(_) => EventType::$variant, )*
                    Self::Unknown(unknown) => EventType::Other(unknown.event_type.clone()),
                }
            }
        }

        /// Parses `data` into the payload type that `type` names.
        struct DataSeed<'a>(&'a str);

        impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
            type Value = Event;

            fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Event, D::Error> {
                Ok(match self.0 {
                    $( $wire => Event::$variant(Arc::new(<$payload>::deserialize(deserializer)?)), )*
                    other => Event::Unknown(UnknownEvent {
                        event_type: other.to_owned(),
                        data: Box::<RawValue>::deserialize(deserializer)?,
                    }),
                })
            }
        }

        $(
            impl Payload for $payload {
                fn accepts(event_type: &EventType) -> bool {
                    *event_type == EventType::$variant
                }

                fn from_event(event: &Event) -> Option<Arc<Self>> {
                    match event {
                        Event::$variant(payload) => Some(payload.clone()),
                        _ => None,
                    }
                }
            }
        )*

        struct DataRef<'a>(&'a Event);

        impl Serialize for DataRef<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self.0 {
                    $( Event::$variant(payload) => payload.serialize(serializer), )*
                    Event::Unknown(unknown) => unknown.data.serialize(serializer),
                }
            }
        }
    };
}

events! {
    /// `message.created`: a message was sent.
    MessageCreated(MessageCreated) = "message.created",
    /// `message.updated`: a message was edited.
    MessageUpdated(MessageUpdated) = "message.updated",
    /// `message.deleted`: a message was unsent.
    MessageDeleted(MessageDeleted) = "message.deleted",
    /// `message.mentioned`: a message mentions someone.
    MessageMentioned(MessageMentioned) = "message.mentioned",
    /// `channel.created`: a channel was created.
    ChannelCreated(ChannelCreated) = "channel.created",
    /// `channel.updated`: a channel's name or avatar changed.
    ChannelUpdated(ChannelUpdated) = "channel.updated",
    /// `channel.deleted`: a channel was deleted.
    ChannelDeleted(ChannelDeleted) = "channel.deleted",
    /// `member.added`: members joined a channel.
    MemberAdded(MemberAdded) = "member.added",
    /// `member.removed`: members left a channel.
    MemberRemoved(MemberRemoved) = "member.removed",
    /// `member.updated`: a member's role changed.
    MemberUpdated(MemberUpdated) = "member.updated",
    /// `moderation.action`: moderation acted.
    ModerationAction(ModerationAction) = "moderation.action",
    /// `webhook.ping`: a test delivery.
    WebhookPing(WebhookPing) = "webhook.ping",
}

/// What a handler can take as its payload: one event type's data (such as
/// [`MessageCreated`]), [`Event`] for every known type, or [`UnknownEvent`]
/// for the types this version does not know.
pub trait Payload: Send + Sync + 'static {
    /// Whether events of `event_type` carry this payload.
    fn accepts(event_type: &EventType) -> bool;

    /// This payload out of `event`, shared, if the event carries it.
    fn from_event(event: &Event) -> Option<Arc<Self>>;
}

impl Payload for Event {
    fn accepts(event_type: &EventType) -> bool {
        !matches!(event_type, EventType::Other(_))
    }

    fn from_event(event: &Event) -> Option<Arc<Self>> {
        (!matches!(event, Event::Unknown(_))).then(|| Arc::new(event.clone()))
    }
}

impl Payload for UnknownEvent {
    fn accepts(event_type: &EventType) -> bool {
        matches!(event_type, EventType::Other(_))
    }

    fn from_event(event: &Event) -> Option<Arc<Self>> {
        match event {
            Event::Unknown(unknown) => Some(Arc::new(unknown.clone())),
            _ => None,
        }
    }
}

/// An event of a type this version does not know: its type and raw `data`.
#[derive(Debug, Clone)]
pub struct UnknownEvent {
    event_type: String,
    data: Box<RawValue>,
}

impl UnknownEvent {
    /// The event type as sent.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The `data` object as raw JSON text, exactly as it was signed.
    pub fn data_json(&self) -> &str {
        self.data.get()
    }
}

impl PartialEq for UnknownEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event_type == other.event_type && self.data.get() == other.data.get()
    }
}

impl Eq for UnknownEvent {}

/// A delivery's body: the event and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// The event id; equals the `X-Cariosan-Delivery` header.
    pub id: EventId,
    /// When the event happened; order by this where order matters, since
    /// deliveries are unordered.
    pub created_at: OffsetDateTime,
    /// The workspace the event belongs to.
    pub workspace_id: WorkspaceId,
    /// The typed event.
    pub event: Event,
}

impl Envelope {
    /// Parses a body in one pass into the typed model.
    ///
    /// Call this only on verified bytes. A body that is not an envelope is
    /// [`ParseError::InvalidEnvelope`]; an envelope whose `data` does not fit
    /// the model of its (known) type is [`ParseError::MalformedData`], which
    /// still carries the envelope's fields and the raw data.
    pub fn from_slice(body: &[u8]) -> Result<Self, ParseError> {
        // One UTF-8 check of the whole body (SIMD), then a parse that trusts it:
        // serde_json's slice reader checks every string on its own, which
        // costs several times more. A body that is not UTF-8 takes the
        // slice reader, so that its error is the same as ever.
        let parsed = match simdutf8::basic::from_utf8(body) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(body),
        };
        parsed.map_err(|error| classify_failure(body, error))
    }

    /// The event type as on the wire.
    pub fn event_type(&self) -> &str {
        self.event.event_type()
    }
}

/// Tells a body that is not an envelope from an envelope whose data does not
/// fit, by parsing the frame alone. Runs only on the error path.
fn classify_failure(body: &[u8], error: serde_json::Error) -> ParseError {
    #[derive(Deserialize)]
    struct Frame {
        id: EventId,
        #[serde(rename = "type")]
        event_type: String,
        #[serde(with = "time::serde::rfc3339")]
        created_at: OffsetDateTime,
        workspace_id: WorkspaceId,
        data: Box<RawValue>,
    }
    match serde_json::from_slice::<Frame>(body) {
        Ok(frame) => ParseError::MalformedData(Box::new(MalformedEvent {
            id: frame.id,
            event_type: frame.event_type,
            created_at: frame.created_at,
            workspace_id: frame.workspace_id,
            data: frame.data,
            error: JsonError::new(error),
        })),
        Err(_) => ParseError::InvalidEnvelope(JsonError::new(error)),
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Field {
            Id,
            Type,
            CreatedAt,
            WorkspaceId,
            Data,
            #[serde(other)]
            Other,
        }

        #[derive(Deserialize)]
        struct Timestamp(#[serde(with = "time::serde::rfc3339")] OffsetDateTime);

        struct EnvelopeVisitor;

        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = Envelope;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Cariosan event envelope")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut id = None;
                let mut event_type: Option<String> = None;
                let mut created_at = None;
                let mut workspace_id = None;
                let mut event = None;
                // `data` normally follows `type`; if it comes first it is kept
                // raw and typed once `type` is known.
                let mut raw_data: Option<Box<RawValue>> = None;
                fn once<T, E: de::Error>(slot: &Option<T>, name: &'static str) -> Result<(), E> {
                    match slot {
                        Some(_) => Err(E::duplicate_field(name)),
                        None => Ok(()),
                    }
                }
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Id => {
                            once(&id, "id")?;
                            id = Some(map.next_value::<EventId>()?);
                        }
                        Field::Type => {
                            once(&event_type, "type")?;
                            event_type = Some(map.next_value()?);
                        }
                        Field::CreatedAt => {
                            once(&created_at, "created_at")?;
                            created_at = Some(map.next_value::<Timestamp>()?.0);
                        }
                        Field::WorkspaceId => {
                            once(&workspace_id, "workspace_id")?;
                            workspace_id = Some(map.next_value::<WorkspaceId>()?);
                        }
                        Field::Data => {
                            if event.is_some() || raw_data.is_some() {
                                return Err(de::Error::duplicate_field("data"));
                            }
                            match &event_type {
                                Some(t) => event = Some(map.next_value_seed(DataSeed(t))?),
                                None => raw_data = Some(map.next_value()?),
                            }
                        }
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let event_type = event_type.ok_or_else(|| de::Error::missing_field("type"))?;
                let event = match (event, raw_data) {
                    (Some(event), _) => event,
                    (None, Some(raw)) => {
                        let mut data = serde_json::Deserializer::from_str(raw.get());
                        DataSeed(&event_type)
                            .deserialize(&mut data)
                            .map_err(de::Error::custom)?
                    }
                    (None, None) => return Err(de::Error::missing_field("data")),
                };
                Ok(Envelope {
                    id: id.ok_or_else(|| de::Error::missing_field("id"))?,
                    created_at: created_at.ok_or_else(|| de::Error::missing_field("created_at"))?,
                    workspace_id: workspace_id
                        .ok_or_else(|| de::Error::missing_field("workspace_id"))?,
                    event,
                })
            }
        }

        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Timestamp<'a>(&'a OffsetDateTime);
        impl Serialize for Timestamp<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                time::serde::rfc3339::serialize(self.0, serializer)
            }
        }

        let mut envelope = serializer.serialize_struct("Envelope", 5)?;
        envelope.serialize_field("id", &self.id)?;
        envelope.serialize_field("type", self.event_type())?;
        envelope.serialize_field("created_at", &Timestamp(&self.created_at))?;
        envelope.serialize_field("workspace_id", &self.workspace_id)?;
        envelope.serialize_field("data", &DataRef(&self.event))?;
        envelope.end()
    }
}

/// A signed envelope of a known type whose `data` does not fit the typed
/// model: the envelope's fields, the raw data and what did not fit.
///
/// `Debug` leaves the raw data out, so that logging it cannot leak a body.
#[derive(Clone)]
pub struct MalformedEvent {
    id: EventId,
    event_type: String,
    created_at: OffsetDateTime,
    workspace_id: WorkspaceId,
    data: Box<RawValue>,
    error: JsonError,
}

impl MalformedEvent {
    /// The event id.
    pub fn id(&self) -> &EventId {
        &self.id
    }

    /// The event type as sent.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// When the event happened.
    pub fn created_at(&self) -> OffsetDateTime {
        self.created_at
    }

    /// The workspace.
    pub fn workspace_id(&self) -> &WorkspaceId {
        &self.workspace_id
    }

    /// The `data` object as raw JSON text, exactly as signed: store it to
    /// replay once the model is fixed.
    pub fn data_json(&self) -> &str {
        self.data.get()
    }

    /// Where and how the data did not fit.
    pub fn error(&self) -> &JsonError {
        &self.error
    }
}

impl fmt::Debug for MalformedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MalformedEvent")
            .field("id", &self.id)
            .field("event_type", &self.event_type)
            .field("data_len", &self.data.get().len())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Why a body could not be parsed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The body is not a JSON envelope with `id`, `type`, `created_at`,
    /// `workspace_id` and `data`.
    #[error("Failed to parse the body as an event envelope: {0}")]
    InvalidEnvelope(JsonError),
    /// The envelope is fine but its `data` does not fit the model of its
    /// type.
    #[error("Failed to parse the data of a {} event: {}", .0.event_type, .0.error)]
    MalformedData(Box<MalformedEvent>),
}

/// A JSON error, located but never quoting the body.
///
/// `Display` says what kind of error and where (line and column); the full
/// parser message, which may quote values from the body, is only in
/// [`JsonError::detail`], so logging an error (`Display` or `Debug`) cannot
/// leak the body.
#[derive(Clone)]
pub struct JsonError {
    kind: &'static str,
    line: usize,
    column: usize,
    detail: String,
}

impl JsonError {
    fn new(error: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let kind = match error.classify() {
            Category::Syntax => "invalid JSON",
            Category::Eof => "truncated JSON",
            Category::Data => "JSON that does not fit the model",
            Category::Io => "unreadable input",
        };
        Self {
            kind,
            line: error.line(),
            column: error.column(),
            detail: error.to_string(),
        }
    }

    /// The line of the error, from 1.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The column of the error, from 1.
    pub fn column(&self) -> usize {
        self.column
    }

    /// The parser's full message. It may quote body content: do not log it
    /// where bodies must not go.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Debug for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonError")
            .field("kind", &self.kind)
            .field("line", &self.line)
            .field("column", &self.column)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.kind, self.line, self.column
        )
    }
}

impl std::error::Error for JsonError {}
