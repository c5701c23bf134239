//! The secrets a verifier holds, changeable while it serves.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::{fingerprint, ConfigError, Secret};

/// A shared, changeable set of signing secrets, newest first: a handle that
/// adds, replaces and removes them while the verifiers (and the layers)
/// that hold it serve. Reads are lock-free and allocate nothing; every
/// change makes a new set and swaps it in, so a delivery is verified
/// against one set, old or new, never half of each.
///
/// The set is never empty: a change that would empty it is refused.
///
/// ```
/// use cariosan_webhooks::verify::{sign, Secret, Verifier};
///
/// let verifier = Verifier::new("whsec_old")?;
/// let secrets = verifier.secrets().clone();
/// secrets.add(Secret::new("whsec_new")?); // Cariosan rolls the secret
/// assert_eq!(verifier.secret_count(), 2);
/// secrets.remove("whsec_old");            // the rotation is finished
/// let header = sign(&[Secret::new("whsec_new")?], "evt_1", 1_795_000_000, b"{}");
/// assert!(verifier.verify_at(1_795_000_000, "evt_1", &header, b"{}").is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Secrets(Arc<ArcSwap<Vec<Secret>>>);

impl Secrets {
    /// A set of these secrets, newest first; an error if there is none.
    pub fn new(secrets: impl IntoIterator<Item = Secret>) -> Result<Self, ConfigError> {
        let secrets: Vec<Secret> = secrets.into_iter().collect();
        if secrets.is_empty() {
            return Err(ConfigError::NoSecret);
        }
        Ok(Self(Arc::new(ArcSwap::from_pointee(secrets))))
    }

    pub(super) fn one(secret: Secret) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(vec![secret])))
    }

    /// A new set of these secrets and `secret` after them.
    pub(super) fn with(&self, secret: Secret) -> Self {
        let mut secrets = self.load().to_vec();
        secrets.push(secret);
        Self(Arc::new(ArcSwap::from_pointee(secrets)))
    }

    pub(super) fn load(&self) -> Guard<Arc<Vec<Secret>>> {
        self.0.load()
    }

    /// How many secrets the set holds.
    pub fn len(&self) -> usize {
        self.load().len()
    }

    /// Always `false`: the set is never empty.
    pub fn is_empty(&self) -> bool {
        self.load().is_empty()
    }

    /// Adds `secret` as the newest, first in the set (if it is not there
    /// already).
    pub fn add(&self, secret: Secret) {
        self.0.rcu(|current| {
            let mut next = Vec::with_capacity(current.len() + 1);
            next.push(secret.clone());
            next.extend(
                current
                    .iter()
                    .filter(|s| s.fingerprint != secret.fingerprint)
                    .cloned(),
            );
            next
        });
    }

    /// Replaces every secret with these, newest first; an error, and no
    /// change, if there is none.
    pub fn replace(&self, secrets: impl IntoIterator<Item = Secret>) -> Result<(), ConfigError> {
        let secrets: Vec<Secret> = secrets.into_iter().collect();
        if secrets.is_empty() {
            return Err(ConfigError::NoSecret);
        }
        self.0.store(Arc::new(secrets));
        Ok(())
    }

    /// Removes the secret whose bytes are `secret`; `false` when it is not
    /// in the set, or is the last one (the set is never left empty).
    pub fn remove(&self, secret: impl AsRef<[u8]>) -> bool {
        let gone = fingerprint(secret.as_ref());
        let mut removed = false;
        self.0.rcu(|current| {
            let kept: Vec<Secret> = current
                .iter()
                .filter(|s| s.fingerprint != gone)
                .cloned()
                .collect();
            removed = !kept.is_empty() && kept.len() < current.len();
            if removed {
                kept
            } else {
                current.to_vec()
            }
        });
        removed
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("count", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s).unwrap()
    }

    #[test]
    fn a_set_is_changed_whole_and_never_emptied() {
        assert_eq!(Secrets::new([]).unwrap_err(), ConfigError::NoSecret);
        let set = Secrets::new([secret("a")]).unwrap();
        set.add(secret("b"));
        set.add(secret("b"));
        assert_eq!(set.len(), 2);
        assert_eq!(
            set.load()[0].fingerprint,
            secret("b").fingerprint,
            "newest first"
        );
        assert!(set.remove("a"));
        assert!(!set.remove("a"));
        assert!(!set.remove("b"), "the last secret stays");
        assert_eq!(set.len(), 1);
        assert_eq!(set.replace([]).unwrap_err(), ConfigError::NoSecret);
        set.replace([secret("whsec_third"), secret("whsec_fourth")])
            .unwrap();
        assert_eq!(set.len(), 2);
        let shown = format!("{set:?}");
        assert!(!shown.contains("whsec_"), "{shown}");
    }
}
