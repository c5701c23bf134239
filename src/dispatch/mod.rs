//! Routing verified deliveries to async handlers.
//!
//! [`Webhooks`] is a registry of handlers by event type. Mount it as a
//! `tower::Service` behind [`CariosanWebhookLayer`](crate::CariosanWebhookLayer)
//! (with axum, `post_service(webhooks)`), or call
//! [`handle`](Webhooks::handle) with a [`VerifiedDelivery`] from anywhere: a
//! queue, a replay, a unit test, another framework.
//!
//! - Every handler receives a [`Delivery`]: the delivery id, event time,
//!   workspace and attempt, around a payload it dereferences to.
//!   `on_<event>` handlers get that event's payload (e.g. [`MessageCreated`]);
//!   [`on_any`](Webhooks::on_any) gets the [`Event`] of every known type;
//!   [`on_unknown`](Webhooks::on_unknown) gets the [`UnknownEvent`] of types
//!   this version does not know; [`on_malformed`](Webhooks::on_malformed)
//!   gets the [`MalformedEvent`] whose data does not fit the model.
//! - [`on`](Webhooks::on) is the core the others are sugar for: one handler
//!   for a set of event types, taking the [`Delivery`] and up to three more
//!   arguments such as [`State`] (see [`Webhooks::with_state`]) or a
//!   [`Resource`] the delivery backend provides. The `on_*` methods take
//!   handlers of the `Delivery` alone, so that a closure's argument type is
//!   inferred.
//! - Several handlers may match one delivery: they run one after another, in
//!   the order they were registered, each to completion before the next
//!   starts, all sharing one parse. The first that fails stops the run and
//!   the delivery is answered `500`, so Cariosan retries it and the whole
//!   run happens again; handlers should therefore be idempotent, as
//!   at-least-once delivery requires anyway.
//! - The [`Outcome`] decides the answer: `200 handled`, `200 ignored` (no
//!   handler matched), `200 given_up` ([`HandlerError::give_up`], reported
//!   to the async [`on_give_up`](Webhooks::on_give_up) hook), `500
//!   handler_failed`, `500 handler_panicked` (the server keeps serving),
//!   `500 event_malformed` (never acknowledged unseen: the sender keeps it
//!   while the receiver is fixed), `503 retry_later`
//!   ([`HandlerError::retry_later`], with `Retry-After`).
//! - Over HTTP, a request that did not pass verification is answered `500
//!   not_verified` and logged as an error: no handler ever sees an
//!   unverified event.
//!
//! Handlers must not block their thread; put blocking work in
//! `tokio::task::spawn_blocking`.

mod delivery;
mod error;
mod extract;
mod handler;
mod outcome;
mod resources;

use std::any::type_name;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http::{Extensions, Request, Response};
use tower_service::Service;

pub use delivery::Delivery;
#[cfg(feature = "postgres")]
pub(crate) use delivery::Stale;
use error::Directive;
pub use error::{HandlerError, HandlerResult};
pub use extract::{DeliveryContext, FromDelivery, Resource, State};
pub use handler::Handler;
pub use outcome::Outcome;
use resources::Needs;
pub use resources::{MissingResource, Provided, ResourceType};

use crate::delivery::not_verified;
use crate::model::{
    ChannelCreated, ChannelDeleted, ChannelUpdated, Envelope, Event, EventId, EventType,
    MalformedEvent, MemberAdded, MemberRemoved, MemberUpdated, MessageCreated, MessageDeleted,
    MessageMentioned, MessageUpdated, ModerationAction, Payload, UnknownEvent, WebhookPing,
};
use crate::response::BytesBody;
use crate::verify::VerifiedDelivery;

/// Which event types a handler takes, for [`Webhooks::on`]: one
/// [`EventType`], an array or a `Vec` of them, or an [`EventSelector`].
pub trait IntoEventTypes {
    /// The selection.
    fn into_selector(self) -> EventSelector;
}

/// A selection of event types.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventSelector {
    /// These types.
    Types(Vec<EventType>),
    /// Every type this version knows (as [`Webhooks::on_any`]), for a
    /// handler of [`Delivery<Event>`].
    AllKnown,
    /// Every type this version does not know (as [`Webhooks::on_unknown`]),
    /// for a handler of [`Delivery<UnknownEvent>`].
    AllUnknown,
}

