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
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::inbox::{message_ids, Inbox};
use super::monitor::LOST_SESSION_BOUND;
use super::postgres_error;
use super::transaction::{CommitError, RunTx};
use super::transactional::Tx;
use crate::delivery::{Generation, DEFAULT_MAX_RUN_TIME};
use crate::dispatch::{GivenUp, HandlerError, Outcome, Webhooks};
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
/// longer than a live process takes to cancel a run whose PostgreSQL
/// session ended ([`LOST_SESSION_BOUND`]), so that two runs of a delivery
/// never overlap.
const LOST_RUN_GRACE: Duration = Duration::from_secs(3);
const _: () = assert!(LOST_RUN_GRACE.as_millis() > LOST_SESSION_BOUND.as_millis());

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
    /// running delivery holds one pool connection, and a claim briefly
    /// another.
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
    /// If `limit` is zero.
    pub fn max_run_time(mut self, limit: Duration) -> Self {
        assert!(!limit.is_zero(), "max_run_time must be positive");
        self.max_run_time = limit;
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
    pub fn start(self) -> WorkersHandle {
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
        WorkersHandle {
            stop,
            cancel,
            tracker,
            cancelled,
        }
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
    body: Option<Vec<u8>>,
    signed_at: i64,
}

async fn work<S: Clone + Send + Sync + 'static>(shared: Arc<Shared<S>>) {
    let mut swept = tokio::time::Instant::now();
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let claimed = shared.claim().await;
        if matches!(claimed, Ok(Claim::LostRecorded)) {
            continue;
        }
        if !matches!(claimed, Ok(Claim::Run(_))) || swept.elapsed() >= SWEEP_EVERY {
            swept = tokio::time::Instant::now();
            if let Err(error) = shared.sweep().await {
                crate::metrics::store_error("inbox_claim");
                tracing::warn!(%error, "could not sweep the inbox for lost last attempts");
            }
        }
        match claimed {
            Ok(Claim::Run(claimed)) => {
                let span = tracing::info_span!(
                    "cariosan_webhook",
                    tenant = (!claimed.tenant.is_empty()).then_some(claimed.tenant.as_str()),
                    delivery_id = %claimed.id,
                    event_type = %claimed.event_type,
                    attempt = claimed.attempt,
                );
                let ran = AssertUnwindSafe(shared.run(&claimed).instrument(span))
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

/// What a claim returns: the key, the type, the attempt it counted,
/// whether the attempt before was lost, the body (gone once dropped) and
/// the signed time.
type ClaimedRow = (String, String, String, i32, bool, Option<Vec<u8>>, i64);

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
        error: String,
        after: Duration,
    },
    Dead {
        outcome: &'static str,
        error: String,
    },
    /// Cancelled by shutdown: due again now, the attempt given back.
    Again,
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
    async fn claim(&self) -> Result<Claim, StoreError> {
        let inbox = &self.inbox;
        let table = inbox.table();
        let schedule = &inbox.config.schedule;
        let (first, cap) = schedule.backoff_bounds();
        let row: Option<ClaimedRow> = sqlx::query_as(&format!(
            "UPDATE {table} AS row SET \
               attempts = row.attempts + CASE WHEN due.lost THEN 0 ELSE 1 END, \
               recorded_attempts = row.attempts, \
               due_at = $1 + pg_catalog.make_interval(secs => CASE WHEN due.lost THEN $6 \
                 ELSE greatest($3, least($5, $4 * pg_catalog.power(2, least(row.attempts, 62)))) END), \
               last_error = CASE WHEN due.lost THEN {LOST_RUN_ERROR} ELSE row.last_error END \
             FROM (SELECT tenant, delivery_id, attempts > recorded_attempts AS lost FROM {table} \
                   WHERE status = 'queued' AND due_at <= $1 AND attempts < $2 \
                   ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED) AS due \
             WHERE row.tenant = due.tenant AND row.delivery_id = due.delivery_id \
             RETURNING row.tenant, row.delivery_id, row.event_type, row.attempts, due.lost, \
               CASE WHEN due.lost THEN NULL ELSE row.body END, row.signed_at"
        ))
        .bind(inbox.now())
        .bind(i32::try_from(schedule.attempts()).unwrap_or(i32::MAX))
        .bind(CLAIM_GRACE.as_secs_f64())
        .bind(first.as_secs_f64())
        .bind(cap.as_secs_f64())
        .bind(LOST_RUN_GRACE.as_secs_f64())
        .fetch_optional(&inbox.pool)
        .await
        .map_err(postgres_error)?;
        let Some((tenant, id, event_type, attempt, lost, body, signed_at)) = row else {
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
            body,
            signed_at,
        }))
    }

    /// Rows whose last attempt was lost (its process died) are dead: they
    /// are out of attempts and no run will end them. Run when a claim finds
    /// nothing, and now and then.
    async fn sweep(&self) -> Result<(), StoreError> {
        let inbox = &self.inbox;
        let table = inbox.table();
        let now = inbox.now();
        let swept: Vec<(String, String, i32, String)> = sqlx::query_as(&format!(
            "UPDATE {table} AS row SET status = 'dead', outcome = 'lost', recorded_attempts = row.attempts, \
               finished_at = $1, \
               last_error = {LOST_RUN_ERROR} \
             FROM (SELECT tenant, delivery_id FROM {table} \
                   WHERE status = 'queued' AND due_at <= $1 AND attempts >= $2 \
                   ORDER BY due_at LIMIT 100 FOR UPDATE SKIP LOCKED) AS due \
             WHERE row.tenant = due.tenant AND row.delivery_id = due.delivery_id \
             RETURNING row.delivery_id, row.event_type, row.attempts, row.last_error"
        ))
        .bind(now)
        .bind(i32::try_from(inbox.config.schedule.attempts()).unwrap_or(i32::MAX))
        .fetch_all(&inbox.pool)
        .await
        .map_err(postgres_error)?;
        for (id, event_type, attempts, error) in swept {
            crate::metrics::inbox_run("lost", &event_type);
            crate::metrics::inbox_run("dead", &event_type);
            tracing::error!(delivery_id = %id, attempts, "an inbox delivery is dead: its last attempt did not finish");
            self.report_dead(&id, &event_type, attempts, error).await;
        }
        Ok(())
    }

    async fn report_dead(&self, id: &str, event_type: &str, attempts: i32, error: String) {
        let id = EventId::new(id);
        let given_up = GivenUp {
            id,
            event_type: event_type.to_owned(),
            attempt: Some(attempts.unsigned_abs()),
            error: HandlerError::msg(error),
        };
        if let Err(error) = self.webhooks.report_given_up(given_up).await {
            tracing::error!(%error, "the on_give_up hook failed for a dead inbox delivery");
        }
    }

    /// Runs the handlers for a claimed row inside the row's transaction,
    /// and records the outcome in it.
    async fn run(&self, claimed: &Claimed) {
        let inbox = &self.inbox;
        let table = inbox.table();
        let begun = RunTx::begin(
            &inbox.pool,
            inbox.config.acquire_timeout,
            Some(self.max_run_time),
        )
        .await;
        let mut tx = match begun {
            Ok(tx) => tx,
            Err(error) => {
                crate::metrics::store_error("inbox_claim");
                tracing::warn!(%error, "could not open the run's transaction; the row is due again after its backoff");
                return;
            }
        };
        // The attempt fences: a row claimed again since is not ours. This
        // waits rather than skips: another worker's claim may hold the row
        // for a moment (a row it locked and then found not due stays
        // locked until its statement commits).
        let locked = sqlx::query(&format!(
            "SELECT 1 FROM {table} \
             WHERE tenant = $1 AND delivery_id = $2 AND status = 'queued' AND attempts = $3 \
             FOR UPDATE"
        ))
        .bind(&claimed.tenant)
        .bind(&claimed.id)
        .bind(claimed.attempt)
        .fetch_optional(&mut *tx)
        .await;
        match locked {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(error) => {
                crate::metrics::store_error("inbox_claim");
                tracing::warn!(error = %postgres_error(error), "could not lock the claimed row");
                return;
            }
        }
        let (body, signed_at) = (&claimed.body, claimed.signed_at);
        let tenant = (!claimed.tenant.is_empty()).then(|| Arc::from(claimed.tenant.as_str()));
        let attempt = Some(claimed.attempt.unsigned_abs());
        let delivery = body
            .as_deref()
            .and_then(|body| VerifiedDelivery::from_stored(tenant, attempt, signed_at, body));
        let Some(delivery) = delivery else {
            let error = if body.is_none() {
                "its body is gone: it cannot run"
            } else {
                "its stored body is not a Cariosan envelope"
            };
            let record = Record::Dead {
                outcome: "failed",
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
        let watch = tx.pid().map(|pid| inbox.config.monitor.watch(pid));
        let session_lost = async {
            match &watch {
                Some(watch) => watch.lost().cancelled().await,
                None => std::future::pending().await,
            }
        };
        let handle = Tx::new(tx);
        let mut resources = Extensions::new();
        resources.insert(handle.clone());
        resources.insert(Generation(u64::from(claimed.attempt.unsigned_abs())));
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
            if !tx
                .execute_after_cancel("ROLLBACK TO SAVEPOINT cariosan_handlers")
                .await
            {
                crate::metrics::store_error("inbox_finish");
                tracing::error!("could not roll a cancelled run back; its transaction is abandoned and the attempt will show as lost");
                tx.cancel_and_rollback().await;
                return;
            }
        }
        let schedule = &inbox.config.schedule;
        let record = match ran {
            Ran::Outcome(Outcome::Handled) => Record::Done("handled"),
            Ran::Outcome(Outcome::Ignored) => Record::Done("ignored"),
            Ran::Outcome(Outcome::GivenUp(error)) => Record::Dead {
                outcome: "given_up",
                error: error.to_string(),
            },
            Ran::Outcome(Outcome::RetryLater(error)) => Record::Retry {
                after: schedule.retry_later(error.retry_after().unwrap_or_default()),
                error: format!("retry later: {error}"),
            },
            Ran::Outcome(failed) => Record::Retry {
                after: schedule.delay(&claimed.id, claimed.attempt.unsigned_abs()),
                error: match failed {
                    Outcome::Failed(error) => error.to_string(),
                    Outcome::Panicked => "a handler panicked".to_owned(),
                    Outcome::Malformed => "the event's data does not fit the model and no on_malformed handler took it".to_owned(),
                    other => format!("the handlers answered {}", other.code()),
                },
            },
            Ran::TimedOut => {
                crate::metrics::run_cancelled("max_run_time");
                Record::Retry {
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
        // A cut-off run was rolled back to the savepoint above.
        if !cut_off && !matches!(record, Record::Done(_)) {
            if let Err(error) = sqlx::query("ROLLBACK TO SAVEPOINT cariosan_handlers")
                .execute(&mut *tx)
                .await
            {
                crate::metrics::store_error("inbox_finish");
                tracing::error!(error = %postgres_error(error), "could not roll the handlers' effects back; the whole transaction is abandoned and the attempt will show as lost");
                return;
            }
        }
        let deleted = (delivery.event_type() == "message.deleted")
            .then(|| message_ids(&delivery).into_iter().next())
            .flatten();
        self.record(tx, claimed, record, deleted.as_deref()).await;
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
        let now = inbox.now();
        let max_attempts = inbox.config.schedule.attempts();
        let record = match record {
            Record::Retry { error, .. } if claimed.attempt.unsigned_abs() >= max_attempts => {
                Record::Dead {
                    outcome: "failed",
                    error,
                }
            }
            other => other,
        };
        let (_label, result) = match &record {
            Record::Done(outcome) => {
                let keep = inbox.config.keep_done_bodies;
                let written = sqlx::query(&format!(
                    "UPDATE {table} SET status = 'done', outcome = $3, recorded_attempts = attempts, finished_at = $4, \
                     body = CASE WHEN $5 THEN body END WHERE tenant = $1 AND delivery_id = $2"
                ))
                .bind(&claimed.tenant)
                .bind(&claimed.id)
                .bind(*outcome)
                .bind(now)
                .bind(keep)
                .execute(&mut *tx)
                .await;
                let written = match (written, deleted_message) {
                    (Ok(_), Some(message)) => {
                        drop_bodies_of(&mut tx, &table, &claimed.tenant, &claimed.id, message, now)
                            .await
                    }
                    (written, _) => written.map(drop),
                };
                ("done", written)
            }
            Record::Retry { error, after } => {
                let written = sqlx::query(&format!(
                    "UPDATE {table} SET last_error = $3, due_at = $4, recorded_attempts = attempts \
                     WHERE tenant = $1 AND delivery_id = $2"
                ))
                .bind(&claimed.tenant)
                .bind(&claimed.id)
                .bind(crate::truncated(error, MAX_ERROR_LEN))
                .bind(now + *after)
                .execute(&mut *tx)
                .await;
                ("retry", written.map(drop))
            }
            Record::Dead { outcome, error } => {
                let written = sqlx::query(&format!(
                    "UPDATE {table} SET status = 'dead', outcome = $3, last_error = $4, recorded_attempts = attempts, \
                     finished_at = $5 WHERE tenant = $1 AND delivery_id = $2"
                ))
                .bind(&claimed.tenant)
                .bind(&claimed.id)
                .bind(*outcome)
                .bind(crate::truncated(error, MAX_ERROR_LEN))
                .bind(now)
                .execute(&mut *tx)
                .await;
                ("dead", written.map(drop))
            }
            Record::Again => {
                let written = sqlx::query(&format!(
                    "UPDATE {table} SET attempts = attempts - 1, recorded_attempts = attempts - 1, due_at = $3 \
                     WHERE tenant = $1 AND delivery_id = $2"
                ))
                .bind(&claimed.tenant)
                .bind(&claimed.id)
                .bind(now)
                .execute(&mut *tx)
                .await;
                ("again", written.map(drop))
            }
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
            Record::Retry { error, after } => {
                crate::metrics::inbox_run("retry", &claimed.event_type);
                tracing::warn!(%error, retry_in = ?after, "inbox run failed; it will be retried");
            }
            Record::Dead { outcome, error } => {
                crate::metrics::inbox_run("dead", &claimed.event_type);
                tracing::error!(outcome, %error, "inbox delivery is dead; replay it after a fix");
                // A handler's give-up ran the hook already.
                if outcome != "given_up" {
                    self.report_dead(&claimed.id, &claimed.event_type, claimed.attempt, error)
                        .await;
                }
            }
            Record::Again => {
                tracing::warn!("inbox run cancelled by shutdown; due again now");
            }
        }
    }
}

/// A `message.deleted` was handled: no stored body may keep its message's
/// text. Finished rows that hold it lose their body; queued copies of that
/// message itself (an edit still retrying, say) are superseded. Rows running
/// now are skipped: they drop their body as they finish, if they succeed.
async fn drop_bodies_of(
    tx: &mut RunTx,
    table: &str,
    tenant: &str,
    deleting: &str,
    message: &str,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE {table} SET body = NULL WHERE (tenant, delivery_id) IN ( \
           SELECT tenant, delivery_id FROM {table} WHERE tenant = $1 AND message_ids @> ARRAY[$2] \
           AND delivery_id <> $3 AND body IS NOT NULL AND status <> 'queued' ORDER BY delivery_id FOR UPDATE)"
    ))
    .bind(tenant)
    .bind(message)
    .bind(deleting)
    .execute(&mut **tx)
    .await?;
    sqlx::query(&format!(
        "UPDATE {table} SET body = NULL, status = 'done', outcome = 'superseded', finished_at = $4, \
         recorded_attempts = attempts WHERE (tenant, delivery_id) IN ( \
           SELECT tenant, delivery_id FROM {table} WHERE tenant = $1 AND message_ids @> ARRAY[$2] \
           AND message_ids[1] = $2 AND delivery_id <> $3 AND status = 'queued' ORDER BY delivery_id \
           FOR UPDATE SKIP LOCKED)"
    ))
    .bind(tenant)
    .bind(message)
    .bind(deleting)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
