//! What the components that talk to message brokers share: the `amqp` and `mqtt` sources,
//! sinks and actions connect, authenticate and publish through here, so a sink and an
//! action of one broker behave alike (and a fix reaches both).
//!
//! A library, like `codecs/`: it uses the engine (configuration types, telemetry) and is
//! used by components; no component's internals.

pub mod amqp;
pub mod credentials;
pub mod mqtt;

pub use credentials::CredentialFields;
