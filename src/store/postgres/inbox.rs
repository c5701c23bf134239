//! The inbox: verified deliveries stored and acknowledged at once, and the
//! operators' view of them.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tower_service::Service;

use super::monitor::SessionMonitor;
use super::ordering::{Ordering, OrderingKeys, StalePolicy};
use super::schedule::{Clock, RetrySchedule, WallClock};
use super::transaction::{Autocommit, CommitError, RunTx};
use super::worker::CONTENT_EVENTS;
use super::{
    checked_retention, checked_schema, checked_wait, migrations, postgres_error,
    DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_SCHEMA, NO_TENANT,
};
use crate::model::Event;
use crate::response::{answer, BytesBody};
use crate::store::StoreError;
use crate::verify::VerifiedDelivery;

/// How long done rows are kept by default (3 days, past Cariosan's
/// retries, so that a late copy is still recognised).
pub const DEFAULT_DONE_RETENTION: Duration = Duration::from_secs(3 * 24 * 3600);

/// How long dead rows are kept by default (14 days), for a fix and a replay.
pub const DEFAULT_DEAD_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

/// A durable inbox in PostgreSQL: see the [module docs](super).
///
/// [`service`](Self::service) stores each verified delivery and answers
/// `202 queued`; [`workers`](Self::workers) run the handlers; the other
/// methods are the operators' (also the `cariosan-webhooks inbox` command).
/// Cheap to clone: the pool and the configuration are shared.
#[derive(Clone)]
pub struct Inbox {
    pub(super) pool: PgPool,
    pub(super) config: Arc<InboxConfig>,
}

#[derive(Clone)]
pub(super) struct InboxConfig {
    pub(super) schema: Arc<str>,
    pub(super) tenant: Arc<str>,
    pub(super) schedule: RetrySchedule,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) keep_done_bodies: bool,
    pub(super) done_retention: Duration,
    pub(super) dead_retention: Duration,
    pub(super) acquire_timeout: Duration,
    /// Rung by this process's ingest so that its idle workers need not wait
    /// for their next poll.
    pub(super) wake: Arc<Notify>,
    pub(super) monitor: SessionMonitor,
    pub(super) ordering: Option<Ordering>,
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.config;
        f.debug_struct("Inbox")
            .field("schema", &config.schema)
            .field("tenant", &config.tenant)
            .field("schedule", &config.schedule)
            .field("keep_done_bodies", &config.keep_done_bodies)
            .field("done_retention", &config.done_retention)
            .field("dead_retention", &config.dead_retention)
            .field("ordering", &config.ordering)
            .finish_non_exhaustive()
    }
}

