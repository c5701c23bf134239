//! A transaction on a pooled connection that a dropped future can never
//! leave open.
//!
//! sqlx counts a transaction only once its `BEGIN` has answered (its
//! #4393): a `BEGIN` dropped half-way returns the connection to the pool
//! inside a server-side transaction, and the application's next autocommit
//! write on it is silently rolled back later. And a statement whose future
//! is dropped goes on running on the server, holding its locks. So the
//! crate never hands a connection back in a transaction: a [`RunTx`] that
//! is dropped before its commit or rollback cancels what may still run on
//! its backend, rolls back within a bound, and closes the connection when
//! it cannot.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use sqlx::Connection;

use crate::store::StoreError;

/// How long a rollback may take before the connection is closed instead:
/// a backend that does not answer by then is stopped or gone.
pub(crate) const ROLLBACK_WAIT: Duration = Duration::from_millis(500);

/// How long a cancel or terminate request may take, its connection
/// included.
const SIGNAL_WAIT: Duration = Duration::from_millis(500);

/// Added to a run's limit for the server-side `statement_timeout` and
/// `lock_timeout`, so that the crate's own cancel comes first and these
/// only catch a process that cannot send it.
const SERVER_LIMIT_MARGIN: Duration = Duration::from_secs(1);

/// A transaction this crate opened on a pool connection: `READ COMMITTED`
/// whatever the database's default, with the backend's pid known so that
/// a statement in flight can be cancelled from another connection.
pub(crate) struct RunTx {
    conn: Option<PoolConnection<Postgres>>,
    pool: PgPool,
    pid: Option<i32>,
}

/// Why a commit did not succeed.
#[derive(Debug)]
pub(crate) enum CommitError {
    /// PostgreSQL refused it: nothing was committed.
    Failed(sqlx::Error),
    /// Its answer was lost (the connection broke): it may have committed.
    Ambiguous(sqlx::Error),
}

impl CommitError {
    pub(crate) fn into_store_error(self) -> StoreError {
        match self {
            Self::Failed(error) => super::postgres_error(error),
            Self::Ambiguous(error) => StoreError::new(format!(
                "PostgreSQL: the commit's answer was lost, so it may or may not have committed: {error}"
            )),
        }
    }
}

impl RunTx {
    /// Waits at most `acquire_timeout` for a pool connection, then opens a
    /// `READ COMMITTED` transaction on it, with `statement_timeout` and
    /// `lock_timeout` set to `limit` (plus a margin) when given, and learns
    /// its backend's pid: one round trip.
    pub(crate) async fn begin(
        pool: &PgPool,
        acquire_timeout: Duration,
        limit: Option<Duration>,
    ) -> Result<RunTx, StoreError> {
        let conn = match tokio::time::timeout(acquire_timeout, pool.acquire()).await {
            Ok(conn) => conn.map_err(super::postgres_error)?,
            Err(_elapsed) => {
                return Err(StoreError::new(
                    "PostgreSQL: no pool connection within the acquire timeout",
                ))
            }
        };
        // From here on a drop rolls back: the BEGIN may be on the wire.
        let mut tx = RunTx {
            conn: Some(conn),
            pool: pool.clone(),
            pid: None,
        };
        let limits = match limit {
            Some(limit) => {
                let ms = (limit + SERVER_LIMIT_MARGIN)
                    .as_millis()
                    .min(i32::MAX as u128);
                format!("SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}; ")
            }
            None => String::new(),
        };
        let sql = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; {limits}SELECT pg_catalog.pg_backend_pid()"
        );
        tx.pid = Some(opening(&mut tx, sql).await.map_err(super::postgres_error)?);
        Ok(tx)
    }

    /// The backend's pid.
    pub(crate) fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// Commits. The connection goes back to the pool when PostgreSQL
    /// answered; when the answer was lost it is closed.
    pub(crate) async fn commit(mut self) -> Result<(), CommitError> {
        let conn = self.conn.as_mut().expect("open until finished");
        match sqlx::query("COMMIT").execute(&mut **conn).await {
            Ok(_) => {
                self.conn = None;
                Ok(())
            }
            Err(error @ sqlx::Error::Database(_)) => {
                // A refused COMMIT ends the transaction; an error left by a
                // statement dropped earlier means it was never sent. Either
                // way nothing committed, and a ROLLBACK makes sure of it.
                self.rollback().await;
                Err(CommitError::Failed(error))
            }
            Err(error) => {
                crate::metrics::store_error("commit_ambiguous");
                tracing::error!(%error, "a COMMIT's answer was lost: it may or may not have committed");
                if let Some(conn) = self.conn.take() {
                    drop(conn.detach());
                }
                Err(CommitError::Ambiguous(error))
            }
        }
    }

    /// Rolls back, within [`ROLLBACK_WAIT`]; closes the connection when it
    /// cannot.
    pub(crate) async fn rollback(mut self) {
        if let Some(conn) = self.conn.take() {
            end_in_task(conn, self.pool.clone(), self.pid, false).await;
        }
    }

    /// Rolls back after the run's handlers were cut off: a statement of
    /// theirs may still be running on the server, holding locks. Cancels
    /// it first, then rolls back within [`ROLLBACK_WAIT`]; if that fails,
    /// terminates the backend and closes the connection.
    pub(crate) async fn cancel_and_rollback(mut self) {
        if let Some(conn) = self.conn.take() {
            end_in_task(conn, self.pool.clone(), self.pid, true).await;
        }
    }

    /// Cancels the statement running on this transaction's backend, if any,
    /// from another connection, so that the transaction can go on (to a
    /// `ROLLBACK TO SAVEPOINT`, say).
    pub(crate) async fn cancel_statement(&self) {
        if let Some(pid) = self.pid {
            signal_backend(self.pool.clone(), pid, Signal::Cancel).await;
        }
    }

    /// Runs `sql` (a rollback, a `ROLLBACK TO SAVEPOINT`) within
    /// [`ROLLBACK_WAIT`], after a cancelled statement: its error may be
    /// what the first try reads, so it is tried again.
    pub(crate) async fn execute_after_cancel(&mut self, sql: &'static str) -> bool {
        match self.conn.as_mut() {
            Some(conn) => run_after_cancel(conn, sql).await,
            None => false,
        }
    }
}

