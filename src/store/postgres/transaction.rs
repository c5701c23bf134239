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
use time::OffsetDateTime;

use crate::store::StoreError;

/// How long a rollback may take before the connection is closed instead:
/// a backend that does not answer by then is stopped or gone.
pub(crate) const ROLLBACK_WAIT: Duration = Duration::from_millis(300);

/// How long a cancel or terminate request may take, its connection
/// included.
pub(crate) const SIGNAL_WAIT: Duration = Duration::from_millis(300);

/// Added to a run's limit for the server-side `statement_timeout` and
/// `lock_timeout`, so that the crate's own cancel comes first and these
/// only catch a process that cannot send it.
const SERVER_LIMIT_MARGIN: Duration = Duration::from_secs(1);

/// A server session: its pid, and when it started, since a pid can be
/// reused by a later session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) pid: i32,
    pub(crate) started: OffsetDateTime,
}

/// A transaction this crate opened on a pool connection: `READ COMMITTED`
/// whatever the database's default, with its session known so that a
/// statement in flight can be cancelled from another connection.
pub(crate) struct RunTx {
    conn: Option<PoolConnection<Postgres>>,
    pool: PgPool,
    session: Option<Session>,
    /// A cancel was sent whose arrival is not confirmed: it may still hit a
    /// later statement, so the connection must not serve anyone else.
    unconfirmed_signal: bool,
}

/// Why a commit did not succeed.
#[derive(Debug)]
pub(crate) enum CommitError {
    /// PostgreSQL refused it: nothing was committed.
    Failed(sqlx::Error),
    /// Its answer was lost (the connection broke, the session ended while
    /// committing): it may have committed.
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

/// How a statement sent after a cancel went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Done,
    /// PostgreSQL refused it, or did not answer in time.
    NotDone,
    /// The connection is broken: its session is gone with it.
    Broken,
}

impl RunTx {
    /// Waits at most `acquire_timeout` for a pool connection, then opens a
    /// `READ COMMITTED` transaction on it, with `statement_timeout` and
    /// `lock_timeout` set to `limit` (plus a margin) when given, and learns
    /// its session: one round trip.
    pub(crate) async fn begin(
        pool: &PgPool,
        acquire_timeout: Duration,
        limit: Option<Duration>,
    ) -> Result<RunTx, StoreError> {
        let conn = acquire(pool, acquire_timeout).await?;
        Self::begin_on(conn, pool, limit).await
    }

    /// [`begin`](Self::begin) on a connection taken from `pool` already.
    pub(crate) async fn begin_on(
        conn: PoolConnection<Postgres>,
        pool: &PgPool,
        limit: Option<Duration>,
    ) -> Result<RunTx, StoreError> {
        // From here on a drop rolls back: the BEGIN may be on the wire.
        let mut tx = RunTx {
            conn: Some(conn),
            pool: pool.clone(),
            session: None,
            unconfirmed_signal: false,
        };
        let limits = match limit {
            Some(limit) => {
                let limit = limit.saturating_add(SERVER_LIMIT_MARGIN);
                let ms = limit.as_millis().min(i32::MAX as u128);
                format!("SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}; ")
            }
            None => String::new(),
        };
        let sql = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; {limits}\
             SELECT pid, backend_start FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid())"
        );
        tx.session = Some(opening(&mut tx, sql).await.map_err(super::postgres_error)?);
        Ok(tx)
    }

    /// The transaction's session.
    pub(crate) fn session(&self) -> Option<Session> {
        self.session
    }

    /// Commits. The connection goes back to the pool when PostgreSQL
    /// answered; when the answer was lost it is closed.
    pub(crate) async fn commit(mut self) -> Result<(), CommitError> {
        let conn = self.conn.as_mut().expect("open until finished");
        match sqlx::query("COMMIT").execute(&mut **conn).await {
            Ok(_) => {
                if let Some(conn) = self.conn.take() {
                    release(conn, self.unconfirmed_signal);
                }
                Ok(())
            }
            Err(sqlx::Error::Database(error)) if !ends_the_session(&*error) => {
                // A refused COMMIT ends the transaction; an error left by a
                // statement dropped earlier means it was never sent. Either
                // way nothing committed, and a ROLLBACK makes sure of it.
                self.rollback().await;
                Err(CommitError::Failed(sqlx::Error::Database(error)))
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
            let ending = Ending::new(self, false);
            end_in_task(conn, ending).await;
        }
    }

    /// Gives up on this transaction at once: terminates its session (its
    /// transaction aborts, its locks go) and closes the connection.
    pub(crate) async fn abandon(mut self) {
        if let Some(session) = self.session {
            terminate(&self.pool, session).await;
        }
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }

    /// Cancels the statement running on this transaction's session, if
    /// any, from another connection, so that the transaction can go on (to
    /// a `ROLLBACK TO SAVEPOINT`, say).
    pub(crate) async fn cancel_statement(&mut self) {
        if let Some(session) = self.session {
            if !cancel(&self.pool, session).await {
                self.note_unconfirmed_signal();
            }
        }
    }

    /// A cancel for this session was sent and not confirmed: the connection
    /// is closed when the transaction ends.
    pub(crate) fn note_unconfirmed_signal(&mut self) {
        self.unconfirmed_signal = true;
    }

    /// Runs `sql` (a `ROLLBACK TO SAVEPOINT`, say) within
    /// [`ROLLBACK_WAIT`]: after a cancelled or dropped statement, its
    /// error may be what the first try reads, so it is tried again.
    pub(crate) async fn execute_after_cancel(&mut self, sql: &'static str) -> bool {
        match self.conn.as_mut() {
            Some(conn) => run_after_cancel(conn, sql).await == Ended::Done,
            None => false,
        }
    }
}