impl Inbox {
    /// An inbox on your pool, in the default schema, with the default
    /// [`RetrySchedule`].
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool: pool.clone(),
            config: Arc::new(InboxConfig {
                schema: DEFAULT_SCHEMA.into(),
                tenant: NO_TENANT.into(),
                schedule: RetrySchedule::default(),
                clock: Arc::new(WallClock),
                keep_done_bodies: false,
                done_retention: DEFAULT_DONE_RETENTION,
                dead_retention: DEFAULT_DEAD_RETENTION,
                acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
                wake: Arc::new(Notify::new()),
                monitor: SessionMonitor::new(pool.clone()),
                ordering: None,
            }),
        }
    }

    fn configure(mut self, change: impl FnOnce(&mut InboxConfig)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// Keeps the crate's tables in `schema` (default `cariosan_webhooks`).
    ///
    /// # Panics
    ///
    /// If `schema` is not a plain lowercase identifier.
    #[must_use]
    pub fn schema(self, schema: &str) -> Self {
        let schema = checked_schema(schema);
        self.configure(|config| config.schema = schema)
    }

    /// The operator methods on `tenant`'s deliveries (default: the single
    /// workspace, stored as `''`). Ingest takes the tenant from each
    /// delivery; workers run every tenant's.
    #[must_use]
    pub fn for_tenant(self, tenant: &str) -> Self {
        let tenant: Arc<str> = tenant.into();
        self.configure(|config| config.tenant = tenant)
    }

    /// When failed runs are retried and when a delivery is dead.
    #[must_use]
    pub fn retry(self, schedule: RetrySchedule) -> Self {
        self.configure(|config| config.schedule = schedule)
    }

    /// The clock of due times, claims and retention ([`WallClock`] by
    /// default).
    #[must_use]
    pub fn clock(self, clock: impl Clock) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(clock);
        self.configure(|config| config.clock = clock)
    }

    /// Keeps the body of a handled delivery for the done retention, so that
    /// it can be replayed (default: dropped as it is handled). Chat content
    /// then stays in the inbox for that long; a `message.deleted` still
    /// drops its message's bodies.
    #[must_use]
    pub fn keep_done_bodies(self, keep: bool) -> Self {
        self.configure(|config| config.keep_done_bodies = keep)
    }

    /// How long done rows are kept by [`prune`](Self::prune) (default 3
    /// days): a copy arriving within it is acknowledged as a duplicate.
    ///
    /// # Panics
    ///
    /// If `retention` is shorter than [`MIN_RETENTION`](super::MIN_RETENTION)
    /// (48 h) or longer than a year.
    #[must_use]
    pub fn done_retention(self, retention: Duration) -> Self {
        let retention = checked_retention("done retention", retention, false);
        self.configure(|config| config.done_retention = retention)
    }

    /// A done retention shorter than Cariosan's retries, knowingly: a copy
    /// arriving after its row was pruned is stored and runs again.
    ///
    /// # Panics
    ///
    /// If `retention` is zero or longer than a year.
    #[must_use]
    pub fn done_retention_shorter_than_retries(self, retention: Duration) -> Self {
        let retention = checked_retention("done retention", retention, true);
        self.configure(|config| config.done_retention = retention)
    }

    /// How long dead rows are kept by [`prune`](Self::prune) (default 14
    /// days). Like the done retention, it must outlast Cariosan's retries:
    /// a copy arriving after its dead row was pruned is stored and runs.
    ///
    /// # Panics
    ///
    /// If `retention` is shorter than [`MIN_RETENTION`](super::MIN_RETENTION)
    /// (48 h) or longer than a year.
    #[must_use]
    pub fn dead_retention(self, retention: Duration) -> Self {
        let retention = checked_retention("dead retention", retention, false);
        self.configure(|config| config.dead_retention = retention)
    }

    /// Runs deliveries that share a key in order, one at a time: see
    /// [`OrderingKeys`] for the keys and the module docs for what it
    /// guarantees. Off by default: every delivery runs as soon as it is
    /// due. Ingest stores each delivery's key, so give every replica the
    /// same keys; the workers of any replica keep the order of the keys
    /// they find.
    #[must_use]
    pub fn ordered(self, keys: OrderingKeys) -> Self {
        self.configure(|config| config.ordering = Some(Ordering::new(keys)))
    }

    fn ordering_mut<'a>(config: &'a mut InboxConfig, what: &str) -> &'a mut Ordering {
        config.ordering.as_mut().unwrap_or_else(|| {
            panic!("{what} applies to ordered deliveries: call .ordered(..) first")
        })
    }

    /// A reorder window (default none): a delivery with a key runs no
    /// earlier than `window` after it was stored, so that an earlier
    /// delivery of its key that arrives within the window runs before it.
    /// Every keyed delivery waits that long.
    ///
    /// # Panics
    ///
    /// If ordering is off ([`ordered`](Self::ordered)), or `window` is over
    /// a day.
    #[must_use]
    pub fn hold_for(self, window: Duration) -> Self {
        assert!(
            window <= Duration::from_secs(24 * 3600),
            "the reorder window must be at most a day"
        );
        self.configure(|config| Self::ordering_mut(config, "hold_for").hold_for = window)
    }

    /// What becomes of a stale delivery, one older than a delivery of its
    /// key that was handled already (default [`StalePolicy::Run`]).
    ///
    /// # Panics
    ///
    /// If ordering is off.
    #[must_use]
    pub fn stale_deliveries(self, policy: StalePolicy) -> Self {
        self.configure(|config| Self::ordering_mut(config, "stale_deliveries").stale = policy)
    }

    /// How long the successors of a dead delivery wait for it to be
    /// replayed (default zero: they run at once). Past `wait` they run
    /// anyway, each with a warning and the
    /// `cariosan_webhook_inbox_out_of_order_total{reason="dead_predecessor"}` metric: a dead predecessor
    /// never blocks its key for good.
    ///
    /// # Panics
    ///
    /// If ordering is off, or `wait` is over a day.
    #[must_use]
    pub fn after_dead_predecessor(self, wait: Duration) -> Self {
        assert!(
            wait <= Duration::from_secs(24 * 3600),
            "the wait after a dead predecessor must be at most a day"
        );
        self.configure(|config| {
            Self::ordering_mut(config, "after_dead_predecessor").dead_wait = wait;
        })
    }

    /// What becomes of stale deliveries.
    pub(super) fn stale_policy(&self) -> StalePolicy {
        self.config
            .ordering
            .as_ref()
            .map_or(StalePolicy::Run, |ordering| ordering.stale)
    }

    /// How long successors wait for a dead predecessor.
    pub(super) fn dead_wait(&self) -> Duration {
        self.config
            .ordering
            .as_ref()
            .map_or(Duration::ZERO, |ordering| ordering.dead_wait)
    }

    fn entry_columns(&self) -> String {
        ENTRY_COLUMNS
            .replace("{table}", &self.table())
            .replace("{bodies}", &self.bodies_table())
    }

    pub(super) fn marks_table(&self) -> String {
        format!("{}.ordering_marks", self.config.schema)
    }

    /// An SQL expression: the advisory key a run of `key` holds.
    pub(super) fn ordering_lock(&self, tenant: &str, key: &str) -> String {
        format!(
            "pg_catalog.hashtextextended('cariosan-webhooks order ' || '{schema}' || pg_catalog.chr(31) || {tenant} || pg_catalog.chr(31) || {key}, 0)",
            schema = self.config.schema,
        )
    }

    /// How long ingest waits for a pool connection (default 2 s) before it
    /// answers `503 store_unavailable`.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero or over a day.
    #[must_use]
    pub fn acquire_timeout(self, timeout: Duration) -> Self {
        let timeout = checked_wait("acquire timeout", timeout);
        self.configure(|config| config.acquire_timeout = timeout)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The retry schedule.
    pub fn schedule(&self) -> &RetrySchedule {
        &self.config.schedule
    }

    /// The advisory lock key [`migrate`](Self::migrate) holds: the same
    /// as [`PostgresBackend::migration_lock_key`](super::PostgresBackend::migration_lock_key).
    pub fn migration_lock_key(&self) -> i64 {
        migrations::lock_key(&self.config.schema)
    }

    /// Creates or upgrades the crate's tables (the inbox and the
    /// transactional backend's), once, under the migration lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations::run(&self.pool, &self.config.schema, self.config.acquire_timeout).await
    }

    /// The ingest service, to put behind a
    /// [`VerificationLayer`](crate::verification::VerificationLayer): it
    /// stores each verified delivery and answers `202 queued` once the row
    /// has committed.
    pub fn service(&self) -> InboxService {
        InboxService {
            inbox: self.clone(),
        }
    }

    pub(super) fn table(&self) -> String {
        format!("{}.inbox", self.config.schema)
    }

    /// The rows' bodies, apart from the state that claims and runs update,
    /// so that those updates never rewrite a body.
    pub(super) fn bodies_table(&self) -> String {
        format!("{}.inbox_bodies", self.config.schema)
    }

    /// An SQL condition: the row aliased `row` has its body.
    pub(super) fn has_body(&self, row: &str) -> String {
        format!(
            "EXISTS (SELECT 1 FROM {}.inbox_bodies AS body \
             WHERE body.tenant = {row}.tenant AND body.delivery_id = {row}.delivery_id)",
            self.config.schema
        )
    }

    /// An SQL condition: the row aliased `row` holds text of a message
    /// whose deletion was handled.
    pub(super) fn holds_deleted_text(&self, row: &str) -> String {
        format!(
            "EXISTS (SELECT 1 FROM {}.deleted_messages AS deleted \
             WHERE deleted.tenant = {row}.tenant AND deleted.message_id = ANY({row}.message_ids))",
            self.config.schema
        )
    }

    /// The advisory key of a message's deletion, as SQL over the tenant and
    /// the message id. A deletion takes it exclusively before it records
    /// the message; a run that finishes keeping a body or an error, and an
    /// ingest of a content event (for the message it names first), take it
    /// shared for the messages they hold first. So each either commits
    /// before the deletion looks for it, or sees the deletion.
    pub(super) fn deletion_key(&self, tenant: &str, message: &str) -> String {
        format!(
            "pg_catalog.hashtextextended('cariosan-webhooks deleted ' || '{}' || pg_catalog.chr(31) \
             || {tenant} || pg_catalog.chr(31) || {message}, 0)",
            self.config.schema
        )
    }

    /// The table of deleted messages.
    pub(super) fn deleted_table(&self) -> String {
        format!("{}.deleted_messages", self.config.schema)
    }

    pub(super) fn now(&self) -> OffsetDateTime {
        self.config.clock.now()
    }

    /// Stores `delivery` unless a row for it exists; whether it was new.
    ///
    /// The insert is one statement, answered only once it committed;
    /// dropped half-way (a client hanging up, the timeout), its connection
    /// is closed rather than returned to the pool, and the statement, if
    /// it still runs on the server, waits for no lock longer than the
    /// acquire timeout (then it commits, and a copy is a duplicate, or it
    /// fails, and a copy is stored).
    pub async fn ingest(
        &self,
        delivery: &VerifiedDelivery,
        body: &[u8],
    ) -> Result<bool, StoreError> {
        let stored = tokio::time::timeout(self.config.acquire_timeout, self.insert(delivery, body));
        let inserted = match stored.await {
            Ok(inserted) => inserted?,
            Err(_elapsed) => {
                return Err(StoreError::new(
                    "PostgreSQL: the inbox insert did not finish within the acquire timeout",
                ))
            }
        };
        if inserted {
            self.config.wake.notify_one();
        }
        Ok(inserted)
    }

    async fn insert(&self, delivery: &VerifiedDelivery, body: &[u8]) -> Result<bool, StoreError> {
        // A content event of a message whose deletion was handled (a late
        // retry of its creation, say) is stored without its text, done.
        // `deletion_recorded` takes the message's deletion lock shared
        // first and then looks with a snapshot of its own, so a deletion
        // committing meanwhile is seen, or sees this row. A keyed row is
        // not due before an earlier row of its key that waits for a retry:
        // claims need not pass over it meanwhile.
        let key = self
            .config
            .ordering
            .as_ref()
            .and_then(|ordering| ordering.keys.key_of(delivery));
        let due_at = match &key {
            None => "$9".to_owned(),
            Some(_) => format!(
                "greatest($9, (SELECT max(before.due_at) FROM {table} AS before \
                   WHERE before.tenant = $1 AND before.ordering_key = $10 AND before.status = 'queued' \
                   AND before.attempts = before.recorded_attempts \
                   AND (before.event_at, before.delivery_id) < ($11, $2)))",
                table = self.table(),
            ),
        };
        let sql = format!(
            "WITH row AS (INSERT INTO {table} (tenant, delivery_id, event_type, message_ids, signed_at, \
               sender_attempt, due_at, status, outcome, finished_at, ordering_key, event_at) \
             SELECT $1, $2, $3, $4, $6, $7, {due_at}, \
               CASE WHEN late.gone THEN 'done' ELSE 'queued' END, \
               CASE WHEN late.gone THEN 'superseded' END, CASE WHEN late.gone THEN $8 END, $10, $11 \
             FROM (SELECT {schema}.deletion_recorded({lock}, $1, \
               CASE WHEN $3 IN {CONTENT_EVENTS} THEN ($4::text[])[1] END, $12) AS gone) AS late \
             ON CONFLICT DO NOTHING RETURNING tenant, delivery_id, status), \
             kept AS (INSERT INTO {bodies} (tenant, delivery_id, body) \
               SELECT tenant, delivery_id, $5 FROM row WHERE status = 'queued') \
             SELECT count(*) FROM row",
            table = self.table(),
            bodies = self.bodies_table(),
            schema = self.config.schema,
            lock = self.deletion_key("$1", "($4::text[])[1]"),
        );
        let hold = match (&self.config.ordering, &key) {
            (Some(ordering), Some(_)) => ordering.hold_for,
            _ => Duration::ZERO,
        };
        let now = self.now();
        let wait = self.config.acquire_timeout.as_millis().to_string();
        let statement = || {
            sqlx::query_scalar::<_, i64>(&sql)
                .bind(delivery.tenant().unwrap_or(NO_TENANT))
                .bind(delivery.id().as_str())
                .bind(delivery.event_type())
                .bind(message_ids(delivery))
                .bind(body)
                .bind(delivery.signed_at())
                .bind(delivery.attempt().and_then(|a| i32::try_from(a).ok()))
                .bind(now)
                .bind(now + hold)
                .bind(key.clone())
                .bind(event_at(delivery))
                .bind(wait.as_str())
        };
        let mut conn = Autocommit::acquire(&self.pool, self.config.acquire_timeout).await?;
        let stored = match statement().fetch_one(&mut *conn).await {
            Ok(stored) => {
                conn.release();
                stored
            }
            Err(sqlx::Error::Database(error))
                if error.code().as_deref() == Some(NEEDS_READ_COMMITTED) =>
            {
                // The session's default isolation is stricter, where the
                // function's snapshot would be the statement's: the same
                // statement, in a transaction that sets it.
                conn.release();
                let acquire = self.config.acquire_timeout;
                let mut tx = RunTx::begin(&self.pool, acquire, Some(acquire)).await?;
                match statement().fetch_one(&mut *tx).await {
                    Ok(stored) => {
                        tx.commit().await.map_err(CommitError::into_store_error)?;
                        stored
                    }
                    Err(error) => {
                        tx.rollback().await;
                        return Err(postgres_error(error));
                    }
                }
            }
            Err(sqlx::Error::Database(error)) => {
                // Refused: the connection is fine, and nothing committed.
                conn.release();
                return Err(postgres_error(sqlx::Error::Database(error)));
            }
            Err(error) => {
                crate::metrics::store_error("commit_ambiguous");
                tracing::error!(%error, "an inbox insert's answer was lost: it may or may not have committed; the sender's retry finds out");
                return Err(postgres_error(error));
            }
        };
        Ok(stored == 1)
    }

    /// Rows of this inbox's tenant, newest first, at most `limit`.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<InboxEntry>, StoreError> {
        let sql = format!(
            "SELECT {columns} FROM {table} AS row WHERE row.tenant = $1 \
             AND ($2::text IS NULL OR row.status = $2) \
             ORDER BY row.received_at DESC, row.delivery_id LIMIT $3",
            columns = self.entry_columns(),
            table = self.table(),
        );
        let rows: Vec<PgRow> = sqlx::query(&sql)
            .bind(&*self.config.tenant)
            .bind(filter.status.map(InboxStatus::as_str))
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(postgres_error)?;
        rows.into_iter().map(InboxEntry::try_from).collect()
    }

    /// The row of delivery `id`, without its body.
    pub async fn get(&self, id: &str) -> Result<Option<InboxEntry>, StoreError> {
        let sql = format!(
            "SELECT {columns} FROM {table} AS row WHERE row.tenant = $1 AND row.delivery_id = $2",
            columns = self.entry_columns(),
            table = self.table(),
        );
        let row: Option<PgRow> = sqlx::query(&sql)
            .bind(&*self.config.tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(postgres_error)?;
        row.map(InboxEntry::try_from).transpose()
    }

    /// The stored body of delivery `id`: chat content. `None` when there is
    /// no such row or its body was dropped.
    pub async fn body(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        let sql = format!(
            "SELECT body FROM {} WHERE tenant = $1 AND delivery_id = $2",
            self.bodies_table()
        );
        let body: Option<Vec<u8>> = sqlx::query_scalar(&sql)
            .bind(&*self.config.tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(postgres_error)?;
        Ok(body.map(Bytes::from))
    }

    /// Queues a done or dead delivery again, with a fresh set of attempts,
    /// due now. Refused when it is queued already, or when its body is gone.
    pub async fn replay(&self, id: &str) -> Result<(), InboxError> {
        let table = self.table();
        let sql = format!(
            "UPDATE {table} SET status = 'queued', outcome = NULL, attempts = 0, recorded_attempts = 0, \
             due_at = $3, finished_at = NULL, give_up_pending = false, generation = generation + 1 \
             WHERE tenant = $1 AND delivery_id = ANY($2) AND status <> 'queued' AND {has_body}",
            has_body = self.has_body("inbox"),
        );
        let lock = format!(
            "SELECT delivery_id FROM {table} WHERE tenant = $1 AND delivery_id = $2 \
             AND status <> 'queued' FOR UPDATE"
        );
        let (replayed, _) = self.replay_locked(&lock, Some(id), &sql, None).await?;
        if replayed == 1 {
            self.config.wake.notify_one();
            return Ok(());
        }
        Err(match self.get(id).await? {
            None => InboxError::NotFound(id.to_owned()),
            Some(entry) if entry.status == InboxStatus::Queued => {
                InboxError::AlreadyQueued(id.to_owned())
            }
            Some(_) => InboxError::NoBody(id.to_owned()),
        })
    }

    /// Queues every dead delivery that still has its body again; how many
    /// were queued, and how many dead rows were left because their body is
    /// gone (purged, or dropped with a deleted message).
    pub async fn replay_dead(&self) -> Result<ReplayedDead, StoreError> {
        let table = self.table();
        let sql = format!(
            "UPDATE {table} SET status = 'queued', outcome = NULL, attempts = 0, \
               recorded_attempts = 0, due_at = $3, finished_at = NULL, give_up_pending = false, \
               generation = generation + 1 \
             WHERE tenant = $1 AND delivery_id = ANY($2) AND status = 'dead' AND {has_body}",
            has_body = self.has_body("inbox"),
        );
        let lock = format!(
            "SELECT delivery_id FROM {table} WHERE tenant = $1 AND status = 'dead' \
             ORDER BY tenant, delivery_id FOR UPDATE SKIP LOCKED"
        );
        let left = format!(
            "SELECT count(*) FROM {table} WHERE tenant = $1 AND status = 'dead' AND NOT {has_body}",
            has_body = self.has_body("inbox"),
        );
        let (queued, without_body) = self.replay_locked(&lock, None, &sql, Some(&left)).await?;
        if queued > 0 {
            self.config.wake.notify_waiters();
        }
        Ok(ReplayedDead {
            queued,
            without_body: without_body.unsigned_abs(),
        })
    }

    /// Locks rows with `lock` (binding the tenant, then `id`), then runs
    /// `replay` over the ids it locked (binding the tenant, the ids, now)
    /// and, when given, `count` (binding the tenant), in one transaction;
    /// the rows replayed and the count. Every statement that drops a body
    /// holds its row's lock until it commits, so a statement after the lock
    /// sees whether a locked row still has its body; the locking statement
    /// itself would read that from a snapshot taken before it waited.
    async fn replay_locked(
        &self,
        lock: &str,
        id: Option<&str>,
        replay: &str,
        count: Option<&str>,
    ) -> Result<(u64, i64), StoreError> {
        let mut tx = RunTx::begin(&self.pool, self.config.acquire_timeout, None).await?;
        let done: Result<(u64, i64), sqlx::Error> = async {
            let mut locking = sqlx::query_scalar::<_, String>(lock).bind(&*self.config.tenant);
            if let Some(id) = id {
                locking = locking.bind(id);
            }
            let locked = locking.fetch_all(&mut *tx).await?;
            let replayed = sqlx::query(replay)
                .bind(&*self.config.tenant)
                .bind(&locked)
                .bind(self.now())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let counted = match count {
                Some(count) => {
                    sqlx::query_scalar(count)
                        .bind(&*self.config.tenant)
                        .fetch_one(&mut *tx)
                        .await?
                }
                None => 0,
            };
            Ok((replayed, counted))
        }
        .await;
        match done {
            Ok(done) => {
                tx.commit().await.map_err(CommitError::into_store_error)?;
                Ok(done)
            }
            Err(error) => {
                tx.rollback().await;
                Err(postgres_error(error))
            }
        }
    }

    /// Deletes the stored body of delivery `id`; whether it had one. A
    /// queued delivery cannot run without it, so it becomes dead. Waits for
    /// a run of it in progress to end.
    pub async fn purge(&self, id: &str) -> Result<bool, StoreError> {
        // The row is locked before its body, as everywhere; the body's own
        // deletion says whether it had one (a run may drop it meanwhile).
        let sql = format!(
            "WITH row AS (UPDATE {table} AS inbox SET \
             outcome = CASE WHEN status = 'queued' THEN 'purged' ELSE outcome END, \
             last_error = CASE WHEN status = 'queued' THEN 'its body was purged before it was handled' ELSE last_error END, \
             finished_at = coalesce(finished_at, $3), \
             give_up_pending = give_up_pending OR status = 'queued', \
             generation = generation + CASE WHEN status = 'queued' THEN 1 ELSE 0 END, \
             give_up_due_at = CASE WHEN status = 'queued' THEN $3 ELSE give_up_due_at END, \
             status = CASE WHEN status = 'queued' THEN 'dead' ELSE status END \
             WHERE tenant = $1 AND delivery_id = $2 AND {has_body} RETURNING tenant, delivery_id), \
             gone AS (DELETE FROM {bodies} AS body USING row \
               WHERE body.tenant = row.tenant AND body.delivery_id = row.delivery_id RETURNING 1) \
             SELECT count(*) FROM gone",
            table = self.table(),
            bodies = self.bodies_table(),
            has_body = self.has_body("inbox"),
        );
        let purged: i64 = sqlx::query_scalar(&sql)
            .bind(&*self.config.tenant)
            .bind(id)
            .bind(self.now())
            .fetch_one(&self.pool)
            .await
            .map_err(postgres_error)?;
        Ok(purged == 1)
    }

    /// Deletes done rows older than the done retention and dead rows older
    /// than the dead retention, of every tenant. Call it now and then (the
    /// `receiver` example does, hourly).
    pub async fn prune(&self) -> Result<Pruned, StoreError> {
        let sql = format!(
            "WITH gone AS (DELETE FROM {table} WHERE (tenant, delivery_id) IN ( \
               SELECT tenant, delivery_id FROM {table} WHERE \
               (status = 'done' AND finished_at < $1) OR (status = 'dead' AND finished_at < $2) \
               ORDER BY tenant, delivery_id FOR UPDATE SKIP LOCKED) \
               RETURNING status) \
             SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'dead') FROM gone",
            table = self.table()
        );
        let now = self.now();
        let (done, dead): (i64, i64) = sqlx::query_as(&sql)
            .bind(now - self.config.done_retention)
            .bind(now - self.config.dead_retention)
            .fetch_one(&self.pool)
            .await
            .map_err(postgres_error)?;
        // A deletion is remembered as long as a late copy of its message
        // would be recognised as a duplicate anyway.
        // Kept while any row still names the message: one queued for long
        // must still drop its text when it finishes.
        sqlx::query(&format!(
            "DELETE FROM {deleted} AS gone WHERE deleted_at < $1 AND NOT EXISTS ( \
               SELECT 1 FROM {table} WHERE tenant = gone.tenant AND message_ids @> ARRAY[gone.message_id])",
            deleted = self.deleted_table(),
            table = self.table(),
        ))
        .bind(now - self.config.done_retention.max(self.config.dead_retention))
        .execute(&self.pool)
        .await
        .map_err(postgres_error)?;
        // A key's mark tells a late copy it is stale: kept as long as the
        // rows it could be a copy of.
        sqlx::query(&format!(
            "DELETE FROM {marks} AS mark WHERE updated_at < $1 AND NOT EXISTS ( \
               SELECT 1 FROM {table} WHERE tenant = mark.tenant AND ordering_key = mark.ordering_key \
               AND status <> 'done')",
            marks = self.marks_table(),
            table = self.table(),
        ))
        .bind(now - self.config.done_retention.max(self.config.dead_retention))
        .execute(&self.pool)
        .await
        .map_err(postgres_error)?;
        Ok(Pruned {
            done: done.unsigned_abs(),
            dead: dead.unsigned_abs(),
        })
    }
}

/// The envelope's `created_at`, by which deliveries of a key are ordered.
fn event_at(delivery: &VerifiedDelivery) -> Option<OffsetDateTime> {
    match (delivery.envelope(), delivery.malformed()) {
        (Some(envelope), _) => Some(envelope.created_at),
        (None, Some(malformed)) => Some(malformed.created_at()),
        (None, None) => None,
    }
}

/// [`message_ids`] of an event whose data does not fit the model, read
/// best-effort from its raw JSON, so that its text is dropped with its
/// message too: `message.id`, the quoted or parent message's id, and a
/// moderation action's `message_id`.
fn malformed_message_ids(data: &str) -> Vec<String> {
    let Ok(data) = serde_json::from_str::<serde_json::Value>(data) else {
        return Vec::new();
    };
    let text =
        |value: Option<&serde_json::Value>| value.and_then(|v| v.as_str()).map(str::to_owned);
    let message = data.get("message");
    let quoted = message
        .and_then(|m| m.get("quoted_message"))
        .and_then(|q| q.get("id"));
    // The message's own id stays first, empty when it cannot be read, so
    // that a quoted message is never taken for it.
    let own = text(message.and_then(|m| m.get("id")));
    let others = [
        text(quoted).or_else(|| text(message.and_then(|m| m.get("parent_id")))),
        text(data.get("message_id")),
    ];
    if own.is_none() && others.iter().all(Option::is_none) {
        return Vec::new();
    }
    [
        Some(own.unwrap_or_default()),
        others[0].clone(),
        others[1].clone(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The messages whose content a delivery's body holds: the message itself
/// first, then the one it quotes; a moderation action's message. A
/// `message.deleted` drops the stored bodies that name its message.
pub(super) fn message_ids(delivery: &VerifiedDelivery) -> Vec<String> {
    let Some(envelope) = delivery.envelope() else {
        return delivery
            .malformed()
            .map(|malformed| malformed_message_ids(malformed.data_json()))
            .unwrap_or_default();
    };
    let message = match &envelope.event {
        Event::MessageCreated(event) => &event.message,
        Event::MessageUpdated(event) => &event.message,
        Event::MessageDeleted(event) => &event.message,
        Event::MessageMentioned(event) => &event.message,
        Event::ModerationAction(action) => {
            return action
                .message_id
                .iter()
                .map(|id| id.as_str().to_owned())
                .collect()
        }
        _ => return Vec::new(),
    };
    let mut ids = vec![message.id.as_str().to_owned()];
    let quoted = message.quoted_message.as_ref().map(|q| &q.id);
    ids.extend(
        quoted
            .or(message.parent_id.as_ref())
            .map(|id| id.as_str().to_owned()),
    );
    ids
}

/// Which rows [`Inbox::list`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListFilter {
    /// Only rows in this state; every row when `None`.
    pub status: Option<InboxStatus>,
    /// At most this many (default 100).
    pub limit: u32,
}

impl Default for ListFilter {
    fn default() -> Self {
        Self {
            status: None,
            limit: 100,
        }
    }
}

impl ListFilter {
    /// Rows in `status`.
    pub fn status(status: InboxStatus) -> Self {
        Self {
            status: Some(status),
            ..Self::default()
        }
    }
}

/// Where a delivery is in the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InboxStatus {
    /// Waiting for its first run or a retry, or running.
    Queued,
    /// Handled (or ignored): never run again unless replayed.
    Done,
    /// Out of attempts, given up or purged: kept for a fix and a replay.
    Dead,
}

impl InboxStatus {
    /// `queued`, `done` or `dead`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Done => "done",
            Self::Dead => "dead",
        }
    }
}

