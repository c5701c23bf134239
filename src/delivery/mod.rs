//! The delivery layer: what happens to a verified delivery, whatever the
//! handlers and the network do.
//!
//! [`DeliveryLayer`] acts only on requests that carry a
//! [`VerifiedDelivery`](crate::VerifiedDelivery), in this order:
//!
//! 1. a closing check (`503 shutting_down`) and a concurrency permit
//!    (`503 overloaded`);
//! 2. the [backend](DeliveryBackend) begins the delivery within the store
//!    timeout: `200 duplicate` if it was handled before, `503
//!    delivery_in_progress` if a copy is running, `503 store_unavailable`
//!    if the backend failed or did not answer;
//! 3. the inner service runs, detached from the client, with whatever the
//!    backend [provides](DeliveryGuard::provide) in the request's
//!    extensions. It is polled once inline; a run that has to wait goes on
//!    in a task of its own, and past the budget the sender is answered `503
//!    handler_still_running` while it goes on;
//! 4. a lease is renewed from a task of its own while the run lasts; a
//!    lease that cannot be renewed in time, or the hard limit
//!    (`max_run_time`), cancels the run: its future is dropped and the
//!    delivery freed (`503 run_cancelled`);
//! 5. the backend [finishes](DeliveryGuard::finish) the delivery with the
//!    outcome: handled on a 2xx answer (or a give-up), freed otherwise.
//!
//! Handlers must not block their thread: the run's timers and the renewal
//! cannot cancel a handler that never yields, and on a single-threaded
//! runtime nothing else runs meanwhile. Put blocking work in
//! `tokio::task::spawn_blocking`.

mod backend;
mod layer;
mod lease;
mod rejection;
mod run;
mod service;
mod shutdown;

pub use backend::{Begin, DeliveryBackend, DeliveryGuard, Finish, Generation};
pub use layer::{
    DeliveryLayer, DEFAULT_HANDLER_BUDGET, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_RUN_TIME,
    DEFAULT_RETRY_AFTER, DEFAULT_STORE_TIMEOUT, MAX_MAX_RUN_TIME,
};
pub use lease::{LeaseBackend, DEFAULT_LEASE, DEFAULT_RETENTION, MAX_LEASE, MAX_RETENTION};
pub(crate) use rejection::not_verified;
pub use rejection::Rejection;
pub use service::DeliveryService;
pub use shutdown::{shutdown_signal, Drained, ShutdownHandle, CANCEL_GRACE};
