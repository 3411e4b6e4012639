//! weir: IoT telemetry pipelines in one daemon.
//!
//! A topology written in YAML wires **sources** (where readings arrive), **transforms**
//! (per-event logic), **aggregators** (event-time windows), **sinks** (where events are
//! kept) and **actions** (what insights trigger). This crate is organised the same way
//! (`ARCHITECTURE.md` says which part may use which):
//!
//! - the engine, which names no component: [`config`] (the pipeline language, and each
//!   section's contract: trait and build context), [`topology`] (building and running a
//!   topology: channels, backpressure, reload, drain, shared services), [`event`] (the
//!   event model), [`telemetry`] (metrics and logs), [`buffers`] (what every sink and
//!   action reads its input through: memory or a disk log);
//! - [`sources`], [`transforms`], [`aggregators`], [`sinks`], [`actions`]: one file per
//!   component type, each a config struct (serde + schemars) plus its runtime, listed in
//!   its section's `TYPES`;
//! - shared services: [`registry`] (the built-in device registry: identities, keys,
//!   enrollment groups) and [`alarms`] (the alarm board);
//! - [`CATALOGUE`]: every component type and service of this build, handed to the engine;
//! - [`codecs`]: payload decoding shared by sources and the `decode` transform, and the
//!   encoding of events the broker sinks publish; [`broker`]: the AMQP and MQTT connection
//!   code the broker sources, sinks and actions share;
//! - [`template`]: minijinja conditions and templates, compiled at load time; [`tls`]: TLS
//!   options shared by servers and clients; [`redact`]: secrets out of messages;
//! - [`api`]: the HTTP API, [`tokens`]: who may call it, [`audit`]: what they changed,
//!   [`api_client`]: the CLIs' client of it; [`cli`]: the command line; [`daemon`]: `weir run`, with its
//!   signals and reloads; [`systemd`]: its `sd_notify` messages.

pub mod actions;
pub mod aggregators;
pub mod alarms;
pub mod api;
pub mod api_client;
pub mod audit;
pub mod batch;
#[cfg(test)]
mod boundary;
pub mod broker;
pub mod buffers;
mod catalogue;
pub mod cli;
pub mod codecs;
pub mod config;
pub mod daemon;
pub mod device_sessions;
pub mod devicebound;
pub mod event;
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "delta")]
pub mod lake;
pub mod ops;
pub mod pipeline_test;
pub mod redact;
pub mod registry;
pub mod sinks;
pub mod sources;
pub mod systemd;
pub mod telemetry;
pub mod template;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod tokens;
pub mod topology;
pub mod transforms;

pub use catalogue::CATALOGUE;
