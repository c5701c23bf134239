//! The inbox's workers: claim a due row, run the handlers in the row's own
//! transaction, record the outcome in that transaction.
//!
//! An attempt is counted in a statement that commits on its own *before* the
//! run, and the run's transaction then locks the row. So a run whose
//! process dies (or whose connection drops) has still used its attempt,
//! and is found by the next claim as lost: a handler that kills its process
//! every time ends dead after the last attempt, like one that fails.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::Extensions;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, Postgres};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::inbox::{message_ids, Inbox};
use super::monitor::LOST_SESSION_BOUND;
use super::ordering::StalePolicy;
use super::postgres_error;
use super::transaction::{acquire, CommitError, RunTx};
use super::transactional::Tx;
use crate::delivery::{Generation, DEFAULT_MAX_RUN_TIME};
use crate::dispatch::{
    GivenUp, HandlerError, MissingResource, Outcome, Provided, ResourceType, Webhooks,
};
use crate::model::EventId;
use crate::store::StoreError;
use crate::verify::VerifiedDelivery;

/// Workers run by default.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// How often an idle worker looks for due rows by default. Rows stored by
/// this process wake a worker at once; rows stored by another replica, and
/// retries coming due, wait at most this long.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The least time a claimed row is not due, whatever the schedule: it
/// covers the gap between counting the attempt and locking the row for the
/// run. A run lost (its process died) is due again after its retry delay,
/// or this, whichever is longer.
const CLAIM_GRACE: Duration = Duration::from_secs(1);

/// How long a row whose last attempt was lost waits before it runs again:
/// twice as long as a live process takes to cancel a run whose PostgreSQL
/// session ended ([`LOST_SESSION_BOUND`]), so that two runs of a delivery
/// never overlap, with room for the replicas' clocks to differ.
const LOST_RUN_GRACE: Duration = Duration::from_secs(5);

/// The longest a keyed row's claim holds it before a claim may find its run
/// lost, whatever its backoff: its whole key waits for a lost run. Its run
/// holds the row lock long before.
const KEYED_CLAIM_HOLD: Duration = Duration::from_secs(10);

/// How long a row claimed while another run holds its key waits.
const KEY_HELD_RETRY: Duration = Duration::from_secs(1);
const _: () = assert!(LOST_RUN_GRACE.as_millis() >= 2 * LOST_SESSION_BOUND.as_millis());

/// Undoes the handlers' effects, keeping the run's own bookkeeping.
const TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT cariosan_handlers";

/// How often a busy worker also looks for rows whose last attempt was lost.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The error a lost run leaves on its row, as an SQL expression over the
/// row's `attempts`: the claim and the sweep both write it.
const LOST_RUN_ERROR: &str = "'attempt ' || row.attempts || ' did not finish: its process died, \
     its connection to PostgreSQL was lost, or its outcome could not be committed'";

/// The longest error text kept on a row.
const MAX_ERROR_LEN: usize = 2000;

/// A pool of inbox workers, configured; [`start`](Self::start) runs them.
/// Made by [`Inbox::workers`].
#[must_use]
pub struct Workers<S> {
    inbox: Inbox,
    webhooks: Webhooks<S>,
    concurrency: usize,
    max_run_time: Duration,
    poll_interval: Duration,
}

impl<S> std::fmt::Debug for Workers<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("inbox", &self.inbox)
            .field("concurrency", &self.concurrency)
            .field("max_run_time", &self.max_run_time)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl Inbox {
    /// Workers that run `webhooks` for this inbox's deliveries (of every
    /// tenant).
    pub fn workers<S>(&self, webhooks: Webhooks<S>) -> Workers<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Workers {
            inbox: self.clone(),
            webhooks,
            concurrency: DEFAULT_CONCURRENCY,
            max_run_time: DEFAULT_MAX_RUN_TIME,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}

impl<S> Workers<S>
where
    S: Clone + Send + Sync + 'static,
{
    /// How many deliveries run at once in this process (default 4). Each
    /// worker claims and runs on one pool connection, and its sweeps take
    /// another briefly.
    ///
    /// # Panics
    ///
    /// If `workers` is 0.
    pub fn concurrency(mut self, workers: usize) -> Self {
        assert!(workers > 0, "an inbox needs at least one worker");
        self.concurrency = workers;
        self
    }

    /// The hard limit of a run (default 5 minutes): past it the handlers
    /// are dropped, their transaction rolled back to before them, and the
    /// run counts as a failed attempt.
    ///
    /// # Panics
    ///
    /// If `limit` is zero or over a day.
    pub fn max_run_time(mut self, limit: Duration) -> Self {
        self.max_run_time = super::checked_wait("max_run_time", limit);
        self
    }

    /// How often an idle worker looks for due rows (default 500 ms).
    ///
    /// # Panics
    ///
    /// If `every` is zero.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        assert!(!every.is_zero(), "the poll interval must be positive");
        self.poll_interval = every;
        self
    }

    /// Starts the workers on the current tokio runtime. They run until
    /// [`WorkersHandle::shutdown`]; dropping the handle leaves them running.
    ///
    /// # Panics
    ///
    /// If a handler takes a resource the inbox does not provide (it
    /// provides [`Tx`] and [`Generation`]), naming the event type, the
    /// argument's type and the inbox. [`try_start`](Self::try_start)
    /// returns the error.
    pub fn start(self) -> WorkersHandle {
        self.try_start()
            .unwrap_or_else(|missing| panic!("{missing}"))
    }

    /// [`start`](Self::start), or the resource a handler takes that the
    /// inbox does not provide; nothing starts then.
    pub fn try_start(self) -> Result<WorkersHandle, MissingResource> {
        self.webhooks.check_resources(&Provided {
            types: Some(&[ResourceType::of::<Tx>(), ResourceType::of::<Generation>()]),
            provider: "the inbox's workers",
        })?;
        let stop = CancellationToken::new();
        let cancel = CancellationToken::new();
        let cancelled = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            inbox: self.inbox,
            webhooks: self.webhooks,
            max_run_time: self.max_run_time,
            poll_interval: self.poll_interval,
            stop: stop.clone(),
            cancel: cancel.clone(),
            cancelled: cancelled.clone(),
        });
        let tracker = TaskTracker::new();
        for worker in 0..self.concurrency {
            let span = tracing::info_span!("cariosan_inbox_worker", worker);
            tracker.spawn(work(shared.clone()).instrument(span));
        }
        tracker.close();
        Ok(WorkersHandle {
            stop,
            cancel,
            tracker,
            cancelled,
        })
    }
}

