//! The SQLite backend: the embedded default, one database file.
//!
//! Durability: WAL. A commit that acknowledges a message to a caller (an enqueue) or an
//! operator's action runs with `synchronous=FULL`, so it is on disk before tilts answers (WAL's
//! usual `NORMAL` can lose the last commits on power loss). Claims and attempt records run with
//! `NORMAL`: no fsync of their own. That loses nothing accepted: a kill -9 loses nothing either
//! way (the data is in the OS cache); a power loss can lose only the claims and attempt records
//! committed since the last FULL commit (the WAL is one append-only file, so flushing it for a
//! later commit flushes every earlier one too), and every worker died with the power, so those
//! messages are simply delivered again (at least once, as after any crash).
//! Concurrency: SQLite has one writer at a time. Every write goes through a pool of exactly one
//! connection, so writers queue in-process (fairly, with a timeout) instead of spinning on
//! `SQLITE_BUSY`; reads use a separate pool and, thanks to WAL, never wait for the writer.
//! Enqueues and attempt records are group-committed (see `batch`): one transaction, and one
//! fsync, for every enqueue waiting at that moment.
//! Write transactions start with `BEGIN IMMEDIATE` so a transaction that reads before it writes
//! cannot fail half-way on a lock upgrade. One tilts process per database file.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Connection as _;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::watch;
use uuid::Uuid;

use super::batch::{Batcher, Commit};
use super::{
    Attempt, AttemptRecord, ClaimedMessage, Enqueued, Lease, LeaseToken, Listener, ListenerInner,
    MessageFilter, MessageId, MessageMeta, MessageState, MessageView, NewMessage, Outcome, Payload,
    StateCounts, StoreError, StoreOptions, cut_error_text, join, lease_until, millis, split_ref,
    to_u32,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// How many messages one retention transaction purges, so the writer is never held for long.
const PURGE_BATCH: i64 = 1000;

/// Most enqueues or attempt records in one group commit, so one transaction never holds the
/// writer for long.
const MAX_BATCH: usize = 512;

/// The message store in a SQLite file. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: all writes.
    writer: SqlitePool,
    /// Reads (`get`, listings, counts).
    reader: SqlitePool,
    /// Bumped after commits that may make messages claimable; listeners watch it.
    wake: watch::Sender<u64>,
    /// Group commit of enqueues.
    enqueues: Batcher<NewMessage, Enqueued>,
    /// Group commit of attempt records.
    attempts: Batcher<AttemptJob, ()>,
}

/// An attempt to record: the message, the lease it was made under, and how it went.
type AttemptJob = (MessageId, LeaseToken, Attempt);

/// How much a write transaction waits for the disk (see the module's notes).
#[derive(Debug, Clone, Copy)]
enum Durability {
    /// fsync at commit: whatever acknowledges a message or an operator's action.
    Full,
    /// No fsync of its own: claims and attempt records, which a crash only repeats.
    Normal,
}

/// The writer connection, set to `sync` for the transaction about to run.
async fn write_conn(
    pool: &SqlitePool,
    sync: Durability,
) -> Result<PoolConnection<Sqlite>, StoreError> {
    let mut conn = pool.acquire().await?;
    // Per connection and not allowed inside a transaction: set before each one, so a write never
    // inherits the previous transaction's level.
    let pragma = match sync {
        Durability::Full => "PRAGMA synchronous = FULL",
        Durability::Normal => "PRAGMA synchronous = NORMAL",
    };
    sqlx::query(pragma).execute(&mut *conn).await?;
    Ok(conn)
}

fn wake(tx: &watch::Sender<u64>) {
    tx.send_modify(|n| *n = n.wrapping_add(1));
}

/// Metadata columns, in [`MetaRow`]'s order.
macro_rules! meta_columns {
    () => {
        "seq, id, route_id, ordering_key, idempotency_key, state, received_at, updated_at, \
         next_attempt_at, finished_at, lease_owner, lease_until, attempts, attempts_since_requeue, \
         last_error_class, last_error_text, discard_reason, purged_at"
    };
}

/// The filter of dead-letter listing and requeue; parameters ?1 to ?5.
macro_rules! dead_filter {
    () => {
        "state = 'dead' AND (?1 IS NULL OR route_id = ?1) AND (?2 IS NULL OR ordering_key = ?2) \
         AND (?3 IS NULL OR last_error_class = ?3) AND (?4 IS NULL OR finished_at >= ?4) \
         AND (?5 IS NULL OR finished_at < ?5)"
    };
}

