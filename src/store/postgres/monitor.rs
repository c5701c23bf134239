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

/// How often the sessions of the runs in progress are checked.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// How long one check (its connection included) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A run whose session no check could confirm for this long (PostgreSQL is
/// unreachable from here) is cancelled as if it were gone.
const UNCONFIRMED_LIMIT: Duration = Duration::from_secs(2);

/// How long the watcher keeps its connection once no run is in progress.
const IDLE_EXIT: Duration = Duration::from_secs(10);

/// The longest a run goes on after its PostgreSQL session ended: the
/// watcher sees a session gone at its next check (every 500 ms), and
/// cancels every run whose session it could not confirm for 2 s when it
/// cannot reach PostgreSQL.
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
    pid: i32,
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

    /// Watches the session of backend `pid` until the returned [`Watch`]
    /// drops. Must be called on a tokio runtime.
    pub(crate) fn watch(&self, pid: i32) -> Watch {
        let lost = CancellationToken::new();
        let mut state = self.state();
        let key = state.next_key;
        state.next_key += 1;
        state.runs.insert(
            key,
            Watched {
                pid,
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
        tokio::time::sleep(CHECK_EVERY).await;
        let watched: Vec<(u64, i32)> = {
            let mut state = monitor.state();
            if state.runs.is_empty() {
                if idle_since.elapsed() >= IDLE_EXIT {
                    state.checking = false;
                    break;
                }
                continue;
            }
            state.runs.iter().map(|(key, w)| (*key, w.pid)).collect()
        };
        idle_since = Instant::now();
        let checked_at = Instant::now();
        let pids: Vec<i32> = watched.iter().map(|(_, pid)| *pid).collect();
        let alive =
            tokio::time::timeout(CHECK_TIMEOUT, alive_of(&monitor.0.pool, &mut conn, &pids)).await;
        let mut state = monitor.state();
        match alive {
            Ok(Ok(alive)) => {
                for (key, pid) in watched {
                    let Some(run) = state.runs.get_mut(&key) else {
                        continue;
                    };
                    if alive.contains(&pid) {
                        run.confirmed = checked_at;
                    } else if !run.lost.is_cancelled() {
                        tracing::error!(
                            pid,
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
                for run in state.runs.values() {
                    if run.confirmed.elapsed() >= UNCONFIRMED_LIMIT && !run.lost.is_cancelled() {
                        tracing::error!(
                            pid = run.pid,
                            "a run's PostgreSQL session could not be confirmed: cancelling the run"
                        );
                        run.lost.cancel();
                    }
                }
            }
        }
    }
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
}

/// Which of `pids` are sessions of the server now.
async fn alive_of(
    pool: &PgPool,
    conn: &mut Option<PgConnection>,
    pids: &[i32],
) -> Result<Vec<i32>, sqlx::Error> {
    if conn.is_none() {
        *conn = Some(PgConnection::connect_with(&pool.connect_options()).await?);
    }
    let conn = conn.as_mut().expect("connected above");
    sqlx::query_scalar("SELECT pid FROM pg_catalog.pg_stat_activity WHERE pid = ANY($1)")
        .bind(pids)
        .fetch_all(conn)
        .await
}