/// Running workers. Dropping it leaves them running.
#[derive(Debug)]
pub struct WorkersHandle {
    stop: CancellationToken,
    cancel: CancellationToken,
    tracker: TaskTracker,
    cancelled: Arc<AtomicUsize>,
}

/// How [`WorkersHandle::shutdown`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stopped {
    /// Runs still going at the deadline: their handlers were dropped and
    /// their effects rolled back; they are due again at once, their attempt
    /// not counted.
    pub cancelled: usize,
}

impl WorkersHandle {
    /// Stops claiming, lets the runs in progress finish for up to
    /// `deadline`, then cancels the rest and waits for their rollback.
    pub async fn shutdown(self, deadline: Duration) -> Stopped {
        self.stop.cancel();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            self.cancel.cancel();
            // A handler that blocks its thread is not dropped by this;
            // its process's exit aborts its transaction.
            let _ = tokio::time::timeout(crate::delivery::CANCEL_GRACE, self.tracker.wait()).await;
        }
        Stopped {
            cancelled: self.cancelled.load(Ordering::SeqCst),
        }
    }
}

struct Shared<S> {
    inbox: Inbox,
    webhooks: Webhooks<S>,
    max_run_time: Duration,
    poll_interval: Duration,
    stop: CancellationToken,
    cancel: CancellationToken,
    cancelled: Arc<AtomicUsize>,
}

/// What a claim found.
enum Claim {
    /// A row to run.
    Run(Claimed),
    /// A row's lost attempt was recorded; it is due again later.
    LostRecorded,
    /// Nothing due.
    Empty,
}

/// A row whose attempt `attempt` this worker counted.
struct Claimed {
    tenant: String,
    id: String,
    event_type: String,
    attempt: i32,
    /// Bumped by every claim, never reset: handlers' fencing token.
    generation: i64,
    body: Option<Vec<u8>>,
    signed_at: i64,
    /// Its ordering key, and its envelope's time, by which its key's rows run.
    ordering: Option<(String, OffsetDateTime)>,
}

async fn work<S: Clone + Send + Sync + 'static>(shared: Arc<Shared<S>>) {
    let mut swept = tokio::time::Instant::now();
    let mut idle = true;
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        // Before a claim, never between a claim and its run: a sweep (and
        // the hooks it runs) must not make a claimed row look lost.
        if idle || swept.elapsed() >= SWEEP_EVERY {
            swept = tokio::time::Instant::now();
            if let Err(error) = shared.sweep().await {
                crate::metrics::store_error("inbox_claim");
                tracing::warn!(%error, "could not sweep the inbox for lost last attempts");
            }
        }
        // The run's connection is taken before the claim, so that an
        // exhausted pool delays claims instead of burning attempts.
        let inbox = &shared.inbox;
        let mut conn = match acquire(&inbox.pool, inbox.config.acquire_timeout).await {
            Ok(conn) => conn,
            Err(error) => {
                crate::metrics::store_error("inbox_claim");
                tracing::warn!(%error, "no pool connection for a claim; trying again after the poll interval");
                tokio::select! {
                    () = shared.stop.cancelled() => return,
                    () = tokio::time::sleep(shared.poll_interval) => {}
                }
                continue;
            }
        };
        let claimed = shared.claim(&mut conn).await;
        let conn = match claimed {
            Ok(Claim::Run(_)) => Some(conn),
            _ => {
                drop(conn);
                None
            }
        };
        idle = !matches!(claimed, Ok(Claim::Run(_)));
        if matches!(claimed, Ok(Claim::LostRecorded)) {
            idle = false;
            continue;
        }
        match claimed {
            Ok(Claim::Run(claimed)) => {
                let conn = conn.expect("kept for the run");
                let span = tracing::info_span!(
                    "cariosan_webhook",
                    tenant = (!claimed.tenant.is_empty()).then_some(claimed.tenant.as_str()),
                    delivery_id = %claimed.id,
                    event_type = %claimed.event_type,
                    attempt = claimed.attempt,
                );
                let ran = AssertUnwindSafe(shared.run(conn, &claimed).instrument(span))
                    .catch_unwind()
                    .await;
                if ran.is_err() {
                    tracing::error!(delivery_id = %claimed.id, "an inbox run panicked outside the handlers; the row is due again after its backoff");
                }
                continue;
            }
            Ok(Claim::Empty | Claim::LostRecorded) => {}
            Err(error) => {
                crate::metrics::store_error("inbox_claim");
                tracing::warn!(%error, "could not claim from the inbox; trying again");
            }
        }
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = shared.inbox.config.wake.notified() => {}
            () = tokio::time::sleep(shared.poll_interval) => {}
        }
    }
}

/// What a claim returns: the key, the type, the attempt it counted, the
/// generation, whether the attempt before was lost, the body (gone once dropped) and
/// the signed time, the ordering key and the envelope's time.
type ClaimedRow = (
    String,
    String,
    String,
    i32,
    i64,
    bool,
    Option<Vec<u8>>,
    i64,
    Option<String>,
    Option<OffsetDateTime>,
);

/// What a sweep returns of a row it marked dead: its id, its type, its
/// attempts, and whether the last was lost.
type SweptRow = (String, String, i32, bool);

/// A dead row whose hook is owed: the key, the type, the attempts, the
/// error, the generation.
type OwedHook = (String, String, String, i32, Option<String>, i64);

/// What a hook is told of an error whose text went with its message.
const REDACTED_ERROR: &str = "its error's text was dropped with its deleted message";

/// How long after a row died its `on_give_up` hook is retried, when the
/// run that killed it did not get it through.
const GIVE_UP_RETRY_AFTER: Duration = Duration::from_secs(10);

/// How a run ended, before it is recorded.
enum Ran {
    Outcome(Outcome),
    TimedOut,
    Cancelled,
    /// Its PostgreSQL session ended under it.
    SessionLost,
}

