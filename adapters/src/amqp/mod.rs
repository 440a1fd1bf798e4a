//! RabbitMQ (AMQP 0-9-1) as a source and a destination of routes: topology, confirmed
//! publishing, acknowledged consuming, reconnects.
//!
//! The contract:
//! - **One connection per system**, shared by every clone of [`AmqpSystem`]. A supervisor task
//!   owns it: when the broker goes away (restart, network), it reconnects with a capped,
//!   jittered exponential backoff, declares the [`Topology`] again and hands the new connection
//!   to publishers and consumers. It stops (and closes the connection) when the last clone is
//!   dropped.
//! - **Publishing** ([`AmqpSystem::publish`]) sends a persistent message with `mandatory` on a
//!   channel in confirm mode and returns `Ok` only once the broker has confirmed it (for a
//!   quorum queue: written to a majority). A nack, a lost connection or no confirm within
//!   `confirm_timeout` (waiting for a reconnect included) is *retryable*: the message may or may
//!   not be stored, and the engine's durable queue tries again (so delivery is at least once).
//!   A message the broker returns as unroutable, or one addressed to an exchange that does not
//!   exist, is *permanent*. The adapter never retries a publish itself.
//! - **Consuming** ([`AmqpSystem::consume`]) uses manual acknowledgements and a prefetch limit;
//!   each delivery is handled in its own task and the handler's [`Decision`] is applied on the
//!   channel the delivery came from, only after the handler returned, so a message is acked
//!   only once the engine has committed or delivered it. A decision for a channel that died in
//!   the meantime is skipped (its delivery tag means nothing on a new channel); the broker
//!   delivers that message again, with `redelivered` set. Consumers resume by themselves after
//!   a reconnect.
//!
//! Secrets and personal data: the URL holds a password and is never logged or put in an error
//! ([`redact_url`] renders it for messages). Message bodies and header values are never logged,
//! and the `Debug` output of [`Outgoing`]/[`Incoming`] shows only their sizes and header names.
//! Error details are fixed texts plus the broker's reply code and text, scrubbed by
//! [`crate::redact::redact`] because a broker's reply text can echo names built from message
//! data.

mod consume;
mod topology;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::watch;

use crate::contract::{DeliveryError, FailureKind};
use crate::redact::redact;

pub use crate::redact::redact_url;
pub use topology::{Binding, ExchangeKind, ExchangeSpec, QueueKind, QueueSpec, Topology};

/// Shortest wait before a reconnect (or consumer restart) attempt.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(200);
/// Longest wait between reconnect attempts: a restarted broker is found within this.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(10);
/// How often the supervisor checks that the connection is still up. A broker that stops
/// cleanly closes the connection at once; lapin then marks it closed and the next check sees it.
const LIVENESS_CHECK: Duration = Duration::from_millis(200);

/// How to reach one RabbitMQ system and what to declare on it.
#[derive(Clone)]
pub struct AmqpSpec {
    /// The system's name in routes.yaml (used in errors and logs).
    pub name: String,
    /// `amqp://user:password@host:5672/vhost` (or `amqps://`). Holds a secret: never printed,
    /// not even by `Debug`.
    pub url: String,
    /// Exchanges, queues and bindings declared on every (re)connect.
    pub topology: Topology,
    /// How long connecting (TCP, TLS, AMQP handshake) and declaring the topology may take.
    pub connect_timeout: Duration,
    /// How long a publish may take in total, including waiting for a reconnect and for the
    /// broker's confirm; also bounds applying a consumer's decision.
    pub confirm_timeout: Duration,
}

impl fmt::Debug for AmqpSpec {
    // The URL holds the password: print it redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSpec")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("topology", &self.topology)
            .field("connect_timeout", &self.connect_timeout)
            .field("confirm_timeout", &self.confirm_timeout)
            .finish()
    }
}

