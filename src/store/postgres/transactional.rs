//! The transactional backend: each delivery in the handlers' own
//! transaction, inline with the sender's request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnection, PgPool};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use super::monitor::{SessionMonitor, Watch};
use super::transaction::{cancel, terminate, CommitError, RunTx, Session, ROLLBACK_WAIT};
use super::{
    checked_retention, checked_schema, checked_wait, migrations, postgres_error,
    DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_SCHEMA, NO_TENANT,
};
use crate::delivery::{Begin, DeliveryBackend, DeliveryGuard, Finish, DEFAULT_RETENTION};
use crate::dispatch::{DeliveryContext, FromDelivery, HandlerError, ResourceType};
use crate::store::StoreError;
use crate::verify::VerifiedDelivery;

/// A delivery backend that records each delivery in the handlers' own
/// PostgreSQL transaction: see the [module docs](super).
///
/// Cheap to clone: the pool is shared.
#[derive(Clone)]
pub struct PostgresBackend {
    pool: PgPool,
    schema: Arc<str>,
    retention: Duration,
    acquire_timeout: Duration,
    monitor: SessionMonitor,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("schema", &self.schema)
            .field("retention", &self.retention)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish_non_exhaustive()
    }
}

impl PostgresBackend {
    /// A backend on your pool, in the default schema.
    pub fn new(pool: PgPool) -> Self {
        Self {
            monitor: SessionMonitor::new(pool.clone()),
            pool,
            schema: DEFAULT_SCHEMA.into(),
            retention: DEFAULT_RETENTION,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
        }
    }

    /// Keeps the crate's tables in `schema` (default `cariosan_webhooks`).
    ///
    /// # Panics
    ///
    /// If `schema` is not a plain lowercase identifier (`[a-z_][a-z0-9_]*`,
    /// at most 63 bytes): a configuration error.
    #[must_use]
    pub fn schema(mut self, schema: &str) -> Self {
        self.schema = checked_schema(schema);
        self
    }

    /// How long handled records are kept by [`prune`](Self::prune)
    /// (default 3 days, longer than Cariosan retries).
    ///
    /// # Panics
    ///
    /// If `retention` is shorter than [`MIN_RETENTION`](super::MIN_RETENTION)
    /// (48 h) or longer than a year: configuration errors.
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = checked_retention("retention", retention, false);
        self
    }

    /// A retention shorter than Cariosan's retries, knowingly: a copy that
    /// arrives after its record was pruned runs its handlers again.
    ///
    /// # Panics
    ///
    /// If `retention` is zero or longer than a year.
    #[must_use]
    pub fn retention_shorter_than_retries(mut self, retention: Duration) -> Self {
        self.retention = checked_retention("retention", retention, true);
        self
    }

    /// How long a delivery waits for a pool connection (default 2 s)
    /// before it is answered `503 store_unavailable`.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero or over a day.
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = checked_wait("acquire timeout", timeout);
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The advisory lock key [`migrate`](Self::migrate) holds, for its
    /// transaction, while it migrates: take the same key (a session or a
    /// transaction lock; they exclude each other) around your own start-up
    /// DDL, so that replicas starting together do it once.
    pub fn migration_lock_key(&self) -> i64 {
        migrations::lock_key(&self.schema)
    }

    /// Creates or upgrades the crate's tables, once, under the migration
    /// lock. Call it at start-up; nothing is created otherwise.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations::run(&self.pool, &self.schema, self.acquire_timeout).await
    }

    /// Deletes handled records older than the retention; returns how many.
    /// Call it now and then (the `receiver` example does, hourly).
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM {}.handled_deliveries WHERE handled_at < pg_catalog.now() - pg_catalog.make_interval(secs => $1)",
            self.schema
        );
        sqlx::query(&sql)
            .bind(self.retention.as_secs_f64())
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(postgres_error)
    }
}

impl DeliveryBackend for PostgresBackend {
    fn provides(&self) -> Option<Vec<ResourceType>> {
        Some(vec![ResourceType::of::<Tx>()])
    }