impl IntoEventTypes for EventSelector {
    fn into_selector(self) -> EventSelector {
        self
    }
}

impl IntoEventTypes for EventType {
    fn into_selector(self) -> EventSelector {
        EventSelector::Types(vec![self])
    }
}

impl<const N: usize> IntoEventTypes for [EventType; N] {
    fn into_selector(self) -> EventSelector {
        EventSelector::Types(self.into())
    }
}

impl IntoEventTypes for Vec<EventType> {
    fn into_selector(self) -> EventSelector {
        EventSelector::Types(self)
    }
}

impl IntoEventTypes for &[EventType] {
    fn into_selector(self) -> EventSelector {
        EventSelector::Types(self.to_vec())
    }
}

type RouteFn<S> = dyn for<'a> Fn(
        &'a VerifiedDelivery,
        &'a Envelope,
        &'a DeliveryContext<'a, S>,
    ) -> BoxFuture<'static, HandlerResult>
    + Send
    + Sync;
type MalformedFn<S> = dyn for<'a> Fn(
        Delivery<MalformedEvent>,
        &'a DeliveryContext<'a, S>,
    ) -> BoxFuture<'static, HandlerResult>
    + Send
    + Sync;
type GiveUpHook = Arc<dyn Fn(GivenUp) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// The handlers, found by event type. Each route's index is its place in
/// registration order, so that handlers run in the order they were added.
struct Routes<S> {
    handlers: Vec<Arc<RouteFn<S>>>,
    /// What each handler takes from the resources, by the same index.
    needs: Vec<Needs>,
    /// Whether a delivery found a resource missing and said so.
    missing_logged: Arc<AtomicBool>,
    by_type: HashMap<Box<str>, Vec<usize>>,
    any_unknown: Vec<usize>,
    malformed: Vec<Arc<MalformedFn<S>>>,
    give_up: Option<GiveUpHook>,
}

impl<S> Clone for Routes<S> {
    fn clone(&self) -> Self {
        Self {
            handlers: self.handlers.clone(),
            needs: self.needs.clone(),
            missing_logged: self.missing_logged.clone(),
            by_type: self.by_type.clone(),
            any_unknown: self.any_unknown.clone(),
            malformed: self.malformed.clone(),
            give_up: self.give_up.clone(),
        }
    }
}

impl<S> Default for Routes<S> {
    fn default() -> Self {
        Self {
            handlers: Vec::new(),
            needs: Vec::new(),
            missing_logged: Arc::default(),
            by_type: HashMap::new(),
            any_unknown: Vec::new(),
            malformed: Vec::new(),
            give_up: None,
        }
    }
}

impl<S> Routes<S> {
    /// The indexes of the routes for `event`, in registration order.
    fn matching(&self, event: &Event) -> Vec<usize> {
        let exact = self
            .by_type
            .get(event.event_type())
            .map_or(&[][..], Vec::as_slice);
        if !matches!(event, Event::Unknown(_)) || self.any_unknown.is_empty() {
            return exact.to_vec();
        }
        let mut all: Vec<usize> = exact.iter().chain(&self.any_unknown).copied().collect();
        all.sort_unstable();
        all
    }
}

/// A delivery a handler gave up on with [`HandlerError::give_up`]: it was
/// acknowledged without being handled.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GivenUp {
    /// The delivery id.
    pub id: EventId,
    /// The event type.
    pub event_type: String,
    /// `X-Cariosan-Attempt`.
    pub attempt: Option<u32>,
    /// Why the handler gave up.
    pub error: HandlerError,
}

/// A registry of event handlers, and the service that runs them.
///
/// `S` is the state its handlers may take as a [`State`] argument
/// ([`with_state`](Self::with_state)). Cheap to clone: the handlers are
/// shared.
#[must_use]
pub struct Webhooks<S = ()> {
    routes: Arc<Routes<S>>,
    state: S,
}

impl<S: Clone> Clone for Webhooks<S> {
    fn clone(&self) -> Self {
        Self {
            routes: self.routes.clone(),
            state: self.state.clone(),
        }
    }
}

