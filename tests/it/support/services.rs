//! The brokers integration tests talk to: started when installed but stopped, installed
//! with apt-get when missing. A test that needs one fails (never skips) when it cannot be
//! had.
//!
//! # Leases: a broker is stopped only while nobody uses it
//!
//! Every integration test runs in one process, two at a time by default, whatever its
//! module; a test that stops or restarts a broker would pull it from under whichever test
//! uses it at that moment. So each broker has a process-wide read-write lock, and a test
//! holds a [`Lease`] on every broker it talks to, for its whole run:
//!
//! - a test that uses brokers takes `Lease::shared(&[Broker::RabbitMq, Broker::Mosquitto])`
//!   (any number of them run at once);
//! - a test that stops or restarts one takes `Lease::exclusive(Broker::Redis)`: it waits
//!   until the tests using Redis are done, none starts until it is, and it brings Redis
//!   back before its lease ends.
//!
//! Take the lease first thing in the test and bind it to a name (`let _redis = ...`; `let _
//! =` would drop it at once), and take all of a test's shared leases in one call: the
//! locks are fair (a waiting exclusive lease holds back new shared ones, so a restart test
//! is not starved), and one call takes them in one fixed order, so two tests cannot each
//! wait for what the other holds. The URL functions ([`redis`], [`rabbitmq`],
//! [`mosquitto`]) panic when nobody holds a lease on their broker, which catches a test
//! that forgot its lease whenever it runs alone.

use std::net::TcpStream;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A broker the tests share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Broker {
    Redis,
    RabbitMq,
    Mosquitto,
}

static LOCKS: [RwLock<()>; 3] = [const { RwLock::const_new(()) }; 3];

fn lock(broker: Broker) -> &'static RwLock<()> {
    &LOCKS[broker as usize]
}

/// The right to use brokers (shared) or to stop one (exclusive), until dropped.
#[must_use = "a lease ends when dropped: bind it to a named variable for the whole test"]
pub struct Lease {
    _shared: Vec<RwLockReadGuard<'static, ()>>,
    _exclusive: Option<RwLockWriteGuard<'static, ()>>,
}

impl Lease {
    /// Uses `brokers` alongside other tests; waits while one of them is being restarted.
    pub async fn shared(brokers: &[Broker]) -> Lease {
        let mut brokers = brokers.to_vec();
        brokers.sort();
        brokers.dedup();
        let mut shared = Vec::with_capacity(brokers.len());
        for broker in brokers {
            shared.push(lock(broker).read().await);
        }
        Lease {
            _shared: shared,
            _exclusive: None,
        }
    }

    /// Has `broker` to itself (to stop or restart it) once every other test is done with it.
    pub async fn exclusive(broker: Broker) -> Lease {
        Lease {
            _shared: Vec::new(),
            _exclusive: Some(lock(broker).write().await),
        }
    }
}

/// Panics unless some test holds a lease on `broker`.
fn assert_leased(broker: Broker) {
    // Taking the exclusive lock succeeds only when nobody holds a lease, so neither does
    // the caller; the guard is dropped at once.
    assert!(
        lock(broker).try_write().is_err(),
        "this test uses {broker:?} without a lease: start it with \
         `let _lease = services::Lease::shared(&[services::Broker::{broker:?}]).await;`"
    );
}

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

/// The URL of a running Redis (answering PING), without a database number. The caller
/// holds a lease on [`Broker::Redis`].
pub fn redis() -> &'static str {
    assert_leased(Broker::Redis);
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

/// The URL of a running Mosquitto. The caller holds a lease on [`Broker::Mosquitto`].
pub fn mosquitto() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    assert_leased(Broker::Mosquitto);
    READY.get_or_init(|| ensure(&MOSQUITTO));
    "mqtt://127.0.0.1:1883"
}

/// Starts Mosquitto again after a test stopped it.
pub fn restart_mosquitto_if_down() {
    ensure(&MOSQUITTO);
}

/// The AMQP URL of a running RabbitMQ (guest/guest). The caller holds a lease on
/// [`Broker::RabbitMq`].
pub fn rabbitmq() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    assert_leased(Broker::RabbitMq);
    READY.get_or_init(|| {
        ensure(&RABBITMQ);
        enable_consistent_hash_exchange();
    });
    "amqp://guest:guest@127.0.0.1:5672/%2f"
}

/// Enables the plugin the `amqp` source's `partition` declares its exchange with (on a
/// running node; enabling an enabled plugin changes nothing). `.ci/run` enables it too.
fn enable_consistent_hash_exchange() {
    let output = Command::new("rabbitmq-plugins")
        .args(["enable", "rabbitmq_consistent_hash_exchange"])
        .output();
    assert!(
        output.as_ref().is_ok_and(|o| o.status.success()),
        "cannot enable RabbitMQ's rabbitmq_consistent_hash_exchange plugin: {output:?}"
    );
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