/// Whether a database error means the session is ending (`57P..`: an
/// admin shutdown or terminate, a crash, an idle timeout; `08...`: the
/// connection failed), unlike a cancelled statement (`57014`): a COMMIT
/// answered so may have committed.
fn ends_the_session(error: &dyn sqlx::error::DatabaseError) -> bool {
    error
        .code()
        .is_some_and(|code| code.starts_with("57P") || code.starts_with("08"))
}

/// Back to the pool, unless a signal may still arrive for its session.
fn release(conn: PoolConnection<Postgres>, unconfirmed_signal: bool) {
    if unconfirmed_signal {
        drop(conn.detach());
    }
}

/// A pool connection within `timeout`.
pub(crate) async fn acquire(
    pool: &PgPool,
    timeout: Duration,
) -> Result<PoolConnection<Postgres>, StoreError> {
    match tokio::time::timeout(timeout, pool.acquire()).await {
        Ok(conn) => conn.map_err(super::postgres_error),
        Err(_elapsed) => Err(StoreError::new(
            "PostgreSQL: no pool connection within the acquire timeout",
        )),
    }
}

/// A pool connection for autocommit statements. Dropped before
/// [`release`](Self::release) (its statement's future cut off), it is
/// closed rather than returned: a statement may be half-sent on it, or its
/// answer unread. An autocommit statement leaves no transaction open.
pub(crate) struct Autocommit(Option<PoolConnection<Postgres>>);

impl Autocommit {
    /// Waits at most `timeout` for a pool connection.
    pub(crate) async fn acquire(pool: &PgPool, timeout: Duration) -> Result<Self, StoreError> {
        acquire(pool, timeout).await.map(|conn| Self(Some(conn)))
    }

    /// Returns the connection to the pool.
    pub(crate) fn release(mut self) {
        drop(self.0.take());
    }
}

impl Deref for Autocommit {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.0.as_ref().expect("held until released")
    }
}

impl DerefMut for Autocommit {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.0.as_mut().expect("held until released")
    }
}

impl Drop for Autocommit {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(conn.detach());
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
                let ending = Ending {
                    pool: self.pool.clone(),
                    session: self.session,
                    cancel: true,
                    unconfirmed_signal: self.unconfirmed_signal,
                };
                runtime.spawn(async move { ending.finish(conn).await });
            }
            // Closing the socket makes PostgreSQL abort the transaction.
            Err(_) => drop(conn.detach()),
        }
    }
}

/// How a transaction whose owner is gone or was cut off is ended.
struct Ending {
    pool: PgPool,
    session: Option<Session>,
    cancel: bool,
    unconfirmed_signal: bool,
}

impl Ending {
    fn new(tx: RunTx, cancel: bool) -> Self {
        Self {
            pool: tx.pool.clone(),
            session: tx.session,
            cancel,
            unconfirmed_signal: tx.unconfirmed_signal,
        }
    }