#[derive(sqlx::FromRow)]
struct MetaRow {
    seq: i64,
    id: Uuid,
    route_id: String,
    ordering_key: Option<String>,
    idempotency_key: Option<String>,
    state: String,
    received_at: i64,
    updated_at: i64,
    next_attempt_at: i64,
    finished_at: Option<i64>,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    attempts: i64,
    attempts_since_requeue: i64,
    last_error_class: Option<String>,
    last_error_text: Option<String>,
    discard_reason: Option<String>,
    purged_at: Option<i64>,
}

impl MetaRow {
    fn into_meta(self) -> Result<MessageMeta, StoreError> {
        let lease = match (self.lease_owner, self.lease_until) {
            (Some(owner), Some(until)) => Some(Lease {
                owner,
                until: from_us(until)?,
            }),
            _ => None,
        };
        Ok(MessageMeta {
            id: MessageId(self.id),
            seq: self.seq,
            route_id: self.route_id,
            ordering_key: self.ordering_key,
            idempotency_key: self.idempotency_key,
            state: MessageState::parse(&self.state)?,
            received_at: from_us(self.received_at)?,
            updated_at: from_us(self.updated_at)?,
            next_attempt_at: from_us(self.next_attempt_at)?,
            finished_at: self.finished_at.map(from_us).transpose()?,
            lease,
            attempts: to_u32(self.attempts),
            attempts_since_requeue: to_u32(self.attempts_since_requeue),
            last_error_class: self.last_error_class,
            last_error_text: self.last_error_text,
            discard_reason: self.discard_reason,
            purged_at: self.purged_at.map(from_us).transpose()?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct BodyRow {
    payload_type: String,
    payload: Option<Vec<u8>>,
    original_type: Option<String>,
    original: Option<Vec<u8>>,
    last_request_type: Option<String>,
    last_request: Option<Vec<u8>>,
    answer: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    number: i64,
    worker_id: String,
    started_at: i64,
    duration_ms: i64,
    outcome: String,
    retry_at: Option<i64>,
    error_class: Option<String>,
    error_text: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: Uuid,
    seq: i64,
    route_id: String,
    ordering_key: Option<String>,
    payload_type: String,
    payload: Option<Vec<u8>>,
    next_attempt_at: i64,
    attempts_since_requeue: i64,
    received_at: i64,
}

/// How long opening keeps retrying while another process holds the database (at least; the
/// store's busy timeout when that is longer).
const OPEN_RETRY_FOR: Duration = Duration::from_secs(10);

/// How often opening runs the migrations before a migration error is final.
const MIGRATION_TRIES: u32 = 3;

/// SQLITE_BUSY or SQLITE_LOCKED (any extended code), also inside a migration error.
fn is_busy(e: &StoreError) -> bool {
    let db = match e {
        StoreError::Unavailable(e) | StoreError::Database(e) => e.as_database_error(),
        StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => e.as_database_error(),
        _ => None,
    };
    db.and_then(super::sqlite_primary_code)
        .is_some_and(|c| matches!(c, 5 | 6))
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and applies the migrations.
    pub async fn open(path: &str, options: &StoreOptions) -> Result<SqliteStore, StoreError> {
        // Processes opening one file at the same moment (two `tilts serve`, a restart while the
        // old process still holds it) can meet SQLITE_BUSY where SQLite does not wait (switching
        // to WAL, a migration's read turning into a write), and can both find a migration
        // unapplied: the second then fails on what the first created ("table already exists";
        // SQLite has no lock the migrator could take). Each migration is one transaction, so
        // opening again sees the other's work as applied: busy is retried for a while, a failed
        // migration a few times.
        let deadline = tokio::time::Instant::now() + options.busy_timeout.max(OPEN_RETRY_FOR);
        let mut wait = Duration::from_millis(20);
        let mut migration_failures = 0;
        loop {
            let e = match Self::open_once(path, options).await {
                Ok(store) => return Ok(store),
                Err(e) => e,
            };
            let again = if matches!(e, StoreError::Migrate(_)) && !is_busy(&e) {
                migration_failures += 1;
                migration_failures < MIGRATION_TRIES
            } else {
                is_busy(&e)
            };
            if !again || tokio::time::Instant::now() + wait >= deadline {
                return Err(e);
            }
            tracing::debug!(error = %e, "the SQLite store is busy; opening again");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(500));
        }
    }

    async fn open_once(path: &str, options: &StoreOptions) -> Result<SqliteStore, StoreError> {
        let in_memory = path == ":memory:" || path.is_empty();
        let connect = SqliteConnectOptions::new()
            .filename(Path::new(if in_memory { ":memory:" } else { path }))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            // An in-memory database lives as long as its connection.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        // Each in-memory connection is its own database, so there the writer serves reads too.
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await?
        };
        let wake = watch::Sender::new(0);
        let enqueues = Batcher::spawn(
            MAX_BATCH,
            Enqueuer {
                writer: writer.clone(),
                wake: wake.clone(),
            },
        );
        let attempts = Batcher::spawn(
            MAX_BATCH,
            Recorder {
                writer: writer.clone(),
                wake: wake.clone(),
            },
        );
        Ok(SqliteStore {
            writer,
            reader,
            wake,
            enqueues,
            attempts,
        })
    }

    fn wake(&self) {
        wake(&self.wake);
    }

    pub(crate) fn listen(&self) -> Listener {
        Listener(ListenerInner::Local(self.wake.subscribe()))
    }

    pub(crate) async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    pub(crate) async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued, StoreError> {
        self.enqueues.submit(msg).await
    }

    pub(crate) async fn claim(
        &self,
        worker_id: &str,
        limit: u32,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        let token = LeaseToken(Uuid::new_v4());
        let until = lease_until(now, lease);
        let mut conn = write_conn(&self.writer, Durability::Normal).await?;
        // One statement, so atomic without an explicit transaction. An earlier message with the
        // same route and key that is pending (leased or not) or dead holds a keyed message back.
        let mut rows: Vec<ClaimRow> = sqlx::query_as(
            "UPDATE messages SET lease_owner = ?1, lease_token = ?2, lease_until = ?3, \
             updated_at = ?4 \
             WHERE seq IN ( \
               SELECT m.seq FROM messages m \
               WHERE m.state = 'pending' AND m.next_attempt_at <= ?4 \
                 AND (m.lease_until IS NULL OR m.lease_until <= ?4) \
                 AND (m.ordering_key IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM messages e \
                   WHERE e.route_id = m.route_id AND e.ordering_key = m.ordering_key \
                     AND e.seq < m.seq AND e.state IN ('pending', 'dead'))) \
               ORDER BY m.next_attempt_at, m.seq \
               LIMIT ?5) \
             RETURNING id, seq, route_id, ordering_key, payload_type, payload, next_attempt_at, \
               attempts_since_requeue, received_at",
        )
        .bind(worker_id)
        .bind(token.0)
        .bind(us(until))
        .bind(us(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        // RETURNING does not keep the subquery's order.
        rows.sort_by_key(|r| (r.next_attempt_at, r.seq));
        rows.into_iter()
            .map(|r| {
                Ok(ClaimedMessage {
                    id: MessageId(r.id),
                    route_id: r.route_id,
                    ordering_key: r.ordering_key,
                    payload: Payload {
                        content_type: r.payload_type,
                        bytes: r.payload.ok_or_else(|| {
                            StoreError::Corrupt(format!("pending message {} has no payload", r.id))
                        })?,
                    },
                    lease_token: token,
                    lease_until: until,
                    attempt: to_u32(r.attempts_since_requeue + 1),
                    received_at: from_us(r.received_at)?,
                })
            })
            .collect()
    }

    pub(crate) async fn record_attempt(
        &self,
        id: MessageId,
        token: LeaseToken,
        attempt: Attempt,
    ) -> Result<(), StoreError> {
        self.attempts.submit((id, token, attempt)).await
    }

    pub(crate) async fn get(&self, id: MessageId) -> Result<Option<MessageView>, StoreError> {
        // One read transaction, so metadata, bodies and attempts are one snapshot.
        let mut tx = self.reader.begin().await?;
        let meta: Option<MetaRow> = sqlx::query_as(concat!(
            "SELECT ",
            meta_columns!(),
            " FROM messages WHERE id = ?1"
        ))
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(meta) = meta else {
            return Ok(None);
        };
        let body: BodyRow = sqlx::query_as(
            "SELECT payload_type, payload, original_type, original, last_request_type, \
             last_request, answer FROM messages WHERE seq = ?1",
        )
        .bind(meta.seq)
        .fetch_one(&mut *tx)
        .await?;
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT number, worker_id, started_at, duration_ms, outcome, retry_at, error_class, \
             error_text FROM attempts WHERE message_seq = ?1 ORDER BY number",
        )
        .bind(meta.seq)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let attempts = attempts
            .into_iter()
            .map(|a| {
                Ok(AttemptRecord {
                    number: to_u32(a.number),
                    worker_id: a.worker_id,
                    started_at: from_us(a.started_at)?,
                    duration: Duration::from_millis(u64::try_from(a.duration_ms).unwrap_or(0)),
                    outcome: a.outcome,
                    retry_at: a.retry_at.map(from_us).transpose()?,
                    error_class: a.error_class,
                    error_text: a.error_text,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(MessageView {
            meta: meta.into_meta()?,
            payload: body.payload.map(|b| Payload::new(body.payload_type, b)),
            original: join(body.original_type, body.original),
            last_request: join(body.last_request_type, body.last_request),
            answer: parse_answer(body.answer)?,
            attempts,
        }))
    }

    pub(crate) async fn dead_letters(
        &self,
        filter: &MessageFilter,
    ) -> Result<Vec<MessageMeta>, StoreError> {
        let rows: Vec<MetaRow> = sqlx::query_as(concat!(
            "SELECT ",
            meta_columns!(),
            " FROM messages WHERE ",
            dead_filter!(),
            " AND (?6 IS NULL OR seq > ?6) ORDER BY seq LIMIT ?7"
        ))
        .bind(&filter.route_id)
        .bind(&filter.ordering_key)
        .bind(&filter.error_class)
        .bind(filter.since.map(us))
        .bind(filter.until.map(us))
        .bind(filter.after)
        .bind(i64::from(filter.limit.unwrap_or(super::DEFAULT_LIST_LIMIT)))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(MetaRow::into_meta).collect()
    }

    pub(crate) async fn requeue(
        &self,
        id: MessageId,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut conn = write_conn(&self.writer, Durability::Full).await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(
            "UPDATE messages SET state = 'pending', next_attempt_at = ?2, \
             attempts_since_requeue = 0, finished_at = NULL, updated_at = ?2 \
             WHERE id = ?1 AND state = 'dead'",
        )
        .bind(id.0)
        .bind(us(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Err(self.why_not(&mut tx, id, "requeue").await);
        }
        tx.commit().await?;
        self.wake();
        Ok(())
    }

    pub(crate) async fn requeue_matching(
        &self,
        filter: &MessageFilter,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut conn = write_conn(&self.writer, Durability::Full).await?;
        let n = sqlx::query(concat!(
            "UPDATE messages SET state = 'pending', next_attempt_at = ?6, \
             attempts_since_requeue = 0, finished_at = NULL, updated_at = ?6 WHERE ",
            dead_filter!()
        ))
        .bind(&filter.route_id)
        .bind(&filter.ordering_key)
        .bind(&filter.error_class)
        .bind(filter.since.map(us))
        .bind(filter.until.map(us))
        .bind(us(now))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    pub(crate) async fn discard(
        &self,
        id: MessageId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut conn = write_conn(&self.writer, Durability::Full).await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(
            "UPDATE messages SET state = 'discarded', discard_reason = ?2, finished_at = ?3, \
             updated_at = ?3, lease_owner = NULL, lease_token = NULL, lease_until = NULL \
             WHERE id = ?1 AND state IN ('pending', 'dead')",
        )
        .bind(id.0)
        .bind(cut_error_text(Some(reason.to_owned())))
        .bind(us(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done == 0 {
            return Err(self.why_not(&mut tx, id, "discard").await);
        }
        tx.commit().await?;
        // A discarded message no longer holds back its ordering key.
        self.wake();
        Ok(())
    }

    /// The error for an update that matched no row: no such message, or the wrong state.
    async fn why_not(
        &self,
        tx: &mut sqlx::SqliteConnection,
        id: MessageId,
        action: &'static str,
    ) -> StoreError {
        let state: Result<Option<String>, sqlx::Error> =
            sqlx::query_scalar("SELECT state FROM messages WHERE id = ?1")
                .bind(id.0)
                .fetch_optional(tx)
                .await;
        match state {
            Ok(None) => StoreError::NotFound(id),
            Ok(Some(state)) => match MessageState::parse(&state) {
                Ok(state) => StoreError::InvalidState { id, state, action },
                Err(e) => e,
            },
            Err(e) => e.into(),
        }
    }

    pub(crate) async fn purge_payloads(
        &self,
        finished_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            // Batches, each its own transaction, so ingress writes interleave with a big purge.
            let mut conn = write_conn(&self.writer, Durability::Full).await?;
            let n = sqlx::query(
                "UPDATE messages SET payload = NULL, original = NULL, last_request = NULL, \
                 answer = NULL, purged_at = ?2 \
                 WHERE seq IN (SELECT seq FROM messages \
                   WHERE state IN ('delivered', 'discarded') AND purged_at IS NULL \
                     AND finished_at < ?1 LIMIT ?3)",
            )
            .bind(us(finished_before))
            .bind(us(now))
            .bind(PURGE_BATCH)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            total += n;
            if n < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Whether the database answers (a read on the reader pool).
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub(crate) async fn counts(&self) -> Result<StateCounts, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM messages GROUP BY state")
                .fetch_all(&self.reader)
                .await?;
        let mut counts = StateCounts::default();
        for (state, n) in rows {
            counts.add(&state, n)?;
        }
        Ok(counts)
    }

    pub(crate) async fn timer_start(
        &self,
        route_id: &str,
        schedule: &str,
        first_run: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT schedule, next_run FROM timers WHERE route_id = ?")
                .bind(route_id)
                .fetch_optional(&mut *tx)
                .await?;
        let next = match row {
            Some((s, next)) if s == schedule => from_us(next)?,
            _ => {
                sqlx::query(
                    "INSERT INTO timers (route_id, schedule, next_run, updated_at) VALUES (?, ?, ?, ?)
                     ON CONFLICT (route_id) DO UPDATE SET schedule = excluded.schedule,
                       next_run = excluded.next_run, updated_at = excluded.updated_at",
                )
                .bind(route_id)
                .bind(schedule)
                .bind(us(first_run))
                .bind(us(now))
                .execute(&mut *tx)
                .await?;
                first_run
            }
        };
        tx.commit().await?;
        Ok(next)
    }

    pub(crate) async fn timer_advance(
        &self,
        route_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE timers SET next_run = ?, updated_at = ? WHERE route_id = ? AND next_run = ?",
        )
        .bind(us(to))
        .bind(us(now))
        .bind(route_id)
        .bind(us(from))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Commits batches of enqueues (see `batch`).
struct Enqueuer {
    writer: SqlitePool,
    wake: watch::Sender<u64>,
}

impl Commit<NewMessage, Enqueued> for Enqueuer {
    async fn commit(
        &mut self,
        items: &[NewMessage],
    ) -> Result<Vec<Result<Enqueued, StoreError>>, StoreError> {
        let mut conn = write_conn(&self.writer, Durability::Full).await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut results = Vec::with_capacity(items.len());
        for msg in items {
            results.push(enqueue_one(&mut tx, msg).await?);
        }
        tx.commit().await?;
        if results.iter().any(|r| matches!(r, Ok(e) if !e.duplicate)) {
            wake(&self.wake);
        }
        Ok(results)
    }
}

/// Inserts one message of a batch (or finds its idempotent original). The outer error aborts the
/// batch; the inner one is this message's own answer (a conflicting idempotency key).
async fn enqueue_one(
    tx: &mut SqliteConnection,
    msg: &NewMessage,
) -> Result<Result<Enqueued, StoreError>, StoreError> {
    if let Some(idem) = &msg.idempotency {
        // Also finds a message enqueued earlier in the same batch.
        let first: Option<(Uuid, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT id, request_hash, answer FROM messages \
             WHERE route_id = ?1 AND idempotency_key = ?2",
        )
        .bind(&msg.route_id)
        .bind(&idem.key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id, hash, answer)) = first {
            if hash.as_deref() != Some(idem.request_hash.as_str()) {
                return Ok(Err(StoreError::Conflict {
                    route_id: msg.route_id.clone(),
                    key: idem.key.clone(),
                }));
            }
            return Ok(Ok(Enqueued {
                id: MessageId(id),
                duplicate: true,
                answer: parse_answer(answer)?,
            }));
        }
    }
    let (original_type, original) = split_ref(&msg.original);
    let (last_request_type, last_request) = split_ref(&msg.last_request);
    let answer = msg.answer.as_ref().map(serde_json::Value::to_string);
    sqlx::query(
        "INSERT INTO messages (id, route_id, ordering_key, idempotency_key, request_hash, \
         received_at, updated_at, next_attempt_at, payload_type, payload, original_type, \
         original, last_request_type, last_request, answer) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )
    .bind(msg.id.0)
    .bind(&msg.route_id)
    .bind(&msg.ordering_key)
    .bind(msg.idempotency.as_ref().map(|i| &i.key))
    .bind(msg.idempotency.as_ref().map(|i| &i.request_hash))
    .bind(us(msg.received_at))
    .bind(us(msg.next_attempt_at))
    .bind(&msg.payload.content_type)
    .bind(msg.payload.bytes.as_slice())
    .bind(original_type)
    .bind(original)
    .bind(last_request_type)
    .bind(last_request)
    .bind(answer)
    .execute(&mut *tx)
    .await?;
    Ok(Ok(Enqueued {
        id: msg.id,
        duplicate: false,
        answer: msg.answer.clone(),
    }))
}

/// Commits batches of attempt records (see `batch`).
struct Recorder {
    writer: SqlitePool,
    wake: watch::Sender<u64>,
}

impl Commit<AttemptJob, ()> for Recorder {
    async fn commit(
        &mut self,
        items: &[AttemptJob],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut conn = write_conn(&self.writer, Durability::Normal).await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut results = Vec::with_capacity(items.len());
        let mut wake_workers = false;
        for (id, token, attempt) in items {
            let result = record_one(&mut tx, *id, *token, attempt).await?;
            wake_workers |= matches!(result, Ok(true));
            results.push(result.map(|_| ()));
        }
        tx.commit().await?;
        if wake_workers {
            wake(&self.wake);
        }
        Ok(results)
    }
}

/// Records one attempt of a batch. The outer error aborts the batch; the inner one is this
/// attempt's own answer (a lost lease, an unknown message). `Ok(true)`: the next message of its
/// ordering key may be claimable now.
async fn record_one(
    tx: &mut SqliteConnection,
    id: MessageId,
    token: LeaseToken,
    attempt: &Attempt,
) -> Result<Result<bool, StoreError>, StoreError> {
    let held: Option<(i64, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT seq, attempts, lease_owner, ordering_key FROM messages \
         WHERE id = ?1 AND lease_token = ?2 AND state = 'pending'",
    )
    .bind(id.0)
    .bind(token.0)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((seq, attempts, worker_id, ordering_key)) = held else {
        let exists: Option<i64> = sqlx::query_scalar("SELECT seq FROM messages WHERE id = ?1")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
        return Ok(Err(match exists {
            Some(_) => StoreError::LeaseLost(id),
            None => StoreError::NotFound(id),
        }));
    };
    let ended =
        attempt.started_at + chrono::TimeDelta::from_std(attempt.duration).unwrap_or_default();
    let (state, retry_at, finished_at) = match attempt.outcome {
        Outcome::Delivered => (MessageState::Delivered, None, Some(ended)),
        Outcome::Retry { next_at } => (MessageState::Pending, Some(next_at), None),
        Outcome::DeadLetter => (MessageState::Dead, None, Some(ended)),
    };
    let error_text = cut_error_text(attempt.error_text.clone());
    let (request_type, request) = split_ref(&attempt.request);
    sqlx::query(
        "INSERT INTO attempts (message_seq, number, worker_id, started_at, duration_ms, \
         outcome, retry_at, error_class, error_text) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(seq)
    .bind(attempts + 1)
    .bind(&worker_id)
    .bind(us(attempt.started_at))
    .bind(millis(attempt.duration))
    .bind(attempt.outcome.as_str())
    .bind(retry_at.map(us))
    .bind(&attempt.error_class)
    .bind(&error_text)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE messages SET state = ?2, next_attempt_at = COALESCE(?3, next_attempt_at), \
         finished_at = ?4, lease_owner = NULL, lease_token = NULL, lease_until = NULL, \
         attempts = attempts + 1, attempts_since_requeue = attempts_since_requeue + 1, \
         last_error_class = ?5, last_error_text = ?6, \
         last_request_type = COALESCE(?7, last_request_type), \
         last_request = COALESCE(?8, last_request), updated_at = ?9 \
         WHERE seq = ?1",
    )
    .bind(seq)
    .bind(state.as_str())
    .bind(retry_at.map(us))
    .bind(finished_at.map(us))
    .bind(&attempt.error_class)
    .bind(&error_text)
    .bind(request_type)
    .bind(request)
    .bind(us(ended))
    .execute(&mut *tx)
    .await?;
    Ok(Ok(
        ordering_key.is_some() && state == MessageState::Delivered
    ))
}

/// Microseconds since the epoch: how times are stored.
fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_us(us: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Corrupt(format!("time out of range: {us}")))
}

fn parse_answer(answer: Option<String>) -> Result<Option<serde_json::Value>, StoreError> {
    answer
        .map(|a| serde_json::from_str(&a))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("stored answer is not JSON: {e}")))
}
