//! Secrets from a file, one per line, newest first, read again on SIGHUP.

use std::path::{Path, PathBuf};

use cariosan_webhooks::verify::{Secret, Secrets};

/// The file's secrets, newest first: an error if it cannot be read or has
/// none.
pub fn read(path: &Path) -> Result<Vec<Secret>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secrets: Vec<Secret> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| Secret::new(line).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    if secrets.is_empty() {
        return Err(format!("{}: no secret in the file", path.display()));
    }
    Ok(secrets)
}

/// On every SIGHUP, replaces `secrets` with the file's. A file that cannot
/// be read or has no secret keeps the secrets as they are, and is logged.
pub fn reload_on_sighup(path: PathBuf, secrets: Secrets) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::error!("no SIGHUP handler: the secrets file will not be reloaded");
            return;
        };
        while hangups.recv().await.is_some() {
            match read(&path).and_then(|fresh| {
                let count = fresh.len();
                secrets
                    .replace(fresh)
                    .map(|()| count)
                    .map_err(|e| e.to_string())
            }) {
                Ok(count) => tracing::info!(count, "reloaded the secrets file"),
                Err(error) => {
                    tracing::error!(%error, "could not reload the secrets file; keeping the secrets")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (path, secrets);
}