    /// Cancels the statement it may be running (when `cancel`), rolls back
    /// within [`ROLLBACK_WAIT`], or else terminates the session and closes
    /// the connection. It never goes back to the pool inside a transaction,
    /// nor while a signal for its session may still arrive.
    async fn finish(mut self, mut conn: PoolConnection<Postgres>) {
        if let (true, Some(session)) = (self.cancel, self.session) {
            if !signal(&self.pool, session, Signal::Cancel).await {
                self.unconfirmed_signal = true;
            }
        }
        match run_after_cancel(&mut conn, "ROLLBACK").await {
            Ended::Done => release(conn, self.unconfirmed_signal),
            // The session went with the connection: nothing to terminate.
            Ended::Broken => drop(conn.detach()),
            Ended::NotDone => {
                tracing::warn!(
                    "a transaction could not be rolled back in time: terminating its session"
                );
                if let Some(session) = self.session {
                    signal(&self.pool, session, Signal::Terminate).await;
                }
                drop(conn.detach());
            }
        }
    }
}

/// [`Ending::finish`] in a task of its own, awaited: a caller dropped
/// half-way cannot return the connection to the pool before its ROLLBACK
/// was sent.
async fn end_in_task(conn: PoolConnection<Postgres>, ending: Ending) {
    let _ = tokio::spawn(async move { ending.finish(conn).await }).await;
}

/// Runs the opening statements, several in one simple query, and reads
/// the session they end with. Boxed, like [`run_after_cancel`].
fn opening(conn: &mut PgConnection, sql: String) -> BoxFuture<'_, Result<Session, sqlx::Error>> {
    Box::pin(async move {
        let row = sqlx::Executor::fetch_one(conn, sql.as_str()).await?;
        Ok(Session {
            pid: sqlx::Row::try_get(&row, 0)?,
            started: sqlx::Row::try_get(&row, 1)?,
        })
    })
}

/// Boxed: the Send bound of the spawned futures that await it cannot be
/// inferred through sqlx's executor lifetimes otherwise.
fn run_after_cancel<'a>(conn: &'a mut PgConnection, sql: &'static str) -> BoxFuture<'a, Ended> {
    Box::pin(async move {
        let attempts = async move {
            // A cancelled statement's error, and then its end, are read by
            // the tries before the one that sends `sql`.
            for _ in 0..3 {
                match sqlx::query(sql).execute(&mut *conn).await {
                    Ok(_) => return Ended::Done,
                    Err(sqlx::Error::Database(error)) if !ends_the_session(&*error) => continue,
                    Err(_) => return Ended::Broken,
                }
            }
            Ended::NotDone
        };
        tokio::time::timeout(ROLLBACK_WAIT, attempts)
            .await
            .unwrap_or(Ended::NotDone)
    })
}

/// Cancels the statement `session` is running, if any; whether PostgreSQL
/// confirmed it.
pub(crate) async fn cancel(pool: &PgPool, session: Session) -> bool {
    signal(pool, session, Signal::Cancel).await
}

/// Ends `session`, whatever it is doing: its transaction aborts and its
/// locks go.
pub(crate) async fn terminate(pool: &PgPool, session: Session) {
    signal(pool, session, Signal::Terminate).await;
}

#[derive(Clone, Copy)]
enum Signal {
    Cancel,
    Terminate,
}

/// Sends `pg_cancel_backend` or `pg_terminate_backend` to `session` from
/// another connection (an idle one of the pool, or one of its own when the
/// pool has none free or the idle one fails), within [`SIGNAL_WAIT`].
/// Whether PostgreSQL answered: `false` means the signal may or may not
/// still arrive.
async fn signal(pool: &PgPool, session: Session, signal: Signal) -> bool {
    let sql = match signal {
        Signal::Cancel => {
            "SELECT pg_catalog.pg_cancel_backend(pid) FROM pg_catalog.pg_stat_activity \
             WHERE pid = $1 AND backend_start = $2"
        }
        Signal::Terminate => {
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
             WHERE pid = $1 AND backend_start = $2"
        }
    };
    let pool = pool.clone();
    let sent = tokio::time::timeout(SIGNAL_WAIT, async move {
        if let Some(mut conn) = pool.try_acquire() {
            let sent = sqlx::query(sql)
                .bind(session.pid)
                .bind(session.started)
                .execute(&mut *conn)
                .await;
            if sent.is_ok() {
                return Ok(());
            }
        }
        let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
        let sent = sqlx::query(sql)
            .bind(session.pid)
            .bind(session.started)
            .execute(&mut conn)
            .await
            .map(drop);
        let _ = conn.close().await;
        sent
    })
    .await;
    match sent {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(error = %super::postgres_error(error), "could not signal a run's PostgreSQL session");
            false
        }
        Err(_elapsed) => {
            tracing::warn!("could not signal a run's PostgreSQL session in time");
            false
        }
    }
}