/// One message to publish.
#[derive(Clone)]
pub struct Outgoing {
    /// The exchange; `""` is the default exchange, which routes to the queue named by the
    /// routing key.
    pub exchange: String,
    /// The routing key (at most 255 bytes).
    pub routing_key: String,
    /// The payload, sent as is.
    pub body: Bytes,
    /// The `content-type` property, e.g. `application/json`; empty for none.
    pub content_type: String,
    /// The `message-id` property (the engine's message id, so consumers can deduplicate);
    /// empty for none.
    pub message_id: String,
    /// Application headers, sent as AMQP long strings.
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for Outgoing {
    // Bodies and header values can hold personal data: show sizes and header names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing")
            .field("exchange", &self.exchange)
            .field("routing_key", &redact(&self.routing_key))
            .field("body_bytes", &self.body.len())
            .field("content_type", &self.content_type)
            .field("message_id", &self.message_id)
            .field("header_names", &header_names(&self.headers))
            .finish()
    }
}

/// One delivered message, handed to a consumer's handler.
#[derive(Clone)]
pub struct Incoming {
    /// The payload.
    pub body: Bytes,
    /// The `content-type` property.
    pub content_type: Option<String>,
    /// The `message-id` property.
    pub message_id: Option<String>,
    /// The application headers whose values are strings (other values, such as the broker's
    /// `x-death` tables, are left out).
    pub headers: Vec<(String, String)>,
    /// The broker delivered this message before (to this or another consumer) without an ack:
    /// the engine may have seen it already.
    pub redelivered: bool,
    /// The routing key it was published (or dead-lettered) with.
    pub routing_key: String,
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: String,
    /// How many times a quorum queue delivered it before (`x-delivery-count`); `None` on the
    /// first delivery and for classic queues.
    pub delivery_count: Option<u64>,
}

impl fmt::Debug for Incoming {
    // Bodies and header values can hold personal data: show sizes and header names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("body_bytes", &self.body.len())
            .field("content_type", &self.content_type)
            .field("message_id", &self.message_id)
            .field("header_names", &header_names(&self.headers))
            .field("redelivered", &self.redelivered)
            .field("routing_key", &redact(&self.routing_key))
            .field("exchange", &self.exchange)
            .field("delivery_count", &self.delivery_count)
            .finish()
    }
}

fn header_names(headers: &[(String, String)]) -> Vec<&str> {
    headers.iter().map(|(k, _)| k.as_str()).collect()
}

/// What to do with a delivered message, decided by the consumer's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Done (committed to the engine's store or delivered): remove it from the queue.
    Ack,
    /// Could not take it now: put it back to be delivered again (nack with requeue).
    Requeue,
    /// Will never work: dead-letter it (nack without requeue; dropped when the queue has no
    /// dead-letter exchange).
    Reject,
}

/// A connection to one RabbitMQ system: publishes and consumes, reconnects by itself. Cheap to
/// clone; all clones share the connection.
#[derive(Clone)]
pub struct AmqpSystem {
    inner: Arc<Inner>,
}

impl fmt::Debug for AmqpSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSystem")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

struct Inner {
    name: String,
    confirm_timeout: Duration,
    /// The current connection, `None` while reconnecting. Publishers and consumers wait on it;
    /// the supervisor stops when every receiver (every `AmqpSystem` clone) is gone.
    state: watch::Receiver<Option<Arc<Live>>>,
}

/// What the supervisor needs to (re)connect; holds the parsed URL, so never printed.
struct Settings {
    name: String,
    uri: AMQPUri,
    topology: Topology,
    connect_timeout: Duration,
}

/// One established connection with its topology declared.
struct Live {
    /// Counts connections (1 = the first), for logs.
    generation: u64,
    connection: Connection,
    /// The confirm-mode channel all publishes share, replaced when the broker closed it (a
    /// channel-level error such as publishing to a missing exchange closes it).
    publisher: tokio::sync::Mutex<Option<Channel>>,
    /// Exchanges known to exist on this connection, so a publish to an unknown one is checked
    /// first (a publish to a missing exchange would close the shared channel under the other
    /// publishes in flight).
    known_exchanges: StdMutex<HashSet<String>>,
}