impl Default for Webhooks<()> {
    fn default() -> Self {
        Self::new()
    }
}

impl Webhooks<()> {
    /// A registry with no handlers: every verified delivery is acknowledged
    /// (`200 ignored`).
    pub fn new() -> Self {
        Self::with_state(())
    }

    /// A registry whose handlers may take `state` as a [`State`] argument,
    /// the way axum's `State` works: the state is cloned for every handler
    /// call that asks for it, so make it cheap to clone (an `Arc`, a pool).
    ///
    /// ```
    /// use cariosan_webhooks::dispatch::State;
    /// use cariosan_webhooks::model::{EventType, MessageCreated};
    /// use cariosan_webhooks::{Delivery, HandlerResult, Webhooks};
    ///
    /// #[derive(Clone, Default)]
    /// struct Db;
    ///
    /// async fn save(event: Delivery<MessageCreated>, State(db): State<Db>) -> HandlerResult {
    ///     let _ = (db, &event.message);
    ///     Ok(())
    /// }
    ///
    /// let webhooks = Webhooks::with_state(Db).on(EventType::MessageCreated, save);
    /// # let _ = webhooks;
    /// ```
    pub fn with_state<S: Clone + Send + Sync + 'static>(state: S) -> Webhooks<S> {
        Webhooks {
            routes: Arc::new(Routes::default()),
            state,
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Webhooks<S> {
    fn routes_mut(&mut self) -> &mut Routes<S> {
        Arc::make_mut(&mut self.routes)
    }

    /// Runs `handler` for every event of the given types: one
    /// [`EventType`], an array or a `Vec` of them, or an [`EventSelector`]
    /// (every known or every unknown type). The handler takes a
    /// [`Delivery<T>`] where `T` is the payload all of those types carry
    /// (one event's payload type, or [`Event`] for several), then up to three
    /// [`FromDelivery`] arguments.
    ///
    /// `EventType::Other("poll.closed".into())` routes an event type this
    /// version does not know, as an [`UnknownEvent`].
    ///
    /// # Panics
    ///
    /// If `T` is not the payload of one of the types: a handler of
    /// `Delivery<MessageCreated>` cannot take `channel.created`.
    pub fn on<T, H, Args>(mut self, event_types: impl IntoEventTypes, handler: H) -> Self
    where
        T: Payload,
        H: Handler<T, S, Args>,
    {
        let selector = event_types.into_selector();
        let unknown = EventType::Other(String::new());
        let checked: &[EventType] = match &selector {
            EventSelector::Types(types) => types,
            EventSelector::AllKnown => EventType::KNOWN,
            EventSelector::AllUnknown => std::slice::from_ref(&unknown),
        };
        for event_type in checked {
            assert!(
                T::accepts(event_type),
                "a handler of Delivery<{}> cannot take {} events",
                type_name::<T>(),
                if event_type.as_str().is_empty() {
                    "unknown"
                } else {
                    event_type.as_str()
                }
            );
        }
        self.register(selector, handler);
        self
    }

    fn register<T, H, Args>(&mut self, selector: EventSelector, handler: H)
    where
        T: Payload,
        H: Handler<T, S, Args>,
    {
        let handler = Arc::new(handler);
        let route: Arc<RouteFn<S>> = Arc::new(move |delivery, envelope, cx| {
            match Delivery::<T>::from_verified(delivery, envelope, cx.resources()) {
                Some(typed) => handler.clone().call(typed, cx),
                None => Box::pin(std::future::ready(Err(HandlerError::msg(format_args!(
                    "a {} event does not carry the {} this handler takes",
                    envelope.event_type(),
                    type_name::<T>()
                ))))),
            }
        });
        let needs = Needs {
            event_types: describe(&selector),
            resources: H::resource_types(),
        };
        let routes = self.routes_mut();
        let index = routes.handlers.len();
        routes.handlers.push(route);
        routes.needs.push(needs);
        let mut add = |wire: &str| {
            routes.by_type.entry(wire.into()).or_default().push(index);
        };
        match selector {
            EventSelector::Types(types) => types.iter().for_each(|t| add(t.as_str())),
            EventSelector::AllKnown => EventType::KNOWN.iter().for_each(|t| add(t.as_str())),
            EventSelector::AllUnknown => routes.any_unknown.push(index),
        }
    }

    /// Runs `handler` for every event of a known type, with the whole
    /// [`Event`] to `match` on.
    pub fn on_any<F, Fut>(self, handler: F) -> Self
    where
        F: Fn(Delivery<Event>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.on::<Event, F, ()>(EventSelector::AllKnown, handler)
    }

    /// Runs `handler` for event types this version does not know, with their
    /// type and raw data. Without such a handler they are acknowledged
    /// (`200 ignored`).
    pub fn on_unknown<F, Fut>(self, handler: F) -> Self
    where
        F: Fn(Delivery<UnknownEvent>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.on::<UnknownEvent, F, ()>(EventSelector::AllUnknown, handler)
    }

    /// Runs `handler` for signed envelopes of a known type whose data does
    /// not fit the model, with the raw data and the attempt. Its result
    /// decides the answer; without such a handler they are answered `500
    /// event_malformed`.
    pub fn on_malformed<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(Delivery<MalformedEvent>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let route: Arc<MalformedFn<S>> =
            Arc::new(move |delivery, cx| Handler::call(handler.clone(), delivery, cx));
        self.routes_mut().malformed.push(route);
        self
    }

    /// Calls `hook` for every delivery a handler gave up on with
    /// [`HandlerError::give_up`] (they are also logged as errors): put them
    /// on a dead-letter list, say. If the hook fails, the delivery is
    /// answered `500 handler_failed` instead, so that the retry comes back
    /// to it.
    pub fn on_give_up<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(GivenUp) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.routes_mut().give_up = Some(Arc::new(move |given_up| Box::pin(hook(given_up))));
        self
    }

    /// Whether every handler's resources are among what `provided`
    /// declares: the first handler that takes one it lacks, if any. A
    /// `provided` that declares nothing (`types: None`) passes, and is
    /// checked at each delivery instead.
    ///
    /// The delivery layer, [`Receiver`](crate::Receiver) and inbox workers
    /// call it at start-up; call it yourself to run these handlers from
    /// elsewhere.
    pub fn check_resources(&self, provided: &Provided<'_>) -> Result<(), MissingResource> {
        match self
            .routes
            .needs
            .iter()
            .find_map(|needs| needs.first_missing(provided))
        {
            Some(missing) => Err(missing),
            None => Ok(()),
        }
    }

    /// The state handlers take as [`State`].
    pub fn state(&self) -> &S {
        &self.state
    }

    /// Runs the `on_give_up` hook, if there is one, for a delivery that
    /// somebody other than a handler gave up on (the inbox, out of attempts).
    #[cfg(feature = "postgres")]
    pub(crate) async fn report_given_up(&self, given_up: GivenUp) -> HandlerResult {
        let Some(hook) = &self.routes.give_up else {
            return Ok(());
        };
        match AssertUnwindSafe(hook(given_up)).catch_unwind().await {
            Ok(result) => result,
            Err(_panic) => Err(HandlerError::msg("the on_give_up hook panicked")),
        }
    }

    /// Runs the handlers for one verified delivery, without HTTP, and says
    /// how it went. Nothing is recorded anywhere: de-duplication and the
    /// other delivery semantics are the delivery layer's.
    pub async fn handle(&self, delivery: &VerifiedDelivery) -> Outcome {
        self.handle_with(delivery, &Extensions::new()).await
    }

    /// [`handle`](Self::handle), with `resources` for the handlers'
    /// [`Resource`] arguments.
    pub async fn handle_with(
        &self,
        delivery: &VerifiedDelivery,
        resources: &Extensions,
    ) -> Outcome {
        let cx = DeliveryContext::new(&self.state, resources);
        let routes = &self.routes;
        let ran = match (delivery.envelope(), delivery.malformed()) {
            (Some(envelope), _) => {
                let matching = routes.matching(&envelope.event);
                if let Some(missing) = matching
                    .iter()
                    .find_map(|&index| routes.needs[index].first_absent(resources))
                {
                    if !routes.missing_logged.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            %missing,
                            "a handler takes a resource that nothing provides: no handler runs, and every such delivery is answered 500 resource_missing; mount the handlers with CariosanWebhookLayer::route to have this checked at start-up"
                        );
                    }
                    return Outcome::ResourceMissing(missing);
                }
                run_in_turn(
                    matching
                        .iter()
                        .map(|&index| (routes.handlers[index])(delivery, envelope, &cx)),
                )
                .await
            }
            (None, Some(malformed)) if !routes.malformed.is_empty() => {
                let typed = Delivery::malformed(delivery, malformed, resources);
                run_in_turn(
                    routes
                        .malformed
                        .iter()
                        .map(|route| route(typed.clone(), &cx)),
                )
                .await
            }
            (None, _) => {
                tracing::error!(
                    "no on_malformed handler: the delivery is not handled and will be retried"
                );
                return Outcome::Malformed;
            }
        };
        match ran {
            Outcome::GivenUp(error) => {
                tracing::error!(%error, "a handler gave up on the delivery: acknowledging it unhandled");
                let Some(hook) = &routes.give_up else {
                    return Outcome::GivenUp(error);
                };
                let given_up = GivenUp {
                    id: delivery.id().clone(),
                    event_type: delivery.event_type().to_owned(),
                    attempt: delivery.attempt(),
                    error: error.clone(),
                };
                match AssertUnwindSafe(hook(given_up)).catch_unwind().await {
                    Ok(Ok(())) => Outcome::GivenUp(error),
                    Ok(Err(hook_error)) => {
                        tracing::error!(error = %hook_error, "the on_give_up hook failed: the delivery is not handled and will be retried");
                        Outcome::Failed(hook_error)
                    }
                    Err(_panic) => {
                        tracing::error!("the on_give_up hook panicked: the delivery is not handled and will be retried");
                        Outcome::Panicked
                    }
                }
            }
            other => other,
        }
    }
}

