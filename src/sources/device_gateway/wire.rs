//! MQTT 3.1.1 packets on a (TLS) stream, with rumqttc's `mqttbytes::v4` codec: a reader
//! that refuses packets over the configured size, and a writer task that sends what the
//! session queues, coalescing what is queued at once into one write.

use bytes::BytesMut;
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Packets weir sends are small (acks) or bounded by the device's own limit; this only
/// guards the encoder.
const MAX_OUTGOING: usize = 268_435_455;

/// What a connection's read buffer starts with: enough for a device's CONNECT and a few
/// small publishes. It grows to what a device's packets need (up to `max_packet_size`)
/// and keeps that, so idle devices, the many, hold little (measured by
/// `benches/device_gateway.rs`: starting at 4 KiB, with the writer's 1 KiB, cost 4.2 of an
/// idle connection's 26.5 KiB).
const INITIAL_READ_BUFFER: usize = 512;

/// Why reading a packet failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    #[error("connection closed")]
    Closed,
    #[error("malformed packet: {0}")]
    Malformed(CodecError),
    #[error("packet larger than max_packet_size")]
    TooLarge,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// The `reason` label of the disconnect this error causes.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Self::Closed | Self::Io(_) => "connection_lost",
            Self::Malformed(_) => "malformed_packet",
            Self::TooLarge => "packet_too_large",
        }
    }
}

/// Reads whole packets, never buffering more than one packet over `max_size`.
pub(super) struct PacketReader<R> {
    read: R,
    buf: BytesMut,
    max_size: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    pub(super) fn new(read: R, max_size: usize) -> Self {
        Self {
            read,
            buf: BytesMut::with_capacity(INITIAL_READ_BUFFER),
            max_size,
        }
    }

    /// The next packet. Cancel-safe: a partial packet stays in the buffer.
    pub(super) async fn next(&mut self) -> Result<Packet, ReadError> {
        loop {
            match Packet::read(&mut self.buf, self.max_size) {
                Ok(packet) => return Ok(packet),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(CodecError::PayloadSizeLimitExceeded(_)) => return Err(ReadError::TooLarge),
                Err(e) => return Err(ReadError::Malformed(e)),
            }
            if self.read.read_buf(&mut self.buf).await? == 0 {
                return Err(ReadError::Closed);
            }
        }
    }
}

/// Writes the packets queued on `queue` until it closes or the stream fails, then shuts
/// the stream down (a TLS close_notify).
pub(super) async fn write_packets<W: AsyncWrite + Unpin>(
    mut write: W,
    mut queue: mpsc::Receiver<Packet>,
) {
    // Empty until the first packet: most of what goes out is a 4-byte ack, and a burst
    // grows it once to what the burst needs.
    let mut buf = BytesMut::new();
    while let Some(packet) = queue.recv().await {
        buf.clear();
        let mut next = Some(packet);
        while let Some(packet) = next {
            if packet.write(&mut buf, MAX_OUTGOING).is_err() {
                return;
            }
            next = match buf.len() < 64 * 1024 {
                true => queue.try_recv().ok(),
                false => None,
            };
        }
        if write.write_all(&buf).await.is_err() || write.flush().await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}
