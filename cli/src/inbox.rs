//! `inbox`: look at and act on a PostgreSQL inbox's deliveries.

use std::io::Write;
use std::process::ExitCode;

use cariosan_webhooks::store::postgres::{
    is_plain_schema, sqlx, Inbox, InboxEntry, InboxError, InboxStatus, ListFilter,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(clap::Args)]
pub struct InboxCommand {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    action: Action,
}

/// Which inbox.
#[derive(clap::Args)]
struct Target {
    /// The database; its password stays out of shell history when it comes
    /// from the environment.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        required = false,
        default_value = ""
    )]
    database_url: String,
    /// The schema the crate's tables are in.
    #[arg(long, default_value = "cariosan_webhooks", global = true)]
    schema: String,
    /// The tenant (workspace) when one receiver serves several.
    #[arg(long, default_value = "", global = true)]
    tenant: String,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Deliveries, newest first.
    List {
        /// Only deliveries in this state: queued, done or dead.
        #[arg(long)]
        status: Option<InboxStatus>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One delivery: its headers, attempts and last error; the body (chat
    /// content) only with --body.
    Show {
        /// The delivery id.
        id: String,
        /// Also print the stored body.
        #[arg(long)]
        body: bool,
    },
    /// Queue a dead or done delivery again, with fresh attempts, as long as
    /// its body is kept.
    Replay {
        /// The delivery id.
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        id: Option<String>,
        /// Every dead delivery that still has its body.
        #[arg(long)]
        dead: bool,
    },
    /// Delete a delivery's stored body (a queued one becomes dead).
    Purge {
        /// The delivery id.
        id: String,
    },
}

impl InboxCommand {
    pub async fn run(self) -> Result<ExitCode, String> {
        let inbox = self.target.open().await?;
        let store = |e: cariosan_webhooks::store::StoreError| e.to_string();
        let mut out = std::io::stdout().lock();
        match self.action {
            Action::List { status, limit } => {
                let mut filter = status.map_or_else(ListFilter::default, ListFilter::status);
                filter.limit = limit;
                let entries = inbox.list(filter).await.map_err(store)?;
                let width = |header: &str, column: fn(&InboxEntry) -> usize| {
                    entries.iter().map(column).fold(header.len(), usize::max)
                };
                let now = OffsetDateTime::now_utc();
                let waits: Vec<String> = entries.iter().map(|e| waits(e, now)).collect();
                let id_width = width("delivery", |e| e.id.chars().count());
                let type_width = width("type", |e| e.event_type.chars().count());
                let key_width = width("key", |e| {
                    e.ordering_key
                        .as_deref()
                        .map_or(1, |key| key.chars().count())
                });
                let waits_width = waits
                    .iter()
                    .map(|w| w.chars().count())
                    .fold("waits".len(), usize::max);
                let _ = writeln!(
                    out,
                    "{:<id_width$} {:<6} {:<type_width$} {:>8}  {:<20} {:<key_width$} {:<waits_width$} last error",
                    "delivery", "status", "type", "attempts", "received", "key", "waits"
                );
                for (entry, waits) in entries.iter().zip(&waits) {
                    let _ = writeln!(
                        out,
                        "{:<id_width$} {:<6} {:<type_width$} {:>8}  {:<20} {:<key_width$} {:<waits_width$} {}",
                        entry.id,
                        entry.status.as_str(),
                        entry.event_type,
                        entry.attempts,
                        when(entry.received_at),
                        entry.ordering_key.as_deref().unwrap_or("-"),
                        waits,
                        one_line(entry.last_error.as_deref().unwrap_or("-"), 60),
                    );
                }
                if entries.is_empty() {
                    let _ = writeln!(out, "(none)");
                }
            }
            Action::Show { id, body } => {
                let Some(entry) = inbox.get(&id).await.map_err(store)? else {
                    return Err(format!("no delivery {id} in the inbox"));
                };
                show(&mut out, &entry);
                if body {
                    match inbox.body(&id).await.map_err(store)? {
                        Some(bytes) => {
                            let _ = writeln!(out, "\n{}", String::from_utf8_lossy(&bytes));
                        }
                        None => {
                            let _ = writeln!(out, "\n(no body: it was dropped once handled, purged, or removed when its message was deleted)");
                        }
                    }
                }
            }
            Action::Replay { id: Some(id), .. } => match inbox.replay(&id).await {
                Ok(()) => {
                    let _ = writeln!(out, "queued {id} again");
                }
                Err(InboxError::Store(error)) => return Err(error.to_string()),
                Err(refused) => {
                    eprintln!("error: refused: {refused}");
                    return Ok(ExitCode::from(2));
                }
            },
            Action::Replay { id: None, .. } => {
                let replayed = inbox.replay_dead().await.map_err(store)?;
                let _ = writeln!(out, "queued {} dead deliveries again", replayed.queued);
                if replayed.without_body > 0 {
                    let _ = writeln!(
                        out,
                        "left {} dead deliveries whose body is gone (purged, or dropped with a deleted message): they cannot run",
                        replayed.without_body
                    );
                }
            }
            Action::Purge { id } => {
                if inbox.purge(&id).await.map_err(store)? {
                    let _ = writeln!(out, "purged the body of {id}");
                } else {
                    let _ = writeln!(out, "{id} has no stored body (or is not in the inbox)");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Target {
    async fn open(&self) -> Result<Inbox, String> {
        if self.database_url.is_empty() {
            return Err("no database: set DATABASE_URL or pass --database-url".to_owned());
        }
        if !is_plain_schema(&self.schema) {
            return Err(format!(
                "--schema {:?} is not a plain lowercase identifier",
                self.schema
            ));
        }
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&self.database_url)
            .await
            .map_err(|e| format!("PostgreSQL at DATABASE_URL: {e}"))?;
        Ok(Inbox::new(pool)
            .schema(&self.schema)
            .for_tenant(&self.tenant))
    }
}

fn show(out: &mut impl Write, entry: &InboxEntry) {
    let optional = |time: Option<OffsetDateTime>| time.map_or_else(|| "-".to_owned(), when);
    let signed_at = OffsetDateTime::from_unix_timestamp(entry.signed_at)
        .map_or_else(|_| entry.signed_at.to_string(), when);
    let lines = [
        ("X-Cariosan-Delivery", entry.id.clone()),
        ("X-Cariosan-Event", entry.event_type.clone()),
        (
            "X-Cariosan-Attempt",
            entry
                .sender_attempt
                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        ),
        ("signed at", signed_at),
        ("tenant", entry.tenant.clone()),
        ("status", entry.status.to_string()),
        (
            "outcome",
            entry.outcome.clone().unwrap_or_else(|| "-".into()),
        ),
        ("attempts", entry.attempts.to_string()),
        ("received", when(entry.received_at)),
        (
            "due",
            if entry.status == InboxStatus::Queued {
                when(entry.due_at)
            } else {
                "-".to_owned()
            },
        ),
        ("finished", optional(entry.finished_at)),
        (
            "ordering key",
            entry.ordering_key.clone().unwrap_or_else(|| "-".into()),
        ),
        ("event time", optional(entry.event_at)),
        ("waits", waits(entry, OffsetDateTime::now_utc())),
        (
            "body",
            entry
                .body_len
                .map_or_else(|| "none".to_owned(), |len| format!("{len} bytes kept")),
        ),
        (
            "last error",
            entry.last_error.clone().unwrap_or_else(|| "-".into()),
        ),
    ];
    for (name, value) in lines {
        let _ = writeln!(out, "{name:<20} {value}");
    }
}

/// Why a queued row is not running: the earlier (or running) row of its
/// key it waits for, or the time it is due; `running` or `-` otherwise.
fn waits(entry: &InboxEntry, now: OffsetDateTime) -> String {
    if entry.status != InboxStatus::Queued {
        return "-".to_owned();
    }
    if entry.attempts > entry.attempts_ended {
        return "running".to_owned();
    }
    match &entry.waits_for {
        Some(before) => format!("behind {before}"),
        None if entry.due_at > now => format!("until {}", when(entry.due_at)),
        None => "-".to_owned(),
    }
}

fn when(time: OffsetDateTime) -> String {
    time.replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| time.to_string())
}

/// `text` on one line, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}