/// The system name errors are reported for.
pub(crate) struct ErrorContext<'a> {
    system: &'a str,
}

impl<'a> ErrorContext<'a> {
    pub(crate) fn new(system: &'a str) -> Self {
        ErrorContext { system }
    }

    fn error(&self, kind: FailureKind, detail: String) -> DeliveryError {
        DeliveryError {
            system: self.system.to_string(),
            kind,
            retry_after: None,
            detail: redact(&detail).into_owned(),
        }
    }
}

/// A permanent error about the request itself (names, topology, unroutable messages).
pub(crate) fn request_error(ctx: &ErrorContext<'_>, detail: String) -> DeliveryError {
    ctx.error(FailureKind::Request, detail)
}

/// Classifies a lapin error. `doing` says what was attempted ("declaring queue 'x'"). Only the
/// AMQP reply code and text of the broker are quoted; I/O errors by kind, never by message.
pub(crate) fn lapin_error(ctx: &ErrorContext<'_>, doing: &str, e: &lapin::Error) -> DeliveryError {
    use lapin::ErrorKind as K;
    let (kind, what) = match e.kind() {
        K::ProtocolError(amqp) => {
            let code = amqp.get_id();
            let kind = match code {
                // ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED, NOT_ALLOWED, CONTENT_TOO_LARGE:
                // the same request fails the same way until the configuration changes.
                311 | 403 | 404 | 406 | 530 => FailureKind::Request,
                // Frame and command errors: a client/broker disagreement, not transient.
                501..=505 | 540 => FailureKind::Protocol,
                // CONNECTION_FORCED (broker stopping), RESOURCE_LOCKED, INTERNAL_ERROR, ...
                _ => FailureKind::Connect,
            };
            (
                kind,
                format!("the broker answered {code} {}", amqp.get_message()),
            )
        }
        K::IOError(io) | K::RuntimeShutdownError(io) => (
            FailureKind::Connect,
            format!("the connection failed ({})", io.kind()),
        ),
        K::MissingHeartbeatError => (
            FailureKind::Connect,
            "the broker stopped sending heartbeats".to_string(),
        ),
        K::InvalidChannel(_) | K::InvalidChannelState(..) | K::InvalidConnectionState(_) => (
            FailureKind::Connect,
            "the connection or channel is closed (the broker went away or closed it)".to_string(),
        ),
        K::ChannelsLimitReached => (
            FailureKind::Connect,
            "the broker's channel limit for this connection is reached".to_string(),
        ),
        K::ParsingError(_) | K::SerialisationError(_) | K::InvalidProtocolVersion(_) => (
            FailureKind::Protocol,
            "an AMQP frame could not be read or written".to_string(),
        ),
        _ => (FailureKind::Connect, "the AMQP client failed".to_string()),
    };
    ctx.error(kind, format!("{doing}: {what}"))
}

