//! The durable message store: what queued routes commit before tilts answers 202, and what
//! workers claim, deliver and record attempts against.
//!
//! One interface, [`Store`], over two backends with the same behaviour (the compliance suite in
//! `engine/tests/store.rs` runs against both):
//! - [`sqlite::SqliteStore`], the embedded default: one file, WAL, `synchronous=FULL`, every write
//!   through a single connection (SQLite has one writer; queueing writes in-process is cheaper than
//!   busy-waiting on the file lock), reads through a small pool.
//! - [`postgres::PgStore`] for several tilts instances on one database: `FOR UPDATE SKIP LOCKED`
//!   claims and `LISTEN/NOTIFY` wake-ups.
//!
//! The model, in brief:
//! - A message is `pending` until a worker records an attempt that ends it as `delivered` or `dead`
//!   (dead letter). An operator can requeue a dead letter (back to `pending`) or discard a pending or
//!   dead message with a reason (`discarded`).
//! - A worker *claims* due pending messages with a lease (an owner, a random token, an expiry). The
//!   lease is only a column: a crashed worker's messages become claimable again when it expires,
//!   and an attempt is recorded only if its lease token is still the message's (a worker whose lease
//!   expired and was taken over cannot overwrite the new owner's work).
//! - Messages of a route that share an *ordering key* are claimed one at a time in enqueue order:
//!   a message is not claimable while an earlier message with the same route and key is pending or
//!   dead. A dead letter therefore holds back its key until it is requeued and delivered, or
//!   discarded; other keys are not affected.
//! - Every time is passed in by the caller (`now`, `next_attempt_at`, attempt times), so the queue's
//!   schedule lives in the database and tests control time without sleeping.

mod batch;
pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The stable id of a message, also sent with every delivery so receivers can deduplicate.
/// A UUIDv7: time-ordered, so ids of recent messages sit together in indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A new id. The ingress makes it before the message is stored, so templates (`{{message.id}}`)
    /// and the delivered `X-Tilts-Message-Id` are the same id.
    pub fn new() -> Self {
        MessageId(Uuid::now_v7())
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(MessageId)
    }
}

/// Proof of a claim: only the holder of a message's current lease token can record an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub Uuid);

/// A body kept in the store: its media type and bytes. JSON is stored as its serialized text with
/// `application/json`, so one representation serves JSON, XML and opaque payloads alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Media type, e.g. `application/json`.
    pub content_type: String,
    /// The body.
    pub bytes: Vec<u8>,
}

impl Payload {
    /// The media type of JSON payloads.
    pub const JSON: &'static str = "application/json";

    /// A payload with the given media type and bytes.
    pub fn new(content_type: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        Payload {
            content_type: content_type.into(),
            bytes: bytes.into(),
        }
    }

    /// A JSON payload.
    pub fn json(value: &serde_json::Value) -> Self {
        // Serializing a `Value` cannot fail (its map keys are strings).
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        Payload::new(Self::JSON, bytes)
    }

    /// The payload parsed as JSON, if it is JSON.
    pub fn to_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.bytes).ok()
    }
}

/// An `Idempotency-Key` and a digest of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The client's key, unique per route.
    pub key: String,
    /// A digest of the request (e.g. hex SHA-256 of the body): a repeat with the same key and hash
    /// is the same request; the same key with another hash is a [`StoreError::Conflict`].
    pub request_hash: String,
}

/// A message to commit.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The message's id (a repeat with the same idempotency key gets the first message's id).
    pub id: MessageId,
    /// The route that delivers it.
    pub route_id: String,
    /// Messages of a route with the same key are delivered one at a time, in enqueue order.
    pub ordering_key: Option<String>,
    /// Makes a repeated request return the first message instead of enqueueing another.
    pub idempotency: Option<Idempotency>,
    /// What the worker processes.
    pub payload: Payload,
    /// The message as received, kept for dead-letter inspection when it differs from `payload`.
    pub original: Option<Payload>,
    /// The last request mapped for the target, if one was already built (a synchronous route
    /// falling back to the queue); attempts replace it.
    pub last_request: Option<Payload>,
    /// The answer the ingress gave, returned again to an idempotent repeat.
    pub answer: Option<serde_json::Value>,
    /// When the message was accepted.
    pub received_at: DateTime<Utc>,
    /// When the first delivery attempt is due.
    pub next_attempt_at: DateTime<Utc>,
}

