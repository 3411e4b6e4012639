//! The integration tests, as one test binary: one module per area (the module path is the
//! test's prefix, e.g. `amqp::messages_are_acked_after_the_sink_commits_them`), sharing the
//! helpers in `support`.
//!
//! One binary links weir and its dependencies once instead of once per file. Its tests run
//! concurrently (two at a time on a two-core machine), also across modules: what they share
//! (the local brokers, ports, names on the brokers) is arbitrated in `support`; see its
//! module documentation. Run one area with `cargo test --test it amqp::`.

mod support;

mod actions;
mod alarms;
mod amqp;
mod amqp_kill;
mod amqp_partition;
mod amqp_restart;
mod amqp_sink;
mod api_audit;
mod api_auth;
mod api_forgery;
mod api_jwt;
mod api_openapi;
mod api_tls;
mod batch_registry;
mod cli;
mod dashboard;
mod delta_batch;
mod delta_columns;
mod delta_dead_letters;
mod delta_lake;
mod delta_object_storage;
mod delta_once;
mod delta_outage;
mod delta_source;
mod device_gateway;
mod device_gateway_c2d;
mod device_gateway_dps;
mod device_gateway_feedback;
mod device_gateway_kill;
mod device_gateway_limits;
mod device_gateway_methods;
mod device_gateway_several;
mod device_gateway_twin;
mod device_gateway_x509;
mod disk_buffer;
mod fuzz_corpus;
mod http_iothub_transport;
mod http_limits;
mod http_source;
mod http_tls;
mod kill;
mod leftover_buffers;
mod mqtt;
mod mqtt5;
mod mqtt_auth;
mod mqtt_kill;
mod mqtt_restart;
mod mqtt_sink;
mod mqtt_takeover;
mod ops_tap;
mod ops_top;
mod ops_trace;
mod outbox;
mod quickstart;
mod redis_restart;
mod redis_sink;
mod registry_amqp;
mod registry_http;
mod registry_http_gate;
mod registry_import;
mod registry_mqtt;
mod registry_simulator;
mod reload;
mod secrets;
mod shutdown;
mod systemd;
mod topology;
mod validate;
mod weir_test;
mod window_kill;
mod window_redefine;
mod window_reload;
mod windows;
