//! The exchanges, queues, bindings and dead-letter settings a system declares, and their
//! declaration on the broker.
//!
//! Declaring is idempotent: declaring the same topology again (every reconnect does) changes
//! nothing. Declaring a queue or exchange that already exists with *different* settings (another
//! queue type, durability or dead-letter exchange) is refused by the broker with
//! `PRECONDITION_FAILED`: that is a configuration problem, reported as a permanent error that
//! names the queue or exchange.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::contract::DeliveryError;

use super::{ErrorContext, lapin_error, request_error};

/// Everything a system declares on the broker when it connects (and again on every reconnect).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Exchanges, declared first (queues' bindings and dead-letter exchanges refer to them).
    pub exchanges: Vec<ExchangeSpec>,
    /// Queues, declared after the exchanges, each with its bindings.
    pub queues: Vec<QueueSpec>,
}

/// One exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// The exchange name (at most 255 bytes).
    pub name: String,
    /// How the exchange routes messages to bound queues.
    pub kind: ExchangeKind,
    /// Whether the exchange survives a broker restart. Routes should use durable exchanges:
    /// a transient one disappears with a restart and publishing to it then fails.
    pub durable: bool,
}

/// How an exchange routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExchangeKind {
    /// To queues bound with exactly the message's routing key.
    #[default]
    Direct,
    /// To queues whose binding pattern (`*` one word, `#` any words) matches the routing key.
    Topic,
    /// To every bound queue, whatever the routing key.
    Fanout,
    /// By message headers instead of the routing key.
    Headers,
}

impl ExchangeKind {
    fn to_lapin(self) -> lapin::ExchangeKind {
        match self {
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Headers => lapin::ExchangeKind::Headers,
        }
    }
}

/// The RabbitMQ queue type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueKind {
    /// Replicated, always durable, with a delivery counter (`x-delivery-count`) and an
    /// optional delivery limit. The default: it is the type that does not lose confirmed
    /// messages when a node fails.
    #[default]
    Quorum,
    /// The classic single-node queue.
    Classic,
}

impl QueueKind {
    /// The `x-queue-type` argument value.
    pub fn name(self) -> &'static str {
        match self {
            QueueKind::Quorum => "quorum",
            QueueKind::Classic => "classic",
        }
    }
}

/// One queue and what it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue name (at most 255 bytes).
    pub name: String,
    /// The queue type; quorum by default.
    pub kind: QueueKind,
    /// Whether the queue survives a broker restart. Quorum queues must be durable.
    pub durable: bool,
    /// Where rejected (and, with a delivery limit, too often redelivered) messages go
    /// (`x-dead-letter-exchange`).
    pub dead_letter_exchange: Option<String>,
    /// The routing key dead-lettered messages get (`x-dead-letter-routing-key`); without it
    /// they keep their own.
    pub dead_letter_routing_key: Option<String>,
    /// Quorum queues only: after this many redeliveries a message is dead-lettered (or dropped
    /// when there is no dead-letter exchange) instead of being delivered again
    /// (`x-delivery-limit`).
    pub delivery_limit: Option<u32>,
    /// Bindings of this queue to exchanges.
    pub bindings: Vec<Binding>,
}

impl QueueSpec {
    /// A durable quorum queue with no dead-letter exchange and no bindings.
    pub fn quorum(name: impl Into<String>) -> Self {
        QueueSpec {
            name: name.into(),
            kind: QueueKind::Quorum,
            durable: true,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            delivery_limit: None,
            bindings: Vec::new(),
        }
    }

    /// The `x-` arguments of the queue declaration.
    fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(self.kind.name())),
        );
        if let Some(dlx) = &self.dead_letter_exchange {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from(dlx.as_str())),
            );
        }
        if let Some(key) = &self.dead_letter_routing_key {
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(key.as_str())),
            );
        }
        if let Some(limit) = self.delivery_limit {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(limit)),
            );
        }
        args
    }
}

/// A queue's binding to an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The exchange the queue is bound to.
    pub exchange: String,
    /// The binding key (a pattern for topic exchanges; ignored by fanout exchanges).
    pub routing_key: String,
}

/// The longest name AMQP 0-9-1 carries (a "short string").
const MAX_NAME_BYTES: usize = 255;

fn check_name(problems: &mut Vec<String>, what: &str, name: &str) {
    if name.len() > MAX_NAME_BYTES {
        problems.push(format!(
            "{what} name is {} bytes long; AMQP allows at most {MAX_NAME_BYTES}",
            name.len()
        ));
    }
}

