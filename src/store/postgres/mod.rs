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
//! Per delivery, [`PostgresBackend`] opens a `READ COMMITTED` transaction on
//! your pool (whatever the database's default), reads whether the delivery
//! was handled, and if not takes its key with `pg_try_advisory_xact_lock`,
//! which never waits, then reads again. A delivery recorded as handled is
//! `200 duplicate` and runs nothing, even while other copies are being
//! checked; a copy running elsewhere is answered `503 delivery_in_progress`
//! at once. Otherwise the handlers get the transaction as a [`Tx`] argument,
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
//! for a connection, then is answered `503 store_unavailable`.
//!
//! **Faults.** What each mode does where a database call or a session
//! fails, in both modes:
//!
//! - *A call dropped half-way* (a timeout, a client hanging up, a
//!   shutdown) never returns a connection to your pool inside a
//!   transaction: a `BEGIN`, `COMMIT` or `ROLLBACK` cut off is rolled back
//!   within 0.3 s, or its connection closed. sqlx alone does not promise
//!   this (its #4393).
//! - *A handler stuck in a statement or behind a lock* is stopped at
//!   `max_run_time`, or by a drain past its deadline: the run's statement
//!   is cancelled on the server (`pg_cancel_backend`, from another
//!   connection), then the transaction is rolled back within 0.3 s, or the
//!   session terminated. `statement_timeout` and `lock_timeout` are set to
//!   `max_run_time` + 1 s as the server's own backstop.
//! - *A session that ends under a running handler* (`pg_terminate_backend`,
//!   `idle_in_transaction_session_timeout`, a failover) takes its locks
//!   with it. One watcher per backend or inbox checks every running run's
//!   session every 500 ms on a connection of its own and cancels the run
//!   whose session is gone; when it cannot reach PostgreSQL it cancels the
//!   runs it could not confirm for 2 s. A run never outlives its session by
//!   more than [`LOST_SESSION_BOUND`]: in transactional mode a copy that
//!   arrives sooner can overlap it; in the inbox, a claim that finds a lost
//!   run defers the row by 5 s, longer than that bound.
//! - *A client that vanished without a word* (a host crash, a partition)
//!   leaves its session, and its locks, on the server until TCP keepalive
//!   ends it (about two hours by default): nothing runs twice meanwhile,
//!   but the delivery waits. Set `tcp_keepalives_idle`,
//!   `tcp_keepalives_interval`, `tcp_keepalives_count` and (PostgreSQL 14+)
//!   `client_connection_check_interval` on the server to end it within a
//!   minute.
//! - *A drain past its deadline* waits
//!   [`CANCEL_GRACE`](crate::delivery::CANCEL_GRACE) (1 s) for the runs it
//!   cancelled: a cancel, a rollback and, failing those, a terminate take
//!   at most 0.3 s each. If the process exits before a cancel reached the
//!   server, `statement_timeout` ends the statement.
//! - Sessions are told apart by pid and start time, so a pid reused by a
//!   later session is never cancelled, terminated or taken for a live run.
//!   The watcher and the cancels connect with the pool's options but not
//!   its `after_connect` hook; any role may read `pg_stat_activity` and
//!   cancel sessions of its own role. When the server is at its connection
//!   limit, they use an idle pool connection instead.
//! - *A commit whose answer was lost* is logged, counted as
//!   `store_errors_total{operation="commit_ambiguous"}`, and treated as not
//!   recorded: the sender is answered 503, and its retry finds the record
//!   (`200 duplicate`) or runs again.
//!
//! Built-in functions in the crate's SQL are schema-qualified
//! (`pg_catalog.`), so no function on the `search_path` can stand in for
//! them, and the delivery key includes the schema, so receivers with their
//! own schemas on one database never block each other.
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
//! | `inbox (tenant, delivery_id, event_type, message_ids text[], signed_at, sender_attempt, received_at, status, outcome, attempts, recorded_attempts, due_at, last_error, finished_at, generation, give_up_pending, give_up_due_at, error_kind, ordering_key, event_at, primary key (tenant, delivery_id))` | the [inbox](#the-inbox): one row per delivery, `status` `queued`, `done` or `dead` |
//! | `inbox_bodies (tenant, delivery_id, body bytea, primary key (tenant, delivery_id), foreign key to inbox on delete cascade)` | each row's raw signed body while it is kept, apart from the state that claims and runs update |
//! | indexes `inbox_due` (queued rows by `due_at`), `inbox_finished`, `inbox_message_ids` (GIN), `inbox_give_up_pending`, `inbox_ordering`, `inbox_ordering_running` | claims, pruning, dropping a deleted message's bodies, owed give-up hooks, and ordering keys |
//! | `deleted_messages (tenant, message_id, deleted_at)` | messages whose `message.deleted` was handled: no stored text of theirs may stay |
//! | `ordering_marks (tenant, ordering_key, event_at, delivery_id, updated_at)` | per ordering key, the latest row that ran to an end |
//!
//! It migrates in one transaction under an advisory lock
//! ([`migration_lock_key`](PostgresBackend::migration_lock_key)), so that
//! replicas starting together migrate once and all start, and a `migrate`
//! dropped half-way rolls back and frees the lock. Both modes apply the
//! same migrations.
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
//! `INSERT .. ON CONFLICT DO NOTHING` (id, type, the signed time, the
//! sender's attempt in the `inbox` row; the raw signed body beside it in
//! `inbox_bodies`, which claims and runs never rewrite, and which goes
//! with its row) and answers `202 queued` only after that statement
//! committed. A copy of a stored delivery is `200 duplicate` and
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
//! `Delivery::attempt`, and as `Delivery::generation` a counter bumped by
//! every claim and never reset), and records the outcome in the same
//! transaction:
//!
//! | the run | its effects | the row |
//! |---|---|---|
//! | handled or ignored | committed | `done`; its body dropped (unless [`keep_done_bodies`](Inbox::keep_done_bodies)) |
//! | a handler gave up | committed, with the `dead` record | `dead`, with the error (its `on_give_up` ran inside the run) |
//! | failed, panicked, `retry_later`, past `max_run_time` | rolled back to the savepoint | queued again after the [`RetrySchedule`]'s delay (or `retry_later`'s, within the cap), with the error; `dead` after the last attempt, and `on_give_up` runs, at least once: a hook that fails, or whose process dies first, is run again by the workers |
//! | its process died, its session ended, its commit failed | aborted by PostgreSQL | due again at its retry time; the next claim records it as lost (`attempt N did not finish`) and defers it 5 s; past the last attempt it is `dead` |
//! | cancelled by [`WorkersHandle::shutdown`] after its deadline | rolled back | due again at once, the attempt given back |
//!
//! So a delivery's database effects commit exactly once, or never when it
//! ends dead; nothing acknowledged is lost while the database keeps its
//! committed data. Idle workers are woken at once by deliveries this process
//! stores, and otherwise poll ([`poll_interval`](Workers::poll_interval),
//! 500 ms): a row stored by another replica, or a retry coming due, waits
//! at most that long.
//!
//! **Clocks.** Due times come from each replica's [`Clock`] (the system
//! clock by default), not from PostgreSQL's: keep the replicas' clocks
//! within a second of each other (NTP does). A replica whose clock is
//! ahead by more than a claim's 1 s grace can find a row that another just
//! claimed due before the first has locked it; it then records that
//! attempt as lost (a false alarm, in the log and the `lost` metric) and
//! defers the row, while the first run goes on: nothing runs twice.
//!
//! **Chat content.** The body is the message text, and an error may quote
//! it (PostgreSQL's own messages quote values). A handled row drops both by
//! default; a dead row keeps them until it is replayed, purged or pruned
//! (14 days). When a `message.deleted` is handled, the message id is
//! recorded in `deleted_messages` and no table of the crate keeps its text:
//!
//! - finished rows that hold it (its own deliveries, replies that quote it,
//!   a moderation action on it) lose their body and error text, keeping
//!   the error's kind (`error_kind`);
//! - its own queued content events (`message.created`, `message.updated`,
//!   `message.mentioned`) end `superseded` without running;
//! - other queued rows that hold it (a moderation action, a reply) still
//!   run: they lose their error text at once and their body as they
//!   finish, as do rows running at that moment;
//! - a late copy of one of its content events is stored without its body,
//!   `superseded`;
//! - a body whose data does not fit the model is matched by the ids read
//!   from its raw JSON.
//!
//! Where that ends: a content event of the message that is *running* when
//! the deletion commits finishes (and then drops its text: a done row its
//! body and error at once, a row that keeps its body or error after waiting
//! for the deletion), so its handler's own writes may commit after the
//! deletion handler's: a handler that stores message text should not
//! resurrect a message its application deleted. A deletion that meets another
//! transaction's row locks in the opposite order (a deletion of a message
//! that quotes one being deleted at the same moment) is a deadlock that
//! PostgreSQL breaks: that run fails and is retried.
//!
//! **Ordering** ([`Inbox::ordered`], off by default). Each delivery is
//! stored with a key ([`OrderingKeys`]: by message, by channel for member
//! and channel events, by subject for moderation actions). A keyed row is
//! not claimed while an earlier row of its key (by the envelope's
//! `created_at`, then id) is queued, due or not, nor while any row of its
//! key runs; keys run in parallel. A run takes its key's advisory lock and
//! checks again under it, so that runs of a key never overlap; a row claimed
//! out of turn gives its attempt back. Order holds among the rows present:
//! a row that arrives after a later one of its key was handled is stale
//! ([`Delivery::is_stale`](crate::Delivery::is_stale), or `superseded` with
//! [`StalePolicy::Supersede`]); [`hold_for`](Inbox::hold_for) delays every
//! keyed row by a window so that late predecessors within it run first. A
//! dead row stops holding its key, at once or after
//! [`after_dead_predecessor`](Inbox::after_dead_predecessor). The keys'
//! latest handled rows are kept in `ordering_marks` (ids and times, no
//! content) for the longer retention, and while a queued or dead row of
//! the key is kept.
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
mod monitor;
mod ordering;
mod schedule;
mod transaction;
mod transactional;
mod worker;