    fn begin<'a>(
        &'a self,
        delivery: &'a VerifiedDelivery,
        max_run_time: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>> {
        Box::pin(async move {
            let mut tx = RunTx::begin(&self.pool, self.acquire_timeout, Some(max_run_time)).await?;
            let tenant = delivery.tenant().unwrap_or(NO_TENANT);
            let id = delivery.id().as_str();
            let handled_sql = format!(
                "SELECT EXISTS (SELECT 1 FROM {}.handled_deliveries WHERE tenant = $2 AND delivery_id = $3)",
                self.schema
            );
            // A handled record is read before the lock is tried, so that a
            // copy of a handled delivery never meets a copy holding the
            // lock for its own check; neither step ever waits.
            let (handled, locked): (bool, Option<bool>) = sqlx::query_as(&format!(
                "SELECT seen.handled, CASE WHEN seen.handled THEN NULL ELSE {ADVISORY_LOCK} END \
                 FROM ({handled_sql}) AS seen (handled)"
            ))
            .bind(&*self.schema)
            .bind(tenant)
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(postgres_error)?;
            let begun = match (handled, locked) {
                (true, _) => Begin::Duplicate,
                (false, Some(true)) => {
                    // Read again under the lock: under READ COMMITTED this
                    // statement sees a copy that committed since the first.
                    let handled: bool = sqlx::query_scalar(&handled_sql)
                        .bind(&*self.schema)
                        .bind(tenant)
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(postgres_error)?;
                    if !handled {
                        let session = tx.session();
                        let watch = session.map(|session| self.monitor.watch(session));
                        return Ok(Begin::Started(Arc::new(TransactionGuard {
                            tx: Tx::new(tx),
                            pool: self.pool.clone(),
                            session,
                            unconfirmed_cancel: AtomicBool::new(false),
                            watch,
                            schema: self.schema.clone(),
                            delivery: delivery.clone(),
                        })));
                    }
                    Begin::Duplicate
                }
                (false, _) => Begin::InProgress { remaining: None },
            };
            tx.rollback().await;
            Ok(begun)
        })
    }
}

/// The delivery's advisory key, over `$1` (the schema), `$2` (the tenant)
/// and `$3` (the delivery id): receivers with their own schemas on one
/// database never block each other. Built-ins are schema-qualified, so
/// that no function on the `search_path` can stand in for them.
const ADVISORY_LOCK: &str = "pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended(\
     $1 || pg_catalog.chr(31) || $2 || pg_catalog.chr(31) || $3, 0))";

/// The delivery's open transaction, held by its run.
struct TransactionGuard {
    tx: Tx,
    /// Kept outside the transaction's lock: a task a handler spawned may
    /// still hold that lock when the run is cut off.
    pool: PgPool,
    session: Option<Session>,
    unconfirmed_cancel: AtomicBool,
    watch: Option<Watch>,
    schema: Arc<str>,
    delivery: VerifiedDelivery,
}

impl DeliveryGuard for TransactionGuard {
    fn provide(&self, resources: &mut http::Extensions) {
        resources.insert(self.tx.clone());
    }

    fn lost(&self) -> Option<BoxFuture<'static, ()>> {
        let lost = self.watch.as_ref()?.lost().clone();
        Some(Box::pin(lost.cancelled_owned()))
    }

    fn cancel(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(session) = self.session {
                if !cancel(&self.pool, session).await {
                    self.unconfirmed_cancel.store(true, Ordering::SeqCst);
                }
            }
        })
    }

    fn finish(&self, finish: Finish) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let taken = tokio::time::timeout(ROLLBACK_WAIT, self.tx.take()).await;
            let mut tx = match taken {
                Ok(Some(tx)) => tx,
                Ok(None) => {
                    return Err(StoreError::new(
                        "PostgreSQL: the delivery's transaction is gone",
                    ))
                }
                Err(_elapsed) => {
                    // Something the handlers spawned still holds it: end the
                    // session, which frees the delivery with it.
                    if let Some(session) = self.session {
                        terminate(&self.pool, session).await;
                    }
                    return Err(StoreError::new(
                        "PostgreSQL: the delivery's transaction is still in use by a task of the handlers",
                    ));
                }
            };
            if self.unconfirmed_cancel.load(Ordering::SeqCst) {
                tx.note_unconfirmed_signal();
            }
            let outcome = match finish {
                Finish::Handled => "handled",
                Finish::GivenUp => "given_up",
                _ => {
                    tx.rollback().await;
                    return Ok(());
                }
            };
            let recorded = sqlx::query(&format!(
                "INSERT INTO {}.handled_deliveries (tenant, delivery_id, event_type, outcome, attempt) \
                 VALUES ($1, $2, $3, $4, $5)",
                self.schema
            ))
            .bind(self.delivery.tenant().unwrap_or(NO_TENANT))
            .bind(self.delivery.id().as_str())
            .bind(self.delivery.event_type())
            .bind(outcome)
            .bind(self.delivery.attempt().and_then(|a| i32::try_from(a).ok()))
            .execute(&mut *tx)
            .await;
            if let Err(error) = recorded {
                tx.rollback().await;
                return Err(postgres_error(error));
            }
            tx.commit().await.map_err(CommitError::into_store_error)
        })
    }
}

