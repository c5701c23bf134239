//! Routing verified events to async handlers.
//!
//! [`Webhooks`] is a registry of handlers and a `tower::Service`: mount it
//! behind [`CariosanWebhookLayer`](crate::CariosanWebhookLayer) (with axum,
//! `post_service(webhooks)`), and each verified delivery runs the handlers
//! registered for its event type.
//!
//! - Every handler receives a [`Delivery`]: the delivery id, event time,
//!   workspace and attempt, around a payload it dereferences to.
//!   `on_<event>` handlers get the typed payload (e.g. [`MessageCreated`]);
//!   [`on_any`](Webhooks::on_any) gets the [`Event`] of every known type;
//!   [`on_unknown`](Webhooks::on_unknown) gets the [`UnknownEvent`] of types
//!   this version does not know; and [`on_malformed`](Webhooks::on_malformed)
//!   gets the [`MalformedEvent`] whose data does not fit the model.
//! - Several handlers may match one delivery: they run one after another, in
//!   the order they were registered, each to completion before the next
//!   starts. The first that fails stops the run and the delivery is answered
//!   `500`, so Cariosan retries it and the whole run happens again; handlers
//!   should therefore be idempotent, as at-least-once delivery requires
//!   anyway.
//! - A handler error answers `500 handler_failed`, a panic `500
//!   handler_panicked` (the server keeps serving);
//!   [`HandlerError::retry_later`] answers `503 retry_later` with
//!   `Retry-After`, and [`HandlerError::give_up`] acknowledges `200
//!   given_up` and calls the [`on_give_up`](Webhooks::on_give_up) hook. A delivery that no handler
//!   matches is acknowledged `200 ignored`; one that ran handlers is `200
//!   handled`. A malformed delivery with no `on_malformed` handler is `500
//!   event_malformed`: it is never acknowledged unseen, and the sender keeps
//!   it for two days of retries while the receiver is fixed.
//! - A request that did not pass the layer is answered `500 not_verified`
//!   and logged as an error: no handler ever sees an unverified event.
//!
//! Handlers reach application state by capturing it: clone an `Arc` (or a
//! pool, which is an `Arc` inside) into the closure, as the `app_state`
//! example shows.

mod delivery;
mod handler;

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use http::{Request, Response};
use tower_service::Service;

pub use delivery::Delivery;
use handler::Directive;
pub use handler::{HandlerError, HandlerResult};

use crate::body::BytesBody;
use crate::delivery::VerifiedDelivery;
use crate::layer::future::BoxFuture;
use crate::model::{
    ChannelCreated, ChannelDeleted, ChannelUpdated, Envelope, Event, MalformedEvent, MemberAdded,
    MemberRemoved, MemberUpdated, MessageCreated, MessageDeleted, MessageMentioned, MessageUpdated,
    ModerationAction, UnknownEvent, WebhookPing,
};
use crate::rejection::{acknowledge, Rejection};

/// A registered handler: which events it takes, and how to run it on one.
#[derive(Clone)]
struct EventRoute {
    accepts: fn(&Event) -> bool,
    call: Arc<dyn Fn(Envelope, Option<u32>) -> BoxFuture<HandlerResult> + Send + Sync>,
}
type MalformedRoute = Arc<dyn Fn(&MalformedEvent) -> BoxFuture<HandlerResult> + Send + Sync>;
type GiveUpHook = Arc<dyn Fn(&GivenUp) + Send + Sync>;

/// A delivery a handler gave up on with [`HandlerError::give_up`]: it was
/// acknowledged without being handled.
#[derive(Debug)]
#[non_exhaustive]
pub struct GivenUp {
    /// The delivery id.
    pub id: crate::model::EventId,
    /// The event type.
    pub event_type: String,
    /// Why the handler gave up.
    pub error: HandlerError,
}

/// A registry of event handlers, and the service that runs them.
///
/// Cheap to clone: the handlers are shared.
#[derive(Clone, Default)]
#[must_use]
pub struct Webhooks {
    events: Arc<Vec<EventRoute>>,
    malformed: Arc<Vec<MalformedRoute>>,
    give_up: Option<GiveUpHook>,
}

