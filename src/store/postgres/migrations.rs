//! The crate's schema, versioned in a table of its own and applied in one
//! transaction under an advisory lock.

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgPool};

use super::transaction::{CommitError, RunTx};
use crate::store::StoreError;

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
    (
        3,
        "inbox generations, give-up hooks, error kinds, deleted messages",
        "ALTER TABLE {schema}.inbox
            ADD COLUMN generation bigint NOT NULL DEFAULT 0,
            ADD COLUMN give_up_pending boolean NOT NULL DEFAULT false,
            ADD COLUMN give_up_due_at timestamptz,
            ADD COLUMN error_kind text;
        CREATE INDEX inbox_give_up_pending ON {schema}.inbox (give_up_due_at) WHERE give_up_pending;
        CREATE TABLE {schema}.deleted_messages (
            tenant text NOT NULL,
            message_id text NOT NULL,
            deleted_at timestamptz NOT NULL,
            PRIMARY KEY (tenant, message_id)
        );
        CREATE INDEX deleted_messages_deleted_at ON {schema}.deleted_messages (deleted_at);",
    ),
    (
        4,
        "inbox ordering keys",
        "ALTER TABLE {schema}.inbox
            ADD COLUMN ordering_key text,
            ADD COLUMN event_at timestamptz,
            ADD CONSTRAINT inbox_ordered_rows_have_a_time CHECK (ordering_key IS NULL OR event_at IS NOT NULL);
        CREATE INDEX inbox_ordering ON {schema}.inbox (tenant, ordering_key, status, event_at, delivery_id)
            WHERE ordering_key IS NOT NULL AND status <> 'done';
        CREATE INDEX inbox_ordering_running ON {schema}.inbox (tenant, ordering_key)
            WHERE ordering_key IS NOT NULL AND status = 'queued'
              AND (attempts > recorded_attempts OR error_kind = 'lost');
        CREATE TABLE {schema}.ordering_marks (
            tenant text NOT NULL,
            ordering_key text NOT NULL,
            event_at timestamptz NOT NULL,
            delivery_id text NOT NULL,
            updated_at timestamptz NOT NULL,
            PRIMARY KEY (tenant, ordering_key)
        );",
    ),
    (
        5,
        "inbox bodies in a table of their own, ingest in one statement",
        "LOCK TABLE {schema}.inbox IN ACCESS EXCLUSIVE MODE;
        CREATE TABLE {schema}.inbox_bodies (
            tenant text NOT NULL,
            delivery_id text NOT NULL,
            body bytea NOT NULL,
            PRIMARY KEY (tenant, delivery_id)
        );
        INSERT INTO {schema}.inbox_bodies (tenant, delivery_id, body)
            SELECT tenant, delivery_id, body FROM {schema}.inbox WHERE body IS NOT NULL;
        ALTER TABLE {schema}.inbox_bodies ADD FOREIGN KEY (tenant, delivery_id)
            REFERENCES {schema}.inbox (tenant, delivery_id) ON DELETE CASCADE;
        ALTER TABLE {schema}.inbox DROP COLUMN body;
        CREATE FUNCTION {schema}.deletion_recorded(lock_key bigint, tenant text, message_id text, wait text)
            RETURNS boolean LANGUAGE plpgsql VOLATILE AS $fn$
        BEGIN
            IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
                RAISE EXCEPTION 'cariosan-webhooks ingest needs read committed' USING ERRCODE = 'CW001';
            END IF;
            PERFORM pg_catalog.set_config('lock_timeout', $4, true);
            IF $3 IS NULL OR $3 = '' THEN
                RETURN false;
            END IF;
            PERFORM pg_catalog.pg_advisory_xact_lock_shared($1);
            RETURN EXISTS (SELECT 1 FROM {schema}.deleted_messages AS deleted
                WHERE deleted.tenant = $2 AND deleted.message_id = $3);
        END
        $fn$;",
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

/// Applies the migrations not applied yet, all in one transaction that
/// holds the migration lock: replicas starting together migrate once, and
/// a `migrate` dropped half-way rolls back and frees the lock with it.
pub(super) async fn run(
    pool: &PgPool,
    schema: &str,
    acquire_timeout: Duration,
) -> Result<(), StoreError> {
    let mut tx = RunTx::begin(pool, acquire_timeout, None).await?;
    match apply(&mut tx, schema).await {
        Ok(applied) => {
            tx.commit().await.map_err(CommitError::into_store_error)?;
            for (version, description) in applied {
                tracing::info!(
                    version,
                    description,
                    "applied a cariosan-webhooks migration"
                );
            }
            Ok(())
        }
        Err(error) => {
            tx.rollback().await;
            Err(super::postgres_error(error))
        }
    }
}

/// The versions it applied, with their descriptions.
async fn apply(
    conn: &mut PgConnection,
    schema: &str,
) -> Result<Vec<(i64, &'static str)>, sqlx::Error> {
    // `IF NOT EXISTS` says so in a NOTICE on every start but the first.
    sqlx::query("SET LOCAL client_min_messages = warning")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_catalog.pg_advisory_xact_lock($1)")
        .bind(lock_key(schema))
        .execute(&mut *conn)
        .await?;
    let setup = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version bigint PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    );
    sqlx::Executor::execute(&mut *conn, setup.as_str()).await?;
    let applied: Vec<i64> =
        sqlx::query_scalar(&format!("SELECT version FROM {schema}.schema_migrations"))
            .fetch_all(&mut *conn)
            .await?;
    let mut applying = Vec::new();
    for &(version, description, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let sql = sql.replace("{schema}", schema);
        sqlx::Executor::execute(&mut *conn, sql.as_str()).await?;
        sqlx::query(&format!(
            "INSERT INTO {schema}.schema_migrations (version, description) VALUES ($1, $2)"
        ))
        .bind(version)
        .bind(description)
        .execute(&mut *conn)
        .await?;
        applying.push((version, description));
    }
    Ok(applying)
}