/// The reconnect backoff: exponential from [`RECONNECT_MIN_DELAY`], capped at
/// [`RECONNECT_MAX_DELAY`], jittered so many tilts processes do not reconnect in step.
fn reconnect_backoff() -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default()
        .with_min_delay(RECONNECT_MIN_DELAY)
        .with_max_delay(RECONNECT_MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

impl AmqpSystem {
    /// Connects, declares the topology (idempotent: existing matching declarations are fine)
    /// and starts the supervisor that reconnects after a broker restart.
    ///
    /// Fails (without retrying) when the URL is not valid, the topology is inconsistent or
    /// refused by the broker (permanent), or the broker cannot be reached within
    /// `connect_timeout` (retryable).
    pub async fn connect(spec: AmqpSpec) -> Result<AmqpSystem, DeliveryError> {
        let ctx = ErrorContext::new(&spec.name);
        let problems = spec.topology.problems();
        if !problems.is_empty() {
            return Err(request_error(
                &ctx,
                format!("the topology is not valid: {}", problems.join("; ")),
            ));
        }
        let uri: AMQPUri = spec.url.parse().map_err(|_| {
            // The parser's message may quote the URL, password included: not used.
            request_error(
                &ctx,
                "the AMQP URL is not valid (expected amqp://user:password@host:5672/vhost, \
                 with the vhost URL-encoded: %2f for /)"
                    .to_string(),
            )
        })?;
        let settings = Arc::new(Settings {
            name: spec.name.clone(),
            uri,
            topology: spec.topology,
            connect_timeout: spec.connect_timeout,
        });
        let live = establish(&settings, 1).await?;
        tracing::info!(
            system = %settings.name,
            url = %redact_url(&spec.url),
            "connected to the AMQP broker and declared the topology"
        );
        let (tx, rx) = watch::channel(Some(live.clone()));
        tokio::spawn(supervise(settings, tx, live));
        Ok(AmqpSystem {
            inner: Arc::new(Inner {
                name: spec.name,
                confirm_timeout: spec.confirm_timeout,
                state: rx,
            }),
        })
    }

    /// The system's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn ctx(&self) -> ErrorContext<'_> {
        ErrorContext::new(&self.inner.name)
    }

    /// Whether a connection is established right now (for health checks).
    pub fn is_connected(&self) -> bool {
        self.inner
            .state
            .borrow()
            .as_ref()
            .is_some_and(|live| live.connection.status().connected())
    }

    /// Which connection is current (1 = the first; each reconnect adds one); `None` while
    /// reconnecting.
    #[cfg(test)]
    fn generation(&self) -> Option<u64> {
        self.inner
            .state
            .borrow()
            .as_ref()
            .map(|live| live.generation)
    }

    /// Publishes one persistent message (delivery mode 2, content type, message id, headers)
    /// with `mandatory` and waits for the broker's confirm.
    ///
    /// `Ok` only when the broker confirmed it. A nack, a lost connection, or no confirm within
    /// `confirm_timeout` (waiting for a reconnect included) is retryable (`Connect` or
    /// `Timeout`); an unroutable message (no queue bound for the exchange and routing key) or
    /// a missing exchange is permanent (`Request`).
    pub async fn publish(&self, msg: Outgoing) -> Result<(), DeliveryError> {
        let ctx = self.ctx();
        let prepared = Prepared::new(&ctx, &msg)?;
        let timeout = self.inner.confirm_timeout;
        match tokio::time::timeout(timeout, self.publish_prepared(&ctx, &msg, prepared)).await {
            Ok(result) => result,
            Err(_) => Err(ctx.error(
                FailureKind::Timeout,
                format!(
                    "the broker did not confirm the message within {} ms (it is unreachable or \
                     slow); the message may or may not be stored, try again",
                    timeout.as_millis()
                ),
            )),
        }
    }

    async fn publish_prepared(
        &self,
        ctx: &ErrorContext<'_>,
        msg: &Outgoing,
        prepared: Prepared,
    ) -> Result<(), DeliveryError> {
        let live = self.wait_live().await?;
        if !msg.exchange.is_empty() && !live.knows_exchange(&msg.exchange) {
            live.check_exchange(ctx, &msg.exchange).await?;
        }
        let channel = live.publisher(ctx).await?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let sent = channel
            .basic_publish(
                prepared.exchange,
                prepared.routing_key,
                options,
                &msg.body,
                prepared.properties,
            )
            .await;
        let confirmation = match sent {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        };
        match confirmation {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
                Err(request_error(
                    ctx,
                    format!(
                        "no queue is bound for exchange '{}' / routing key '{}' (the broker \
                         returned the message: {} {}); bind a queue in the topology or fix the \
                         route's routing key",
                        msg.exchange, msg.routing_key, returned.reply_code, returned.reply_text
                    ),
                ))
            }
            Ok(Confirmation::Nack(None)) => Err(ctx.error(
                FailureKind::Connect,
                "the broker refused to store the message (nack); try again later".to_string(),
            )),
            Ok(Confirmation::NotRequested) => Err(ctx.error(
                FailureKind::Protocol,
                "the publishing channel is not in confirm mode".to_string(),
            )),
            Err(e) => Err(self.publish_failed(ctx, &live, msg, &e).await),
        }
    }

    /// Classifies a failed publish. The shared channel may have been closed by *another*
    /// publish (to a missing exchange), so a NOT_FOUND is only this message's fault when its
    /// own exchange is missing.
    async fn publish_failed(
        &self,
        ctx: &ErrorContext<'_>,
        live: &Live,
        msg: &Outgoing,
        e: &lapin::Error,
    ) -> DeliveryError {
        let err = lapin_error(ctx, "publishing", e);
        if err.kind == FailureKind::Request && !msg.exchange.is_empty() {
            live.forget_exchange(&msg.exchange);
            if let Err(missing) = live.check_exchange(ctx, &msg.exchange).await {
                return missing;
            }
        }
        if err.kind == FailureKind::Request {
            // Not this message's fault: let the engine try again on a fresh channel.
            return ctx.error(FailureKind::Connect, err.detail);
        }
        err
    }

    /// The current connection, waiting for the supervisor to reconnect if there is none.
    async fn wait_live(&self) -> Result<Arc<Live>, DeliveryError> {
        let mut rx = self.inner.state.clone();
        loop {
            {
                let current = rx.borrow_and_update();
                if let Some(live) = current.as_ref()
                    && live.connection.status().connected()
                {
                    return Ok(live.clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err(self.ctx().error(
                    FailureKind::Connect,
                    "the connection supervisor has stopped".to_string(),
                ));
            }
        }
    }
}

/// A message's AMQP fields, checked before anything is sent.
struct Prepared {
    exchange: ShortString,
    routing_key: ShortString,
    properties: BasicProperties,
}

impl Prepared {
    fn new(ctx: &ErrorContext<'_>, msg: &Outgoing) -> Result<Prepared, DeliveryError> {
        let short = |what: &str, value: &str| {
            ShortString::try_new(value).map_err(|_| {
                request_error(
                    ctx,
                    format!(
                        "the message's {what} is {} bytes long; AMQP allows at most 255",
                        value.len()
                    ),
                )
            })
        };
        let exchange = short("exchange", &msg.exchange)?;
        let routing_key = short("routing key", &msg.routing_key)?;
        // Delivery mode 2: persistent (written to disk by classic queues; quorum queues
        // persist everything anyway).
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if !msg.content_type.is_empty() {
            properties = properties.with_content_type(short("content type", &msg.content_type)?);
        }
        if !msg.message_id.is_empty() {
            properties = properties.with_message_id(short("message id", &msg.message_id)?);
        }
        if !msg.headers.is_empty() {
            let mut table = FieldTable::default();
            for (name, value) in &msg.headers {
                table.insert(
                    short("header name", name)?,
                    AMQPValue::LongString(LongString::from(value.as_str())),
                );
            }
            properties = properties.with_headers(table);
        }
        Ok(Prepared {
            exchange,
            routing_key,
            properties,
        })
    }
}

impl Live {
    fn knows_exchange(&self, name: &str) -> bool {
        self.known_exchanges
            .lock()
            .is_ok_and(|known| known.contains(name))
    }

    fn forget_exchange(&self, name: &str) {
        if let Ok(mut known) = self.known_exchanges.lock() {
            known.remove(name);
        }
    }

    /// Checks with a passive declare, on a channel of its own (a failing passive declare
    /// closes its channel), that an exchange exists.
    async fn check_exchange(
        &self,
        ctx: &ErrorContext<'_>,
        name: &str,
    ) -> Result<(), DeliveryError> {
        let doing = format!("checking that exchange '{name}' exists");
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| lapin_error(ctx, &doing, &e))?;
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let exchange = ShortString::try_new(name)
            .map_err(|_| request_error(ctx, "the exchange name is too long".to_string()))?;
        let result = channel
            .exchange_declare(
                exchange,
                lapin::ExchangeKind::Direct,
                options,
                FieldTable::default(),
            )
            .await;
        match result {
            Ok(()) => {
                let _ = channel.close(200, "checked".into()).await;
                if let Ok(mut known) = self.known_exchanges.lock() {
                    known.insert(name.to_string());
                }
                Ok(())
            }
            Err(e) => {
                let err = lapin_error(ctx, &doing, &e);
                if err.kind == FailureKind::Request {
                    Err(request_error(
                        ctx,
                        format!(
                            "exchange '{name}' does not exist on the broker; declare it in the \
                             system's topology or fix the route's exchange"
                        ),
                    ))
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The shared confirm-mode channel, opened again if the broker closed it.
    async fn publisher(&self, ctx: &ErrorContext<'_>) -> Result<Channel, DeliveryError> {
        let mut slot = self.publisher.lock().await;
        if let Some(channel) = slot.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let doing = "opening the publishing channel";
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| lapin_error(ctx, doing, &e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| lapin_error(ctx, doing, &e))?;
        *slot = Some(channel.clone());
        Ok(channel)
    }
}

/// Connects and declares the topology, all within `connect_timeout`.
async fn establish(settings: &Settings, generation: u64) -> Result<Arc<Live>, DeliveryError> {
    let ctx = ErrorContext::new(&settings.name);
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("tilts {}", settings.name)));
    let attempt = async {
        let connection = Connection::connect_uri(settings.uri.clone(), properties)
            .await
            .map_err(|e| lapin_error(&ctx, "connecting to the broker", &e))?;
        if let Err(e) = settings.topology.declare(&settings.name, &connection).await {
            let _ = connection.close(200, "topology refused".into()).await;
            return Err(e);
        }
        Ok(connection)
    };
    let connection = match tokio::time::timeout(settings.connect_timeout, attempt).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(ctx.error(
                FailureKind::Timeout,
                format!(
                    "connecting to the broker and declaring the topology took more than {} ms",
                    settings.connect_timeout.as_millis()
                ),
            ));
        }
    };
    let known: HashSet<String> = settings
        .topology
        .exchanges
        .iter()
        .map(|e| e.name.clone())
        .collect();
    Ok(Arc::new(Live {
        generation,
        connection,
        publisher: tokio::sync::Mutex::new(None),
        known_exchanges: StdMutex::new(known),
    }))
}