impl Webhooks {
    /// A registry with no handlers: every verified delivery is acknowledged.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a handler for the events `accepts` takes; `payload` takes
    /// its payload out of one. The handler is called inside the future, so
    /// a panic while it builds its future is caught like any other.
    fn route<T, F, Fut>(
        mut self,
        accepts: fn(&Event) -> bool,
        payload: fn(Event) -> Option<T>,
        handler: F,
    ) -> Self
    where
        T: Send + 'static,
        F: Fn(Delivery<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let call = Arc::new(
            move |envelope: Envelope, attempt| -> BoxFuture<HandlerResult> {
                let handler = handler.clone();
                Box::pin(async move {
                    let data = payload(envelope.event).expect("the route accepts this event");
                    let delivery = Delivery::new(
                        envelope.id,
                        envelope.created_at,
                        envelope.workspace_id,
                        attempt,
                        data,
                    );
                    handler(delivery).await
                })
            },
        );
        Arc::make_mut(&mut self.events).push(EventRoute { accepts, call });
        self
    }

    /// Runs `handler` for every event of a known type, with the whole
    /// [`Event`] to `match` on.
    pub fn on_any<F, Fut>(self, handler: F) -> Self
    where
        F: Fn(Delivery<Event>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.route(|event| !matches!(event, Event::Unknown(_)), Some, handler)
    }

    /// Runs `handler` for event types this version does not know, with their
    /// type and raw data. Without such a handler they are acknowledged.
    pub fn on_unknown<F, Fut>(self, handler: F) -> Self
    where
        F: Fn(Delivery<UnknownEvent>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.route(
            |event| matches!(event, Event::Unknown(_)),
            |event| match event {
                Event::Unknown(unknown) => Some(unknown),
                _ => None,
            },
            handler,
        )
    }

    /// Runs `handler` for signed envelopes of a known type whose data does
    /// not fit the model, with the raw data. Its result decides the answer;
    /// without such a handler they are answered `500 event_malformed`.
    pub fn on_malformed<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(MalformedEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let route: MalformedRoute = Arc::new(move |malformed| {
            let (handler, malformed) = (handler.clone(), malformed.clone());
            Box::pin(async move { handler(malformed).await })
        });
        Arc::make_mut(&mut self.malformed).push(route);
        self
    }

    /// Calls `hook` for every delivery a handler gave up on with
    /// [`HandlerError::give_up`] (they are also logged as errors): put them
    /// on a dead-letter list, say.
    pub fn on_give_up(mut self, hook: impl Fn(&GivenUp) + Send + Sync + 'static) -> Self {
        self.give_up = Some(Arc::new(hook));
        self
    }
}

