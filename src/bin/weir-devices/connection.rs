//! One device's MQTT 3.1.1 connection over TLS, with rumqttc's `mqttbytes::v4` codec:
//! CONNECT and its CONNACK, then either idling (PINGREQ every half keep-alive) or
//! publishing QoS 1 telemetry with a bounded number in flight, timing each publish until
//! its PUBACK.
//!
//! One task owns the stream and alternates between writing what is due and reading what
//! arrived, so a connection costs one task and one TLS session, as a device would.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, Publish};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::payload::Payload;
use crate::stats::{LatencyBatch, Stats};

/// The largest packet accepted from the gateway (it sends acks and small requests).
const MAX_INCOMING: usize = 64 * 1024;

/// Where and how devices connect.
pub struct Target {
    pub addr: SocketAddr,
    pub connector: TlsConnector,
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
}

/// Why a connection attempt failed: the label it is counted under and the detail.
pub struct ConnectFailure {
    pub kind: &'static str,
    pub detail: String,
}

impl ConnectFailure {
    fn new(kind: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            kind,
            detail: detail.to_string(),
        }
    }
}

/// An admitted device's connection.
pub struct Connection {
    stream: TlsStream<TcpStream>,
    read: BytesMut,
    write: BytesMut,
    keep_alive: Duration,
    /// When a packet last left, for the keep-alive.
    last_sent: Instant,
}

/// How a connection's life ended, once it was admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The run ended and the device disconnected cleanly.
    Finished,
    /// The gateway closed the connection, or it failed.
    Lost,
}

/// Connects device `client_id` with `username`/`password`; `Err` unless the gateway
/// answered CONNACK 0.
pub async fn connect(
    target: &Target,
    client_id: &str,
    username: String,
    password: String,
) -> Result<Connection, ConnectFailure> {
    let attempt = async {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| ConnectFailure::new("tcp", e))?;
        let _ = tcp.set_nodelay(true);
        let stream = target
            .connector
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(|e| ConnectFailure::new("tls", e))?;
        let mut connection = Connection {
            stream,
            read: BytesMut::with_capacity(256),
            write: BytesMut::with_capacity(256),
            keep_alive: target.keep_alive,
            last_sent: Instant::now(),
        };
        let mut connect = Connect::new(client_id);
        connect.keep_alive = target.keep_alive.as_secs().min(u64::from(u16::MAX)) as u16;
        connect.clean_session = true;
        connect.set_credentials(username, password.into_bytes());
        connection
            .send(Packet::Connect(connect))
            .await
            .map_err(|e| ConnectFailure::new("io", e))?;
        match connection.next_packet().await {
            Ok(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => Ok(connection),
            Ok(Packet::ConnAck(ack)) => Err(ConnectFailure::new(
                "refused",
                format!("CONNACK {:?}", ack.code),
            )),
            Ok(other) => Err(ConnectFailure::new(
                "protocol",
                format!("expected CONNACK, got {:?}", other.packet_type()),
            )),
            Err(e) => Err(ConnectFailure::new("io", e)),
        }
    };
    match tokio::time::timeout(target.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnectFailure::new(
            "timeout",
            format!("no CONNACK within {:?}", target.connect_timeout),
        )),
    }
}

/// What one publishing connection should do.
pub struct PublishPlan {
    /// `devices/{id}/messages/events/`.
    pub topic: Bytes,
    pub inflight: usize,
    /// Time between this connection's publishes; `None`: as fast as PUBACKs come back.
    pub interval: Option<Duration>,
    /// When this connection's first publish is due.
    pub first_due: Instant,
    /// Stop starting publishes; wait up to `drain` for the PUBACKs still due.
    pub stop: CancellationToken,
    pub drain: Duration,
    pub payload: Arc<Payload>,
    /// Keep the `seq` of every acknowledged publish.
    pub keep_acked: bool,
}

/// What a publishing connection did.
#[derive(Default)]
pub struct Published {
    /// `seq` of each acknowledged publish (only with `keep_acked`).
    pub acked_seqs: Vec<u64>,
}

/// A publish waiting for its PUBACK.
struct Outstanding {
    pkid: u16,
    /// When it was due (rate mode) or sent (as fast as possible): its latency's start.
    started: Instant,
    seq: u64,
}

