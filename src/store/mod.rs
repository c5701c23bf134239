//! Idempotency stores: where the delivery layer claims delivery ids under
//! a lease and remembers the handled ones.
//!
//! [`LeaseBackend`](crate::delivery::LeaseBackend) adapts any
//! [`IdempotencyStore`] to the delivery layer's backend contract: before the
//! handlers run it *claims* the id with a lease; a copy that arrives while
//! the claim is held is answered `503 delivery_in_progress`, and a copy that
//! arrives after success `200 duplicate`. When the handlers succeed the id
//! is *completed* (remembered for the retention, 3 days by default, longer
//! than Cariosan retries); otherwise the claim is *released* so that the
//! sender's retry runs the handlers again. While the handlers run, a store
//! that [needs renewal](IdempotencyStore::needs_renewal) has its lease
//! renewed from a task of its own; a renewal refused, or none landing in
//! time, cancels the run. If the process dies, the lease runs out and the id
//! can be claimed again.
//!
//! | | survives a receiver restart | shared by replicas | two copies at once |
//! |---|---|---|---|
//! | [`MemoryStore`], the default | no: every id is forgotten | no | never, in one process |
//! | `RedisStore` (feature `redis`) | yes | yes | not while Redis is reachable and keeps its data |
//!
//! Neither makes a handler's own effects exactly once: a completion lost
//! after the handlers succeeded (a crash in between, Redis losing data) lets
//! a redelivery run them again. Make handlers idempotent on the delivery id,
//! or use `store::postgres` (feature `postgres`), which is not a lease
//! store: it records the delivery in the handlers' own transaction.
//!
//! Implement [`IdempotencyStore`] for anything else; the operations must be
//! atomic per id.

mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;

use std::fmt;
use std::time::Duration;

pub use futures_util::future::BoxFuture;

pub use memory::{MemoryStore, DEFAULT_MAX_ENTRIES};
#[cfg(feature = "redis")]
pub use redis::RedisStore;

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The id is now claimed by the caller, until the lease runs out.
    Claimed(ClaimToken),
    /// Another claim holds the id; it may be retried after about this long.
    InProgress {
        /// How long the current claim's lease still runs, if known.
        remaining: Option<Duration>,
    },
    /// The id was handled successfully already.
    Completed,
}

/// An atomic claim / complete / release store keyed by delivery id.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `id` for `lease` unless it is completed or claimed by a live
    /// lease.
    fn claim<'a>(
        &'a self,
        id: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;

    /// Extends a claim's lease; `Ok(false)` when `token` no longer holds it.
    fn renew<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Marks `id` handled, remembered for `retention`, if `token` still
    /// holds its claim or nothing does (a lease that ran out, a store that
    /// lost its data). `Ok(false)` when another claim holds it now: a
    /// completion that comes too late changes nothing.
    fn complete<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Drops the claim if `token` still holds it, so a retry can run.
    fn release<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Whether a claim must be renewed while its handlers run. A store in
    /// the process's own memory needs none: its claims die with the process,
    /// and the run itself completes or releases them.
    fn needs_renewal(&self) -> bool {
        true
    }
}

/// Proof of one claim: only its holder may renew, complete or release it.
///
/// It carries the claim's [generation](Self::generation), a number that
/// grows with every claim of an id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClaimToken {
    text: [u8; 32],
    generation: u64,
}

impl ClaimToken {
    /// A fresh token, unique across processes: a random per-process
    /// prefix (read from the OS once) and a counter, so a claim costs no
    /// system call.
    pub fn random() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::OnceLock;
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(|| {
            let mut bytes = [0u8; 8];
            // Without an OS random source, fall back to what still tells
            // processes apart.
            if getrandom::fill(&mut bytes).is_err() {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                return nanos ^ u64::from(std::process::id()).rotate_left(32);
            }
            u64::from_le_bytes(bytes)
        });
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&prefix.to_be_bytes());
        raw[8..].copy_from_slice(&count.to_be_bytes());
        let mut text = [0u8; 32];
        hex::encode_to_slice(raw, &mut text).expect("32 hex digits for 16 bytes");
        Self {
            text,
            generation: 0,
        }
    }

    /// The token as text: 32 lowercase hexadecimal digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text).expect("hex digits are ASCII")
    }

    /// This token, for the claim of this generation.
    #[must_use]
    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// The claim's generation: larger for every later claim of the same
    /// id (a store's clock in microseconds), so that a system of your own
    /// can refuse a write from a run whose claim was taken over.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl fmt::Debug for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClaimToken(..)")
    }
}

/// A store could not answer (Redis is down, say). The layer answers `503`,
/// never an acknowledgement.
///
/// `Display` includes the store's own error; [`inner`](Self::inner) gives
/// it to inspect.
#[derive(Debug, thiserror::Error)]
#[error("Failed to reach the idempotency store: {0}")]
pub struct StoreError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl StoreError {
    /// Wraps the store's own error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(error.into())
    }

    /// The store's own error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}
