//! The PostgreSQL backend, for several tilts instances sharing one database.
//!
//! Claims lock their rows with `FOR UPDATE SKIP LOCKED`, so concurrent workers (in any process)
//! take disjoint messages without waiting on each other. Enqueues `pg_notify` the route id on the
//! `tilts_messages` channel inside their transaction (delivered at commit), which wakes every
//! instance's workers through [`PgStore::listen`].
//!
//! Enqueues and attempt records are group-committed (see `batch`): every one waiting at that
//! moment goes into one transaction of a few statements over arrays (`UNNEST`), with one
//! `pg_notify` per route, instead of a transaction of several statements per message. PostgreSQL's
//! cost here is CPU per statement, so this is where its throughput comes from.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::types::Json;
use uuid::Uuid;

use super::batch::{Batcher, Commit};
use super::{
    Attempt, AttemptRecord, ClaimedMessage, Enqueued, Lease, LeaseToken, Listener, ListenerInner,
    MessageFilter, MessageId, MessageMeta, MessageState, MessageView, NewMessage, Outcome, Payload,
    StateCounts, StoreError, StoreOptions, cut_error_text, join, lease_until, millis, split_ref,
    to_u32,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The NOTIFY channel that wakes workers.
pub const CHANNEL: &str = "tilts_messages";

/// How many messages one retention transaction purges, so no transaction holds many row locks.
const PURGE_BATCH: i64 = 1000;

/// Most enqueues or attempt records in one group commit.
const MAX_BATCH: usize = 512;

/// The message store in a PostgreSQL database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Group commit of enqueues.
    enqueues: Batcher<NewMessage, Enqueued>,
    /// Group commit of attempt records.
    attempts: Batcher<AttemptJob, ()>,
}

/// An attempt to record: the message, the lease it was made under, and how it went.
type AttemptJob = (MessageId, LeaseToken, Attempt);

macro_rules! meta_columns {
    () => {
        "seq, id, route_id, ordering_key, idempotency_key, state, received_at, updated_at, \
         next_attempt_at, finished_at, lease_owner, lease_until, attempts, attempts_since_requeue, \
         last_error_class, last_error_text, discard_reason, purged_at"
    };
}