use std::sync::Arc;
use std::time::Duration;

pub use sqlx;

pub use inbox::{
    Inbox, InboxEntry, InboxError, InboxService, InboxStatus, ListFilter, Pruned, ReplayedDead,
    DEFAULT_DEAD_RETENTION, DEFAULT_DONE_RETENTION,
};
pub use monitor::LOST_SESSION_BOUND;
pub use ordering::{default_key, OrderingKeys, StalePolicy};
pub use schedule::{Clock, ManualClock, RetrySchedule, WallClock, MAX_RETRY_DELAY};
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

/// The shortest retention of handled records and finished inbox rows the
/// builders accept: Cariosan retries a delivery for about 47 hours, and a
/// copy arriving after its record was pruned runs again. The
/// `..._shorter_than_retries` builders take a shorter one, knowingly.
pub const MIN_RETENTION: Duration = Duration::from_secs(48 * 60 * 60);

/// The longest timeout or limit the builders accept.
const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// `retention`, if it is more than zero and at most
/// [`MAX_RETENTION`](crate::delivery::MAX_RETENTION), and, unless `short`
/// is allowed, at least [`MIN_RETENTION`].
fn checked_retention(what: &str, retention: Duration, short: bool) -> Duration {
    let max = crate::delivery::MAX_RETENTION;
    assert!(
        !retention.is_zero() && retention <= max,
        "the {what} must be more than zero and at most {max:?}, not {retention:?}"
    );
    assert!(
        short || retention >= MIN_RETENTION,
        "the {what} ({retention:?}) is shorter than Cariosan's retries (about 47 hours): \
         a late copy would run again; use the `_shorter_than_retries` builder to mean it"
    );
    retention
}