/// What the row becomes.
enum Record {
    Done(&'static str),
    Retry {
        /// What went wrong, as a word that holds no chat content: kept
        /// when the error's text is dropped with a deleted message.
        kind: &'static str,
        error: String,
        after: Duration,
    },
    Dead {
        outcome: &'static str,
        kind: &'static str,
        error: String,
    },
    /// Cancelled by shutdown: due again now, the attempt given back.
    Again,
    /// Claimed out of its key's order (a predecessor arrived, or another
    /// run holds the key): due again after `after`, the attempt given back;
    /// not claimed while its predecessor is there.
    Waits {
        after: Duration,
    },
}

impl<S: Clone + Send + Sync + 'static> Shared<S> {
    /// Counts the next attempt of the earliest due row, in one statement
    /// that commits on its own, and moves its due time to when that
    /// attempt's retry would be due (without jitter, and at least
    /// [`CLAIM_GRACE`] away): if the run is lost, that is when it runs
    /// again. Rows whose every attempt was used are left to [`Self::sweep`].
    ///
    /// A due row whose last attempt never recorded an outcome is not run:
    /// that attempt is recorded as lost and the row deferred by
    /// [`LOST_RUN_GRACE`], so that a run still going in a live process
    /// whose session ended is cancelled by its session watcher first.
    async fn claim(&self, conn: &mut PgConnection) -> Result<Claim, StoreError> {
        let inbox = &self.inbox;
        let table = inbox.table();
        let schedule = &inbox.config.schedule;
        let (first, cap) = schedule.backoff_bounds();
        let row: Option<ClaimedRow> = sqlx::query_as(&format!(
            "UPDATE {table} AS row SET \
               attempts = row.attempts + CASE WHEN due.lost THEN 0 ELSE 1 END, \
               recorded_attempts = row.attempts, \
               generation = row.generation + CASE WHEN due.lost THEN 0 ELSE 1 END, \
               due_at = $1 + pg_catalog.make_interval(secs => CASE WHEN due.lost THEN $5 \
                 WHEN row.ordering_key IS NOT NULL \
                   THEN least($7, greatest($2, least($4, $3 * pg_catalog.power(2, least(row.attempts, 62))))) \
                 ELSE greatest($2, least($4, $3 * pg_catalog.power(2, least(row.attempts, 62)))) END), \
               last_error = CASE WHEN due.lost THEN {LOST_RUN_ERROR} ELSE row.last_error END, \
               error_kind = CASE WHEN due.lost THEN 'lost' ELSE row.error_kind END \
             FROM (SELECT tenant, delivery_id, attempts > recorded_attempts AS lost FROM {table} AS next \
                   WHERE status = 'queued' AND due_at <= $1 AND attempts < {max_attempts} \
                   AND (ordering_key IS NULL OR attempts > recorded_attempts OR NOT {blocking}) \
                   ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED) AS due \
             WHERE row.tenant = due.tenant AND row.delivery_id = due.delivery_id \
             RETURNING row.tenant, row.delivery_id, row.event_type, row.attempts, row.generation, \
               due.lost, CASE WHEN due.lost THEN NULL ELSE (SELECT body.body FROM {bodies} AS body \
                 WHERE body.tenant = row.tenant AND body.delivery_id = row.delivery_id) END, row.signed_at, \
               row.ordering_key, row.event_at",
            bodies = inbox.bodies_table(),
            blocking = blocking(&table, &inbox.bodies_table(), "next.tenant", "next.ordering_key", "next.delivery_id", "next.event_at", "$1", "$6"),
            // A literal, not a parameter: a generic plan then estimates how
            // many rows pass from the column's statistics, instead of a
            // third, which can make the planner sort every due row per claim.
            max_attempts = i32::try_from(schedule.attempts()).unwrap_or(i32::MAX),
        ))
        .bind(inbox.now())
        .bind(CLAIM_GRACE.as_secs_f64())
        .bind(first.as_secs_f64())
        .bind(cap.as_secs_f64())
        .bind(LOST_RUN_GRACE.as_secs_f64())
        .bind(inbox.now() - inbox.dead_wait())
        .bind(KEYED_CLAIM_HOLD.as_secs_f64())
        .fetch_optional(&mut *conn)
        .await
        .map_err(postgres_error)?;
        let Some((
            tenant,
            id,
            event_type,
            attempt,
            generation,
            lost,
            body,
            signed_at,
            ordering_key,
            event_at,
        )) = row
        else {
            return Ok(Claim::Empty);
        };
        if lost {
            crate::metrics::inbox_run("lost", &event_type);
            tracing::warn!(delivery_id = %id, attempt, retry_in = ?LOST_RUN_GRACE, "an inbox run did not finish: its process died, or its transaction was lost");
            return Ok(Claim::LostRecorded);
        }
        Ok(Claim::Run(Claimed {
            tenant,
            id,
            event_type,
            attempt,
            generation,
            body,
            signed_at,
            ordering: ordering_key.zip(event_at),
        }))
    }

    /// Rows out of attempts whose last attempt was lost (its process died)
    /// are dead: no run will end them. A row out of attempts whose last
    /// attempt did record its outcome (replicas disagreeing on
    /// `max_attempts`, say) is dead with that outcome's error. Run when a
    /// claim finds nothing, and now and then; then the `on_give_up` hooks
    /// still owed are retried.
    async fn sweep(&self) -> Result<(), StoreError> {
        let inbox = &self.inbox;
        let table = inbox.table();
        let now = inbox.now();
        // Locked first, then the deletion keys of what they hold, then
        // updated: a deletion committing meanwhile is seen, as at a run's
        // finish. Their hooks are due at once, run one by one below.
        let mut tx = RunTx::begin(&inbox.pool, inbox.config.acquire_timeout, None).await?;
        let swept: Result<Vec<SweptRow>, sqlx::Error> = async {
            let due: Vec<(String, String, bool)> = sqlx::query_as(&format!(
                "SELECT tenant, delivery_id, attempts > recorded_attempts FROM {table} \
                 WHERE status = 'queued' AND due_at <= $1 AND attempts >= $2 \
                 ORDER BY due_at LIMIT 100 FOR UPDATE SKIP LOCKED"
            ))
            .bind(now)
            .bind(i32::try_from(inbox.config.schedule.attempts()).unwrap_or(i32::MAX))
            .fetch_all(&mut *tx)
            .await?;
            if due.is_empty() {
                return Ok(Vec::new());
            }
            let lost: std::collections::HashSet<String> = due
                .iter()
                .filter(|(_, _, lost)| *lost)
                .map(|(_, id, _)| id.clone())
                .collect();
            let (tenants, ids): (Vec<String>, Vec<String>) =
                due.into_iter().map(|(tenant, id, _)| (tenant, id)).unzip();
            let chosen = "(row.tenant, row.delivery_id) IN (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])))";
            sqlx::query(&format!(
                "SELECT pg_catalog.pg_advisory_xact_lock_shared({}) \
                 FROM {table} AS row, pg_catalog.unnest(row.message_ids) AS held (id) WHERE {chosen}",
                inbox.deletion_key("row.tenant", "held.id")
            ))
            .bind(&tenants)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
            sqlx::query_as(&format!(
                "WITH row AS (UPDATE {table} AS row SET status = 'dead', \
                   outcome = CASE WHEN row.attempts > row.recorded_attempts THEN 'lost' ELSE 'failed' END, \
                   error_kind = CASE WHEN row.attempts > row.recorded_attempts THEN 'lost' ELSE row.error_kind END, \
                   last_error = CASE WHEN row.attempts > row.recorded_attempts THEN {LOST_RUN_ERROR} \
                     WHEN {deleted} THEN NULL ELSE row.last_error END, \
                   recorded_attempts = row.attempts, finished_at = $3, \
                   give_up_pending = true, give_up_due_at = $3 \
                 WHERE {chosen} \
                 RETURNING row.tenant, row.delivery_id, row.event_type, row.attempts, {deleted} AS drops_body), \
                 dropped AS ({drop_bodies} AND row.drops_body) \
                 SELECT delivery_id, event_type, attempts FROM row",
                deleted = inbox.holds_deleted_text("row"),
                drop_bodies = drop_bodies_of_rows(&inbox.bodies_table()),
            ))
            .bind(&tenants)
            .bind(&ids)
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .map(|rows: Vec<(String, String, i32)>| {
                rows.into_iter()
                    .map(|(id, event_type, attempts)| {
                        let was_lost = lost.contains(&id);
                        (id, event_type, attempts, was_lost)
                    })
                    .collect()
            })
        }
        .await;
        let swept = match swept {
            Ok(swept) => swept,
            Err(error) => {
                tx.rollback().await;
                return Err(postgres_error(error));
            }
        };
        tx.commit().await.map_err(CommitError::into_store_error)?;
        for (id, event_type, attempts, lost) in swept {
            if lost {
                crate::metrics::inbox_run("lost", &event_type);
            }
            crate::metrics::inbox_run("dead", &event_type);
            tracing::error!(delivery_id = %id, attempts, lost, "an inbox delivery is dead: it is out of attempts");
        }
        self.retry_give_ups().await
    }

