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