impl NewMessage {
    /// A message for `route_id`, received and due at `now`, without ordering or idempotency keys.
    pub fn new(route_id: impl Into<String>, payload: Payload, now: DateTime<Utc>) -> Self {
        NewMessage {
            id: MessageId::new(),
            route_id: route_id.into(),
            ordering_key: None,
            idempotency: None,
            payload,
            original: None,
            last_request: None,
            answer: None,
            received_at: now,
            next_attempt_at: now,
        }
    }
}

/// What [`Store::enqueue`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueued {
    /// The message's id: the new one, or the first one for an idempotent repeat.
    pub id: MessageId,
    /// True when this was an idempotent repeat and nothing new was enqueued.
    pub duplicate: bool,
    /// The stored answer of the first request (for a repeat) or of this one.
    pub answer: Option<serde_json::Value>,
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageState {
    /// Waiting for delivery (possibly leased by a worker right now, or scheduled for a retry).
    Pending,
    /// Delivered; final.
    Delivered,
    /// A dead letter: it failed permanently or ran out of attempts. Can be requeued or discarded.
    Dead,
    /// Discarded by an operator, with a reason; final.
    Discarded,
}

impl MessageState {
    /// The name stored in the database and shown in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::Delivered => "delivered",
            MessageState::Dead => "dead",
            MessageState::Discarded => "discarded",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => MessageState::Pending,
            "delivered" => MessageState::Delivered,
            "dead" => MessageState::Dead,
            "discarded" => MessageState::Discarded,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown message state '{other}'"
                )));
            }
        })
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message a worker holds a lease on.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    pub id: MessageId,
    pub route_id: String,
    pub ordering_key: Option<String>,
    pub payload: Payload,
    /// Pass back to [`Store::record_attempt`].
    pub lease_token: LeaseToken,
    /// The lease ends here; after it another worker may claim the message.
    pub lease_until: DateTime<Utc>,
    /// Which attempt this will be since the message was enqueued or last requeued (1 for the
    /// first): what a retry policy's "max attempts" counts.
    pub attempt: u32,
    pub received_at: DateTime<Utc>,
}

/// How an attempt ended, and so where the message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered: the message is finished.
    Delivered,
    /// Failed, try again at `next_at`.
    Retry { next_at: DateTime<Utc> },
    /// Failed permanently or out of attempts: the message becomes a dead letter.
    DeadLetter,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::DeadLetter => "dead_letter",
        }
    }
}

/// A delivery attempt to record.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    pub outcome: Outcome,
    /// A short stable class (`connect`, `timeout`, `status:503`, `mapping`...), for failures.
    pub error_class: Option<String>,
    /// A short operator-facing text without payload data; the store cuts it at
    /// [`MAX_ERROR_TEXT`] characters.
    pub error_text: Option<String>,
    /// The request this attempt sent, kept on the message as its last mapped request.
    pub request: Option<Payload>,
}

/// Longest error text kept per attempt, in characters.
pub const MAX_ERROR_TEXT: usize = 500;

/// A recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// 1 for a message's first attempt, counting across requeues.
    pub number: u32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    /// `delivered`, `retry` or `dead_letter`.
    pub outcome: String,
    /// When the attempt scheduled a retry, for when.
    pub retry_at: Option<DateTime<Utc>>,
    pub error_class: Option<String>,
    pub error_text: Option<String>,
}

/// A worker's current lease on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until: DateTime<Utc>,
}

/// A message's metadata, without bodies: what lists and reports show.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageMeta {
    pub id: MessageId,
    /// Enqueue order within the store; also the cursor of [`MessageFilter::after`].
    pub seq: i64,
    pub route_id: String,
    pub ordering_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub state: MessageState,
    pub received_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    /// When it was delivered, dead-lettered or discarded.
    pub finished_at: Option<DateTime<Utc>>,
    /// A lease, possibly expired, while the message is pending.
    pub lease: Option<Lease>,
    /// All attempts, across requeues.
    pub attempts: u32,
    /// Attempts since enqueue or the last requeue.
    pub attempts_since_requeue: u32,
    pub last_error_class: Option<String>,
    pub last_error_text: Option<String>,
    pub discard_reason: Option<String>,
    /// When the bodies were purged by retention.
    pub purged_at: Option<DateTime<Utc>>,
}

