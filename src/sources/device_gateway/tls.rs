//! TLS on a device's TCP connection with rustls's unbuffered API, so that an idle
//! connection holds no buffer at all.
//!
//! rustls's buffered `ServerConnection` (what `tokio-rustls` wraps) keeps a zero-filled
//! 4 KiB record buffer per connection for as long as the connection lives: with 10,000
//! devices that is 40 MiB for nothing. Here the buffers are weir's own and exist only
//! while bytes are in them: `incoming` (TLS records read from the socket, not yet
//! decrypted), `plaintext` (decrypted bytes the MQTT codec has not taken yet) and
//! `outgoing` (TLS records not yet written). Each is dropped as soon as it is empty, and
//! reading waits for the socket to be readable before allocating anything.
//!
//! Every `await` here is cancel-safe: what was read or is still to be written stays in
//! the buffers, so the session may select over reading and other work.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use rustls::{CommonState, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How much one read from the socket takes at most: a full TLS record and its header.
const READ_SIZE: usize = 16 * 1024 + 512;

/// A TLS server connection over TCP.
pub(super) struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    incoming: Vec<u8>,
    outgoing: Vec<u8>,
    plaintext: BytesMut,
    /// The peer sent close_notify or closed its end of the socket.
    eof: bool,
}

/// What to send once the handshake allows it.
#[derive(Clone, Copy)]
enum Out<'a> {
    Data(&'a [u8]),
    CloseNotify,
}

/// Where processing the records received so far left the connection.
enum Next {
    /// Keep processing.
    Process,
    /// More bytes from the peer are needed to go on (or, after the handshake, to read).
    Read,
    /// The handshake is done: application data may be sent.
    Established,
    /// The connection is closed both ways.
    Closed,
}

fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl TlsStream {
    /// Runs the server side of the handshake on `tcp` (bound by the caller's timeout).
    pub(super) async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut stream = Self {
            tcp,
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            plaintext: BytesMut::new(),
            eof: false,
        };
        loop {
            let next = stream.process(None)?;
            stream.flush().await?;
            match next {
                // (Established early only when sending half-RTT data, which weir doesn't.)
                Next::Established if !stream.conn.is_handshaking() => return Ok(stream),
                Next::Established | Next::Read | Next::Process => {
                    if !stream.read_tls().await? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Next::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }

    /// What the handshake established: the client's certificates, among others.
    pub(super) fn state(&self) -> &CommonState {
        &self.conn
    }

    /// The decrypted bytes not consumed yet; the caller takes what it parses from the
    /// front (and may replace an emptied buffer with a new one, to free it).
    pub(super) fn plaintext(&mut self) -> &mut BytesMut {
        &mut self.plaintext
    }

    /// Waits until more plaintext is available (appended to [`Self::plaintext`]); false
    /// once the peer has closed the connection. Cancel-safe.
    pub(super) async fn read_more(&mut self) -> io::Result<bool> {
        let had = self.plaintext.len();
        loop {
            // What processing queued (a key update's answer) goes out first.
            self.flush().await?;
            if self.eof {
                return Ok(false);
            }
            if !self.read_tls().await? {
                self.eof = true;
                return Ok(false);
            }
            if let Next::Closed = self.process(None)? {
                self.eof = true;
            }
            if self.plaintext.len() > had {
                return Ok(true);
            }
        }
    }

    /// Encrypts and sends `data`. Not cancel-safe (a cancelled write may leave a record
    /// half sent): the session awaits it to the end.
    pub(super) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self.process(Some(Out::Data(data)))? {
            Next::Established => {}
            _ => return Err(io::ErrorKind::BrokenPipe.into()),
        }
        self.flush().await
    }

    /// Sends close_notify and shuts the socket's sending side down.
    pub(super) async fn close(&mut self) -> io::Result<()> {
        self.process(Some(Out::CloseNotify))?;
        self.flush().await?;
        self.tcp.shutdown().await
    }

    /// Reads what the socket has into `incoming`, waiting until it has something;
    /// false at the end of the stream. Allocates `incoming` only once bytes are there.
    async fn read_tls(&mut self) -> io::Result<bool> {
        loop {
            self.tcp.readable().await?;
            self.incoming.reserve(READ_SIZE);
            match self.tcp.try_read_buf(&mut self.incoming) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.free_idle_buffers();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `outgoing` out. Cancel-safe: what was written is gone from the buffer.
    async fn flush(&mut self) -> io::Result<()> {
        while !self.outgoing.is_empty() {
            self.tcp.writable().await?;
            match self.tcp.try_write(&self.outgoing) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.outgoing.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        Ok(())
    }

    fn free_idle_buffers(&mut self) {
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        if self.outgoing.is_empty() {
            self.outgoing = Vec::new();
        }
    }

    /// Processes the records in `incoming`: decrypted application data goes to
    /// `plaintext`, handshake records to `outgoing`, and `send` (if any) is encrypted
    /// into `outgoing` once the handshake allows it. Never waits.
    fn process(&mut self, mut send: Option<Out<'_>>) -> io::Result<Next> {
        loop {
            let status = self.conn.process_tls_records(&mut self.incoming[..]);
            let mut discard = status.discard;
            let next = match status.state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    Next::Process
                }
                ConnectionState::EncodeTlsData(mut handshake) => {
                    let start = self.outgoing.len();
                    let mut room = 1024;
                    loop {
                        self.outgoing.resize(start + room, 0);
                        match handshake.encode(&mut self.outgoing[start..]) {
                            Ok(written) => {
                                self.outgoing.truncate(start + written);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(need)) => room = need.required_size,
                            Err(e) => {
                                self.outgoing.truncate(start);
                                return Err(io::Error::other(e));
                            }
                        }
                    }
                    Next::Process
                }
                // `outgoing` keeps the records in order: queued there counts as sent.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    Next::Process
                }
                ConnectionState::BlockedHandshake => Next::Read,
                ConnectionState::PeerClosed => {
                    self.eof = true;
                    Next::Process
                }
                ConnectionState::Closed => Next::Closed,
                ConnectionState::WriteTraffic(mut traffic) => {
                    let start = self.outgoing.len();
                    let mut room = match send {
                        Some(Out::Data(data)) => data.len() + 64,
                        Some(Out::CloseNotify) => 64,
                        None => 0,
                    };
                    while let Some(out) = send {
                        self.outgoing.resize(start + room, 0);
                        let buf = &mut self.outgoing[start..];
                        let encrypted = match out {
                            Out::Data(data) => traffic.encrypt(data, buf),
                            Out::CloseNotify => traffic.queue_close_notify(buf),
                        };
                        match encrypted {
                            Ok(written) => {
                                self.outgoing.truncate(start + written);
                                send = None;
                            }
                            Err(EncryptError::InsufficientSize(need)) => room = need.required_size,
                            Err(e) => {
                                self.outgoing.truncate(start);
                                return Err(io::Error::other(e));
                            }
                        }
                    }
                    Next::Established
                }
                // Early data (weir's configuration accepts none) and states added later.
                _ => return Err(io::Error::other("unexpected TLS state")),
            };
            self.incoming.drain(..discard);
            match next {
                Next::Process => {}
                next => {
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                    return Ok(next);
                }
            }
        }
    }
}