macro_rules! typed_handlers {
    ($( $(#[$doc:meta])* $method:ident => $variant:ident($payload:ty); )*) => {
        impl Webhooks {
            $(
                $(#[$doc])*
                pub fn $method<F, Fut>(self, handler: F) -> Self
                where
                    F: Fn(Delivery<$payload>) -> Fut + Send + Sync + 'static,
                    Fut: Future<Output = HandlerResult> + Send + 'static,
                {
                    self.route(
                        |event| matches!(event, Event::$variant(_)),
                        |event| match event {
                            Event::$variant(payload) => Some(*payload),
                            _ => None,
                        },
                        handler,
                    )
                }
            )*
        }
    };
}

typed_handlers! {
    /// Runs `handler` for every `message.created`.
    on_message_created => MessageCreated(MessageCreated);
    /// Runs `handler` for every `message.updated`.
    on_message_updated => MessageUpdated(MessageUpdated);
    /// Runs `handler` for every `message.deleted`.
    on_message_deleted => MessageDeleted(MessageDeleted);
    /// Runs `handler` for every `message.mentioned`.
    on_message_mentioned => MessageMentioned(MessageMentioned);
    /// Runs `handler` for every `channel.created`.
    on_channel_created => ChannelCreated(ChannelCreated);
    /// Runs `handler` for every `channel.updated`.
    on_channel_updated => ChannelUpdated(ChannelUpdated);
    /// Runs `handler` for every `channel.deleted`.
    on_channel_deleted => ChannelDeleted(ChannelDeleted);
    /// Runs `handler` for every `member.added`.
    on_member_added => MemberAdded(MemberAdded);
    /// Runs `handler` for every `member.removed`.
    on_member_removed => MemberRemoved(MemberRemoved);
    /// Runs `handler` for every `member.updated`.
    on_member_updated => MemberUpdated(MemberUpdated);
    /// Runs `handler` for every `moderation.action`.
    on_moderation_action => ModerationAction(ModerationAction);
    /// Runs `handler` for every `webhook.ping`.
    on_webhook_ping => WebhookPing(WebhookPing);
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("event_handlers", &self.events.len())
            .field("malformed_handlers", &self.malformed.len())
            .field("give_up_hook", &self.give_up.is_some())
            .finish()
    }
}

impl<B> Service<Request<B>> for Webhooks {
    type Response = Response<BytesBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<BytesBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let delivery = request.extensions_mut().remove::<VerifiedDelivery>();
        let this = self.clone();
        Box::pin(async move {
            let outcome = match delivery {
                Some(delivery) => this.dispatch(delivery).await,
                None => Err(crate::not_verified()),
            };
            Ok(match outcome {
                Ok(Ran::All) => acknowledge("handled"),
                Ok(Ran::None) => acknowledge("ignored"),
                Ok(Ran::GaveUp(_)) => acknowledge("given_up"),
                Err(rejection) => rejection.to_response(),
            })
        })
    }
}

impl Webhooks {
    /// Runs the matching handlers.
    async fn dispatch(&self, delivery: VerifiedDelivery) -> Result<Ran, Rejection> {
        let attempt = delivery.attempt();
        let (id, event_type) = (delivery.id().clone(), delivery.event_type().to_owned());
        let ran = match delivery.into_payload() {
            Ok(envelope) => {
                // Every handler but the last gets a copy; the last gets the
                // parsed envelope itself.
                let matching: Vec<&EventRoute> = self
                    .events
                    .iter()
                    .filter(|route| (route.accepts)(&envelope.event))
                    .collect();
                let last = matching.len().saturating_sub(1);
                let mut envelope = Some(envelope);
                run(matching.iter().enumerate().map(|(n, route)| {
                    let own = if n == last {
                        envelope.take()
                    } else {
                        envelope.clone()
                    };
                    (route.call)(own.expect("taken once, last"), attempt)
                }))
                .await
            }
            Err(_) if self.malformed.is_empty() => {
                tracing::error!("no on_malformed handler: answering 500 so the sender retries");
                return Err(Rejection::MalformedEvent);
            }
            Err(malformed) => run(self.malformed.iter().map(|route| route(&malformed))).await,
        }?;
        if let Ran::GaveUp(error) = ran {
            tracing::error!(%error, "a handler gave up on the delivery: acknowledging it unhandled");
            let given_up = GivenUp {
                id,
                event_type,
                error,
            };
            if let Some(hook) = &self.give_up {
                hook(&given_up);
            }
            return Ok(Ran::GaveUp(given_up.error));
        }
        Ok(ran)
    }
}

/// How a run of handlers ended, short of a failure.
enum Ran {
    None,
    All,
    GaveUp(HandlerError),
}

/// Runs handlers one after another; the first failure, panic or give-up
/// stops the run.
async fn run(handlers: impl Iterator<Item = BoxFuture<HandlerResult>>) -> Result<Ran, Rejection> {
    let mut ran = Ran::None;
    for handler in handlers {
        ran = Ran::All;
        match AssertUnwindSafe(handler).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => match error.directive() {
                Directive::GiveUp => return Ok(Ran::GaveUp(error)),
                Directive::RetryAfter(retry_after) => {
                    tracing::warn!(%error, "a handler asked for a retry later");
                    return Err(Rejection::RetryLater { retry_after });
                }
                Directive::Fail => {
                    tracing::error!(%error, "handler failed: answering 500 so the sender retries");
                    return Err(Rejection::HandlerFailed);
                }
            },
            Err(_panic) => {
                tracing::error!("handler panicked: answering 500 so the sender retries");
                return Err(Rejection::HandlerPanicked);
            }
        }
    }
    Ok(ran)
}
