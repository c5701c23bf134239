use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use super::{BoxFuture, Claim, ClaimToken, IdempotencyStore, StoreError};

/// The key's value once the delivery was handled.
const DONE: &str = "done";

/// An idempotency store in Redis, shared by every receiver replica that
/// points at it.
///
/// Each delivery id is one key, `<prefix><id>`: a claim is the holder's
/// token with a `PX` lease, a completed delivery is `done` with the
/// retention as its expiry. Claim, renew and release are Lua scripts, so
/// each is atomic. The connection reconnects by itself; while Redis is
/// unreachable every operation fails and the layer answers `503`.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    claim: Script,
    renew: Script,
    release: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379/`), with keys
    /// prefixed `cariosan:delivery:`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::new)?;
        let connection = ConnectionManager::new(client)
            .await
            .map_err(StoreError::new)?;
        Ok(Self::from_connection(connection))
    }

    /// A store on an existing connection manager.
    pub fn from_connection(connection: ConnectionManager) -> Self {
        Self {
            connection,
            prefix: "cariosan:delivery:".to_owned(),
            claim: Script::new(
                r"local v = redis.call('GET', KEYS[1])
                  if v == ARGV[3] then return {'done', 0} end
                  if v then return {'busy', redis.call('PTTL', KEYS[1])} end
                  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                  return {'claimed', 0}",
            ),
            renew: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
                  end
                  return 0",
            ),
            release: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('DEL', KEYS[1])
                  end
                  return 0",
            ),
        }
    }

    /// Uses `prefix` before every key (default `cariosan:delivery:`).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }
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
            let token = ClaimToken::random();
            let mut connection = self.connection.clone();
            let (state, pttl): (String, i64) = self
                .claim
                .key(self.key(id))
                .arg(token.as_str())
                .arg(millis(lease))
                .arg(DONE)
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            Ok(match state.as_str() {
                "claimed" => Claim::Claimed(token),
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
            let mut connection = self.connection.clone();
            let renewed: i64 = self
                .renew
                .key(self.key(id))
                .arg(token.as_str())
                .arg(millis(lease))
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            Ok(renewed == 1)
        })
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            redis::cmd("SET")
                .arg(self.key(id))
                .arg(DONE)
                .arg("PX")
                .arg(millis(retention))
                .query_async::<()>(&mut connection)
                .await
                .map_err(StoreError::new)
        })
    }

    fn release<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            self.release
                .key(self.key(id))
                .arg(token.as_str())
                .invoke_async::<i64>(&mut connection)
                .await
                .map(drop)
                .map_err(StoreError::new)
        })
    }
}