/// A selection's event types, for messages.
fn describe(selector: &EventSelector) -> String {
    match selector {
        EventSelector::Types(types) => types
            .iter()
            .map(EventType::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        EventSelector::AllKnown => "every known event type".to_owned(),
        EventSelector::AllUnknown => "event types this version does not know".to_owned(),
    }
}

/// Runs handlers one after another; the first failure, panic or give-up
/// stops the run. Each handler's future is made only when its turn comes.
async fn run_in_turn(handlers: impl Iterator<Item = BoxFuture<'static, HandlerResult>>) -> Outcome {
    let mut ran = Outcome::Ignored;
    for handler in handlers {
        ran = Outcome::Handled;
        match AssertUnwindSafe(handler).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => match error.directive() {
                Directive::GiveUp => return Outcome::GivenUp(error),
                Directive::RetryAfter(_) => {
                    tracing::warn!(%error, "a handler asked for a retry later");
                    return Outcome::RetryLater(error);
                }
                Directive::Fail => {
                    tracing::error!(%error, "handler failed: the delivery is not handled and will be retried");
                    return Outcome::Failed(error);
                }
            },
            Err(_panic) => {
                tracing::error!(
                    "handler panicked: the delivery is not handled and will be retried"
                );
                return Outcome::Panicked;
            }
        }
    }
    ran
}

