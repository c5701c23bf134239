use std::any::type_name;

use http::Extensions;

use super::error::HandlerError;
use super::resources::ResourceType;

/// What a handler's arguments after the [`Delivery`](super::Delivery) are
/// taken from: the dispatcher's state and the resources the delivery
/// backend provides for this delivery.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryContext<'a, S> {
    state: &'a S,
    resources: &'a Extensions,
}

impl<'a, S> DeliveryContext<'a, S> {
    pub(crate) fn new(state: &'a S, resources: &'a Extensions) -> Self {
        Self { state, resources }
    }

    /// The dispatcher's state ([`Webhooks::with_state`](super::Webhooks::with_state)).
    pub fn state(&self) -> &'a S {
        self.state
    }

    /// What the delivery backend provided for this delivery.
    pub fn resources(&self) -> &'a Extensions {
        self.resources
    }
}

/// A handler argument taken from the [`DeliveryContext`], the way an axum
/// extractor is taken from a request. A failure answers `500
/// handler_failed` before the handler runs.
pub trait FromDelivery<S>: Sized + Send + 'static {
    /// Takes the argument.
    fn from_delivery(cx: &DeliveryContext<'_, S>) -> Result<Self, HandlerError>;

    /// The resource this argument takes from what the delivery backend
    /// provides, if any: checked when the handlers are mounted, so that a
    /// backend that cannot give it is refused at start-up.
    fn resource_type() -> Option<ResourceType> {
        None
    }
}

/// The dispatcher's state, as a handler argument: see
/// [`Webhooks::with_state`](super::Webhooks::with_state).
///
/// ```
/// use cariosan_webhooks::dispatch::State;
/// use cariosan_webhooks::model::MessageCreated;
/// use cariosan_webhooks::{Delivery, HandlerResult};
///
/// #[derive(Clone)]
/// struct App { shop: &'static str }
///
/// async fn save(event: Delivery<MessageCreated>, State(app): State<App>) -> HandlerResult {
///     println!("{} got {}", app.shop, event.message.id);
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct State<S>(pub S);

impl<S: Clone + Send + Sync + 'static> FromDelivery<S> for State<S> {
    fn from_delivery(cx: &DeliveryContext<'_, S>) -> Result<Self, HandlerError> {
        Ok(Self(cx.state.clone()))
    }
}

/// Something the delivery backend provided for this delivery (found by
/// type in the [`DeliveryContext::resources`]), as a handler argument. A
/// delivery without one answers `500 handler_failed`.
#[derive(Debug, Clone)]
pub struct Resource<R>(pub R);

impl<S, R: Clone + Send + Sync + 'static> FromDelivery<S> for Resource<R> {
    fn resource_type() -> Option<ResourceType> {
        Some(ResourceType::of::<R>())
    }

    fn from_delivery(cx: &DeliveryContext<'_, S>) -> Result<Self, HandlerError> {
        cx.resources.get::<R>().cloned().map(Self).ok_or_else(|| {
            HandlerError::msg(format_args!(
                "the delivery backend provides no {} for this delivery",
                type_name::<R>()
            ))
        })
    }
}