/// One message with its bodies and every attempt: what `GET` of a message shows.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageView {
    pub meta: MessageMeta,
    /// `None` once purged.
    pub payload: Option<Payload>,
    pub original: Option<Payload>,
    pub last_request: Option<Payload>,
    pub answer: Option<serde_json::Value>,
    /// Oldest first.
    pub attempts: Vec<AttemptRecord>,
}

/// Which dead letters to list or requeue. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    pub route_id: Option<String>,
    pub ordering_key: Option<String>,
    /// The class of the last error, exactly.
    pub error_class: Option<String>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    /// Only messages after this `seq` (paging); listing only.
    pub after: Option<i64>,
    /// At most this many (listing only); [`DEFAULT_LIST_LIMIT`] when `None`.
    pub limit: Option<u32>,
}

/// How many dead letters a listing returns unless told otherwise.
pub const DEFAULT_LIST_LIMIT: u32 = 100;

/// Number of messages per state, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub pending: u64,
    pub delivered: u64,
    pub dead: u64,
    pub discarded: u64,
}

impl StateCounts {
    pub(crate) fn add(&mut self, state: &str, n: i64) -> Result<(), StoreError> {
        let n = u64::try_from(n).unwrap_or(0);
        match MessageState::parse(state)? {
            MessageState::Pending => self.pending += n,
            MessageState::Delivered => self.delivered += n,
            MessageState::Dead => self.dead += n,
            MessageState::Discarded => self.discarded += n,
        }
        Ok(())
    }
}

/// Connection settings; [`Default`] suits one tilts instance.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most connections to PostgreSQL, or SQLite *reader* connections (writes use one).
    pub max_connections: u32,
    /// How long an operation waits for a connection before failing with
    /// [`StoreError::Unavailable`], so the ingress answers 503 instead of hanging.
    pub acquire_timeout: Duration,
    /// How long SQLite waits for a lock held by another process before failing.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// What can go wrong. Texts never contain message bodies.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or cannot write (connection lost, pool exhausted, disk
    /// error, locked too long). Transient: the ingress answers 503 with `Retry-After`.
    /// (`Arc`: a failed group commit gives the same error to every caller in it.)
    #[error("the message store is unavailable: {0}")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// The idempotency key was already used on this route with a different request.
    #[error(
        "idempotency key '{key}' was already used on route '{route_id}' with a different request"
    )]
    Conflict { route_id: String, key: String },
    /// No message with this id.
    #[error("no message {0}")]
    NotFound(MessageId),
    /// The lease token is no longer the message's: the lease expired and another worker claimed
    /// the message, or an operator discarded it. The attempt was not recorded.
    #[error("the lease on message {0} was lost; the attempt was not recorded")]
    LeaseLost(MessageId),
    /// The operation does not apply to a message in this state.
    #[error("message {id} is {state}; cannot {action} it")]
    InvalidState {
        id: MessageId,
        state: MessageState,
        action: &'static str,
    },
    /// The database URL is not one tilts can use.
    #[error("bad database URL: {0}")]
    BadUrl(String),
    /// Applying the migrations failed.
    #[error("cannot apply the store's migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value tilts cannot read.
    #[error("unexpected data in the message store: {0}")]
    Corrupt(String),
    /// Any other database error (a bug or a schema problem rather than an outage).
    #[error("message store error: {0}")]
    Database(#[source] Arc<sqlx::Error>),
}

impl StoreError {
    /// True for transient outages (answer 503 and retry later).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// An outage because the store did not answer within the caller's deadline.
    pub fn timed_out() -> StoreError {
        StoreError::Unavailable(Arc::new(sqlx::Error::PoolTimedOut))
    }

