//! The PostgreSQL backend, for several tilts instances sharing one database.
//!
//! Claims lock their rows with `FOR UPDATE SKIP LOCKED`, so concurrent workers (in any process)
//! take disjoint messages without waiting on each other. Enqueues `pg_notify` the route id on the
//! `tilts_messages` channel inside their transaction (delivered at commit), which wakes every
//! instance's workers through [`PgStore::listen`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::types::Json;
use uuid::Uuid;

use super::{
    Attempt, AttemptRecord, ClaimedMessage, Enqueued, Lease, LeaseToken, Listener, ListenerInner,
    MessageFilter, MessageId, MessageMeta, MessageState, MessageView, NewMessage, Outcome, Payload,
    StateCounts, StoreError, StoreOptions, cut_error_text, join, lease_until, millis, split,
    to_u32,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The NOTIFY channel that wakes workers.
pub const CHANNEL: &str = "tilts_messages";

/// How many messages one retention transaction purges, so no transaction holds many row locks.
const PURGE_BATCH: i64 = 1000;

/// The message store in a PostgreSQL database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

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
        Ok(PgStore { pool })
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
        let mut tx = self.pool.begin().await?;
        if let Some(key) = &msg.ordering_key {
            // Serializes enqueues of one route and key until commit, so their `seq` order is
            // also their commit order: a claim can never see a later message of the key
            // committed while an earlier one is still invisible. (A hash collision only
            // serializes two unrelated keys' enqueues.)
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
                .bind(&msg.route_id)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        let id = msg.id;
        let (original_type, original) = split(msg.original);
        let (last_request_type, last_request) = split(msg.last_request);
        // ON CONFLICT waits for a concurrent insert of the same key to commit, then yields no row.
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO messages (id, route_id, ordering_key, idempotency_key, request_hash, \
             received_at, updated_at, next_attempt_at, payload_type, payload, original_type, \
             original, last_request_type, last_request, answer) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (route_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
             DO NOTHING RETURNING id",
        )
        .bind(id.0)
        .bind(&msg.route_id)
        .bind(&msg.ordering_key)
        .bind(msg.idempotency.as_ref().map(|i| &i.key))
        .bind(msg.idempotency.as_ref().map(|i| &i.request_hash))
        .bind(msg.received_at)
        .bind(msg.next_attempt_at)
        .bind(msg.payload.content_type)
        .bind(msg.payload.bytes)
        .bind(original_type)
        .bind(original)
        .bind(last_request_type)
        .bind(last_request)
        .bind(msg.answer.as_ref().map(Json))
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            // Only an idempotency key can conflict.
            let idem = msg
                .idempotency
                .ok_or_else(|| StoreError::Corrupt("insert conflicted without a key".into()))?;
            let (first, hash, answer): (Uuid, Option<String>, Option<Json<serde_json::Value>>) =
                sqlx::query_as(
                    "SELECT id, request_hash, answer FROM messages \
                     WHERE route_id = $1 AND idempotency_key = $2",
                )
                .bind(&msg.route_id)
                .bind(&idem.key)
                .fetch_one(&mut *tx)
                .await?;
            tx.rollback().await?;
            if hash.as_deref() != Some(idem.request_hash.as_str()) {
                return Err(StoreError::Conflict {
                    route_id: msg.route_id,
                    key: idem.key,
                });
            }
            return Ok(Enqueued {
                id: MessageId(first),
                duplicate: true,
                answer: answer.map(|a| a.0),
            });
        }
        notify(&mut tx, &msg.route_id).await?;
        tx.commit().await?;
        Ok(Enqueued {
            id,
            duplicate: false,
            answer: msg.answer,
        })
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
        let mut tx = self.pool.begin().await?;
        let held: Option<(i64, i32, String, Option<String>, String)> = sqlx::query_as(
            "SELECT seq, attempts, lease_owner, ordering_key, route_id FROM messages \
             WHERE id = $1 AND lease_token = $2 AND state = 'pending' FOR UPDATE",
        )
        .bind(id.0)
        .bind(token.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((seq, attempts, worker_id, ordering_key, route_id)) = held else {
            let exists: Option<i64> = sqlx::query_scalar("SELECT seq FROM messages WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await?;
            return Err(match exists {
                Some(_) => StoreError::LeaseLost(id),
                None => StoreError::NotFound(id),
            });
        };
        let ended =
            attempt.started_at + chrono::TimeDelta::from_std(attempt.duration).unwrap_or_default();
        let (state, retry_at, finished_at) = match attempt.outcome {
            Outcome::Delivered => (MessageState::Delivered, None, Some(ended)),
            Outcome::Retry { next_at } => (MessageState::Pending, Some(next_at), None),
            Outcome::DeadLetter => (MessageState::Dead, None, Some(ended)),
        };
        let error_text = cut_error_text(attempt.error_text);
        let (request_type, request) = split(attempt.request);
        sqlx::query(
            "INSERT INTO attempts (message_seq, number, worker_id, started_at, duration_ms, \
             outcome, retry_at, error_class, error_text) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(seq)
        .bind(attempts + 1)
        .bind(&worker_id)
        .bind(attempt.started_at)
        .bind(millis(attempt.duration))
        .bind(attempt.outcome.as_str())
        .bind(retry_at)
        .bind(&attempt.error_class)
        .bind(&error_text)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE messages SET state = $2, next_attempt_at = COALESCE($3, next_attempt_at), \
             finished_at = $4, lease_owner = NULL, lease_token = NULL, lease_until = NULL, \
             attempts = attempts + 1, attempts_since_requeue = attempts_since_requeue + 1, \
             last_error_class = $5, last_error_text = $6, \
             last_request_type = COALESCE($7, last_request_type), \
             last_request = COALESCE($8, last_request), updated_at = $9 \
             WHERE seq = $1",
        )
        .bind(seq)
        .bind(state.as_str())
        .bind(retry_at)
        .bind(finished_at)
        .bind(&attempt.error_class)
        .bind(&error_text)
        .bind(request_type)
        .bind(request)
        .bind(ended)
        .execute(&mut *tx)
        .await?;
        if ordering_key.is_some() && state == MessageState::Delivered {
            // The next message of this key may be claimable now.
            notify(&mut tx, &route_id).await?;
        }
        tx.commit().await?;
        Ok(())
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
        notify(&mut tx, &route).await?;
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
        let mut distinct = routes.iter().collect::<Vec<_>>();
        distinct.sort();
        distinct.dedup();
        for route in distinct {
            notify(&mut tx, route).await?;
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
        notify(&mut tx, &route).await?;
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

/// Queues a wake-up for every listener; PostgreSQL sends it when the transaction commits.
async fn notify(tx: &mut sqlx::PgConnection, route_id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(route_id)
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