    /// How long a dead row's hook is left to the run (or sweep) that killed
    /// it before the workers run it again.
    fn give_up_lease(&self) -> Duration {
        self.hook_limit() + GIVE_UP_RETRY_AFTER
    }

    /// How long an `on_give_up` hook may take: `max_run_time`, at most
    /// 30 s, since a dead letter is one write.
    fn hook_limit(&self) -> Duration {
        self.max_run_time.min(Duration::from_secs(30))
    }

    /// Runs the `on_give_up` hook of dead rows whose hook has not succeeded
    /// yet: it failed, or its process died between the row's `dead` commit
    /// and the hook. Each row is leased (its next try moved past this one's
    /// time limit) in a statement that commits at once, so replicas take
    /// turns and no row lock is held while a hook runs.
    async fn retry_give_ups(&self) -> Result<(), StoreError> {
        let inbox = &self.inbox;
        let table = inbox.table();
        // One row at a time, each leased just before its hook; the first
        // failure ends the pass, so a sink that is down costs one hook's
        // time limit per sweep, not ten.
        for _ in 0..10 {
            let now = inbox.now();
            let owed: Option<OwedHook> = sqlx::query_as(&format!(
                "UPDATE {table} AS row SET give_up_due_at = $2 \
                 FROM (SELECT tenant, delivery_id FROM {table} \
                       WHERE give_up_pending AND status = 'dead' AND give_up_due_at <= $1 \
                       ORDER BY give_up_due_at LIMIT 1 FOR UPDATE SKIP LOCKED) AS due \
                 WHERE row.tenant = due.tenant AND row.delivery_id = due.delivery_id \
                 RETURNING row.tenant, row.delivery_id, row.event_type, row.attempts, row.last_error, \
                   row.generation"
            ))
            .bind(now)
            .bind(now + self.give_up_lease())
            .fetch_optional(&inbox.pool)
            .await
            .map_err(postgres_error)?;
            let Some((tenant, id, event_type, attempts, error, generation)) = owed else {
                return Ok(());
            };
            let error = error.unwrap_or_else(|| REDACTED_ERROR.to_owned());
            if self
                .report_dead_and_note(&tenant, &id, &event_type, attempts, error, generation)
                .await
            {
                continue;
            }
            let again = sqlx::query(&format!(
                "UPDATE {table} SET give_up_due_at = $4 \
                 WHERE tenant = $1 AND delivery_id = $2 AND generation = $3 AND give_up_pending"
            ))
            .bind(&tenant)
            .bind(&id)
            .bind(generation)
            .bind(inbox.now() + GIVE_UP_RETRY_AFTER)
            .execute(&inbox.pool)
            .await;
            if let Err(error) = again {
                tracing::warn!(error = %postgres_error(error), "could not schedule an on_give_up hook's next try");
            }
            return Ok(());
        }
        Ok(())
    }

    /// Runs a dead row's hook and, when it succeeds, notes that it ran;
    /// whether it succeeded.
    async fn report_dead_and_note(
        &self,
        tenant: &str,
        id: &str,
        event_type: &str,
        attempts: i32,
        error: String,
        generation: i64,
    ) -> bool {
        let reported = self.report_dead(id, event_type, attempts, error).await;
        if reported {
            self.give_up_reported(tenant, id, generation).await;
        }
        reported
    }

