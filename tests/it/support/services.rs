//! The brokers integration tests talk to: started when installed but stopped, installed
//! with apt-get when missing. A test that needs one fails (never skips) when it cannot be
//! had.

use std::net::TcpStream;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Service {
    name: &'static str,
    port: u16,
    binary: &'static str,
    package: &'static str,
    start: &'static [&'static str],
}

const RABBITMQ: Service = Service {
    name: "RabbitMQ",
    port: 5672,
    binary: "rabbitmq-server",
    package: "rabbitmq-server",
    start: &["rabbitmq-server", "-detached"],
};

const MOSQUITTO: Service = Service {
    name: "Mosquitto",
    port: 1883,
    binary: "mosquitto",
    package: "mosquitto",
    start: &["mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf"],
};

/// How the shared Redis is started: no persistence, so tests start from what they write.
pub const REDIS_START: &str = "mkdir -p /var/lib/redis /var/log/redis && redis-server --daemonize yes \
    --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis \
    --logfile /var/log/redis/ci.log";

const REDIS: Service = Service {
    name: "Redis",
    port: 6379,
    binary: "redis-server",
    package: "redis-server",
    start: &["sh", "-c", REDIS_START],
};

/// The URL of a running Redis (answering PING), without a database number.
pub fn redis() -> &'static str {
    ensure_redis();
    "redis://127.0.0.1:6379"
}

/// Starts Redis (again) unless it answers PING, and waits until it does.
pub fn ensure_redis() {
    if redis_answers() {
        return;
    }
    ensure(&REDIS);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !redis_answers() {
        assert!(
            Instant::now() < deadline,
            "Redis listens on 127.0.0.1:6379 but does not answer PING"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether Redis on 127.0.0.1:6379 answers PING with PONG.
pub fn redis_answers() -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], 6379).into(), Duration::from_millis(300))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// The URL of a running Mosquitto.
pub fn mosquitto() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| ensure(&MOSQUITTO));
    "mqtt://127.0.0.1:1883"
}

/// Starts Mosquitto again after a test stopped it.
pub fn restart_mosquitto_if_down() {
    ensure(&MOSQUITTO);
}

/// The AMQP URL of a running RabbitMQ (guest/guest).
pub fn rabbitmq() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| ensure(&RABBITMQ));
    "amqp://guest:guest@127.0.0.1:5672/%2f"
}

fn reachable(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

fn ensure(service: &Service) {
    if reachable(service.port) {
        return;
    }
    let installed = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {}", service.binary))
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}",
                service.package
            ))
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "{} is not installed and apt-get could not install `{}`",
            service.name,
            service.package
        );
    }
    let started = Command::new(service.start[0])
        .args(&service.start[1..])
        .status();
    assert!(
        started.is_ok(),
        "cannot run {:?} to start {}",
        service.start,
        service.name
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !reachable(service.port) {
        assert!(
            Instant::now() < deadline,
            "{} did not come up on 127.0.0.1:{} within 120 s",
            service.name,
            service.port
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