impl Topology {
    /// Checks what the broker would refuse anyway, before connecting, so the message names the
    /// problem in routes.yaml terms. Returns every problem found.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for exchange in &self.exchanges {
            if exchange.name.is_empty() || exchange.name.starts_with("amq.") {
                problems.push(format!(
                    "exchange '{}' cannot be declared: the empty name and names starting with \
                     'amq.' belong to the broker; choose another name",
                    exchange.name
                ));
            }
            check_name(&mut problems, "an exchange", &exchange.name);
        }
        for queue in &self.queues {
            check_name(&mut problems, "a queue", &queue.name);
            if queue.name.is_empty() || queue.name.starts_with("amq.") {
                problems.push(format!(
                    "queue '{}' cannot be declared: the empty name and names starting with \
                     'amq.' belong to the broker; choose another name",
                    queue.name
                ));
            }
            if queue.kind == QueueKind::Quorum && !queue.durable {
                problems.push(format!(
                    "queue '{}' is a quorum queue and quorum queues are always durable: set \
                     durable: true or use a classic queue",
                    queue.name
                ));
            }
            if queue.kind == QueueKind::Classic && queue.delivery_limit.is_some() {
                problems.push(format!(
                    "queue '{}' has a delivery limit, which only quorum queues support: remove \
                     it or make the queue a quorum queue",
                    queue.name
                ));
            }
            if queue.dead_letter_routing_key.is_some() && queue.dead_letter_exchange.is_none() {
                problems.push(format!(
                    "queue '{}' has a dead-letter routing key but no dead-letter exchange: add \
                     the exchange",
                    queue.name
                ));
            }
            for name in queue.dead_letter_exchange.iter() {
                check_name(&mut problems, "a dead-letter exchange", name);
            }
            for name in queue.dead_letter_routing_key.iter() {
                check_name(&mut problems, "a dead-letter routing key", name);
            }
            for binding in &queue.bindings {
                check_name(&mut problems, "a bound exchange", &binding.exchange);
                check_name(&mut problems, "a binding key", &binding.routing_key);
                if binding.exchange.is_empty() {
                    problems.push(format!(
                        "queue '{}' cannot be bound to the default exchange (it routes by queue \
                         name already): name an exchange",
                        queue.name
                    ));
                }
            }
        }
        problems
    }

    /// Declares everything on one short-lived channel. Stops at the first refusal (the broker
    /// closes the channel on it).
    pub(super) async fn declare(
        &self,
        system: &str,
        connection: &lapin::Connection,
    ) -> Result<(), DeliveryError> {
        let ctx = ErrorContext::new(system);
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| lapin_error(&ctx, "opening a channel to declare the topology", &e))?;
        for exchange in &self.exchanges {
            let options = ExchangeDeclareOptions {
                durable: exchange.durable,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    short(&ctx, "exchange", &exchange.name)?,
                    exchange.kind.to_lapin(),
                    options,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    lapin_error(&ctx, &format!("declaring exchange '{}'", exchange.name), &e)
                })?;
        }
        for queue in &self.queues {
            let options = QueueDeclareOptions {
                durable: queue.durable,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(
                    short(&ctx, "queue", &queue.name)?,
                    options,
                    queue.arguments(),
                )
                .await
                .map_err(|e| lapin_error(&ctx, &format!("declaring queue '{}'", queue.name), &e))?;
            for binding in &queue.bindings {
                channel
                    .queue_bind(
                        short(&ctx, "queue", &queue.name)?,
                        short(&ctx, "exchange", &binding.exchange)?,
                        short(&ctx, "binding key", &binding.routing_key)?,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        lapin_error(
                            &ctx,
                            &format!(
                                "binding queue '{}' to exchange '{}'",
                                queue.name, binding.exchange
                            ),
                            &e,
                        )
                    })?;
            }
        }
        // Best effort: the declarations are done; a failed close only leaks a channel until
        // the connection goes.
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(())
    }
}

/// A name as an AMQP short string, or a permanent error saying which one is too long.
fn short(ctx: &ErrorContext<'_>, what: &str, value: &str) -> Result<ShortString, DeliveryError> {
    ShortString::try_new(value).map_err(|_| {
        request_error(
            ctx,
            format!(
                "the {what} name is {} bytes long; AMQP allows at most {MAX_NAME_BYTES}",
                value.len()
            ),
        )
    })
}
