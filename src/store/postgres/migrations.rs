//! The crate's schema, versioned in a table of its own and applied under a
//! session advisory lock.

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, Postgres};
use sqlx::Connection;

/// `(version, description, SQL)`; `{schema}` stands for the schema. Append
/// only: an applied version never changes.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "handled deliveries",
        "CREATE TABLE {schema}.handled_deliveries (
            tenant text NOT NULL DEFAULT '',
            delivery_id text NOT NULL,
            event_type text NOT NULL,
            outcome text NOT NULL CHECK (outcome IN ('handled', 'given_up')),
            attempt integer,
            handled_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant, delivery_id)
        );
        CREATE INDEX handled_deliveries_handled_at ON {schema}.handled_deliveries (handled_at);",
    ),
    (
        2,
        "inbox",
        "CREATE TABLE {schema}.inbox (
            tenant text NOT NULL DEFAULT '',
            delivery_id text NOT NULL,
            event_type text NOT NULL,
            message_ids text[] NOT NULL DEFAULT '{}',
            body bytea,
            signed_at bigint NOT NULL,
            sender_attempt integer,
            received_at timestamptz NOT NULL DEFAULT now(),
            status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'done', 'dead')),
            outcome text,
            attempts integer NOT NULL DEFAULT 0,
            recorded_attempts integer NOT NULL DEFAULT 0,
            due_at timestamptz NOT NULL,
            last_error text,
            finished_at timestamptz,
            PRIMARY KEY (tenant, delivery_id)
        );
        CREATE INDEX inbox_due ON {schema}.inbox (due_at) WHERE status = 'queued';
        CREATE INDEX inbox_finished ON {schema}.inbox (status, finished_at) WHERE status <> 'queued';
        CREATE INDEX inbox_message_ids ON {schema}.inbox USING gin (message_ids);",
    ),
];

/// The advisory lock key for migrating `schema`: FNV-1a over a fixed
/// prefix and the schema, so that it is the same in every process.
pub(super) fn lock_key(schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "cariosan-webhooks migrate ".bytes().chain(schema.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

pub(super) async fn run(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key(schema))
        .execute(&mut *conn)
        .await?;
    let migrated = apply(&mut conn, schema).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock_key(schema))
        .execute(&mut *conn)
        .await;
    if migrated.is_err() || unlocked.is_err() {
        // A session lock must never go back to the pool: closing the
        // connection releases it whatever state it is in.
        let _ = conn.detach().close().await;
    }
    migrated.and(unlocked.map(drop))
}

async fn apply(conn: &mut PoolConnection<Postgres>, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version bigint PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .execute(&mut **conn)
    .await?;
    let applied: Vec<i64> =
        sqlx::query_scalar(&format!("SELECT version FROM {schema}.schema_migrations"))
            .fetch_all(&mut **conn)
            .await?;
    for (version, description, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(&sql.replace("{schema}", schema))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO {schema}.schema_migrations (version, description) VALUES ($1, $2)"
        ))
        .bind(version)
        .bind(description)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            version,
            description,
            "applied a cariosan-webhooks migration"
        );
    }
    Ok(())
}