/// The delivery's transaction, as a handler argument: what a handler writes
/// through [`conn`](Self::conn) commits together with the delivery's
/// "handled" record, or rolls back with it.
///
/// Never run `COMMIT` or `ROLLBACK` on it yourself: the delivery does that
/// with its outcome. After the delivery finished, `conn` is an error.
#[derive(Clone)]
pub struct Tx(Arc<Mutex<Option<RunTx>>>);

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tx(..)")
    }
}

impl Tx {
    pub(super) fn new(tx: RunTx) -> Self {
        Self(Arc::new(Mutex::new(Some(tx))))
    }

    /// The transaction back from the handlers: `conn` fails from now on.
    pub(super) async fn take(&self) -> Option<RunTx> {
        self.0.lock().await.take()
    }

    /// The transaction's connection, for `sqlx::query(..).execute(&mut *conn)`.
    /// Several handlers of one delivery take turns.
    pub async fn conn(&self) -> Result<MappedMutexGuard<'_, PgConnection>, HandlerError> {
        let guard = self.0.lock().await;
        MutexGuard::try_map(guard, |tx| tx.as_deref_mut())
            .map_err(|_| HandlerError::msg("the delivery's transaction is finished"))
    }
}

/// For unit tests of handlers that take `Tx` (features `test-util` and
/// `postgres`): the handler writes into a real transaction the test opens,
/// the test reads what it wrote through [`conn`](Tx::conn), then rolls it
/// all back.
///
/// ```no_run
/// # async fn example(pool: cariosan_webhooks::store::postgres::sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use cariosan_webhooks::model::MessageCreated;
/// use cariosan_webhooks::store::postgres::{sqlx, Tx};
/// use cariosan_webhooks::test_util::{delivery, samples};
/// use cariosan_webhooks::{Delivery, HandlerResult};
///
/// async fn save(event: Delivery<MessageCreated>, tx: Tx) -> HandlerResult {
///     let mut conn = tx.conn().await?;
///     sqlx::query("INSERT INTO messages (id) VALUES ($1)")
///         .bind(event.message.id.as_str())
///         .execute(&mut *conn)
///         .await?;
///     Ok(())
/// }
///
/// let tx = Tx::begin_for_test(&pool).await?;
/// save(delivery(samples::message_created()), tx.clone()).await.expect("saved");
/// let saved: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
///     .fetch_one(&mut *tx.conn().await.expect("open"))
///     .await?;
/// assert_eq!(saved, 1);
/// tx.rollback_for_test().await; // the database is as it was
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "test-util")]
impl Tx {
    /// Opens a transaction on `pool`, as a delivery's would be (`READ
    /// COMMITTED`), for a handler under test.
    pub async fn begin_for_test(pool: &PgPool) -> Result<Tx, StoreError> {
        RunTx::begin(pool, DEFAULT_ACQUIRE_TIMEOUT, None)
            .await
            .map(Tx::new)
    }

    /// Rolls back everything written through this transaction, and ends it.
    /// Dropping the last clone rolls back too, in the background.
    pub async fn rollback_for_test(self) {
        if let Some(tx) = self.take().await {
            tx.rollback().await;
        }
    }
}

impl<S> FromDelivery<S> for Tx {
    fn resource_type() -> Option<ResourceType> {
        Some(ResourceType::of::<Tx>())
    }

    fn from_delivery(cx: &DeliveryContext<'_, S>) -> Result<Self, HandlerError> {
        cx.resources().get::<Tx>().cloned().ok_or_else(|| {
            HandlerError::msg(
                "no PostgreSQL transaction for this delivery: the delivery layer's backend is not a PostgresBackend",
            )
        })
    }
}