impl std::str::FromStr for InboxStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "queued" => Ok(Self::Queued),
            "done" => Ok(Self::Done),
            "dead" => Ok(Self::Dead),
            other => Err(format!(
                "{other:?} is not an inbox status (queued, done, dead)"
            )),
        }
    }
}

impl fmt::Display for InboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One delivery in the inbox, without its body (see [`Inbox::body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxEntry {
    /// The tenant (`""` for a single workspace).
    pub tenant: String,
    /// The delivery id.
    pub id: String,
    /// The event type.
    pub event_type: String,
    /// Queued, done or dead.
    pub status: InboxStatus,
    /// How it ended: `handled`, `ignored`, `given_up`, `failed`, `lost`,
    /// `superseded` (its message was deleted first), `purged`.
    pub outcome: Option<String>,
    /// Runs started.
    pub attempts: u32,
    /// Runs whose end is recorded (or found lost): one less than
    /// `attempts` while a run is in progress.
    pub attempts_ended: u32,
    /// The sender's `X-Cariosan-Attempt` of the stored copy.
    pub sender_attempt: Option<u32>,
    /// When the sender signed the stored copy, in Unix seconds.
    pub signed_at: i64,
    /// When it was stored.
    pub received_at: OffsetDateTime,
    /// When a queued delivery runs next.
    pub due_at: OffsetDateTime,
    /// When it became done or dead.
    pub finished_at: Option<OffsetDateTime>,
    /// The last failed run's error, while the row is queued or dead; gone
    /// once it is done, and dropped with a deleted message's text.
    pub last_error: Option<String>,
    /// The stored body's length; `None` once dropped.
    pub body_len: Option<usize>,
    /// What the last failure was, in a word that holds no chat content
    /// (`failed`, `panicked`, `retry_later`, `max_run_time`, `malformed`,
    /// `lost`, `given_up`, `no_body`, `not_an_envelope`): kept when
    /// `last_error` is dropped with a deleted message.
    pub error_kind: Option<String>,
    /// The generation of the row's last claim: larger for every claim,
    /// never reset by a replay, a shutdown's cancel or a purge.
    pub generation: u64,
    /// A dead row whose `on_give_up` hook has not succeeded yet: the
    /// workers run it again.
    pub give_up_pending: bool,
    /// Its ordering key, when it was stored with ordering on.
    pub ordering_key: Option<String>,
    /// Its envelope's `created_at`, by which rows of a key run.
    pub event_at: Option<OffsetDateTime>,
    /// A queued row of a key: the earliest row of its key that it waits
    /// for (queued before it, or running), if any; a dead predecessor
    /// within [`after_dead_predecessor`](Inbox::after_dead_predecessor) is
    /// not shown.
    pub waits_for: Option<String>,
}

const ENTRY_COLUMNS: &str = "row.tenant, row.delivery_id, row.event_type, row.status, row.outcome, row.attempts, \
     row.recorded_attempts, row.sender_attempt, row.signed_at, row.received_at, row.due_at, row.finished_at, \
     row.last_error, (SELECT octet_length(body.body) FROM {bodies} AS body \
       WHERE body.tenant = row.tenant AND body.delivery_id = row.delivery_id), row.error_kind, row.generation, row.give_up_pending, \
     row.ordering_key, row.event_at, CASE WHEN row.status = 'queued' AND row.ordering_key IS NOT NULL THEN ( \
       SELECT before.delivery_id FROM {table} AS before WHERE before.tenant = row.tenant \
       AND before.ordering_key = row.ordering_key AND before.status = 'queued' \
       AND before.delivery_id <> row.delivery_id \
       AND ((before.event_at, before.delivery_id) < (row.event_at, row.delivery_id) \
         OR before.attempts > before.recorded_attempts) \
       ORDER BY before.event_at, before.delivery_id LIMIT 1) END";

impl TryFrom<PgRow> for InboxEntry {
    type Error = StoreError;

    fn try_from(row: PgRow) -> Result<Self, StoreError> {
        let status: String = row.try_get(3).map_err(postgres_error)?;
        let count = |at: usize| -> Result<u32, StoreError> {
            Ok(row
                .try_get::<i32, _>(at)
                .map_err(postgres_error)?
                .unsigned_abs())
        };
        Ok(Self {
            tenant: row.try_get(0).map_err(postgres_error)?,
            id: row.try_get(1).map_err(postgres_error)?,
            event_type: row.try_get(2).map_err(postgres_error)?,
            status: status
                .parse()
                .map_err(|e: String| StoreError::new(format!("PostgreSQL: {e}")))?,
            outcome: row.try_get(4).map_err(postgres_error)?,
            attempts: count(5)?,
            attempts_ended: count(6)?,
            sender_attempt: row
                .try_get::<Option<i32>, _>(7)
                .map_err(postgres_error)?
                .map(i32::unsigned_abs),
            signed_at: row.try_get(8).map_err(postgres_error)?,
            received_at: row.try_get(9).map_err(postgres_error)?,
            due_at: row.try_get(10).map_err(postgres_error)?,
            finished_at: row.try_get(11).map_err(postgres_error)?,
            last_error: row.try_get(12).map_err(postgres_error)?,
            body_len: row
                .try_get::<Option<i32>, _>(13)
                .map_err(postgres_error)?
                .map(|len| len.unsigned_abs() as usize),
            error_kind: row.try_get(14).map_err(postgres_error)?,
            generation: row
                .try_get::<i64, _>(15)
                .map_err(postgres_error)?
                .unsigned_abs(),
            give_up_pending: row.try_get(16).map_err(postgres_error)?,
            ordering_key: row.try_get(17).map_err(postgres_error)?,
            event_at: row.try_get(18).map_err(postgres_error)?,
            waits_for: row.try_get(19).map_err(postgres_error)?,
        })
    }
}

/// What [`Inbox::replay_dead`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayedDead {
    /// Dead deliveries queued again.
    pub queued: u64,
    /// Dead deliveries left dead: their body is gone, so they cannot run.
    pub without_body: u64,
}

/// What [`Inbox::prune`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Pruned {
    /// Done rows.
    pub done: u64,
    /// Dead rows.
    pub dead: u64,
}

/// Why an operator action on the inbox was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// No row for this delivery id.
    #[error("no delivery {0} in the inbox")]
    NotFound(String),
    /// The delivery is queued (or running) already.
    #[error("delivery {0} is queued already")]
    AlreadyQueued(String),
    /// Its body was dropped (handled without `keep_done_bodies`, purged, or
    /// removed by a `message.deleted`): there is nothing to run.
    #[error("delivery {0} has no stored body (dropped once handled, purged, or removed when its message was deleted), so it cannot be replayed; ask Cariosan to redeliver it")]
    NoBody(String),
    /// PostgreSQL failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The [`Service`] made by [`Inbox::service`]: behind a verification layer,
/// it stores each verified delivery and answers `202 queued` (a new
/// delivery) or `200 duplicate` (one stored before), only after the row
/// committed; `503 store_unavailable` when it could not be stored.
#[derive(Clone, Debug)]
pub struct InboxService {
    inbox: Inbox,
}

impl InboxService {
    /// The inbox it stores into.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }
}

/// How soon the sender should retry when the inbox could not store.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The SQLSTATE `deletion_recorded` raises outside `READ COMMITTED`.
const NEEDS_READ_COMMITTED: &str = "CW001";

/// Generic over the body so that it mounts like any axum service
/// (`post_service(inbox.service()).layer(verification)`); the body it reads
/// is the one the verification layer already read and bounded, since
/// nothing else inserts a [`VerifiedDelivery`].
impl<B> Service<Request<B>> for InboxService
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<BytesBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<BytesBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inbox = self.inbox.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let Some(delivery) = parts.extensions.get::<VerifiedDelivery>() else {
                return Ok(crate::delivery::not_verified());
            };
            let Ok(body) = body.collect().await.map(|collected| collected.to_bytes()) else {
                return Ok(answer(StatusCode::BAD_REQUEST, "body_read_failed", None));
            };
            Ok(match inbox.ingest(delivery, &body).await {
                Ok(true) => {
                    tracing::info!("stored in the inbox: acknowledged, to be handled by a worker");
                    answer(StatusCode::ACCEPTED, "queued", None)
                }
                Ok(false) => {
                    tracing::info!("already in the inbox: acknowledged as a duplicate");
                    answer(StatusCode::OK, "duplicate", None)
                }
                Err(error) => {
                    crate::metrics::store_error("inbox_ingest");
                    tracing::error!(%error, "could not store the delivery in the inbox: answering 503");
                    answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        Some(STORE_RETRY_AFTER),
                    )
                }
            })
        })
    }
}