    /// Runs the `on_give_up` hook for a dead row; whether it succeeded.
    async fn report_dead(&self, id: &str, event_type: &str, attempts: i32, error: String) -> bool {
        let id = EventId::new(id);
        let given_up = GivenUp {
            id,
            event_type: event_type.to_owned(),
            attempt: Some(attempts.unsigned_abs()),
            error: HandlerError::msg(error),
        };
        let reported =
            tokio::time::timeout(self.hook_limit(), self.webhooks.report_given_up(given_up)).await;
        match reported.unwrap_or_else(|_| Err(HandlerError::msg("it passed its time limit"))) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, retry_in = ?GIVE_UP_RETRY_AFTER, "the on_give_up hook failed for a dead inbox delivery; it will be run again");
                false
            }
        }
    }

    /// Notes that a dead row's `on_give_up` hook succeeded, unless the row
    /// was claimed again since (replayed, and dead again: that death's hook
    /// is owed anew).
    async fn give_up_reported(&self, tenant: &str, id: &str, generation: i64) {
        let cleared = sqlx::query(&format!(
            "UPDATE {} SET give_up_pending = false \
             WHERE tenant = $1 AND delivery_id = $2 AND generation = $3",
            self.inbox.table()
        ))
        .bind(tenant)
        .bind(id)
        .bind(generation)
        .execute(&self.inbox.pool)
        .await;
        if let Err(error) = cleared {
            // The hook runs again later: at least once, maybe twice.
            tracing::warn!(error = %postgres_error(error), "could not note that an on_give_up hook ran");
        }
    }

    /// Runs the handlers for a claimed row inside the row's transaction,
    /// and records the outcome in it.
    async fn run(&self, conn: PoolConnection<Postgres>, claimed: &Claimed) {
        let inbox = &self.inbox;
        let table = inbox.table();
        let begun = RunTx::begin_on(conn, &inbox.pool, Some(self.max_run_time)).await;
        let mut tx = match begun {
            Ok(tx) => tx,
            Err(error) => {
                crate::metrics::store_error("inbox_claim");
                tracing::warn!(%error, "could not open the run's transaction; the row is due again after its backoff");
                return;
            }
        };
        // The generation fences: a row claimed again since is not ours. This
        // waits rather than skips: another worker's claim may hold the row
        // for a moment (a row it locked and then found not due stays
        // locked until its statement commits).
        // A content event of a message whose deletion was handled since it
        // was stored (a retry of an edit, a copy stored while the deletion
        // committed) is superseded here rather than run.
        let locked: Result<Option<bool>, _> = sqlx::query_scalar(&format!(
            "SELECT row.event_type IN {CONTENT_EVENTS} AND EXISTS (SELECT 1 FROM {deleted} AS gone \
               WHERE gone.tenant = row.tenant AND gone.message_id = row.message_ids[1]) \
             FROM {table} AS row \
             WHERE row.tenant = $1 AND row.delivery_id = $2 AND row.status = 'queued' \
               AND row.generation = $3 \
             FOR UPDATE",
            deleted = inbox.deleted_table(),
        ))
        .bind(&claimed.tenant)
        .bind(&claimed.id)
        .bind(claimed.generation)
        .fetch_optional(&mut *tx)
        .await;
        match locked {
            Ok(Some(false)) => {}
            Ok(Some(true)) => {
                self.record(tx, claimed, Record::Done("superseded"), None)
                    .await;
                return;
            }
            Ok(None) => return,
            Err(error) => {
                crate::metrics::store_error("inbox_claim");
                tracing::warn!(error = %postgres_error(error), "could not lock the claimed row");
                return;
            }
        }
        let mut stale = false;
        if let Some((key, event_at)) = &claimed.ordering {
            let order = match self.in_order(&mut tx, claimed, key, *event_at).await {
                Ok(order) => order,
                Err(error) => {
                    crate::metrics::store_error("inbox_claim");
                    tracing::warn!(error = %postgres_error(error), "could not check the row's place in its key's order");
                    tx.rollback().await;
                    return;
                }
            };
            if let Some(after) = order.wait {
                self.record(tx, claimed, Record::Waits { after }, None)
                    .await;
                return;
            }
            if order.after_dead {
                crate::metrics::inbox_out_of_order("dead_predecessor", &claimed.event_type);
                tracing::warn!(ordering_key = %key, "an earlier delivery of this key is dead: this one runs after it, out of order");
            }
            if order.stale {
                crate::metrics::inbox_out_of_order("stale", &claimed.event_type);
                // A deletion always runs: its message's text must go.
                if inbox.stale_policy() == StalePolicy::Supersede
                    && claimed.event_type != "message.deleted"
                {
                    tracing::info!(ordering_key = %key, "a later delivery of this key was handled first: this stale one is superseded");
                    self.record(tx, claimed, Record::Done("superseded"), None)
                        .await;
                    return;
                }
                tracing::info!(ordering_key = %key, "a later delivery of this key was handled first: this one runs as stale");
                stale = true;
            }
        }
        let (body, signed_at) = (&claimed.body, claimed.signed_at);
        let tenant = (!claimed.tenant.is_empty()).then(|| Arc::from(claimed.tenant.as_str()));
        let attempt = Some(claimed.attempt.unsigned_abs());
        let delivery = body
            .as_deref()
            .and_then(|body| VerifiedDelivery::from_stored(tenant, attempt, signed_at, body));
        let Some(delivery) = delivery else {
            let (kind, error) = if body.is_none() {
                ("no_body", "its body is gone: it cannot run")
            } else {
                (
                    "not_an_envelope",
                    "its stored body is not a Cariosan envelope",
                )
            };
            let record = Record::Dead {
                outcome: "failed",
                kind,
                error: error.to_owned(),
            };
            self.record(tx, claimed, record, None).await;
            return;
        };
        let savepoint = sqlx::query("SAVEPOINT cariosan_handlers")
            .execute(&mut *tx)
            .await;
        if let Err(error) = savepoint {
            tracing::warn!(error = %postgres_error(error), "could not start the run");
            return;
        }
        let watch = tx
            .session()
            .map(|session| inbox.config.monitor.watch(session));
        let session_lost = async {
            match &watch {
                Some(watch) => watch.lost().cancelled().await,
                None => std::future::pending().await,
            }
        };
        let handle = Tx::new(tx);
        let mut resources = Extensions::new();
        resources.insert(handle.clone());
        resources.insert(Generation(claimed.generation.unsigned_abs()));
        if stale {
            resources.insert(crate::dispatch::Stale);
        }
        let started = tokio::time::Instant::now();
        crate::metrics::run_started();
        let ran = tokio::select! {
            biased;
            outcome = tokio::time::timeout(self.max_run_time, self.webhooks.handle_with(&delivery, &resources)) => {
                outcome.map_or(Ran::TimedOut, Ran::Outcome)
            }
            () = self.cancel.cancelled() => Ran::Cancelled,
            () = session_lost => Ran::SessionLost,
        };
        crate::metrics::run_finished(&claimed.event_type, started.elapsed());
        drop(resources);
        let Some(mut tx) = handle.take().await else {
            return;
        };
        if matches!(ran, Ran::SessionLost) {
            // Its locks went with the session: the row is claimable again,
            // and its next claim records this attempt as lost.
            crate::metrics::run_cancelled("session_lost");
            tracing::error!("an inbox run's PostgreSQL session ended: its handlers were cancelled");
            return;
        }
        let cut_off = matches!(ran, Ran::TimedOut | Ran::Cancelled);
        if cut_off {
            // A statement of the dropped handlers may still run on the
            // server, holding its locks: cancel it before rolling back.
            tx.cancel_statement().await;
            if !tx.execute_after_cancel(TO_SAVEPOINT).await {
                crate::metrics::store_error("inbox_finish");
                tracing::error!("could not roll a cancelled run back; its session is ended and the attempt will show as lost");
                tx.abandon().await;
                return;
            }
        }
        let schedule = &inbox.config.schedule;
        let record = match ran {
            Ran::Outcome(Outcome::Handled) => Record::Done("handled"),
            Ran::Outcome(Outcome::Ignored) => Record::Done("ignored"),
            Ran::Outcome(Outcome::GivenUp(error)) => Record::Dead {
                outcome: "given_up",
                kind: "given_up",
                error: error.to_string(),
            },
            Ran::Outcome(Outcome::RetryLater(error)) => Record::Retry {
                kind: "retry_later",
                after: schedule.retry_later(error.retry_after().unwrap_or_default()),
                error: format!("retry later: {error}"),
            },
            Ran::Outcome(failed) => {
                let (kind, error) = match failed {
                    Outcome::Failed(error) => ("failed", error.to_string()),
                    Outcome::Panicked => ("panicked", "a handler panicked".to_owned()),
                    Outcome::Malformed => ("malformed", "the event's data does not fit the model and no on_malformed handler took it".to_owned()),
                    other => ("failed", format!("the handlers answered {}", other.code())),
                };
                Record::Retry {
                    kind,
                    after: schedule.delay(&claimed.id, claimed.attempt.unsigned_abs()),
                    error,
                }
            }
            Ran::TimedOut => {
                crate::metrics::run_cancelled("max_run_time");
                Record::Retry {
                    kind: "max_run_time",
                    after: schedule.delay(&claimed.id, claimed.attempt.unsigned_abs()),
                    error: format!(
                        "the run passed max_run_time ({:?}) and was cancelled",
                        self.max_run_time
                    ),
                }
            }
            Ran::SessionLost => return,
            Ran::Cancelled => {
                crate::metrics::run_cancelled("shutdown");
                self.cancelled.fetch_add(1, Ordering::SeqCst);
                Record::Again
            }
        };
        // A cut-off run was rolled back to the savepoint above; a handled
        // or given-up run keeps its effects, committed with its record.
        let keeps_effects = matches!(
            record,
            Record::Done(_)
                | Record::Dead {
                    outcome: "given_up",
                    ..
                }
        );
        if !cut_off && !keeps_effects {
            // A handler may have dropped a statement of its own half-way
            // (a timeout of its own, say): cancel it if the first try fails.
            let mut rolled_back = tx.execute_after_cancel(TO_SAVEPOINT).await;
            if !rolled_back {
                tx.cancel_statement().await;
                rolled_back = tx.execute_after_cancel(TO_SAVEPOINT).await;
            }
            if !rolled_back {
                crate::metrics::store_error("inbox_finish");
                tracing::error!("could not roll the handlers' effects back; the run's session is ended and the attempt will show as lost");
                tx.abandon().await;
                return;
            }
        }
        // An id that could not be read (a malformed deletion) deletes nothing.
        let deleted = (delivery.event_type() == "message.deleted")
            .then(|| message_ids(&delivery).into_iter().next())
            .flatten()
            .filter(|id| !id.is_empty());
        self.record(tx, claimed, record, deleted.as_deref()).await;
    }

    /// Takes the key's advisory lock, so that no two runs of a key
    /// overlap whatever the claims saw, then looks at the key's other rows
    /// under it. A key held by another run counts as blocked.
    async fn in_order(
        &self,
        tx: &mut RunTx,
        claimed: &Claimed,
        key: &str,
        event_at: OffsetDateTime,
    ) -> Result<InOrder, sqlx::Error> {
        let inbox = &self.inbox;
        let held: bool = sqlx::query_scalar(&format!(
            "SELECT pg_catalog.pg_try_advisory_xact_lock({})",
            inbox.ordering_lock("$1", "$2")
        ))
        .bind(&claimed.tenant)
        .bind(key)
        .fetch_one(&mut **tx)
        .await?;
        if !held {
            return Ok(InOrder {
                wait: Some(KEY_HELD_RETRY),
                stale: false,
                after_dead: false,
            });
        }
        // A statement of its own, after the lock: its snapshot sees what
        // the key's previous run committed.
        let table = inbox.table();
        // The dead rows that count are those since the key's last handled
        // row: the first successor past them says so, not every later one.
        let (blocked, stale, after_dead): (bool, bool, bool) = sqlx::query_as(&format!(
            "SELECT {blocking}, \
               EXISTS (SELECT 1 FROM {marks} AS mark WHERE mark.tenant = $1 AND mark.ordering_key = $2 \
                 AND (mark.event_at, mark.delivery_id) > ($4, $3)), \
               EXISTS (SELECT 1 FROM {table} AS before WHERE before.tenant = $1 \
                 AND before.ordering_key = $2 AND before.status = 'dead' \
                 AND (before.event_at, before.delivery_id) < ($4, $3) \
                 AND NOT EXISTS (SELECT 1 FROM {marks} AS mark WHERE mark.tenant = $1 \
                   AND mark.ordering_key = $2 \
                   AND (mark.event_at, mark.delivery_id) >= (before.event_at, before.delivery_id)))",
            blocking = blocking(&table, &inbox.bodies_table(), "$1", "$2", "$3", "$4", "$6", "$5"),
            marks = inbox.marks_table(),
        ))
        .bind(&claimed.tenant)
        .bind(key)
        .bind(&claimed.id)
        .bind(event_at)
        .bind(inbox.now() - inbox.dead_wait())
        .bind(inbox.now())
        .fetch_one(&mut **tx)
        .await?;
        Ok(InOrder {
            wait: blocked.then_some(Duration::ZERO),
            stale,
            after_dead,
        })
    }

    /// Writes the row's new state in the run's transaction and commits it,
    /// with the handlers' effects when they succeeded.
    async fn record(
        &self,
        mut tx: RunTx,
        claimed: &Claimed,
        record: Record,
        deleted_message: Option<&str>,
    ) {
        let inbox = &self.inbox;
        let table = inbox.table();
        let deleted = inbox.holds_deleted_text("row");
        let now = inbox.now();
        let max_attempts = inbox.config.schedule.attempts();
        let record = match record {
            Record::Retry { kind, error, .. } if claimed.attempt.unsigned_abs() >= max_attempts => {
                Record::Dead {
                    outcome: "failed",
                    kind,
                    error,
                }
            }
            other => other,
        };
        let key = "WHERE row.tenant = $1 AND row.delivery_id = $2";
        let mut locked = Ok(());
        if let Some(message) = deleted_message {
            locked = sqlx::query(&format!(
                "SELECT pg_catalog.pg_advisory_xact_lock({})",
                inbox.deletion_key("$1", "$2")
            ))
            .bind(&claimed.tenant)
            .bind(message)
            .execute(&mut *tx)
            .await
            .map(drop);
        }
        // A done row that keeps neither its body nor its error has nothing
        // for a deletion to drop, whatever the checks below would see.
        let keeps_nothing = matches!(record, Record::Done(_)) && !inbox.config.keep_done_bodies;
        if locked.is_ok()
            && !keeps_nothing
            && !matches!(record, Record::Again | Record::Waits { .. })
        {
            // Waits for a deletion of a message this row holds that is
            // committing now, so that the checks below see it.
            locked = sqlx::query(&format!(
                "SELECT pg_catalog.pg_advisory_xact_lock_shared({}) \
                 FROM {table} AS row, pg_catalog.unnest(row.message_ids) AS held (id) {key}",
                inbox.deletion_key("row.tenant", "held.id")
            ))
            .bind(&claimed.tenant)
            .bind(&claimed.id)
            .execute(&mut *tx)
            .await
            .map(drop);
        }
        let result = match locked {
            Err(error) => Err(error),
            Ok(()) => match &record {
                Record::Done(outcome) => {
                    let mut written = Ok(());
                    if let Some(message) = deleted_message {
                        // First, so that this row's own body goes as well; rows
                        // that finish later, and late copies, check it.
                        written = sqlx::query(&format!(
                            "INSERT INTO {} (tenant, message_id, deleted_at) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING",
                            inbox.deleted_table()
                        ))
                        .bind(&claimed.tenant)
                        .bind(message)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map(drop);
                    }
                    if written.is_ok() {
                        written = sqlx::query(&format!(
                            "WITH row AS (UPDATE {table} AS row SET status = 'done', outcome = $3, \
                           recorded_attempts = row.attempts, finished_at = $4, \
                           last_error = NULL, \
                           error_kind = CASE WHEN $3 = 'superseded' THEN row.error_kind END {key} \
                           RETURNING row.tenant, row.delivery_id, $5 AND NOT {deleted} AS keeps_body) \
                           {drop_bodies} AND NOT row.keeps_body",
                            drop_bodies = drop_bodies_of_rows(&inbox.bodies_table()),
                        ))
                        .bind(&claimed.tenant)
                        .bind(&claimed.id)
                        .bind(*outcome)
                        .bind(now)
                        .bind(inbox.config.keep_done_bodies)
                        .execute(&mut *tx)
                        .await
                        .map(drop);
                    }
                    match (written, deleted_message) {
                        (Ok(()), Some(message)) => {
                            let bodies = inbox.bodies_table();
                            drop_bodies_of(&mut tx, &table, &bodies, &claimed.tenant, message, now)
                                .await
                        }
                        (written, _) => written,
                    }
                }
                Record::Retry { kind, error, after } => sqlx::query(&format!(
                "UPDATE {table} AS row SET last_error = CASE WHEN {deleted} THEN NULL ELSE $3 END, \
                   error_kind = $5, due_at = $4, recorded_attempts = row.attempts {key}"
            ))
                .bind(&claimed.tenant)
                .bind(&claimed.id)
                .bind(crate::truncated(error, MAX_ERROR_LEN))
                .bind(now + *after)
                .bind(*kind)
                .execute(&mut *tx)
                .await
                .map(drop),
                Record::Dead {
                    outcome,
                    kind,
                    error,
                } => sqlx::query(&format!(
                    "WITH row AS (UPDATE {table} AS row SET status = 'dead', outcome = $3, error_kind = $6, \
                   last_error = CASE WHEN {deleted} THEN NULL ELSE $4 END, \
                   give_up_pending = $7, give_up_due_at = CASE WHEN $7 THEN $8 END, \
                   recorded_attempts = row.attempts, finished_at = $5 {key} \
                   RETURNING row.tenant, row.delivery_id, {deleted} AS drops_body) \
                   {drop_bodies} AND row.drops_body",
                    drop_bodies = drop_bodies_of_rows(&inbox.bodies_table()),
                ))
                .bind(&claimed.tenant)
                .bind(&claimed.id)
                .bind(*outcome)
                .bind(crate::truncated(error, MAX_ERROR_LEN))
                .bind(now)
                .bind(*kind)
                // A handler's give-up ran the hook inside this transaction.
                .bind(*outcome != "given_up")
                .bind(now + self.give_up_lease())
                .execute(&mut *tx)
                .await
                .map(drop),
                Record::Again | Record::Waits { .. } => sqlx::query(&format!(
                    "UPDATE {table} AS row SET attempts = row.attempts - 1, \
                   recorded_attempts = row.attempts - 1, due_at = $3 {key}"
                ))
                .bind(&claimed.tenant)
                .bind(&claimed.id)
                .bind(match &record {
                    Record::Waits { after } => now + *after,
                    _ => now,
                })
                .execute(&mut *tx)
                .await
                .map(drop),
            },
        };
        // A row whose handlers ran to an end moves its key's mark, by which
        // a later-arriving earlier row is found stale.
        let ran_to_an_end = matches!(
            record,
            Record::Done("handled" | "ignored")
                | Record::Dead {
                    outcome: "given_up",
                    ..
                }
        );
        // A row of a key that waits for a retry holds its successors that
        // long: they are not due before it, so that claims do not pass over
        // them meanwhile. Rows in a lost run's grace are left alone: a later
        // due time would make them count as running longer.
        let holds_key_until = match &record {
            Record::Retry { after, .. } => Some(now + *after),
            _ => None,
        };
        let result = match (result, &claimed.ordering, holds_key_until) {
            (Ok(()), Some((key, event_at)), Some(until)) => sqlx::query(&format!(
                "UPDATE {table} SET due_at = $5 WHERE tenant = $1 AND ordering_key = $2 \
                 AND status = 'queued' AND (event_at, delivery_id) > ($3, $4) AND due_at < $5 \
                 AND attempts = recorded_attempts AND error_kind IS DISTINCT FROM 'lost'"
            ))
            .bind(&claimed.tenant)
            .bind(key)
            .bind(*event_at)
            .bind(&claimed.id)
            .bind(until)
            .execute(&mut *tx)
            .await
            .map(drop),
            (result, ..) => result,
        };
        let result = match (result, &claimed.ordering) {
            (Ok(()), Some((key, event_at))) if ran_to_an_end => sqlx::query(&format!(
                "INSERT INTO {marks} AS mark (tenant, ordering_key, event_at, delivery_id, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, ordering_key) DO UPDATE \
                 SET event_at = excluded.event_at, delivery_id = excluded.delivery_id, \
                   updated_at = excluded.updated_at \
                 WHERE (mark.event_at, mark.delivery_id) < (excluded.event_at, excluded.delivery_id)",
                marks = inbox.marks_table(),
            ))
            .bind(&claimed.tenant)
            .bind(key)
            .bind(*event_at)
            .bind(&claimed.id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map(drop),
            (result, _) => result,
        };
        let committed = match result {
            Ok(()) => tx.commit().await.map_err(CommitError::into_store_error),
            Err(error) => {
                tx.rollback().await;
                Err(postgres_error(error))
            }
        };
        if let Err(error) = committed {
            crate::metrics::store_error("inbox_finish");
            tracing::error!(%error, "could not record the run's outcome: its effects are rolled back and it runs again after its backoff");
            return;
        }
        match record {
            Record::Done(outcome) => {
                crate::metrics::inbox_run("done", &claimed.event_type);
                tracing::info!(outcome, "inbox delivery done");
            }
            Record::Retry {
                kind, error, after, ..
            } => {
                crate::metrics::inbox_run("retry", &claimed.event_type);
                tracing::warn!(kind, %error, retry_in = ?after, "inbox run failed; it will be retried");
            }
            Record::Dead {
                outcome,
                kind,
                error,
            } => {
                crate::metrics::inbox_run("dead", &claimed.event_type);
                tracing::error!(outcome, kind, %error, "inbox delivery is dead; replay it after a fix");
                if outcome != "given_up" {
                    self.report_dead_and_note(
                        &claimed.tenant,
                        &claimed.id,
                        &claimed.event_type,
                        claimed.attempt,
                        error,
                        claimed.generation,
                    )
                    .await;
                }
            }
            Record::Again => {
                tracing::warn!("inbox run cancelled by shutdown; due again now");
            }
            Record::Waits { .. } => {
                tracing::debug!("claimed out of its key's order; it waits for its turn");
            }
        }
    }
}

