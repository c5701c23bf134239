//! PostgreSQL (feature `postgres`): each delivery is recorded in the
//! handlers' own transaction, so its database effects happen exactly once.
//! Two modes share the schema and the [`Tx`] handler argument:
//!
//! - **transactional** ([`PostgresBackend`], below): the handlers run while
//!   the sender waits, under the delivery layer;
//! - **inbox** ([`Inbox`], see [its section](#the-inbox)): each verified
//!   delivery is stored and acknowledged at once, and workers run it later,
//!   retrying on a schedule of their own.
//!
//! # Transactional
//!
//! Per delivery, [`PostgresBackend`] opens a transaction on your pool and
//! takes the delivery's key with `pg_try_advisory_xact_lock`, which never
//! waits: a copy running elsewhere is answered `503 delivery_in_progress` at
//! once. A delivery already recorded as handled is `200 duplicate` and runs
//! nothing. Otherwise the handlers get the transaction as a [`Tx`] argument,
//! and everything they write through it commits together with the
//! "handled" record, or not at all:
//!
//! - success or a give-up commits the record (with its outcome) and the
//!   handlers' writes: the delivery never runs again;
//! - an error, a panic, `retry_later`, a cancelled run (past
//!   `max_run_time`, a shutdown) rolls everything back: the retry runs it
//!   again, from scratch;
//! - there is no lease: if the process dies or its connection drops,
//!   PostgreSQL aborts the transaction and the delivery is free at once;
//! - past the budget the sender gets `503 handler_still_running` while the
//!   transaction goes on; its retry gets `503 delivery_in_progress`, or `200
//!   duplicate` once it committed;
//! - a failed commit is `503 store_unavailable`: nothing was recorded and
//!   nothing is acknowledged.
//!
//! ```no_run
//! use cariosan_webhooks::model::{EventType, MessageCreated};
//! use cariosan_webhooks::store::postgres::{sqlx, PostgresBackend, Tx};
//! use cariosan_webhooks::{CariosanWebhookLayer, Delivery, HandlerResult, Webhooks};
//!
//! async fn save(event: Delivery<MessageCreated>, tx: Tx) -> HandlerResult {
//!     let mut conn = tx.conn().await?;
//!     sqlx::query("INSERT INTO messages (id, content) VALUES ($1, $2)")
//!         .bind(event.message.id.as_str())
//!         .bind(&event.message.content)
//!         .execute(&mut *conn)
//!         .await?;
//!     for user in &event.message.mentions {
//!         sqlx::query("INSERT INTO mentions (message_id, user_id) VALUES ($1, $2)")
//!             .bind(event.message.id.as_str())
//!             .bind(&user.external_id)
//!             .execute(&mut *conn)
//!             .await?;
//!     }
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::postgres::PgPoolOptions::new()
//!     .max_connections(32)
//!     .connect(&std::env::var("DATABASE_URL")?)
//!     .await?;
//! let backend = PostgresBackend::new(pool);
//! backend.migrate().await?; // explicit: nothing is created behind your back
//! let layer = CariosanWebhookLayer::new(std::env::var("CARIOSAN_WEBHOOK_SECRET")?)
//!     .backend(backend)
//!     .max_concurrency(30); // each running delivery holds one connection
//! let webhooks = Webhooks::new().on(EventType::MessageCreated, save);
//! # let _ = (layer, webhooks);
//! # Ok(())
//! # }
//! ```
//!
//! **Connections.** Each running delivery holds one pool connection from
//! begin to commit. Keep `max_concurrency` below the pool's
//! `max_connections`, with room for the rest of the application; a delivery
//! waits at most the [acquire timeout](PostgresBackend::acquire_timeout)
//! for a connection, then is answered `503 store_unavailable`. A hung
//! handler holds its transaction until `max_run_time` cancels the run and
//! rolls it back; PostgreSQL's `idle_in_transaction_session_timeout`, set
//! above `max_run_time`, is the database's own backstop.
//!
//! **Outside the database** (an e-mail, a call to another API), effects are
//! at least once: a run whose commit fails ran them anyway. Pass the
//! delivery id as that API's idempotency key (`Idempotency-Key:
//! {event.id}`), so that a repeated call is recognised.
//!
//! **Schema.** [`migrate`](PostgresBackend::migrate) creates, in the schema
//! (default `cariosan_webhooks`):
//!
//! | object | what it is |
//! |---|---|
//! | `schema_migrations (version bigint primary key, description text, applied_at timestamptz)` | the crate's own migration versions, apart from sqlx's `_sqlx_migrations`, so an application's `sqlx::migrate!()` never sees them |
//! | `handled_deliveries (tenant text, delivery_id text, event_type text, outcome text, attempt integer, handled_at timestamptz, primary key (tenant, delivery_id))` | one row per delivery handled or given up; `tenant` is `''` for now, so that a receiver of several workspaces can join the key |
//! | index `handled_deliveries_handled_at` on `handled_at` | for [`prune`](PostgresBackend::prune), which drops records older than the retention (3 days) |
//! | `inbox (tenant, delivery_id, event_type, message_ids text[], body bytea, signed_at, sender_attempt, received_at, status, outcome, attempts, recorded_attempts, due_at, last_error, finished_at, primary key (tenant, delivery_id))` | the [inbox](#the-inbox): one row per delivery, `status` `queued`, `done` or `dead` |
//! | indexes `inbox_due` (queued rows by `due_at`), `inbox_finished`, `inbox_message_ids` (GIN) | claims, pruning, and dropping a deleted message's bodies |
//!
//! It migrates under a session advisory lock
//! ([`migration_lock_key`](PostgresBackend::migration_lock_key)), so that
//! replicas starting together migrate once and all start. Both modes apply
//! the same migrations.
//!
//! # The inbox
//!
//! The sender is acknowledged as soon as the delivery is safely stored;
//! handlers run afterwards, as long as they need, retried on the inbox's
//! own schedule instead of Cariosan's.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::routing::post_service;
//! use cariosan_webhooks::model::{EventType, MessageCreated};
//! use cariosan_webhooks::store::postgres::{sqlx, Inbox, RetrySchedule, Tx};
//! use cariosan_webhooks::verification::VerificationLayer;
//! use cariosan_webhooks::{Delivery, HandlerResult, Webhooks};
//!
//! async fn save(event: Delivery<MessageCreated>, tx: Tx) -> HandlerResult {
//!     let mut conn = tx.conn().await?;
//!     sqlx::query("INSERT INTO messages (id, content) VALUES ($1, $2)")
//!         .bind(event.message.id.as_str())
//!         .bind(&event.message.content)
//!         .execute(&mut *conn)
//!         .await?;
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::postgres::PgPoolOptions::new()
//!     .max_connections(16)
//!     .connect(&std::env::var("DATABASE_URL")?)
//!     .await?;
//! let inbox = Inbox::new(pool).retry(RetrySchedule::new().max_attempts(10));
//! inbox.migrate().await?;
//! let workers = inbox
//!     .workers(Webhooks::new().on(EventType::MessageCreated, save))
//!     .concurrency(8)
//!     .start();
//! let app: axum::Router = axum::Router::new().route(
//!     "/webhooks/cariosan",
//!     post_service(inbox.service())
//!         .layer(VerificationLayer::new(std::env::var("CARIOSAN_WEBHOOK_SECRET")?)),
//! );
//! // ... serve `app`; on shutdown:
//! workers.shutdown(Duration::from_secs(9)).await;
//! # Ok(())
//! # }
//! ```
//!
//! **Ingest.** [`Inbox::service`] stores each verified delivery with one
//! `INSERT .. ON CONFLICT DO NOTHING` (id, type, the raw signed body, the
//! signed time, the sender's attempt) and answers `202 queued` only after
//! that row committed. A copy of a stored delivery is `200 duplicate` and
//! adds no row, for as long as the row is kept (3 days once done). If the
//! insert fails or takes longer than the acquire timeout, the answer is `503
//! store_unavailable` and nothing is acknowledged.
//!
//! **Workers.** [`Inbox::workers`] claims the earliest due row with `FOR
//! UPDATE SKIP LOCKED`, so any number of workers and replicas share the
//! queue without taking the same row. A claim first counts the attempt and
//! moves the row's due time to that attempt's retry time (unjittered, and at
//! least 1 s away), in one statement that commits on its own; then the run's
//! transaction locks the row, opens a
//! savepoint, runs [`Webhooks::handle`](crate::Webhooks::handle) with the
//! transaction as [`Tx`] (handlers see the inbox's attempt as
//! `Delivery::attempt` and `Delivery::generation`), and records the outcome
//! in the same transaction:
//!
//! | the run | its effects | the row |
//! |---|---|---|
//! | handled or ignored | committed | `done`; its body dropped (unless [`keep_done_bodies`](Inbox::keep_done_bodies)) |
//! | a handler gave up | committed | `dead`, with the error |
//! | failed, panicked, `retry_later`, past `max_run_time` | rolled back to the savepoint | queued again after the [`RetrySchedule`]'s delay (or `retry_later`'s, within the cap), with the error; `dead` after the last attempt, and `on_give_up` runs |
//! | its process died, its connection dropped, its commit failed | aborted by PostgreSQL | due again at its retry time; the next claim records it as lost (`attempt N did not finish`), and past the last attempt it is `dead` |
//! | cancelled by [`WorkersHandle::shutdown`] after its deadline | rolled back | due again at once, the attempt given back |
//!
//! So a delivery's database effects commit exactly once, or never when it
//! ends dead; nothing acknowledged is lost while the database keeps its
//! committed data. Idle workers are woken at once by deliveries this process
//! stores, and otherwise poll ([`poll_interval`](Workers::poll_interval),
//! 500 ms): a row stored by another replica, or a retry coming due, waits
//! at most that long.
//!
//! **Chat content.** The body is the message text. A handled row drops it
//! by default; a dead row keeps it until it is replayed, purged or pruned
//! (14 days). When a `message.deleted` is handled, every finished row that
//! holds that message's text (its own deliveries, replies that quote it, a
//! moderation action on it) loses its body, and queued deliveries of that
//! message are marked done (`superseded`) without running. A delivery of it
//! running at that moment keeps its body until it ends, and a queued reply
//! that quotes it keeps its body until it is handled.
//!
//! **Operators.** [`list`](Inbox::list), [`get`](Inbox::get) (no body),
//! [`body`](Inbox::body), [`replay`](Inbox::replay) (a dead or done row with
//! its body, queued with fresh attempts), [`replay_dead`](Inbox::replay_dead),
//! [`purge`](Inbox::purge), [`prune`](Inbox::prune); the same as the
//! `cariosan-webhooks inbox` command. A stored delivery is not verified
//! again when it runs (its secret may have rotated): the table is as
//! trusted as the rest of your database.