macro_rules! typed_handlers {
    ($( $(#[$doc:meta])* $method:ident => $variant:ident; )*) => {
        impl<S: Clone + Send + Sync + 'static> Webhooks<S> {
            $(
                $(#[$doc])*
                pub fn $method<F, Fut>(self, handler: F) -> Self
                where
                    F: Fn(Delivery<$variant>) -> Fut + Send + Sync + 'static,
                    Fut: Future<Output = HandlerResult> + Send + 'static,
                {
                    self.on::<$variant, F, ()>(EventType::$variant, handler)
                }
            )*
        }
    };
}

typed_handlers! {
    /// Runs `handler` for every `message.created`.
    on_message_created => MessageCreated;
    /// Runs `handler` for every `message.updated`.
    on_message_updated => MessageUpdated;
    /// Runs `handler` for every `message.deleted`.
    on_message_deleted => MessageDeleted;
    /// Runs `handler` for every `message.mentioned`.
    on_message_mentioned => MessageMentioned;
    /// Runs `handler` for every `channel.created`.
    on_channel_created => ChannelCreated;
    /// Runs `handler` for every `channel.updated`.
    on_channel_updated => ChannelUpdated;
    /// Runs `handler` for every `channel.deleted`.
    on_channel_deleted => ChannelDeleted;
    /// Runs `handler` for every `member.added`.
    on_member_added => MemberAdded;
    /// Runs `handler` for every `member.removed`.
    on_member_removed => MemberRemoved;
    /// Runs `handler` for every `member.updated`.
    on_member_updated => MemberUpdated;
    /// Runs `handler` for every `moderation.action`.
    on_moderation_action => ModerationAction;
    /// Runs `handler` for every `webhook.ping`.
    on_webhook_ping => WebhookPing;
}

impl<S> std::fmt::Debug for Webhooks<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("event_handlers", &self.routes.handlers.len())
            .field("malformed_handlers", &self.routes.malformed.len())
            .field("give_up_hook", &self.routes.give_up.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for Webhooks<S>
where
    S: Clone + Send + Sync + 'static,
{
    type Response = Response<BytesBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<BytesBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, _body) = request.into_parts();
        let Some(delivery) = parts.extensions.get::<VerifiedDelivery>().cloned() else {
            return Box::pin(std::future::ready(Ok(not_verified())));
        };
        let this = self.clone();
        Box::pin(async move {
            let outcome = this.handle_with(&delivery, &parts.extensions).await;
            Ok(outcome.to_response())
        })
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::test_util::samples;

    fn verified(envelope: Envelope) -> VerifiedDelivery {
        VerifiedDelivery::new(Some(1), 0, 0, Ok(envelope))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_any_runs_where_it_was_registered_and_stops_at_the_first_failure() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let log = |name: &'static str| {
            let order = order.clone();
            move |_event: Delivery<Event>| {
                order.lock().unwrap().push(name);
                async { Ok(()) }
            }
        };
        let typed = order.clone();
        let webhooks = Webhooks::new()
            .on_message_created(move |event| {
                typed.lock().unwrap().push("typed");
                let fail = event.message.content == "fail";
                async move {
                    if fail {
                        return Err(HandlerError::msg("failed"));
                    }
                    Ok(())
                }
            })
            .on_any(log("any"))
            .on(EventType::MessageCreated, log("second"));
        assert!(matches!(
            webhooks.handle(&verified(samples::message_created())).await,
            Outcome::Handled
        ));
        assert!(matches!(
            webhooks.handle(&verified(samples::channel_created())).await,
            Outcome::Handled
        ));
        assert_eq!(*order.lock().unwrap(), ["typed", "any", "second", "any"]);

        let mut failing = samples::message_created();
        let Event::MessageCreated(created) = &mut failing.event else {
            unreachable!()
        };
        Arc::make_mut(created).message.content = "fail".into();
        order.lock().unwrap().clear();
        assert!(matches!(
            webhooks.handle(&verified(failing)).await,
            Outcome::Failed(_)
        ));
        assert_eq!(
            *order.lock().unwrap(),
            ["typed"],
            "the first failure stops the run"
        );
    }

    #[test]
    fn routes_are_found_by_type_without_scanning_the_others() {
        let webhooks = Webhooks::new()
            .on_channel_created(|_| async { Ok(()) })
            .on_unknown(|_| async { Ok(()) })
            .on(
                EventType::Other("poll.closed".into()),
                |_: Delivery<UnknownEvent>| async { Ok(()) },
            );
        let event = samples::channel_created().event;
        assert_eq!(webhooks.routes.matching(&event), [0]);
        assert!(webhooks
            .routes
            .matching(&samples::webhook_ping().event)
            .is_empty());
        let unknown = crate::model::Envelope::from_slice(
            br#"{"id":"e","type":"poll.closed","created_at":"2026-11-22T10:00:00Z","workspace_id":"w","data":{}}"#,
        )
        .unwrap();
        assert_eq!(webhooks.routes.matching(&unknown.event), [1, 2]);
    }
}
