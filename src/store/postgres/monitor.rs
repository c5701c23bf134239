//! One watcher of the PostgreSQL sessions that runs hold: a run whose
//! session is gone (`pg_terminate_backend`, a timeout on the server, a
//! failover) has lost its locks, so it must stop before a copy can start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::Connection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::transaction::Session;

/// How often the sessions of the runs in progress are checked.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// How long one check (its connection included) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A run whose session no check could confirm for this long (PostgreSQL is
/// unreachable from here) is cancelled as if it were gone. Checks are cut
/// short so that none outlasts this.
const UNCONFIRMED_LIMIT: Duration = Duration::from_secs(2);

/// How long the watcher keeps its connection once no run is in progress.
const IDLE_EXIT: Duration = Duration::from_secs(10);

/// The longest a run goes on after its PostgreSQL session ended: the
/// watcher sees a session gone at its next check (every 500 ms), and
/// cancels every run whose session it could not confirm for 2 s when it
/// cannot reach PostgreSQL; half a second more covers the cancel itself.
pub const LOST_SESSION_BOUND: Duration = Duration::from_millis(2_500);

/// Watches the sessions of the runs of one backend or inbox (and its
/// clones), with one query for all of them on a connection of its own, so
/// that an exhausted pool does not blind it. Its task runs while runs are
/// in progress.
#[derive(Clone)]
pub(crate) struct SessionMonitor(Arc<Shared>);

struct Shared {
    pool: PgPool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    runs: HashMap<u64, Watched>,
    next_key: u64,
    checking: bool,
}

struct Watched {
    session: Session,
    lost: CancellationToken,
    confirmed: Instant,
}

/// A run's registration: dropped when the run ends.
pub(crate) struct Watch {
    monitor: SessionMonitor,
    key: u64,
    lost: CancellationToken,
}

impl Watch {
    /// Cancelled when the run's session is gone, or could not be confirmed
    /// for [`UNCONFIRMED_LIMIT`].
    pub(crate) fn lost(&self) -> &CancellationToken {
        &self.lost
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.monitor.state().runs.remove(&self.key);
    }
}

impl SessionMonitor {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self(Arc::new(Shared {
            pool,
            state: Mutex::default(),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Watches `session` until the returned [`Watch`] drops. Must be
    /// called on a tokio runtime.
    pub(crate) fn watch(&self, session: Session) -> Watch {
        let lost = CancellationToken::new();
        let mut state = self.state();
        let key = state.next_key;
        state.next_key += 1;
        state.runs.insert(
            key,
            Watched {
                session,
                lost: lost.clone(),
                confirmed: Instant::now(),
            },
        );
        if !state.checking {
            state.checking = true;
            tokio::spawn(check(self.clone()));
        }
        Watch {
            monitor: self.clone(),
            key,
            lost,
        }
    }
}

async fn check(monitor: SessionMonitor) {
    let mut conn: Option<PgConnection> = None;
    let mut idle_since = Instant::now();
    loop {
        let watched: Vec<(u64, Session)> = {
            let mut state = monitor.state();
            if state.runs.is_empty() && idle_since.elapsed() >= IDLE_EXIT {
                state.checking = false;
                break;
            }
            state
                .runs
                .iter()
                .map(|(key, w)| (*key, w.session))
                .collect()
        };
        // The earliest moment a run must be confirmed by, or cancelled.
        let must_confirm_by = {
            let state = monitor.state();
            state
                .runs
                .values()
                .filter(|w| !w.lost.is_cancelled())
                .map(|w| w.confirmed + UNCONFIRMED_LIMIT)
                .min()
        };
        let next = Instant::now() + CHECK_EVERY;
        tokio::time::sleep_until(must_confirm_by.map_or(next, |by| next.min(by))).await;
        if watched.is_empty() {
            continue;
        }
        idle_since = Instant::now();
        let checked_at = Instant::now();
        let limit = must_confirm_by.map_or(CHECK_TIMEOUT, |by| {
            CHECK_TIMEOUT.min(by.saturating_duration_since(checked_at))
        });
        let pids: Vec<i32> = watched.iter().map(|(_, session)| session.pid).collect();
        let alive = tokio::time::timeout(limit, alive_of(&monitor.0.pool, &mut conn, &pids)).await;
        let mut state = monitor.state();
        match alive {
            Ok(Ok(alive)) => {
                for (key, session) in watched {
                    let Some(run) = state.runs.get_mut(&key) else {
                        continue;
                    };
                    if alive.contains(&session) {
                        run.confirmed = checked_at;
                    } else if !run.lost.is_cancelled() {
                        tracing::error!(
                            pid = session.pid,
                            "a run's PostgreSQL session is gone: cancelling the run"
                        );
                        run.lost.cancel();
                    }
                }
            }
            failed => {
                conn = None;
                match failed {
                    Ok(Err(error)) => {
                        tracing::warn!(error = %super::postgres_error(error), "could not check the runs' PostgreSQL sessions")
                    }
                    _ => tracing::warn!("could not check the runs' PostgreSQL sessions in time"),
                }
            }
        }
        for run in state.runs.values() {
            if run.confirmed.elapsed() >= UNCONFIRMED_LIMIT && !run.lost.is_cancelled() {
                tracing::error!(
                    pid = run.session.pid,
                    "a run's PostgreSQL session could not be confirmed in time: cancelling the run"
                );
                run.lost.cancel();
            }
        }
    }
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
}

/// Which sessions of `pids` the server has now: on the watcher's own
/// connection, or, when it cannot connect (the server at its connection
/// limit, say), on an idle one of the pool.
async fn alive_of(
    pool: &PgPool,
    conn: &mut Option<PgConnection>,
    pids: &[i32],
) -> Result<Vec<Session>, sqlx::Error> {
    let query = || {
        sqlx::query_as::<_, (i32, time::OffsetDateTime)>(
            "SELECT pid, backend_start FROM pg_catalog.pg_stat_activity WHERE pid = ANY($1)",
        )
        .bind(pids)
    };
    if conn.is_none() {
        match PgConnection::connect_with(&pool.connect_options()).await {
            Ok(connected) => *conn = Some(connected),
            Err(error) => {
                let Some(mut pooled) = pool.try_acquire() else {
                    return Err(error);
                };
                let rows = query().fetch_all(&mut *pooled).await?;
                return Ok(sessions(rows));
            }
        }
    }
    let conn = conn.as_mut().expect("connected above");
    Ok(sessions(query().fetch_all(conn).await?))
}

fn sessions(rows: Vec<(i32, time::OffsetDateTime)>) -> Vec<Session> {
    rows.into_iter()
        .map(|(pid, started)| Session { pid, started })
        .collect()
}
