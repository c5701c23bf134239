use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::delivery::Delivery;
use super::error::HandlerResult;
use super::extract::{DeliveryContext, FromDelivery};
use super::resources::ResourceType;

/// An async function that handles deliveries of `T`: it takes the
/// [`Delivery<T>`] first, then up to three [`FromDelivery`] arguments (the
/// [`State`](super::State), a [`Resource`](super::Resource) the backend
/// provides), and returns a [`HandlerResult`].
///
/// Implemented for every such `Fn`; `Args` tells the arities apart.
pub trait Handler<T, S, Args>: Send + Sync + 'static {
    /// Takes the arguments and starts the handler.
    fn call(
        self: Arc<Self>,
        delivery: Delivery<T>,
        cx: &DeliveryContext<'_, S>,
    ) -> BoxFuture<'static, HandlerResult>;

    /// The resources its arguments take ([`FromDelivery::resource_type`]).
    fn resource_types() -> Vec<ResourceType>
    where
        Self: Sized,
    {
        Vec::new()
    }
}

macro_rules! impl_handler {
    ($($arg:ident),*) => {
        impl<F, Fut, T, S, $($arg,)*> Handler<T, S, ($($arg,)*)> for F
        where
            F: Fn(Delivery<T>, $($arg,)*) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = HandlerResult> + Send + 'static,
            T: Send + Sync + 'static,
            $($arg: FromDelivery<S>,)*
        {
            fn resource_types() -> Vec<ResourceType> {
                let all: &[Option<ResourceType>] = &[$($arg::resource_type(),)*];
                all.iter().flatten().copied().collect()
            }

            #[allow(non_snake_case, unused_variables)]
            fn call(
                self: Arc<Self>,
                delivery: Delivery<T>,
                cx: &DeliveryContext<'_, S>,
            ) -> BoxFuture<'static, HandlerResult> {
                $(
                    let $arg = match $arg::from_delivery(cx) {
                        Ok(arg) => arg,
                        Err(error) => return Box::pin(std::future::ready(Err(error))),
                    };
                )*
                // Called inside the future, so that a panic while the
                // handler builds its future is caught like any other.
                Box::pin(async move { (self)(delivery, $($arg,)*).await })
            }
        }
    };
}

impl_handler!();
impl_handler!(A1);
impl_handler!(A1, A2);
impl_handler!(A1, A2, A3);