/// An SQL condition: the row given by `tenant`, `key`, `id` and `event_at`
/// must wait for another row of its key in `table`. That is an earlier row
/// of the key still queued, any row of the key running now (so that a late
/// predecessor does not overlap its successor), or an earlier row that died
/// after `dead_since`. Three probes, each served by an index of its own, so
/// that a claim passing over a key's waiting rows stays cheap. The first
/// walks back from the row: its nearest predecessor is found at once, not
/// after the index entries that the key's finished rows left behind.
///
/// A run found lost counts as running until its lost-run grace ends: its
/// handlers may still be cancelling in a live process. A dead row without
/// its body (purged) cannot be replayed, so it holds nothing.
#[allow(clippy::too_many_arguments)]
fn blocking(
    table: &str,
    bodies: &str,
    tenant: &str,
    key: &str,
    id: &str,
    event_at: &str,
    now: &str,
    dead_since: &str,
) -> String {
    let same_key = format!("before.tenant = {tenant} AND before.ordering_key = {key}");
    let earlier = format!("(before.event_at, before.delivery_id) < ({event_at}, {id})");
    format!(
        "((SELECT before.delivery_id FROM {table} AS before WHERE {same_key} \
            AND before.status = 'queued' AND {earlier} \
            ORDER BY before.status DESC, before.event_at DESC, before.delivery_id DESC LIMIT 1) IS NOT NULL \
          OR EXISTS (SELECT 1 FROM {table} AS before WHERE {same_key} AND before.status = 'queued' \
            AND (before.attempts > before.recorded_attempts OR before.error_kind = 'lost') \
            AND before.delivery_id <> {id} \
            AND (before.attempts > before.recorded_attempts OR before.due_at > {now})) \
          OR EXISTS (SELECT 1 FROM {table} AS before WHERE {same_key} AND before.status = 'dead' \
            AND {earlier} AND before.finished_at > {dead_since} AND EXISTS (SELECT 1 FROM {bodies} AS body \
              WHERE body.tenant = before.tenant AND body.delivery_id = before.delivery_id)))"
    )
}

