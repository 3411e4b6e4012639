//! The gateway's listener: binds the port at build time, accepts TLS connections and
//! runs a session for each until the topology stops it.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::connections::Connections;
use super::dedupe::SeenMessages;
use super::rate::DeviceRates;
use super::telemetry::Decoders;
use super::tls::TlsStream;
use super::{DeviceGatewayConfig, Gateway, session, settlement, twin, x509};
use crate::device_sessions::DeviceSessions;
use crate::devicebound::Devicebound;
use crate::registry::Registry;
use crate::sources::SourceContext;
use crate::topology::ComponentTask;

/// How long stopping waits for sessions to hand in their last acknowledgements, beyond
/// `ack_timeout`.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often devices' refilled rate buckets are dropped.
const PRUNE_RATES: Duration = Duration::from_secs(60);

/// Binds the port now (so a taken port fails the start) and returns the task that serves it.
pub(super) fn build(
    config: &DeviceGatewayConfig,
    cx: SourceContext,
) -> anyhow::Result<ComponentTask> {
    let registry = cx.services.get::<Registry>().ok_or_else(|| {
        anyhow::anyhow!("the device gateway needs the device registry: add a `registry:` section")
    })?;
    let tls = x509::server_config(&config.tls, config.client_auth)?;
    let tls = Arc::new(tls);
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", config.listen))?;
    listener.set_nonblocking(true)?;
    let devicebound = cx
        .services
        .get_or_insert_with(|| Arc::new(Devicebound::default()))
        .open(cx.id.as_str(), &cx.data_dir, config.devicebound.limits())?;
    let seen = cx
        .data_dir
        .join("device_gateway")
        .join(format!("{}.seen", cx.id));
    let seen = Arc::new(SeenMessages::open(seen, config.dedupe.window)?);
    let sessions = cx
        .services
        .get_or_insert_with(|| Arc::new(DeviceSessions::new()));
    sessions.report_to(cx.telemetry.device_method_metrics());
    let metrics = cx.telemetry.gateway_metrics();
    let rates = config
        .rate_limit
        .map(|limit| DeviceRates::new(&limit, metrics.throttled.clone()));
    devicebound.report_depth(metrics.devicebound_messages.clone());
    let gateway = Arc::new(Gateway {
        registry,
        devicebound,
        sessions,
        seen,
        decoders: Decoders::new(&config.decoding),
        source: cx.id.as_arc(),
        out: cx.out,
        metrics,
        telemetry: cx.telemetry,
        connections: Connections::default(),
        max_packet_size: config.max_packet_size.get() as usize,
        max_keep_alive: config.max_keep_alive.get(),
        connect_timeout: config.connect_timeout.get(),
        max_inflight: config.max_inflight,
        ack_timeout: config.ack_timeout.get(),
        provisioning: config.provisioning.clone(),
        rates,
        shutdown: cx.shutdown,
    });
    let listen = config.listen;
    let id = cx.id;
    Ok(Box::pin(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let listening = gateway.telemetry.connected();
        listening.set(1);
        let upkeep = start_upkeep(&gateway);
        tracing::info!(component_id = %id, %listen, "device gateway listening");
        // Ends with the same shutdown as the sessions.
        let pushes = tokio::spawn(twin::push_desired_changes(Arc::clone(&gateway)));
        let mut sessions = JoinSet::new();
        let mut prune = tokio::time::interval(PRUNE_RATES);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = gateway.shutdown.cancelled() => break,
                _ = prune.tick(), if gateway.rates.is_some() => {
                    gateway.rates.iter().for_each(|rates| rates.forget_idle());
                    continue;
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: wait, rather than spin.
                        tracing::warn!(component_id = %id, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (tls, gateway) = (Arc::clone(&tls), Arc::clone(&gateway));
            let session = async move {
                let handshake =
                    tokio::time::timeout(gateway.connect_timeout, TlsStream::accept(tls, tcp));
                match handshake.await {
                    Ok(Ok(stream)) => {
                        let certificate = x509::presented(stream.state());
                        session::serve(gateway, stream, certificate).await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            };
            sessions.spawn(session);
        }
        drop(listener);
        listening.set(0);
        let _ = pushes.await;
        upkeep.stop().await;
        // Sessions see the same shutdown: they stop reading and hand in their last acks.
        let drained = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(gateway.ack_timeout + STOP_GRACE, drained)
            .await
            .is_err()
        {
            sessions.shutdown().await;
        }
        Ok(())
    }))
}

/// The gateway's background work on its cloud-to-device queues: the expiry timer and the
/// hand-over of settled messages.
struct Upkeep {
    stop: tokio_util::sync::CancellationToken,
    tasks: JoinSet<()>,
}

impl Upkeep {
    async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn start_upkeep(gateway: &Gateway) -> Upkeep {
    let stop = gateway.shutdown.child_token();
    let mut tasks = JoinSet::new();
    tasks.spawn(settlement::expire(
        Arc::clone(&gateway.devicebound),
        stop.clone(),
    ));
    tasks.spawn(settlement::hand_over(
        Arc::clone(&gateway.devicebound),
        gateway.out.clone(),
        Arc::clone(&gateway.source),
        gateway.ack_timeout,
        gateway.telemetry.clone(),
        stop.clone(),
    ));
    Upkeep { stop, tasks }
}