/// The filter of dead-letter listing and requeue; parameters $1 to $5.
macro_rules! dead_filter {
    () => {
        "state = 'dead' AND ($1::text IS NULL OR route_id = $1) \
         AND ($2::text IS NULL OR ordering_key = $2) \
         AND ($3::text IS NULL OR last_error_class = $3) \
         AND ($4::timestamptz IS NULL OR finished_at >= $4) \
         AND ($5::timestamptz IS NULL OR finished_at < $5)"
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
    received_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    next_attempt_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    lease_owner: Option<String>,
    lease_until: Option<DateTime<Utc>>,
    attempts: i32,
    attempts_since_requeue: i32,
    last_error_class: Option<String>,
    last_error_text: Option<String>,
    discard_reason: Option<String>,
    purged_at: Option<DateTime<Utc>>,
}

impl MetaRow {
    fn into_meta(self) -> Result<MessageMeta, StoreError> {
        let lease = match (self.lease_owner, self.lease_until) {
            (Some(owner), Some(until)) => Some(Lease { owner, until }),
            _ => None,
        };
        Ok(MessageMeta {
            id: MessageId(self.id),
            seq: self.seq,
            route_id: self.route_id,
            ordering_key: self.ordering_key,
            idempotency_key: self.idempotency_key,
            state: MessageState::parse(&self.state)?,
            received_at: self.received_at,
            updated_at: self.updated_at,
            next_attempt_at: self.next_attempt_at,
            finished_at: self.finished_at,
            lease,
            attempts: to_u32(self.attempts.into()),
            attempts_since_requeue: to_u32(self.attempts_since_requeue.into()),
            last_error_class: self.last_error_class,
            last_error_text: self.last_error_text,
            discard_reason: self.discard_reason,
            purged_at: self.purged_at,
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
    answer: Option<Json<serde_json::Value>>,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    number: i32,
    worker_id: String,
    started_at: DateTime<Utc>,
    duration_ms: i64,
    outcome: String,
    retry_at: Option<DateTime<Utc>>,
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
    next_attempt_at: DateTime<Utc>,
    attempts_since_requeue: i32,
    received_at: DateTime<Utc>,
}

impl PgStore {
    /// Connects to `url` and applies the migrations (serialized across instances by sqlx's
    /// migration lock). The schema is the connection's `search_path`, so one database can hold
    /// several stores (`?options=-c%20search_path%3Dname`).
    pub async fn open(url: &str, options: &StoreOptions) -> Result<PgStore, StoreError> {
        let connect: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::BadUrl(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        MIGRATOR.run(&pool).await?;
        let enqueues = Batcher::spawn(MAX_BATCH, Enqueuer { pool: pool.clone() });
        let attempts = Batcher::spawn(MAX_BATCH, Recorder { pool: pool.clone() });
        Ok(PgStore {
            pool,
            enqueues,
            attempts,
        })
    }

    pub(crate) async fn listen(&self) -> Result<Listener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Listener(ListenerInner::Pg(Box::new(listener))))
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
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
        // SKIP LOCKED: rows another claimer is taking right now are left to it. An earlier
        // message with the same route and key that is pending (leased or not) or dead holds a
        // keyed message back; a row being claimed concurrently is still `pending`, so it blocks.
        let mut rows: Vec<ClaimRow> = sqlx::query_as(
            "WITH due AS ( \
               SELECT m.seq FROM messages m \
               WHERE m.state = 'pending' AND m.next_attempt_at <= $4 \
                 AND (m.lease_until IS NULL OR m.lease_until <= $4) \
                 AND (m.ordering_key IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM messages e \
                   WHERE e.route_id = m.route_id AND e.ordering_key = m.ordering_key \
                     AND e.seq < m.seq AND e.state IN ('pending', 'dead'))) \
               ORDER BY m.next_attempt_at, m.seq \
               LIMIT $5 \
               FOR UPDATE SKIP LOCKED) \
             UPDATE messages m SET lease_owner = $1, lease_token = $2, lease_until = $3, \
               updated_at = $4 \
             FROM due WHERE m.seq = due.seq \
             RETURNING m.id, m.seq, m.route_id, m.ordering_key, m.payload_type, m.payload, \
               m.next_attempt_at, m.attempts_since_requeue, m.received_at",
        )
        .bind(worker_id)
        .bind(token.0)
        .bind(until)
        .bind(now)
        .bind(i64::from(limit))
        // Planned at every call, never from a cached generic plan: a plan cached while the
        // table was small (a fresh store, before autovacuum's first ANALYZE) scans the whole
        // table, and stays in use until the next ANALYZE, so claims slowed down as the table
        // grew. A fresh plan sees the table's current size.
        .persistent(false)
        .fetch_all(&self.pool)
        .await?;
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
                    attempt: to_u32(i64::from(r.attempts_since_requeue) + 1),
                    received_at: r.received_at,
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
        // REPEATABLE READ: metadata, bodies and attempts from one snapshot.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let meta: Option<MetaRow> = sqlx::query_as(concat!(
            "SELECT ",
            meta_columns!(),
            " FROM messages WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(meta) = meta else {
            return Ok(None);
        };
        let body: BodyRow = sqlx::query_as(
            "SELECT payload_type, payload, original_type, original, last_request_type, \
             last_request, answer FROM messages WHERE seq = $1",
        )
        .bind(meta.seq)
        .fetch_one(&mut *tx)
        .await?;
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT number, worker_id, started_at, duration_ms, outcome, retry_at, error_class, \
             error_text FROM attempts WHERE message_seq = $1 ORDER BY number",
        )
        .bind(meta.seq)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let attempts = attempts
            .into_iter()
            .map(|a| AttemptRecord {
                number: to_u32(a.number.into()),
                worker_id: a.worker_id,
                started_at: a.started_at,
                duration: Duration::from_millis(u64::try_from(a.duration_ms).unwrap_or(0)),
                outcome: a.outcome,
                retry_at: a.retry_at,
                error_class: a.error_class,
                error_text: a.error_text,
            })
            .collect();
        Ok(Some(MessageView {
            meta: meta.into_meta()?,
            payload: body.payload.map(|b| Payload::new(body.payload_type, b)),
            original: join(body.original_type, body.original),
            last_request: join(body.last_request_type, body.last_request),
            answer: body.answer.map(|a| a.0),
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
            " AND ($6::bigint IS NULL OR seq > $6) ORDER BY seq LIMIT $7"
        ))
        .bind(&filter.route_id)
        .bind(&filter.ordering_key)
        .bind(&filter.error_class)
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.after)
        .bind(i64::from(filter.limit.unwrap_or(super::DEFAULT_LIST_LIMIT)))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(MetaRow::into_meta).collect()
    }

    pub(crate) async fn requeue(
        &self,
        id: MessageId,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let route: Option<String> = sqlx::query_scalar(
            "UPDATE messages SET state = 'pending', next_attempt_at = $2, \
             attempts_since_requeue = 0, finished_at = NULL, updated_at = $2 \
             WHERE id = $1 AND state = 'dead' RETURNING route_id",
        )
        .bind(id.0)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(route) = route else {
            return Err(why_not(&mut tx, id, "requeue").await);
        };
        notify(&mut tx, &[route.as_str()]).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn requeue_matching(
        &self,
        filter: &MessageFilter,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let routes: Vec<String> = sqlx::query_scalar(concat!(
            "WITH requeued AS (UPDATE messages SET state = 'pending', next_attempt_at = $6, \
             attempts_since_requeue = 0, finished_at = NULL, updated_at = $6 WHERE ",
            dead_filter!(),
            " RETURNING route_id) SELECT route_id FROM requeued"
        ))
        .bind(&filter.route_id)
        .bind(&filter.ordering_key)
        .bind(&filter.error_class)
        .bind(filter.since)
        .bind(filter.until)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut distinct = routes.iter().map(String::as_str).collect::<Vec<_>>();
        distinct.sort_unstable();
        distinct.dedup();
        if !distinct.is_empty() {
            notify(&mut tx, &distinct).await?;
        }
        tx.commit().await?;
        Ok(routes.len() as u64)
    }

    pub(crate) async fn discard(
        &self,
        id: MessageId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let route: Option<String> = sqlx::query_scalar(
            "UPDATE messages SET state = 'discarded', discard_reason = $2, finished_at = $3, \
             updated_at = $3, lease_owner = NULL, lease_token = NULL, lease_until = NULL \
             WHERE id = $1 AND state IN ('pending', 'dead') RETURNING route_id",
        )
        .bind(id.0)
        .bind(cut_error_text(Some(reason.to_owned())))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(route) = route else {
            return Err(why_not(&mut tx, id, "discard").await);
        };
        // A discarded message no longer holds back its ordering key.
        notify(&mut tx, &[route.as_str()]).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn purge_payloads(
        &self,
        finished_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "UPDATE messages SET payload = NULL, original = NULL, last_request = NULL, \
                 answer = NULL, purged_at = $2 \
                 WHERE seq IN (SELECT seq FROM messages \
                   WHERE state IN ('delivered', 'discarded') AND purged_at IS NULL \
                     AND finished_at < $1 LIMIT $3 FOR UPDATE SKIP LOCKED)",
            )
            .bind(finished_before)
            .bind(now)
            .bind(PURGE_BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += n;
            if n < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Whether the database answers.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn counts(&self) -> Result<StateCounts, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM messages GROUP BY state")
                .fetch_all(&self.pool)
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
        // Insert, or keep the stored next run when the schedule is unchanged; another process
        // starting at the same time agrees on the row.
        let (next,): (DateTime<Utc>,) = sqlx::query_as(
            "INSERT INTO timers (route_id, schedule, next_run, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (route_id) DO UPDATE SET
               next_run = CASE WHEN timers.schedule = excluded.schedule THEN timers.next_run ELSE excluded.next_run END,
               schedule = excluded.schedule,
               updated_at = CASE WHEN timers.schedule = excluded.schedule THEN timers.updated_at ELSE excluded.updated_at END
             RETURNING next_run",
        )
        .bind(route_id)
        .bind(schedule)
        .bind(first_run)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
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
            "UPDATE timers SET next_run = $1, updated_at = $2 WHERE route_id = $3 AND next_run = $4",
        )
        .bind(to)
        .bind(now)
        .bind(route_id)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// An idempotent repeat's original: route, key, id, request hash, answer.
type FirstRow = (
    String,
    String,
    Uuid,
    Option<String>,
    Option<Json<serde_json::Value>>,
);

/// Most bytes of parameters in one statement of a group commit; a batch above it is written in
/// several statements of the same transaction. Why: sqlx 0.9.0 no longer sets `TCP_NODELAY`
/// (sqlx issue 4335, fixed after 0.9.0), so a statement larger than what the socket takes in one
/// write (its initial send buffer, 16 KiB by default on Linux) is sent in pieces, and Nagle's
/// algorithm holds the last piece until the server's delayed ACK: 40 ms per statement. Measured
/// on loopback: batches of 10 messages (~15 KB) took 0.8 ms, of 12 (~17 KB) 43 ms.
const STATEMENT_BYTES: usize = 12 * 1024;

/// `items` in runs of at most [`STATEMENT_BYTES`] by `size` (at least one item each).
fn chunks<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let n = size(item);
        if i > start && bytes + n > STATEMENT_BYTES {
            out.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// Roughly the bytes a message takes as parameters of the batched INSERT.
fn enqueue_bytes(m: &NewMessage) -> usize {
    let body = |p: &Option<Payload>| {
        p.as_ref()
            .map_or(0, |p| p.content_type.len() + p.bytes.len())
    };
    // 14 array elements, each with a 4-byte length, plus the fixed-size uuid and times.
    100 + m.route_id.len()
        + m.ordering_key.as_ref().map_or(0, String::len)
        + m.idempotency
            .as_ref()
            .map_or(0, |i| i.key.len() + i.request_hash.len())
        + m.payload.content_type.len()
        + m.payload.bytes.len()
        + body(&m.original)
        + body(&m.last_request)
        + m.answer.as_ref().map_or(0, |_| 256)
}

/// Roughly the bytes an attempt takes as parameters of the batched record.
fn attempt_bytes((_, _, a): &AttemptJob) -> usize {
    150 + a.error_class.as_ref().map_or(0, String::len)
        + a.error_text
            .as_ref()
            .map_or(0, |t| t.len().min(4 * super::MAX_ERROR_TEXT))
        + a.request
            .as_ref()
            .map_or(0, |p| p.content_type.len() + p.bytes.len())
}

/// Commits batches of enqueues (see `batch`).
struct Enqueuer {
    pool: PgPool,
}

impl Commit<NewMessage, Enqueued> for Enqueuer {
    async fn commit(
        &mut self,
        items: &[NewMessage],
    ) -> Result<Vec<Result<Enqueued, StoreError>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (routes, keys): (Vec<&str>, Vec<&str>) = items
            .iter()
            .filter_map(|m| Some((m.route_id.as_str(), m.ordering_key.as_deref()?)))
            .unzip();
        if !keys.is_empty() {
            // Serializes enqueues of one route and key until commit, so their `seq` order is
            // also their commit order: a claim can never see a later message of the key
            // committed while an earlier one is still invisible. Taken in one order (sorted),
            // so two batches (two instances) never deadlock. (A hash collision only serializes
            // two unrelated keys' enqueues.)
            sqlx::query(
                "SELECT pg_advisory_xact_lock(r, k) FROM ( \
                   SELECT DISTINCT hashtext(r) AS r, hashtext(k) AS k \
                   FROM UNNEST($1::text[], $2::text[]) AS t(r, k) ORDER BY 1, 2) AS keys",
            )
            .bind(&routes)
            .bind(&keys)
            .execute(&mut *tx)
            .await?;
        }
        let mut inserted = HashSet::new();
        for chunk in chunks(items, enqueue_bytes) {
            inserted.extend(insert_messages(&mut tx, chunk).await?);
        }
        // The rest are idempotent repeats (only an idempotency key can conflict): their
        // originals, possibly inserted by this very batch.
        let mut firsts = HashMap::new();
        if inserted.len() < items.len() {
            let (r, k): (Vec<&str>, Vec<&str>) = items
                .iter()
                .filter(|m| !inserted.contains(&m.id.0))
                .filter_map(|m| Some((m.route_id.as_str(), m.idempotency.as_ref()?.key.as_str())))
                .unzip();
            let rows: Vec<FirstRow> = sqlx::query_as(
                "SELECT route_id, idempotency_key, id, request_hash, answer FROM messages \
                 WHERE (route_id, idempotency_key) IN \
                   (SELECT * FROM UNNEST($1::text[], $2::text[]))",
            )
            .bind(&r)
            .bind(&k)
            .fetch_all(&mut *tx)
            .await?;
            for (route, key, id, hash, answer) in rows {
                firsts.insert((route, key), (id, hash, answer.map(|a| a.0)));
            }
        }
        let mut woken: Vec<&str> = items
            .iter()
            .filter(|m| inserted.contains(&m.id.0))
            .map(|m| m.route_id.as_str())
            .collect();
        woken.sort_unstable();
        woken.dedup();
        if !woken.is_empty() {
            notify(&mut tx, &woken).await?;
        }
        tx.commit().await?;
        Ok(items
            .iter()
            .map(|m| {
                if inserted.contains(&m.id.0) {
                    return Ok(Enqueued {
                        id: m.id,
                        duplicate: false,
                        answer: m.answer.clone(),
                    });
                }
                let idem = m
                    .idempotency
                    .as_ref()
                    .ok_or_else(|| StoreError::Corrupt("insert conflicted without a key".into()))?;
                let (first, hash, answer) = firsts
                    .get(&(m.route_id.clone(), idem.key.clone()))
                    .ok_or_else(|| StoreError::Corrupt("conflicting message not found".into()))?;
                if hash.as_deref() != Some(idem.request_hash.as_str()) {
                    return Err(StoreError::Conflict {
                        route_id: m.route_id.clone(),
                        key: idem.key.clone(),
                    });
                }
                Ok(Enqueued {
                    id: MessageId(*first),
                    duplicate: true,
                    answer: answer.clone(),
                })
            })
            .collect())
    }
}

/// Inserts `items` in one statement, in their order (so `seq` follows arrival); returns the ids
/// inserted. ON CONFLICT skips an idempotency key that exists, also one inserted earlier in the
/// same statement, and waits for a concurrent insert of the same key to commit.
async fn insert_messages(
    tx: &mut sqlx::PgConnection,
    items: &[NewMessage],
) -> Result<Vec<Uuid>, StoreError> {
    let n = items.len();
    let mut ids = Vec::with_capacity(n);
    let mut routes = Vec::with_capacity(n);
    let mut ordering_keys = Vec::with_capacity(n);
    let mut idempotency_keys = Vec::with_capacity(n);
    let mut request_hashes = Vec::with_capacity(n);
    let mut received = Vec::with_capacity(n);
    let mut due = Vec::with_capacity(n);
    let mut payload_types = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut original_types = Vec::with_capacity(n);
    let mut originals = Vec::with_capacity(n);
    let mut request_types = Vec::with_capacity(n);
    let mut requests = Vec::with_capacity(n);
    let mut answers = Vec::with_capacity(n);
    for m in items {
        ids.push(m.id.0);
        routes.push(m.route_id.as_str());
        ordering_keys.push(m.ordering_key.as_deref());
        idempotency_keys.push(m.idempotency.as_ref().map(|i| i.key.as_str()));
        request_hashes.push(m.idempotency.as_ref().map(|i| i.request_hash.as_str()));
        received.push(m.received_at);
        due.push(m.next_attempt_at);
        payload_types.push(m.payload.content_type.as_str());
        payloads.push(m.payload.bytes.as_slice());
        let (t, b) = split_ref(&m.original);
        original_types.push(t);
        originals.push(b);
        let (t, b) = split_ref(&m.last_request);
        request_types.push(t);
        requests.push(b);
        answers.push(m.answer.as_ref().map(serde_json::Value::to_string));
    }
    let inserted = sqlx::query_scalar(
        "INSERT INTO messages (id, route_id, ordering_key, idempotency_key, request_hash, \
         received_at, updated_at, next_attempt_at, payload_type, payload, original_type, \
         original, last_request_type, last_request, answer) \
         SELECT id, route_id, ordering_key, idempotency_key, request_hash, received_at, \
           received_at, next_attempt_at, payload_type, payload, original_type, original, \
           last_request_type, last_request, answer::jsonb \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
           $6::timestamptz[], $7::timestamptz[], $8::text[], $9::bytea[], $10::text[], \
           $11::bytea[], $12::text[], $13::bytea[], $14::text[]) WITH ORDINALITY \
           AS t(id, route_id, ordering_key, idempotency_key, request_hash, received_at, \
             next_attempt_at, payload_type, payload, original_type, original, \
             last_request_type, last_request, answer, n) \
         ORDER BY n \
         ON CONFLICT (route_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
         DO NOTHING RETURNING id",
    )
    .bind(&ids)
    .bind(&routes)
    .bind(&ordering_keys)
    .bind(&idempotency_keys)
    .bind(&request_hashes)
    .bind(&received)
    .bind(&due)
    .bind(&payload_types)
    .bind(&payloads)
    .bind(&original_types)
    .bind(&originals)
    .bind(&request_types)
    .bind(&requests)
    .bind(&answers)
    .fetch_all(tx)
    .await?;
    Ok(inserted)
}

/// Commits batches of attempt records (see `batch`).
struct Recorder {
    pool: PgPool,
}

/// A recorded attempt's message: id, route, ordering key, new state.
type HeldRow = (Uuid, String, Option<String>, String);

impl Commit<AttemptJob, ()> for Recorder {
    async fn commit(
        &mut self,
        items: &[AttemptJob],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // An attempt record need not wait for its WAL flush: if the server loses it in a crash,
        // the message is still pending under an expired lease and is delivered again (at least
        // once; receivers deduplicate on X-Tilts-Message-Id). Acknowledged enqueues keep
        // synchronous commits: no accepted message is ever lost. Same rule as SQLite's NORMAL
        // for claims and records.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let mut held = Vec::with_capacity(items.len());
        for chunk in chunks(items, attempt_bytes) {
            held.extend(record_attempts(&mut tx, chunk).await?);
        }
        let recorded: HashSet<Uuid> = held.iter().map(|h| h.0).collect();
        // Why the others were not recorded: taken over (or discarded), or unknown.
        let mut known = HashSet::new();
        if recorded.len() < items.len() {
            let missing: Vec<Uuid> = items
                .iter()
                .map(|(id, _, _)| id.0)
                .filter(|id| !recorded.contains(id))
                .collect();
            let found: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM messages WHERE id = ANY($1)")
                .bind(&missing)
                .fetch_all(&mut *tx)
                .await?;
            known.extend(found);
        }
        // The next message of a delivered message's ordering key may be claimable now.
        let mut woken: Vec<&str> = held
            .iter()
            .filter(|(_, _, key, state)| key.is_some() && state == MessageState::Delivered.as_str())
            .map(|(_, route, _, _)| route.as_str())
            .collect();
        woken.sort_unstable();
        woken.dedup();
        if !woken.is_empty() {
            notify(&mut tx, &woken).await?;
        }
        tx.commit().await?;
        Ok(items
            .iter()
            .map(|(id, _, _)| {
                if recorded.contains(&id.0) {
                    Ok(())
                } else if known.contains(&id.0) {
                    Err(StoreError::LeaseLost(*id))
                } else {
                    Err(StoreError::NotFound(*id))
                }
            })
            .collect())
    }
}

/// Records `items` in one statement: locks the messages whose lease is still the attempt's,
/// moves them, and appends their attempts (numbered from the locked row; the worker is the
/// lease's owner). Returns the messages recorded.
async fn record_attempts(
    tx: &mut sqlx::PgConnection,
    items: &[AttemptJob],
) -> Result<Vec<HeldRow>, StoreError> {
    let n = items.len();
    let mut ids = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut outcomes = Vec::with_capacity(n);
    let mut retry_ats = Vec::with_capacity(n);
    let mut finished_ats = Vec::with_capacity(n);
    let mut error_classes = Vec::with_capacity(n);
    let mut error_texts = Vec::with_capacity(n);
    let mut request_types = Vec::with_capacity(n);
    let mut requests = Vec::with_capacity(n);
    let mut started_ats = Vec::with_capacity(n);
    let mut durations = Vec::with_capacity(n);
    let mut ended_ats = Vec::with_capacity(n);
    for (id, token, attempt) in items {
        let ended =
            attempt.started_at + chrono::TimeDelta::from_std(attempt.duration).unwrap_or_default();
        let (state, retry_at, finished_at) = match attempt.outcome {
            Outcome::Delivered => (MessageState::Delivered, None, Some(ended)),
            Outcome::Retry { next_at } => (MessageState::Pending, Some(next_at), None),
            Outcome::DeadLetter => (MessageState::Dead, None, Some(ended)),
        };
        let (request_type, request) = split_ref(&attempt.request);
        ids.push(id.0);
        tokens.push(token.0);
        states.push(state.as_str());
        outcomes.push(attempt.outcome.as_str());
        retry_ats.push(retry_at);
        finished_ats.push(finished_at);
        error_classes.push(attempt.error_class.as_deref());
        error_texts.push(cut_error_text(attempt.error_text.clone()));
        request_types.push(request_type);
        requests.push(request);
        started_ats.push(attempt.started_at);
        durations.push(millis(attempt.duration));
        ended_ats.push(ended);
    }
    let held = sqlx::query_as(
        "WITH input AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], \
             $5::timestamptz[], $6::timestamptz[], $7::text[], $8::text[], $9::text[], \
             $10::bytea[], $11::timestamptz[], $12::bigint[], $13::timestamptz[]) \
           AS t(id, token, new_state, outcome, retry_at, finished_at, error_class, \
             error_text, request_type, request, started_at, duration_ms, ended_at)), \
         held AS ( \
           SELECT m.seq, m.attempts, m.lease_owner, m.ordering_key, m.route_id, i.* \
           FROM messages m JOIN input i ON m.id = i.id \
           WHERE m.lease_token = i.token AND m.state = 'pending' \
           ORDER BY m.seq FOR UPDATE OF m), \
         moved AS ( \
           UPDATE messages m SET state = h.new_state, \
             next_attempt_at = COALESCE(h.retry_at, m.next_attempt_at), \
             finished_at = h.finished_at, lease_owner = NULL, lease_token = NULL, \
             lease_until = NULL, attempts = m.attempts + 1, \
             attempts_since_requeue = m.attempts_since_requeue + 1, \
             last_error_class = h.error_class, last_error_text = h.error_text, \
             last_request_type = COALESCE(h.request_type, m.last_request_type), \
             last_request = COALESCE(h.request, m.last_request), updated_at = h.ended_at \
           FROM held h WHERE m.seq = h.seq), \
         recorded AS ( \
           INSERT INTO attempts (message_seq, number, worker_id, started_at, duration_ms, \
             outcome, retry_at, error_class, error_text) \
           SELECT seq, attempts + 1, lease_owner, started_at, duration_ms, outcome, \
             retry_at, error_class, error_text FROM held) \
         SELECT id, route_id, ordering_key, new_state FROM held",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&states)
    .bind(&outcomes)
    .bind(&retry_ats)
    .bind(&finished_ats)
    .bind(&error_classes)
    .bind(&error_texts)
    .bind(&request_types)
    .bind(&requests)
    .bind(&started_ats)
    .bind(&durations)
    .bind(&ended_ats)
    // Planned at every call, as the claim is (see there): it joins on `messages`.
    .persistent(false)
    .fetch_all(tx)
    .await?;
    Ok(held)
}

/// Queues a wake-up for every listener of each route; PostgreSQL sends them when the
/// transaction commits.
async fn notify(tx: &mut sqlx::PgConnection, route_ids: &[&str]) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, r) FROM UNNEST($2::text[]) AS r")
        .bind(CHANNEL)
        .bind(route_ids)
        .execute(tx)
        .await?;
    Ok(())
}

/// The error for an update that matched no row: no such message, or the wrong state.
async fn why_not(tx: &mut sqlx::PgConnection, id: MessageId, action: &'static str) -> StoreError {
    let state: Result<Option<String>, sqlx::Error> =
        sqlx::query_scalar("SELECT state FROM messages WHERE id = $1")
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