/// `wait`, if it is more than zero and at most a day.
fn checked_wait(what: &str, wait: Duration) -> Duration {
    assert!(
        !wait.is_zero() && wait <= MAX_WAIT,
        "the {what} must be more than zero and at most {MAX_WAIT:?}, not {wait:?}"
    );
    wait
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

#[cfg(test)]
mod tests {
    use super::*;

    fn panics<T: std::fmt::Debug>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> String {
        let payload = std::panic::catch_unwind(f).unwrap_err();
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn retentions_outlast_the_senders_retries_unless_asked_not_to() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(checked_retention("retention", 3 * day, false), 3 * day);
        assert!(panics(|| checked_retention("retention", day, false))
            .contains("shorter than Cariosan's retries"));
        assert_eq!(checked_retention("retention", day, true), day);
        for wrong in [Duration::ZERO, Duration::MAX, 367 * day] {
            for short in [false, true] {
                assert!(
                    panics(move || checked_retention("retention", wrong, short))
                        .contains("at most"),
                    "{wrong:?}"
                );
            }
        }
        assert!(panics(|| checked_wait("acquire timeout", Duration::MAX)).contains("at most"));
        assert!(
            panics(|| checked_wait("acquire timeout", Duration::ZERO)).contains("more than zero")
        );
        assert!(panics(|| RetrySchedule::new().cap(Duration::MAX)).contains("at most"));
        assert!(panics(|| RetrySchedule::new().first_delay(Duration::MAX)).contains("at most"));
    }
}
