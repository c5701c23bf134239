use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BoxFuture, Claim, ClaimToken, IdempotencyStore, StoreError};

/// The next claim generation: the wall clock in microseconds, and always
/// more than the last one this process gave.
fn next_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let previous = LAST.fetch_max(now, Ordering::Relaxed);
    if previous >= now {
        LAST.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        now
    }
}

/// `now + duration`, saturating far in the future instead of overflowing.
fn later(now: Instant, duration: Duration) -> Instant {
    now.checked_add(duration)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 60 * 60)))
        .unwrap_or(now)
}

/// How many ids [`MemoryStore::new`] remembers at most.
pub const DEFAULT_MAX_ENTRIES: usize = 250_000;

/// The default store: in this process's memory, bounded in entries.
///
/// What it keeps lives and dies with the process: a restart forgets every
/// handled id, so a delivery handled before the restart runs again if it is
/// redelivered (a captured, signed request replayed within the timestamp
/// tolerance, say). Its claims need no renewal: they end with the run that
/// holds them, or with the process.
///
/// Each entry costs its id (at most 128 bytes) plus about 100 bytes of
/// bookkeeping, so the default bound is about 60 MB at worst. When full, the
/// oldest completed ids are forgotten first (a very late duplicate of one
/// would run again); live claims are never evicted, and a store full of live
/// claims refuses new ones (answered `503`). For several replicas, or more
/// history, use the Redis store.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    max_entries: usize,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Arc<str>, Entry>,
    /// Completed ids in completion order, for expiry and eviction.
    completed: VecDeque<(Instant, Arc<str>)>,
}

#[derive(Debug)]
enum Entry {
    Claimed { token: ClaimToken, until: Instant },
    Completed { until: Instant },
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store that remembers up to [`DEFAULT_MAX_ENTRIES`] ids.
    pub fn new() -> Self {
        Self::with_max_entries(DEFAULT_MAX_ENTRIES)
    }

    /// A store that remembers up to `max_entries` ids (at least 1).
    pub fn with_max_entries(max_entries: usize) -> Self {
        Self {
            state: Mutex::default(),
            max_entries: max_entries.max(1),
        }
    }

    /// How many ids are remembered now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An estimate of the bytes the entries use: ids plus bookkeeping.
    pub fn approximate_bytes(&self) -> usize {
        let state = self.lock();
        // An id is stored once, shared by the map and the expiry queue,
        // behind an `Arc`'s two counters.
        let ids: usize = state
            .entries
            .keys()
            .map(|id| id.len() + 2 * size_of::<usize>())
            .sum();
        ids + state.entries.capacity() * (size_of::<(Arc<str>, Entry)>() + 1)
            + state.completed.capacity() * size_of::<(Instant, Arc<str>)>()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave an entry half-written:
        // every mutation is a single insert or remove.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn claim_now(&self, id: &str, lease: Duration, now: Instant) -> Result<Claim, StoreError> {
        let mut state = self.lock();
        state.expire_completed(now);
        match state.entries.get(id) {
            Some(Entry::Completed { .. }) => return Ok(Claim::Completed),
            Some(Entry::Claimed { until, .. }) if *until > now => {
                return Ok(Claim::InProgress {
                    remaining: Some(*until - now),
                })
            }
            Some(Entry::Claimed { .. }) => {}
            None => state.make_room(self.max_entries, now)?,
        }
        let token = ClaimToken::random().with_generation(next_generation());
        state.entries.insert(
            id.into(),
            Entry::Claimed {
                token: token.clone(),
                until: later(now, lease),
            },
        );
        Ok(Claim::Claimed(token))
    }
}

impl State {
    fn expire_completed(&mut self, now: Instant) {
        while let Some((until, _)) = self.completed.front() {
            if *until > now {
                break;
            }
            let (until, id) = self.completed.pop_front().expect("front exists");
            if matches!(self.entries.get(&id), Some(Entry::Completed { until: u }) if *u == until) {
                self.entries.remove(&id);
            }
        }
    }

