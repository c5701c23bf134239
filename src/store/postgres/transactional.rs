//! The transactional backend: each delivery in the handlers' own
//! transaction, inline with the sender's request.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use sqlx::Transaction;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use super::{
    checked_schema, migrations, postgres_error, DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_SCHEMA, NO_TENANT,
};
use crate::delivery::{Begin, DeliveryBackend, DeliveryGuard, Finish, DEFAULT_RETENTION};
use crate::dispatch::{DeliveryContext, FromDelivery, HandlerError};
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
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long a delivery waits for a pool connection (default 2 s)
    /// before it is answered `503 store_unavailable`.
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The session advisory lock [`migrate`](Self::migrate) holds while it
    /// migrates: take the same one around your own start-up DDL, so that
    /// replicas starting together do it once.
    pub fn migration_lock_key(&self) -> i64 {
        migrations::lock_key(&self.schema)
    }

    /// Creates or upgrades the crate's tables, once, under the migration
    /// lock. Call it at start-up; nothing is created otherwise.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations::run(&self.pool, &self.schema)
            .await
            .map_err(postgres_error)
    }

    /// Deletes handled records older than the retention; returns how many.
    /// Call it now and then (the `receiver` example does, hourly).
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM {}.handled_deliveries WHERE handled_at < now() - make_interval(secs => $1)",
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
    fn begin<'a>(
        &'a self,
        delivery: &'a VerifiedDelivery,
        _max_run_time: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>> {
        Box::pin(async move {
            let mut tx = match tokio::time::timeout(self.acquire_timeout, self.pool.begin()).await {
                Ok(result) => result.map_err(postgres_error)?,
                Err(_elapsed) => {
                    return Err(StoreError::new(
                        "PostgreSQL: no pool connection within the acquire timeout",
                    ))
                }
            };
            let id = delivery.id().as_str();
            // Never waits: a copy holding the key makes this false at once.
            let locked: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 0))",
            )
            .bind(delivery.tenant().unwrap_or(NO_TENANT))
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(postgres_error)?;
            if !locked {
                return Ok(Begin::InProgress { remaining: None });
            }
            let handled: Option<String> = sqlx::query_scalar(&format!(
                "SELECT outcome FROM {}.handled_deliveries WHERE tenant = $1 AND delivery_id = $2",
                self.schema
            ))
            .bind(delivery.tenant().unwrap_or(NO_TENANT))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(postgres_error)?;
            if handled.is_some() {
                return Ok(Begin::Duplicate);
            }
            Ok(Begin::Started(Arc::new(TransactionGuard {
                tx: Tx::new(tx),
                schema: self.schema.clone(),
                delivery: delivery.clone(),
            })))
        })
    }
}

/// The delivery's open transaction, held by its run.
struct TransactionGuard {
    tx: Tx,
    schema: Arc<str>,
    delivery: VerifiedDelivery,
}

impl DeliveryGuard for TransactionGuard {
    fn provide(&self, resources: &mut http::Extensions) {
        resources.insert(self.tx.clone());
    }

    fn finish(&self, finish: Finish) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let Some(mut tx) = self.tx.take().await else {
                return Err(StoreError::new(
                    "PostgreSQL: the delivery's transaction is gone",
                ));
            };
            let outcome = match finish {
                Finish::Handled => "handled",
                Finish::GivenUp => "given_up",
                _ => {
                    // Best effort: a rollback that fails leaves the
                    // connection to be closed, which aborts it as well.
                    let _ = tx.rollback().await;
                    return Ok(());
                }
            };
            sqlx::query(&format!(
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
            .await
            .map_err(postgres_error)?;
            tx.commit().await.map_err(postgres_error)
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
pub struct Tx(Arc<Mutex<Option<Transaction<'static, Postgres>>>>);

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tx(..)")
    }
}

impl Tx {
    pub(super) fn new(tx: Transaction<'static, Postgres>) -> Self {
        Self(Arc::new(Mutex::new(Some(tx))))
    }

    /// The transaction back from the handlers: `conn` fails from now on.
    pub(super) async fn take(&self) -> Option<Transaction<'static, Postgres>> {
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

impl<S> FromDelivery<S> for Tx {
    fn from_delivery(cx: &DeliveryContext<'_, S>) -> Result<Self, HandlerError> {
        cx.resources().get::<Tx>().cloned().ok_or_else(|| {
            HandlerError::msg(
                "no PostgreSQL transaction for this delivery: the delivery layer's backend is not a PostgresBackend",
            )
        })
    }
}