/// What a run of an ordered row found once it held its key.
struct InOrder {
    /// It must wait, this long: another run holds its key, or a row before
    /// it is queued, running, or died recently (then no claim takes it
    /// while that lasts).
    wait: Option<Duration>,
    /// A later row of its key was handled already.
    stale: bool,
    /// An earlier row of its key is dead.
    after_dead: bool,
}

/// A statement that deletes the bodies of the rows a preceding `row`
/// query returned (their tenant and id); a condition on `row` may follow.
/// Rows are always locked before their bodies, so the two never deadlock.
fn drop_bodies_of_rows(bodies: &str) -> String {
    format!(
        "DELETE FROM {bodies} AS body USING row \
         WHERE body.tenant = row.tenant AND body.delivery_id = row.delivery_id"
    )
}

/// The event types whose body is the content of the message they name
/// first: a deletion of that message supersedes them.
pub(super) const CONTENT_EVENTS: &str =
    "('message.created', 'message.updated', 'message.mentioned')";

/// A `message.deleted` was handled (and recorded in `deleted_messages`):
/// no stored text of its message may stay. Finished rows that hold it lose
/// their body and their error's text; queued content events of that
/// message itself (an edit still retrying, say) are superseded; other
/// queued rows that hold it (a moderation action, a reply quoting it) lose
/// their error's text now and their body when they finish, as do rows
/// running now.
async fn drop_bodies_of(
    tx: &mut RunTx,
    table: &str,
    bodies: &str,
    tenant: &str,
    message: &str,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    let holding = "tenant = $1 AND message_ids @> ARRAY[$2]";
    let drop_bodies = drop_bodies_of_rows(bodies);
    sqlx::query(&format!(
        "WITH row AS (UPDATE {table} AS row SET last_error = NULL WHERE (tenant, delivery_id) IN ( \
           SELECT tenant, delivery_id FROM {table} AS held WHERE {holding} AND status <> 'queued' \
           AND (last_error IS NOT NULL OR EXISTS (SELECT 1 FROM {bodies} AS body \
             WHERE body.tenant = held.tenant AND body.delivery_id = held.delivery_id)) \
           ORDER BY delivery_id FOR UPDATE) RETURNING row.tenant, row.delivery_id) \
         {drop_bodies}"
    ))
    .bind(tenant)
    .bind(message)
    .execute(&mut **tx)
    .await?;
    sqlx::query(&format!(
        "WITH row AS (UPDATE {table} AS row SET last_error = NULL, status = 'done', outcome = 'superseded', \
         finished_at = $3, recorded_attempts = attempts WHERE (tenant, delivery_id) IN ( \
           SELECT tenant, delivery_id FROM {table} WHERE {holding} AND status = 'queued' \
           AND message_ids[1] = $2 AND event_type IN {CONTENT_EVENTS} ORDER BY delivery_id \
           FOR UPDATE SKIP LOCKED) RETURNING row.tenant, row.delivery_id) \
         {drop_bodies}"
    ))
    .bind(tenant)
    .bind(message)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query(&format!(
        "UPDATE {table} SET last_error = NULL WHERE (tenant, delivery_id) IN ( \
           SELECT tenant, delivery_id FROM {table} WHERE {holding} AND status = 'queued' \
           AND last_error IS NOT NULL ORDER BY delivery_id FOR UPDATE SKIP LOCKED)"
    ))
    .bind(tenant)
    .bind(message)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