    /// The same error again, for another caller of the same failed group commit.
    pub(crate) fn share(&self) -> StoreError {
        match self {
            StoreError::Unavailable(e) => StoreError::Unavailable(e.clone()),
            StoreError::Database(e) => StoreError::Database(e.clone()),
            StoreError::Conflict { route_id, key } => StoreError::Conflict {
                route_id: route_id.clone(),
                key: key.clone(),
            },
            StoreError::NotFound(id) => StoreError::NotFound(*id),
            StoreError::LeaseLost(id) => StoreError::LeaseLost(*id),
            StoreError::InvalidState { id, state, action } => StoreError::InvalidState {
                id: *id,
                state: *state,
                action,
            },
            StoreError::BadUrl(s) => StoreError::BadUrl(s.clone()),
            StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
            // Only opening a store migrates; no batch fails this way.
            StoreError::Migrate(e) => StoreError::Corrupt(e.to_string()),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_outage(&e) {
            StoreError::Unavailable(Arc::new(e))
        } else {
            StoreError::Database(Arc::new(e))
        }
    }
}

/// Whether an error means "the database is not reachable or cannot write right now".
fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(primary) = sqlite_primary_code(db.as_ref()) {
                // BUSY, LOCKED, NOMEM, IOERR, FULL, CANTOPEN, PROTOCOL.
                matches!(primary, 5 | 6 | 7 | 10 | 13 | 14 | 15)
            } else {
                let code = db.code();
                let code = code.as_deref().unwrap_or("");
                // PostgreSQL: connection exceptions (08), insufficient resources (53),
                // operator intervention (57: shutdown, cannot connect now), read-only standby.
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || code == "25006"
            }
        }
        _ => false,
    }
}

/// SQLite's primary result code of a SQLite error (the low byte of its extended code); `None`
/// for other databases' errors.
pub(crate) fn sqlite_primary_code(db: &dyn sqlx::error::DatabaseError) -> Option<i32> {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    Some(db.code()?.parse::<i32>().unwrap_or(0) & 0xff)
}

pub(crate) fn cut_error_text(text: Option<String>) -> Option<String> {
    text.map(|t| match t.char_indices().nth(MAX_ERROR_TEXT) {
        Some((at, _)) => t[..at].to_owned(),
        None => t,
    })
}

/// A body as borrowed (media type, bytes) columns.
pub(crate) fn split_ref(p: &Option<Payload>) -> (Option<&str>, Option<&[u8]>) {
    match p {
        Some(p) => (Some(p.content_type.as_str()), Some(p.bytes.as_slice())),
        None => (None, None),
    }
}