impl Deref for RunTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_deref().expect("open until finished")
    }
}

impl DerefMut for RunTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_deref_mut().expect("open until finished")
    }
}

impl Drop for RunTx {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let (pool, pid) = (self.pool.clone(), self.pid);
                runtime.spawn(async move { finish_abandoned(conn, pool, pid, true).await });
            }
            // Closing the socket makes PostgreSQL abort the transaction.
            Err(_) => drop(conn.detach()),
        }
    }
}

/// [`finish_abandoned`] in a task of its own, awaited: a caller dropped
/// half-way cannot return the connection to the pool before its ROLLBACK
/// was sent.
async fn end_in_task(conn: PoolConnection<Postgres>, pool: PgPool, pid: Option<i32>, cancel: bool) {
    let _ = tokio::spawn(async move { finish_abandoned(conn, pool, pid, cancel).await }).await;
}

/// Ends a transaction: cancel the statement it may be running (when
/// `cancel`, for an owner that is gone or was cut off), roll back within
/// [`ROLLBACK_WAIT`], or else terminate the backend and close the
/// connection. It never goes back to the pool inside a transaction.
async fn finish_abandoned(
    mut conn: PoolConnection<Postgres>,
    pool: PgPool,
    pid: Option<i32>,
    cancel: bool,
) {
    if let (true, Some(pid)) = (cancel, pid) {
        signal_backend(pool.clone(), pid, Signal::Cancel).await;
    }
    if run_after_cancel(&mut conn, "ROLLBACK").await {
        return;
    }
    tracing::warn!("a transaction could not be rolled back in time: closing its connection");
    if let Some(pid) = pid {
        signal_backend(pool, pid, Signal::Terminate).await;
    }
    drop(conn.detach());
}

/// Runs the opening statements, several in one simple query, and reads
/// the pid they end with. Boxed, like [`run_after_cancel`].
fn opening(conn: &mut PgConnection, sql: String) -> BoxFuture<'_, Result<i32, sqlx::Error>> {
    Box::pin(async move {
        let row = sqlx::Executor::fetch_one(conn, sql.as_str()).await?;
        sqlx::Row::try_get(&row, 0)
    })
}

/// Boxed: the Send bound of the spawned futures that await it cannot be
/// inferred through sqlx's executor lifetimes otherwise.
fn run_after_cancel<'a>(conn: &'a mut PgConnection, sql: &'static str) -> BoxFuture<'a, bool> {
    Box::pin(async move {
        let attempts = async move {
            // A cancelled statement's error, and then its end, are read by
            // the tries before the one that sends `sql`.
            for _ in 0..3 {
                match sqlx::query(sql).execute(&mut *conn).await {
                    Ok(_) => return true,
                    Err(sqlx::Error::Database(_)) => continue,
                    Err(_) => return false,
                }
            }
            false
        };
        tokio::time::timeout(ROLLBACK_WAIT, attempts)
            .await
            .unwrap_or(false)
    })
}

#[derive(Clone, Copy)]
enum Signal {
    Cancel,
    Terminate,
}

/// Sends `pg_cancel_backend` or `pg_terminate_backend` for `pid` from
/// another connection: an idle one of the pool, or, when the pool has
/// none free (every connection held by a run), one of its own.
async fn signal_backend(pool: PgPool, pid: i32, signal: Signal) {
    let sql = match signal {
        Signal::Cancel => "SELECT pg_catalog.pg_cancel_backend($1)",
        Signal::Terminate => "SELECT pg_catalog.pg_terminate_backend($1)",
    };
    let sent = tokio::time::timeout(SIGNAL_WAIT, async move {
        match pool.try_acquire() {
            Some(mut conn) => sqlx::query(sql)
                .bind(pid)
                .execute(&mut *conn)
                .await
                .map(drop),
            None => {
                let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
                let sent = sqlx::query(sql)
                    .bind(pid)
                    .execute(&mut conn)
                    .await
                    .map(drop);
                let _ = conn.close().await;
                sent
            }
        }
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(error = %super::postgres_error(error), "could not signal a run's PostgreSQL backend")
        }
        Err(_elapsed) => tracing::warn!("could not signal a run's PostgreSQL backend in time"),
    }
}
