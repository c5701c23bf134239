//! [`RedisStore`]: an idempotency store shared by replicas, and its limits.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, Script};
use tokio::time::Instant;

use super::{BoxFuture, Claim, ClaimToken, IdempotencyStore, StoreError};

/// The key's value once the delivery was handled.
const DONE: &str = "done";

/// How long a command that failed because the connection broke is retried
/// on the fresh connection by default.
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(1);

/// How long one command may wait for Redis's answer by default: a paused
/// Redis is an error, not a hang.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many completions that could not be written are kept, and retried in
/// the background, at most.
pub const MAX_PENDING_COMPLETIONS: usize = 10_000;

/// An idempotency store in Redis, shared by every receiver replica that
/// points at it.
///
/// Each delivery id is one key, `<prefix><id>`: a claim is the holder's
/// token with a `PX` lease, a completed delivery is `done` with the
/// retention as its expiry. Claim, renew, complete and release are Lua
/// scripts, so each is atomic, and each checks the caller's token: a
/// completion that comes too late never overwrites another replica's live
/// claim. Every claim carries a generation, Redis's own clock in
/// microseconds, which grows with every claim of an id, even after Redis
/// lost its data, as long as that clock does not go back: after a failover
/// to a host whose clock is behind by more than the time between two
/// claims, a later claim can carry a smaller generation.
///
/// A command that fails because the connection broke (a restart, say) is
/// retried on the fresh connection for up to a second; a claim retried that
/// way and found already applied counts as the caller's. A completion that
/// still cannot be written is retried in the background until it lands or
/// the retention passes, and meanwhile this process answers `200
/// duplicate` for that id; at most [`MAX_PENDING_COMPLETIONS`] are kept
/// that way, and past that bound a completion is only logged (a
/// redelivery would run again).
///
/// What survives what depends on Redis's persistence: with AOF and
/// `appendfsync always` a restart keeps every claim and completion; with
/// `everysec`, up to a second of them may be lost; without persistence (or
/// with RDB snapshots only), a restart loses them, so a delivery handled
/// before it may run again, and a running one may be claimed by a second
/// copy (the first is then cancelled when its renewal is refused). Where
/// database effects must happen exactly once, use `store::postgres`.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    address: Arc<str>,
    prefix: String,
    retry_window: Duration,
    pending: Arc<Mutex<HashMap<String, ClaimToken>>>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    claim: Script,
    renew: Script,
    complete: Script,
    release: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379/`), with keys
    /// prefixed `cariosan:delivery:`. Fails when Redis cannot be reached
    /// now; [`connect_lazy`](Self::connect_lazy) starts anyway.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect_lazy(url)?;
        let mut connection = store.connection.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| store.error(&e))?;
        Ok(store)
    }

    /// A store that connects on first use, so that a replica can start
    /// while Redis is down: until Redis is reachable every delivery is
    /// answered `503 store_unavailable`. Fails only on a URL that does not
    /// parse.
    pub fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::new(format!("Redis: the URL is invalid: {e}")))?;
        let address = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::new(format!("Redis at {address}: {e}")))?;
        Ok(Self::with_address(connection, address))
    }

    /// A store on an existing connection manager.
    pub fn from_connection(connection: ConnectionManager) -> Self {
        Self::with_address(connection, "(a connection manager)".to_owned())
    }

    fn with_address(connection: ConnectionManager, address: String) -> Self {
        Self {
            connection,
            address: address.into(),
            prefix: "cariosan:delivery:".to_owned(),
            retry_window: DEFAULT_RETRY_WINDOW,
            pending: Arc::default(),
            scripts: Arc::new(Scripts {
                // ARGV: token, lease ms, "done". The caller's own token
                // found means its earlier attempt landed: still its claim.
                claim: Script::new(
                    r"local v = redis.call('GET', KEYS[1])
                      local t = redis.call('TIME')
                      local generation = t[1] * 1000000 + t[2]
                      if v == ARGV[3] then return {'done', 0, 0} end
                      if v == ARGV[1] then
                        redis.call('PEXPIRE', KEYS[1], ARGV[2])
                        return {'claimed', 0, generation}
                      end
                      if v then return {'busy', redis.call('PTTL', KEYS[1]), 0} end
                      redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                      return {'claimed', 0, generation}",
                ),
                renew: Script::new(
                    r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                        return redis.call('PEXPIRE', KEYS[1], ARGV[2])
                      end
                      return 0",
                ),
                // ARGV: token, retention ms, "done". Never over another
                // holder's live claim.
                complete: Script::new(
                    r"local v = redis.call('GET', KEYS[1])
                      if v == ARGV[1] or v == false or v == ARGV[3] then
                        redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
                        return 1
                      end
                      return 0",
                ),
                release: Script::new(
                    r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                        return redis.call('DEL', KEYS[1])
                      end
                      return 0",
                ),
            }),
        }
    }

    /// Uses `prefix` before every key (default `cariosan:delivery:`).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a command that failed because the connection broke is
    /// retried (default 1 s).
    #[must_use]
    pub fn retry_window(mut self, window: Duration) -> Self {
        self.retry_window = window;
        self
    }

    /// How many completions are waiting to be written, after Redis could not
    /// take them.
    pub fn pending_completions(&self) -> usize {
        self.lock_pending().len()
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, ClaimToken>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Names Redis and its address, never the URL's password.
    fn error(&self, error: &RedisError) -> StoreError {
        StoreError::new(format!("Redis at {}: {error}", self.address))
    }

    /// Runs `op` on the connection, again on the fresh one while the error
    /// is a broken or refused connection and the retry window lasts.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = Instant::now() + self.retry_window;
        let mut backoff = Duration::from_millis(20);
        loop {
            match op(self.connection.clone()).await {
                Ok(value) => return Ok(value),
                Err(error) if transient(&error) && Instant::now() + backoff < deadline => {
                    tracing::debug!(%error, "Redis command failed on a broken connection; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(error) => return Err(self.error(&error)),
            }
        }
    }

    async fn try_complete(
        &self,
        id: &str,
        token: &ClaimToken,
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.key(id);
        let done: i64 = self
            .run(|mut connection| {
                let mut invocation = self.scripts.complete.key(&key);
                invocation
                    .arg(token.as_str())
                    .arg(millis(retention))
                    .arg(DONE);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        Ok(done == 1)
    }

    /// Keeps retrying a completion in the background until it lands, is
    /// refused, or the retention passes.
    fn complete_later(&self, id: &str, token: &ClaimToken, retention: Duration) -> bool {
        {
            let mut pending = self.lock_pending();
            if pending.len() >= MAX_PENDING_COMPLETIONS && !pending.contains_key(id) {
                return false;
            }
            pending.insert(id.to_owned(), token.clone());
        }
        let (store, id, token) = (self.clone(), id.to_owned(), token.clone());
        tokio::spawn(async move {
            let until = Instant::now() + retention;
            let mut wait = Duration::from_millis(100);
            while Instant::now() < until {
                tokio::time::sleep(wait).await;
                match store.try_complete(&id, &token, retention).await {
                    Ok(landed) => {
                        if !landed {
                            tracing::warn!(delivery_id = %id, "a late completion found another copy's claim");
                        }
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, delivery_id = %id, "a completion is still waiting for Redis");
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
            store.lock_pending().remove(&id);
        });
        true
    }
}

fn transient(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl IdempotencyStore for RedisStore {
    fn claim<'a>(
        &'a self,
        id: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            if self.lock_pending().contains_key(id) {
                return Ok(Claim::Completed);
            }
            let token = ClaimToken::random();
            let key = self.key(id);
            let (state, pttl, generation): (String, i64, u64) = self
                .run(|mut connection| {
                    let mut invocation = self.scripts.claim.key(&key);
                    invocation.arg(token.as_str()).arg(millis(lease)).arg(DONE);
                    async move { invocation.invoke_async(&mut connection).await }
                })
                .await?;
            Ok(match state.as_str() {
                "claimed" => Claim::Claimed(token.with_generation(generation)),
                "done" => Claim::Completed,
                _ => Claim::InProgress {
                    remaining: u64::try_from(pttl).ok().map(Duration::from_millis),
                },
            })
        })
    }

    fn renew<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let key = self.key(id);
            let renewed: i64 = self
                .run(|mut connection| {
                    let mut invocation = self.scripts.renew.key(&key);
                    invocation.arg(token.as_str()).arg(millis(lease));
                    async move { invocation.invoke_async(&mut connection).await }
                })
                .await?;
            Ok(renewed == 1)
        })
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            match self.try_complete(id, token, retention).await {
                Ok(landed) => Ok(landed),
                Err(error) => {
                    if self.complete_later(id, token, retention) {
                        tracing::warn!(%error, "the completion is retried in the background; this process answers duplicate meanwhile");
                        Ok(true)
                    } else {
                        Err(error)
                    }
                }
            }
        })
    }

    fn release<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = self.key(id);
            self.run(|mut connection| {
                let mut invocation = self.scripts.release.key(&key);
                invocation.arg(token.as_str());
                async move { invocation.invoke_async::<i64>(&mut connection).await }
            })
            .await
            .map(drop)
        })
    }
}
