//! `weir-devices`: a connection-count load generator for weir's `device_gateway`.
//!
//! It plays a fleet of devices speaking the IoT hub device protocol (MQTT 3.1.1 over TLS;
//! client id = device id, username `{hub}/{id}/?api-version=2021-04-12`, password a SAS
//! token), built on tokio, tokio-rustls and rumqttc's `mqttbytes::v4` codec rather than a
//! device SDK, so that one small process can hold ten thousand connections:
//!
//! ```text
//! weir-devices fleet --devices 10000 --fleet-key <base64> --out fleet.csv
//! weir devices import fleet.csv                   # register them (keys included)
//! weir-devices run --address 127.0.0.1:8883 --ca ca.pem --devices 10000 \
//!     --fleet-key <base64> --connect-rate 1000 idle          # hold until stdin closes
//! weir-devices run … --devices 1000 publish --inflight 10 --duration 20s [--rate 10000]
//! ```
//!
//! Each device's key is derived from `--fleet-key` as an enrollment group derives keys
//! (Base64(HMAC-SHA256(fleet key, device id))), so `fleet` and `run` agree without a key
//! file. `run` opens the connections at `--connect-rate` per second, prints one JSON line
//! once every attempt has ended (`"phase":"connected"`), then:
//!
//! - `idle`: keeps them open (pinging within the keep-alive) for `--hold`, or until its
//!   standard input closes, so a harness can measure the gateway while they are idle;
//! - `publish`: prints `"phase":"publishing"` and sends QoS 1 telemetry of `--payload`
//!   bytes (JSON with a unique `seq`), at most `--inflight` unacknowledged per connection,
//!   as fast as PUBACKs return or at `--rate` messages/s in all. With `--rate`, each
//!   publish is timed from when it was due, so a stalled gateway cannot hide behind fewer
//!   publishes (no coordinated omission). After `--duration` it stops publishing and waits
//!   up to `--drain` for the outstanding PUBACKs.
//!
//! It ends with a line for people and a JSON line (`"phase":"done"`: connected, failed
//! and lost connections, sent, acked, unacked, msgs_per_s, publish→PUBACK p50/p99/p99.9/
//! max, the generator's CPU seconds during the publishing); `--acked-log FILE` writes the
//! `seq` of every acknowledged publish, one per line. The exit status is non-zero when no
//! device connected.

mod connection;
mod fleet;
mod payload;
mod run;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "weir-devices",
    version,
    about = "Simulated IoT hub devices (MQTT over TLS) against weir's device gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the fleet's import CSV (`id,primary_key`) for `weir devices import`.
    Fleet {
        #[command(flatten)]
        fleet: FleetArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// Connect the fleet and idle or publish.
    Run(Box<RunArgs>),
}

/// Which devices.
#[derive(Debug, Args)]
struct FleetArgs {
    /// Number of devices.
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// Device ids are `{prefix}{n:07}`.
    #[arg(long, default_value = "gw-")]
    prefix: String,
    /// The first `n`.
    #[arg(long, default_value_t = 0)]
    first_device: u32,
    /// Base64 key (≥ 16 bytes) every device's key is derived from.
    #[arg(long, env = "WEIR_DEVICES_FLEET_KEY")]
    fleet_key: String,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// The gateway's address.
    #[arg(long, default_value = "127.0.0.1:8883")]
    address: SocketAddr,
    /// The CA that signed the gateway's certificate (PEM); default: the system's roots.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The name the gateway's certificate is checked against (a host name or an IP
    /// address); default: the address's IP.
    #[arg(long)]
    server_name: Option<String>,
    /// The hub's host name in usernames and SAS resources.
    #[arg(long, default_value = "weir")]
    hub_host: String,
    /// New connections per second.
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// Give up on a connection without a CONNACK after this long.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    connect_timeout: Duration,
    /// The keep-alive asked for in CONNECT; a PINGREQ goes out after half of it in silence.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    keep_alive: Duration,
    /// How long each SAS token is valid.
    #[arg(long, value_parser = parse_duration, default_value = "1d")]
    token_ttl: Duration,
    /// Threads of the async runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Keep every connection open and idle.
    Idle {
        /// How long; default: until standard input closes.
        #[arg(long, value_parser = parse_duration)]
        hold: Option<Duration>,
    },
    /// Publish QoS 1 telemetry.
    Publish(PublishArgs),
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// How long to publish.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Unacknowledged publishes per connection.
    #[arg(long, default_value_t = 10)]
    inflight: usize,
    /// Messages per second across all connections (default: as fast as PUBACKs return).
    #[arg(long)]
    rate: Option<f64>,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// The first `seq` (each message gets the next one).
    #[arg(long, default_value_t = 0)]
    first_seq: u64,
    /// After `--duration`, how long to wait for outstanding PUBACKs.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    drain: Duration,
    /// Write the `seq` of every acknowledged publish here, one per line, sorted.
    #[arg(long)]
    acked_log: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("expected a duration such as `10s`, `2m` or `1d`: {err}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fleet { fleet, out } => fleet::Fleet::new(
            &fleet.prefix,
            fleet.first_device,
            fleet.devices,
            &fleet.fleet_key,
        )
        .and_then(|f| f.write_csv(&out))
        .map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run::main(*args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("weir-devices: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
