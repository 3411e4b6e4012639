//! What the `amqp` source declares before it consumes: its queue and a topic exchange
//! (`declare`), or its share of a partitioned stream (`partition`).
//!
//! A partition is a queue per instance bound to one `x-consistent-hash` exchange (RabbitMQ's
//! `rabbitmq_consistent_hash_exchange` plugin): the exchange hashes each message's routing
//! key onto a ring on which every bound queue holds `weight` points, so all messages of one
//! routing key (the `amqp` sink's default is the device id) go to one queue, and so to one
//! instance, whose windows and alarms then see every reading of that device. The queue is
//! durable and never auto-deleted: an instance that restarts finds what arrived meanwhile.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::FieldProblem;

/// Queue (and binding) declaration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Declare {
    #[serde(default = "default_true")]
    pub durable: bool,
    /// A topic exchange to declare and bind the queue to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// Binding keys, e.g. `devices.*.telemetry`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing_keys: Vec<String>,
}

/// This instance's share of a stream partitioned by routing key (the device id).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// The `x-consistent-hash` exchange the producers publish to (declared durable if
    /// missing; RabbitMQ needs the `rabbitmq_consistent_hash_exchange` plugin).
    pub exchange: String,
    /// This instance's name, e.g. `${WEIR_INSTANCE}`: the queue consumed is
    /// `<queue>.<instance>`. Default: the instance id (`data_dir/instance_id`, or
    /// `WEIR_INSTANCE_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Points this instance's queue holds on the hash ring: its share of the devices is its
    /// weight over the sum of all weights (more points spread devices more evenly).
    #[serde(default = "default_weight")]
    pub weight: u16,
    /// Declare the queue with `x-single-active-consumer`: a second process consuming the
    /// same instance's queue waits as a standby and takes over when the first goes. For
    /// stateless stages only: a window or alarm restarts with its own `data_dir` instead.
    #[serde(default)]
    pub single_active_consumer: bool,
}

fn default_true() -> bool {
    true
}

fn default_weight() -> u16 {
    10
}

/// The exchange type of RabbitMQ's consistent-hash plugin.
const CONSISTENT_HASH: &str = "x-consistent-hash";

impl Partition {
    pub fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self.exchange.is_empty() {
            problems.push(FieldProblem::at(
                ["partition", "exchange"],
                "expected an exchange name",
            ));
        }
        if let Some(instance) = &self.instance
            && let Err(problem) = crate::topology::InstanceId::parse(instance.trim())
        {
            problems.push(FieldProblem::at(["partition", "instance"], problem));
        }
        if self.weight == 0 {
            problems.push(FieldProblem::at(
                ["partition", "weight"],
                "expected at least 1",
            ));
        }
        problems
    }

    /// The queue this instance consumes: `<prefix>.<instance>`, the instance id (asked
    /// only when `instance` is not set) standing in for a missing `instance`.
    pub fn queue(
        &self,
        prefix: &str,
        instance_id: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<String> {
        let instance = match &self.instance {
            Some(instance) => instance.trim().to_owned(),
            None => instance_id()?,
        };
        Ok(format!("{prefix}.{instance}"))
    }

    /// Declares the exchange and this instance's queue, and binds it with its weight.
    pub async fn declare(&self, channel: &Channel, queue: &str) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Custom(CONSISTENT_HASH.into()),
                durable,
                FieldTable::default(),
            )
            .await
            .with_context(|| {
                format!(
                    "cannot declare the {CONSISTENT_HASH} exchange `{}` (is RabbitMQ's \
                     rabbitmq_consistent_hash_exchange plugin enabled? is there an exchange \
                     of that name of another type?)",
                    self.exchange
                )
            })?;
        let mut arguments = FieldTable::default();
        if self.single_active_consumer {
            arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), durable, arguments)
            .await
            .with_context(|| format!("cannot declare the partition queue `{queue}`"))?;
        // The binding key of a consistent-hash exchange is the queue's weight.
        channel
            .queue_bind(
                queue.into(),
                self.exchange.as_str().into(),
                self.weight.to_string().as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| {
                format!(
                    "cannot bind `{queue}` to `{}` with weight {}",
                    self.exchange, self.weight
                )
            })?;
        Ok(())
    }
}

impl Declare {
    pub fn check(&self) -> Vec<FieldProblem> {
        if self.exchange.is_some() == self.routing_keys.is_empty() {
            return vec![FieldProblem::at(
                ["declare"],
                "an `exchange` and its `routing_keys` go together",
            )];
        }
        Vec::new()
    }

    /// Declares the queue, and the topic exchange with its bindings.
    pub async fn declare(&self, channel: &Channel, queue: &str) -> lapin::Result<()> {
        let options = QueueDeclareOptions {
            durable: self.durable,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await?;
        if let Some(exchange) = &self.exchange {
            let options = ExchangeDeclareOptions {
                durable: self.durable,
                ..Default::default()
            };
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    options,
                    FieldTable::default(),
                )
                .await?;
            for key in &self.routing_keys {
                channel
                    .queue_bind(
                        queue.into(),
                        exchange.as_str().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(instance: Option<&str>, weight: u16) -> Partition {
        Partition {
            exchange: "readings".into(),
            instance: instance.map(str::to_owned),
            weight,
            single_active_consumer: false,
        }
    }

    #[test]
    fn the_queue_is_named_by_the_instance_or_the_instance_id() {
        let id = || Ok("abc".to_owned());
        let named = partition(Some("proc-1"), 10).queue("readings", id).unwrap();
        assert_eq!(named, "readings.proc-1");
        let unnamed = partition(None, 10).queue("readings", id).unwrap();
        assert_eq!(unnamed, "readings.abc");
    }

    #[test]
    fn an_empty_instance_or_a_zero_weight_is_refused() {
        assert!(partition(Some("proc-1"), 1).check().is_empty());
        let shown = format!("{:?}", partition(Some(""), 0).check());
        assert!(
            shown.contains("instance") && shown.contains("weight"),
            "{shown}"
        );
        let shown = format!("{:?}", partition(Some("a b"), 1).check());
        assert!(shown.contains("instance"), "{shown}");
    }
}