    fn make_room(&mut self, max_entries: usize, now: Instant) -> Result<(), StoreError> {
        while self.entries.len() >= max_entries {
            match self.completed.pop_front() {
                Some((until, id)) => {
                    if matches!(self.entries.get(&id), Some(Entry::Completed { until: u }) if *u == until)
                    {
                        self.entries.remove(&id);
                    }
                }
                None => {
                    // Only claims left: drop those whose holder's lease ran
                    // out, and refuse if all are live.
                    self.entries.retain(
                        |_, entry| !matches!(entry, Entry::Claimed { until, .. } if *until <= now),
                    );
                    if self.entries.len() >= max_entries {
                        return Err(StoreError::new(
                            "the in-memory store is full of live claims",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl IdempotencyStore for MemoryStore {
    fn claim<'a>(
        &'a self,
        id: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        let result = self.claim_now(id, lease, Instant::now());
        Box::pin(std::future::ready(result))
    }

    fn renew<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut state = self.lock();
        let renewed = match state.entries.get_mut(id) {
            Some(Entry::Claimed { token: held, until }) if held == token => {
                *until = later(Instant::now(), lease);
                true
            }
            _ => false,
        };
        Box::pin(std::future::ready(Ok(renewed)))
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut state = self.lock();
        let now = Instant::now();
        let id = match state.entries.get_key_value(id) {
            Some((_, Entry::Claimed { token: held, until })) if held != token && *until > now => {
                return Box::pin(std::future::ready(Ok(false)))
            }
            Some((claimed, _)) => claimed.clone(),
            None => Arc::from(id),
        };
        let until = later(now, retention);
        state.entries.insert(id.clone(), Entry::Completed { until });
        state.completed.push_back((until, id));
        Box::pin(std::future::ready(Ok(true)))
    }

    fn release<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut state = self.lock();
        if matches!(state.entries.get(id), Some(Entry::Claimed { token: held, .. }) if held == token)
        {
            state.entries.remove(id);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn needs_renewal(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    fn claimed(claim: Claim) -> ClaimToken {
        match claim {
            Claim::Claimed(token) => token,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    #[test]
    fn claim_complete_release_and_lease_expiry() {
        let store = MemoryStore::new();
        let now = Instant::now();
        let token = claimed(store.claim_now("evt_1", LEASE, now).unwrap());
        assert!(matches!(
            store.claim_now("evt_1", LEASE, now).unwrap(),
            Claim::InProgress { .. }
        ));
        // A release by a stale token does nothing; by the holder, frees it.
        let stranger = ClaimToken::random();
        futures_util::FutureExt::now_or_never(store.release("evt_1", &stranger))
            .unwrap()
            .unwrap();
        assert!(matches!(
            store.claim_now("evt_1", LEASE, now).unwrap(),
            Claim::InProgress { .. }
        ));
        futures_util::FutureExt::now_or_never(store.release("evt_1", &token))
            .unwrap()
            .unwrap();
        let token = claimed(store.claim_now("evt_1", LEASE, now).unwrap());
        // After the lease runs out, the id is claimable again, and the old
        // holder can neither renew nor release it.
        let later = now + LEASE + Duration::from_millis(1);
        let second = claimed(store.claim_now("evt_1", LEASE, later).unwrap());
        assert_ne!(token, second);
        assert!(
            !futures_util::FutureExt::now_or_never(store.renew("evt_1", &token, LEASE))
                .unwrap()
                .unwrap()
        );
        // A completion by the stale holder does not overwrite the live claim.
        assert!(!futures_util::FutureExt::now_or_never(store.complete(
            "evt_1",
            &token,
            Duration::from_secs(60)
        ))
        .unwrap()
        .unwrap());
        assert!(matches!(
            store.claim_now("evt_1", LEASE, later).unwrap(),
            Claim::InProgress { .. }
        ));
        assert!(second.generation() > token.generation());
        assert!(futures_util::FutureExt::now_or_never(store.complete(
            "evt_1",
            &second,
            Duration::from_secs(60)
        ))
        .unwrap()
        .unwrap());
        assert_eq!(
            store.claim_now("evt_1", LEASE, later).unwrap(),
            Claim::Completed
        );
    }

    #[test]
    fn completed_ids_expire_after_their_retention() {
        let store = MemoryStore::new();
        futures_util::FutureExt::now_or_never(store.complete(
            "evt_1",
            &ClaimToken::random(),
            Duration::ZERO,
        ))
        .unwrap()
        .unwrap();
        claimed(
            store
                .claim_now("evt_1", LEASE, Instant::now() + Duration::from_millis(1))
                .unwrap(),
        );
    }

    #[test]
    fn a_full_store_evicts_the_oldest_completed_and_never_a_live_claim() {
        let store = MemoryStore::with_max_entries(3);
        let now = Instant::now();
        claimed(store.claim_now("live", LEASE, now).unwrap());
        for id in ["a", "b"] {
            futures_util::FutureExt::now_or_never(store.complete(
                id,
                &ClaimToken::random(),
                Duration::from_secs(600),
            ))
            .unwrap()
            .unwrap();
        }
        claimed(store.claim_now("c", LEASE, now).unwrap());
        assert_eq!(store.len(), 3);
        assert!(matches!(
            store.claim_now("live", LEASE, now).unwrap(),
            Claim::InProgress { .. }
        ));
        assert_eq!(store.claim_now("b", LEASE, now).unwrap(), Claim::Completed);
        // "a" was the oldest completed: forgotten.
        claimed(store.claim_now("a", LEASE, now).unwrap());
        // Now three live claims: a fourth id is refused, not let through.
        assert!(store.claim_now("d", LEASE, now).is_err());
        assert_eq!(store.len(), 3);
    }
}