/// Owns the connection: notices when it is gone, reconnects with backoff, re-declares the
/// topology and publishes the new connection. Returns (closing the connection) once every
/// `AmqpSystem` clone is dropped.
async fn supervise(
    settings: Arc<Settings>,
    tx: watch::Sender<Option<Arc<Live>>>,
    mut live: Arc<Live>,
) {
    let system = settings.name.as_str();
    loop {
        if !wait_until_lost(&live, &tx).await {
            let _ = live.connection.close(200, "tilts is done".into()).await;
            tracing::info!(system, "closed the connection to the AMQP broker");
            return;
        }
        tx.send_replace(None);
        tracing::info!(
            system,
            connection = live.generation,
            "lost the connection to the AMQP broker; reconnecting"
        );
        let generation = live.generation + 1;
        let mut backoff = reconnect_backoff();
        live = loop {
            match establish(&settings, generation).await {
                Ok(new) => break new,
                Err(e) => {
                    let delay = backoff.next().unwrap_or(RECONNECT_MAX_DELAY);
                    tracing::warn!(
                        system,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "reconnecting to the AMQP broker failed"
                    );
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        tx.send_replace(Some(live.clone()));
        tracing::info!(
            system,
            connection = live.generation,
            "reconnected to the AMQP broker and declared the topology again"
        );
    }
}

/// Waits until the connection is no longer usable (`true`) or every `AmqpSystem` clone is
/// gone (`false`).
async fn wait_until_lost(live: &Live, tx: &watch::Sender<Option<Arc<Live>>>) -> bool {
    let mut tick = tokio::time::interval(LIVENESS_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !live.connection.status().connected() {
            return true;
        }
        tokio::select! {
            _ = tx.closed() => return false,
            _ = tick.tick() => {}
        }
    }
}
