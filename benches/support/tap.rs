//! A tap attached for a whole load (`WEIR_E2E_TAP=1` of `e2e_http`): what `weir tap`
//! does with its defaults (at most 100 events per 500 ms shown), over a plain socket —
//! `GET /v1/tap?outputs_of=*` with the admin token, read and thrown away.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The tap being read.
pub struct Reader {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Reader {
    /// Closes the tap; the events it read.
    pub fn detach(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// Attaches a tap to every output of the weir at `api` (its admin token in `data_dir`),
/// once the API says it is attached.
pub fn attach(api: SocketAddr, data_dir: &Path) -> Result<Reader, String> {
    let token = std::fs::read_to_string(data_dir.join("initial-admin-token"))
        .map_err(|e| format!("no admin token in {}: {e}", data_dir.display()))?;
    let mut stream = TcpStream::connect(api).map_err(|e| format!("tap: {e}"))?;
    write!(
        stream,
        "GET /v1/tap?outputs_of=* HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    )
    .map_err(|e| format!("tap: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| format!("tap: {e}"))?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains("\"attached\"") {
        if Instant::now() > deadline {
            return Err(format!(
                "the tap did not attach: {}",
                String::from_utf8_lossy(&seen)
            ));
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err("the API closed the tap".into()),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut events = 0u64;
        // Each event's line starts so (a line split between two reads may be missed).
        let marker = b"{\"component_id\"";
        while !stopping.load(Ordering::Relaxed) {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    events += buf[..n]
                        .windows(marker.len())
                        .filter(|w| w == marker)
                        .count() as u64
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        events
    });
    Ok(Reader { stop, thread })
}
