//! Local receivers for actions: an HTTP server with scripted answers, an SMTP server
//! (Python's aiosmtpd, installed on first use), an MQTT subscriber and an AMQP queue on the
//! real brokers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// What the HTTP receiver saw.
#[derive(Default)]
pub struct Seen {
    /// Every request body, in arrival order, whatever it was answered.
    pub attempts: Vec<Value>,
    /// Bodies answered with a 2xx.
    pub accepted: Vec<Value>,
    /// The `Idempotency-Key` header of each accepted request, in the same order.
    pub keys: Vec<Option<String>>,
}

/// An HTTP server that answers requests with the statuses of `script` in turn, then 200.
pub struct HttpReceiver {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
}

impl HttpReceiver {
    pub async fn start(script: Vec<u16>) -> HttpReceiver {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", super::free_port()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = {
            let seen = Arc::clone(&seen);
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = Arc::clone(&seen);
                let script = Arc::clone(&script);
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let status = script.lock().unwrap().pop_front().unwrap_or(200);
                    let mut seen = seen.lock().unwrap();
                    seen.attempts.push(body.clone());
                    if (200..300).contains(&status) {
                        seen.accepted.push(body);
                        seen.keys.push(key);
                    }
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }
        };
        let app = axum::Router::new().fallback(handler);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        HttpReceiver { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn accepted(&self) -> Vec<Value> {
        self.seen.lock().unwrap().accepted.clone()
    }

    /// The accepted bodies with their `Idempotency-Key` headers.
    pub fn accepted_with_keys(&self) -> Vec<(Option<String>, Value)> {
        let seen = self.seen.lock().unwrap();
        seen.keys
            .iter()
            .cloned()
            .zip(seen.accepted.clone())
            .collect()
    }

    pub fn attempts(&self) -> usize {
        self.seen.lock().unwrap().attempts.len()
    }
}

const SMTP_SERVER: &str = r#"
import json, ssl, sys, time
from aiosmtpd.controller import Controller

class Recorder:
    async def handle_DATA(self, server, session, envelope):
        with open(sys.argv[2], "a") as out:
            out.write(json.dumps({
                "from": envelope.mail_from,
                "to": envelope.rcpt_tos,
                "data": envelope.content.decode("utf-8", "replace"),
            }) + "\n")
        return "250 OK"

tls = {}
if len(sys.argv) > 3:
    # STARTTLS required, with the test server certificate.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    tls = {"tls_context": context, "require_starttls": True}
controller = Controller(Recorder(), hostname="127.0.0.1", port=int(sys.argv[1]), **tls)
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

/// Makes sure aiosmtpd can be imported, installing it with pip if needed; panics if not.
fn ensure_aiosmtpd() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let importable = || {
            Command::new("python3")
                .args(["-c", "import aiosmtpd"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if importable() {
            return;
        }
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "aiosmtpd"])
            .status()
            .expect("run python3 -m pip");
        assert!(
            installed.success() && importable(),
            "aiosmtpd could not be installed with pip"
        );
    });
}

/// A local SMTP server (plain text) that writes each received e-mail as a JSON line.
pub struct SmtpServer {
    pub port: u16,
    pub mails: PathBuf,
    child: Child,
}

impl SmtpServer {
    pub fn start(dir: &Path) -> SmtpServer {
        Self::start_with(dir, None)
    }

    /// A server that requires STARTTLS with `cert` and `key` (PEM files).
    pub fn start_starttls(dir: &Path, cert: &Path, key: &Path) -> SmtpServer {
        Self::start_with(dir, Some((cert, key)))
    }

    fn start_with(dir: &Path, tls: Option<(&Path, &Path)>) -> SmtpServer {
        ensure_aiosmtpd();
        let port = super::free_port();
        let script = dir.join("smtp_server.py");
        std::fs::write(&script, SMTP_SERVER).unwrap();
        let mails = dir.join("mails.ndjson");
        let mut command = Command::new("python3");
        command.arg(&script).arg(port.to_string()).arg(&mails);
        if let Some((cert, key)) = tls {
            command.arg(cert).arg(key);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the SMTP server");
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        SmtpServer { port, mails, child }
    }

    pub fn received(&self) -> Vec<Value> {
        super::lines(&self.mails)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An MQTT subscription on the local Mosquitto, collecting payloads.
pub struct MqttSubscriber {
    pub received: Arc<Mutex<Vec<(String, Value)>>>,
}

impl MqttSubscriber {
    pub async fn start(filter: &str) -> MqttSubscriber {
        use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
        super::services::mosquitto();
        // Unique in the process: the broker disconnects a client when another one connects
        // with its id.
        static SUBSCRIBERS: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "weir-test-sub-{}-{}",
            std::process::id(),
            SUBSCRIBERS.fetch_add(1, Ordering::Relaxed)
        );
        let mut options = MqttOptions::new(id, ("127.0.0.1", 1883));
        options.set_keep_alive(30);
        let (client, mut eventloop) = AsyncClient::builder(options).capacity(64).build();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let sink = Arc::clone(&received);
        tokio::spawn(async move {
            let _client = client;
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        sink.lock().unwrap().push((topic, value));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("subscribed to Mosquitto")
            .unwrap();
        MqttSubscriber { received }
    }

    pub fn payloads(&self) -> Vec<(String, Value)> {
        self.received.lock().unwrap().clone()
    }
}

/// A server-named queue on the local RabbitMQ bound to `amq.topic` with `binding`.
pub struct AmqpQueue {
    channel: lapin::Channel,
    _connection: lapin::Connection,
    queue: String,
}

impl AmqpQueue {
    pub async fn bind(binding: &str) -> AmqpQueue {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let url = super::services::rabbitmq();
        weir::tls::install_default_provider();
        let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .unwrap();
        let queue = queue.name().to_string();
        channel
            .queue_bind(
                queue.as_str().into(),
                "amq.topic".into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        AmqpQueue {
            channel,
            _connection: connection,
            queue,
        }
    }

    /// Takes every message waiting now: (routing key, body).
    pub async fn drain(&self) -> Vec<(String, Value)> {
        use lapin::options::BasicGetOptions;
        let mut out = Vec::new();
        let options = BasicGetOptions { no_ack: true };
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), options)
            .await
            .unwrap()
        {
            let body = serde_json::from_slice(&message.delivery.data).unwrap_or(Value::Null);
            out.push((message.delivery.routing_key.to_string(), body));
        }
        out
    }
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