/// A body from its columns; `None` when either is missing (purged or never set).
pub(crate) fn join(content_type: Option<String>, bytes: Option<Vec<u8>>) -> Option<Payload> {
    Some(Payload::new(content_type?, bytes?))
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn to_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(crate) fn lease_until(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now + chrono::TimeDelta::from_std(lease).unwrap_or(chrono::TimeDelta::MAX)
}

/// Wakes workers when messages may have become claimable (enqueued, requeued, or an ordered
/// predecessor finished). Wake-ups can be missed (a dropped PostgreSQL connection), so workers
/// wait on this *with* a poll interval, never instead of one.
#[derive(Debug)]
pub struct Listener(ListenerInner);

#[derive(Debug)]
enum ListenerInner {
    Local(tokio::sync::watch::Receiver<u64>),
    Pg(Box<sqlx::postgres::PgListener>),
}

impl Listener {
    /// Returns when something may be claimable. A wake-up may be spurious.
    pub async fn wait(&mut self) -> Result<(), StoreError> {
        match &mut self.0 {
            ListenerInner::Local(rx) => {
                // The sender lives as long as the store; if it is gone, nothing will come.
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
            // `None` means the connection dropped and notifications may have been missed: wake the
            // worker so it polls; the listener reconnects on the next call.
            ListenerInner::Pg(l) => l.try_recv().await.map(|_| ()).map_err(StoreError::from),
        }
    }
}

/// The message store, on whichever backend the URL names.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens the store at `url` and applies its migrations: `postgres://` or `postgresql://` for
    /// PostgreSQL; `sqlite://path`, `sqlite:path` or a plain file path for SQLite (created if
    /// missing).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(url, &StoreOptions::default()).await
    }

    /// [`Store::open`] with explicit connection settings.
    pub async fn open_with(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PgStore::open(url, options).await?))
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            Ok(Store::Sqlite(SqliteStore::open(path, options).await?))
        } else if url.contains("://") {
            Err(StoreError::BadUrl(
                "expected postgres://..., sqlite://PATH or a file path".into(),
            ))
        } else {
            Ok(Store::Sqlite(SqliteStore::open(url, options).await?))
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Commits a message and returns its id only after the commit. An idempotent repeat returns
    /// the first message (and its answer) instead; the same key with another request hash is a
    /// [`StoreError::Conflict`].
    pub async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued, StoreError> {
        match self {
            Store::Sqlite(s) => s.enqueue(msg).await,
            Store::Postgres(s) => s.enqueue(msg).await,
        }
    }

    /// Leases up to `limit` due messages to `worker_id` for `lease`, oldest due first.
    pub async fn claim(
        &self,
        worker_id: &str,
        limit: u32,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        match self {
            Store::Sqlite(s) => s.claim(worker_id, limit, lease, now).await,
            Store::Postgres(s) => s.claim(worker_id, limit, lease, now).await,
        }
    }

    /// Records an attempt and moves the message accordingly, if `token` is still its lease.
    pub async fn record_attempt(
        &self,
        id: MessageId,
        token: LeaseToken,
        attempt: Attempt,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.record_attempt(id, token, attempt).await,
            Store::Postgres(s) => s.record_attempt(id, token, attempt).await,
        }
    }

    /// A message with its bodies and attempts.
    pub async fn get(&self, id: MessageId) -> Result<Option<MessageView>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get(id).await,
            Store::Postgres(s) => s.get(id).await,
        }
    }

    /// Dead letters matching `filter`, in enqueue order.
    pub async fn dead_letters(
        &self,
        filter: &MessageFilter,
    ) -> Result<Vec<MessageMeta>, StoreError> {
        match self {
            Store::Sqlite(s) => s.dead_letters(filter).await,
            Store::Postgres(s) => s.dead_letters(filter).await,
        }
    }

    /// Puts a dead letter back in the queue, due at `now`, with a fresh attempt budget.
    pub async fn requeue(&self, id: MessageId, now: DateTime<Utc>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.requeue(id, now).await,
            Store::Postgres(s) => s.requeue(id, now).await,
        }
    }

    /// Requeues every dead letter matching `filter` (`after` and `limit` are ignored); returns how
    /// many.
    pub async fn requeue_matching(
        &self,
        filter: &MessageFilter,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.requeue_matching(filter, now).await,
            Store::Postgres(s) => s.requeue_matching(filter, now).await,
        }
    }

    /// Discards a pending or dead message with an operator's reason. A worker holding its lease
    /// can no longer record an attempt.
    pub async fn discard(
        &self,
        id: MessageId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.discard(id, reason, now).await,
            Store::Postgres(s) => s.discard(id, reason, now).await,
        }
    }

    /// Retention: drops the bodies (payload, original, last request, answer) of messages delivered
    /// or discarded before `finished_before`, keeping their metadata and attempts for reports.
    /// Dead letters keep their bodies (they may be requeued). Returns how many were purged.
    pub async fn purge_payloads(
        &self,
        finished_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.purge_payloads(finished_before, now).await,
            Store::Postgres(s) => s.purge_payloads(finished_before, now).await,
        }
    }

    /// Whether the database answers now (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.ping().await,
            Store::Postgres(s) => s.ping().await,
        }
    }

    /// Messages per state.
    pub async fn counts(&self) -> Result<StateCounts, StoreError> {
        match self {
            Store::Sqlite(s) => s.counts().await,
            Store::Postgres(s) => s.counts().await,
        }
    }

    /// A wake-up source for workers (see [`Listener`]).
    pub async fn listen(&self) -> Result<Listener, StoreError> {
        match self {
            Store::Sqlite(s) => Ok(s.listen()),
            Store::Postgres(s) => s.listen().await,
        }
    }

    /// A timer route's next run: the stored one when the timer ran before with the same
    /// `schedule`, else `first_run` (stored). Several processes starting together agree.
    pub async fn timer_start(
        &self,
        route_id: &str,
        schedule: &str,
        first_run: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        match self {
            Store::Sqlite(s) => s.timer_start(route_id, schedule, first_run, now).await,
            Store::Postgres(s) => s.timer_start(route_id, schedule, first_run, now).await,
        }
    }

    /// Moves a timer's next run from `from` to `to`; false when another process moved it first.
    pub async fn timer_advance(
        &self,
        route_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.timer_advance(route_id, from, to, now).await,
            Store::Postgres(s) => s.timer_advance(route_id, from, to, now).await,
        }
    }

    /// Closes the connections, waiting for operations in progress.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}