mod inbox;
mod migrations;
mod schedule;
mod transactional;
mod worker;

use std::sync::Arc;
use std::time::Duration;

pub use sqlx;

pub use inbox::{
    Inbox, InboxEntry, InboxError, InboxService, InboxStatus, ListFilter, Pruned,
    DEFAULT_DEAD_RETENTION, DEFAULT_DONE_RETENTION,
};
pub use schedule::{Clock, ManualClock, RetrySchedule, WallClock};
pub use transactional::{PostgresBackend, Tx};
pub use worker::{Stopped, Workers, WorkersHandle, DEFAULT_CONCURRENCY, DEFAULT_POLL_INTERVAL};

use crate::store::StoreError;

/// The schema the crate's tables live in by default.
pub const DEFAULT_SCHEMA: &str = "cariosan_webhooks";

/// How long a delivery waits for a pool connection by default.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `schema` is a plain lowercase identifier (`[a-z_][a-z0-9_]*`, at
/// most 63 bytes), the only names the `schema(..)` builders accept: the name
/// is written into SQL. Check a configured name with it to refuse it
/// without the builder's panic.
pub fn is_plain_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `schema`, if [`is_plain_schema`].
fn checked_schema(schema: &str) -> Arc<str> {
    assert!(
        is_plain_schema(schema),
        "the schema must be a plain lowercase identifier, not {schema:?}"
    );
    schema.into()
}

fn postgres_error(error: sqlx::Error) -> StoreError {
    StoreError::new(format!("PostgreSQL: {error}"))
}

/// The tenant of a key when the receiver serves one workspace.
const NO_TENANT: &str = "";