impl Connection {
    /// Holds the connection until `stop`, pinging within the keep-alive.
    pub async fn idle(mut self, stop: &CancellationToken) -> Ending {
        loop {
            let ping_at = self.ping_due();
            tokio::select! {
                _ = stop.cancelled() => return self.disconnect().await,
                _ = tokio::time::sleep_until(ping_at.into()) => {
                    if self.send(Packet::PingReq).await.is_err() {
                        return Ending::Lost;
                    }
                }
                packet = self.next_packet() => match packet {
                    Ok(Packet::PingResp) => {}
                    _ => return Ending::Lost,
                },
            }
        }
    }

    /// Publishes QoS 1 telemetry until `plan.stop`, then waits for the outstanding PUBACKs
    /// (at most `plan.drain`) and disconnects.
    pub async fn publish(mut self, plan: &PublishPlan, stats: &Stats) -> (Ending, Published) {
        let mut outstanding: VecDeque<Outstanding> = VecDeque::with_capacity(plan.inflight);
        let mut published = Published::default();
        let mut latencies = LatencyBatch::new(stats);
        let mut next_due = plan.first_due;
        let mut next_pkid: u16 = 0;
        let mut body = Vec::with_capacity(plan.payload.len());
        let mut drain_until: Option<Instant> = None;
        let ending = loop {
            if drain_until.is_none() {
                let now = Instant::now();
                while outstanding.len() < plan.inflight {
                    let started = match plan.interval {
                        Some(interval) if next_due <= now => {
                            let due = next_due;
                            next_due += interval;
                            due
                        }
                        Some(_) => break,
                        None => now,
                    };
                    next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                    let seq = stats.next_seq();
                    body.clear();
                    plan.payload.render(seq, &mut body);
                    let publish = Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic: plan.topic.clone(),
                        pkid: next_pkid,
                        payload: Bytes::copy_from_slice(&body),
                    };
                    if Packet::Publish(publish)
                        .write(&mut self.write, MAX_INCOMING)
                        .is_err()
                    {
                        break;
                    }
                    stats.count_sent();
                    outstanding.push_back(Outstanding {
                        pkid: next_pkid,
                        started,
                        seq,
                    });
                }
            }
            if self.flush().await.is_err() {
                break Ending::Lost;
            }
            if drain_until.is_some() && outstanding.is_empty() {
                break self.disconnect().await;
            }
            let wake = match (drain_until, plan.interval) {
                (Some(until), _) => until,
                (None, Some(_)) if outstanding.len() < plan.inflight => next_due,
                _ => self.ping_due(),
            };
            tokio::select! {
                packet = self.next_packet() => match packet {
                    Ok(Packet::PubAck(ack)) => {
                        let Some(at) = outstanding.iter().position(|o| o.pkid == ack.pkid) else {
                            break Ending::Lost;
                        };
                        if let Some(done) = outstanding.remove(at) {
                            latencies.record(done.started.elapsed());
                            stats.count_acked();
                            if plan.keep_acked {
                                published.acked_seqs.push(done.seq);
                            }
                        }
                    }
                    Ok(Packet::PingResp) => {}
                    _ => break Ending::Lost,
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    if drain_until.is_some_and(|until| Instant::now() >= until) {
                        break self.disconnect().await;
                    }
                    if drain_until.is_none() && Instant::now() >= self.ping_due() {
                        Packet::PingReq.write(&mut self.write, MAX_INCOMING).ok();
                    }
                }
                _ = plan.stop.cancelled(), if drain_until.is_none() => {
                    drain_until = Some(Instant::now() + plan.drain);
                }
            }
        };
        latencies.flush();
        stats.count_unacked(outstanding.len() as u64);
        (ending, published)
    }

    /// Sends DISCONNECT and closes the TLS session.
    async fn disconnect(mut self) -> Ending {
        let _ = self.send(Packet::Disconnect).await;
        let _ = self.stream.shutdown().await;
        Ending::Finished
    }

    fn ping_due(&self) -> Instant {
        self.last_sent + self.keep_alive / 2
    }

    async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        packet
            .write(&mut self.write, MAX_INCOMING)
            .map_err(|e| std::io::Error::other(format!("cannot encode a packet: {e:?}")))?;
        self.flush().await
    }

    /// Writes what is buffered, if anything.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.write.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.write).await?;
        self.stream.flush().await?;
        self.write.clear();
        self.last_sent = Instant::now();
        Ok(())
    }

    /// The next packet from the gateway. Cancel-safe: a partial packet stays buffered.
    async fn next_packet(&mut self) -> std::io::Result<Packet> {
        loop {
            match Packet::read(&mut self.read, MAX_INCOMING) {
                Ok(packet) => return Ok(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(std::io::Error::other(format!("malformed packet: {e:?}"))),
            }
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}
