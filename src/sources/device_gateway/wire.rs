//! MQTT 3.1.1 packets on a device's TLS connection, with rumqttc's `mqttbytes::v4` codec:
//! reading refuses packets over the configured size; writing encodes what the session
//! queues and sends it in one TLS write.

use bytes::BytesMut;
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::mqttbytes::v4::Packet;

use super::tls::TlsStream;

/// Packets weir sends are small (acks) or bounded by the device's own limit; this only
/// guards the encoder.
const MAX_OUTGOING: usize = 268_435_455;

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

/// A device's connection as MQTT packets: reads whole packets (never buffering more than
/// one packet over `max_size`) and writes packets, with no buffer held while idle (see
/// [`TlsStream`]): what is read is parsed from the TLS layer's plaintext, and what is
/// written is encoded into a buffer that lives until it is sent.
pub(super) struct PacketStream {
    tls: TlsStream,
    max_size: usize,
    /// Packets encoded by [`Self::queue`], not sent yet.
    out: BytesMut,
}

impl PacketStream {
    pub(super) fn new(tls: TlsStream, max_size: usize) -> Self {
        Self {
            tls,
            max_size,
            out: BytesMut::new(),
        }
    }

    /// The next packet. Cancel-safe: a partial packet stays in the buffer.
    pub(super) async fn next(&mut self) -> Result<Packet, ReadError> {
        loop {
            let buf = self.tls.plaintext();
            let parsed = match Packet::read(buf, self.max_size) {
                Ok(packet) => Ok(packet),
                Err(CodecError::InsufficientBytes(_)) => Err(None),
                Err(CodecError::PayloadSizeLimitExceeded(_)) => Err(Some(ReadError::TooLarge)),
                Err(e) => Err(Some(ReadError::Malformed(e))),
            };
            // Nothing left to parse: let go of the buffer (the packet keeps its part).
            if buf.is_empty() {
                *buf = BytesMut::new();
            }
            match parsed {
                Ok(packet) => return Ok(packet),
                Err(Some(e)) => return Err(e),
                Err(None) => {}
            }
            if !self.tls.read_more().await? {
                return Err(ReadError::Closed);
            }
        }
    }

    /// Encodes `packet` to go out with the next [`Self::flush`].
    pub(super) fn queue(&mut self, packet: &Packet) -> std::io::Result<()> {
        packet
            .write(&mut self.out, MAX_OUTGOING)
            .map(drop)
            .map_err(|e| std::io::Error::other(format!("cannot encode a packet: {e}")))
    }

    /// Sends what was queued, in one TLS write. Not cancel-safe.
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        let out = std::mem::take(&mut self.out);
        if out.is_empty() {
            return Ok(());
        }
        self.tls.write_all(&out).await
    }

    /// Sends `packet` (and whatever was queued before it).
    pub(super) async fn send(&mut self, packet: &Packet) -> std::io::Result<()> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Sends what was queued, then close_notify, and closes the sending side.
    pub(super) async fn close(&mut self) {
        if self.flush().await.is_ok() {
            let _ = self.tls.close().await;
        }
    }
}
