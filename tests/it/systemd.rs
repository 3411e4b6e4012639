//! weir under systemd: the sd_notify messages on a test `NOTIFY_SOCKET`, `weir reload
//! --wait` against a running weir, and the journald log format.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Weir, free_port};
use tokio::net::UnixDatagram;

fn pipeline(dir: &Path, api: u16, devices: u16, extra_sink: bool) -> String {
    let d = dir.display();
    let mut text = format!(
        "api: {{ listen: 127.0.0.1:{api} }}\ndata_dir: {d}/state\nsources:\n  devices: {{ type: http, listen: 127.0.0.1:{devices} }}\nsinks:\n  out: {{ type: file, inputs: [devices], path: '{d}/out.ndjson' }}\n"
    );
    if extra_sink {
        text.push_str(&format!(
            "  extra: {{ type: file, inputs: [devices], path: '{d}/extra.ndjson' }}\n"
        ));
    }
    text
}

/// The next datagram on the notify socket, as text.
async fn next_message(socket: &UnixDatagram) -> String {
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), socket.recv(&mut buffer))
        .await
        .expect("a notify message within 20 s")
        .expect("recv on the notify socket");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

/// Messages until one contains `wanted` (watchdog pings and status lines may come between).
async fn until(socket: &UnixDatagram, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "no {wanted:?} on the notify socket; saw {seen:?}"
        );
        let message = next_message(socket).await;
        let done = message.lines().any(|line| line == wanted);
        seen.push(message);
        if done {
            return seen;
        }
    }
}

/// `weir reload ARGS` for the weir whose data_dir is `data_dir` (its control socket).
fn weir_reload(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("reload")
        .args(args)
        .env("WEIR_DATA_DIR", data_dir)
        .output()
        .expect("run weir reload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_systemd_and_reload_wait_reports_the_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (api_port, devices) = (free_port(), free_port());
    let api: SocketAddr = format!("127.0.0.1:{api_port}").parse().expect("address");
    let file = dir.path().join("weir.yaml");
    std::fs::write(&file, pipeline(dir.path(), api_port, devices, false)).expect("write");
    let notify_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    let notify = notify_path.to_str().expect("utf-8 path");

    // WatchdogSec=2s: a ping every second.
    let weir = Weir::start_with_env(
        dir.path(),
        &file,
        api,
        &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "2000000")],
    )
    .await;

    let first = next_message(&socket).await;
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    assert!(
        first
            .lines()
            .any(|l| l.starts_with("STATUS=running: 2 components")),
        "{first:?}"
    );
    until(&socket, "WATCHDOG=1").await;

    // A reload that adds a sink: RELOADING=1, then READY=1; the command says what changed.
    std::fs::write(&file, pipeline(dir.path(), api_port, devices, true)).expect("write");
    let data_dir = weir.data_dir.clone();
    let reload = tokio::task::spawn_blocking(move || weir_reload(&data_dir, &["--wait"]));
    let seen = until(&socket, "RELOADING=1").await;
    assert!(!seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    until(&socket, "READY=1").await;
    let output = reload.await.expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("reload applied") && stdout.contains("1 added"),
        "{stdout}"
    );

    // A broken edit: refused with the reason and EX_CONFIG, READY=1 again, old topology on.
    std::fs::write(
        &file,
        pipeline(dir.path(), api_port, devices, true)
            .replace("inputs: [devices]", "inptus: [devices]"),
    )
    .expect("write");
    let data_dir = weir.data_dir.clone();
    let reload = tokio::task::spawn_blocking(move || weir_reload(&data_dir, &["--wait"]));
    until(&socket, "RELOADING=1").await;
    until(&socket, "READY=1").await;
    let output = reload.await.expect("join");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{output:?}");
    assert!(
        stderr.contains("reload refused (invalid)") && stderr.contains("inptus"),
        "{stderr}"
    );
    let ready = reqwest::get(format!("http://{api}/ready"))
        .await
        .expect("GET /ready");
    assert!(ready.status().is_success());

    // Without --wait the command returns once the reload is asked for.
    std::fs::write(&file, pipeline(dir.path(), api_port, devices, false)).expect("write");
    let data_dir = weir.data_dir.clone();
    let output = tokio::task::spawn_blocking(move || weir_reload(&data_dir, &[]))
        .await
        .expect("join");
    assert!(output.status.success(), "{output:?}");
    until(&socket, "RELOADING=1").await;
    until(&socket, "READY=1").await;

    // SIGTERM: STOPPING=1 before the drain.
    weir.signal(libc::SIGTERM);
    until(&socket, "STOPPING=1").await;
    assert!(weir.terminate().success());
}

#[test]
fn reload_wait_without_a_running_weir_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = weir_reload(dir.path(), &["--wait"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot reach the running weir"),
        "{output:?}"
    );
}

/// Starts weir with stderr into `log` and `JOURNAL_STREAM` set to `journal_stream(log)`,
/// waits until it is ready, stops it, and returns what it logged.
async fn logged_under(
    dir: &Path,
    name: &str,
    format: &str,
    journal_stream: impl Fn(&Path) -> String,
) -> String {
    let (api_port, devices) = (free_port(), free_port());
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, pipeline(dir, api_port, devices, false)).expect("write");
    let log = dir.join(format!("{name}.log"));
    let stderr = std::fs::File::create(&log).expect("create the log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--log-format", format])
        .arg(&file)
        .env("RUST_LOG", "info")
        .env("JOURNAL_STREAM", journal_stream(&log))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start weir");
    let ready = format!("http://127.0.0.1:{api_port}/ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "weir did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().expect("wait").success());
    std::fs::read_to_string(&log).expect("read the log")
}

fn identity(path: &Path) -> String {
    let metadata = std::fs::metadata(path).expect("stat the log");
    format!("{}:{}", metadata.dev(), metadata.ino())
}

#[tokio::test]
async fn journald_lines_carry_priorities_and_no_timestamps_or_colours() {
    let dir = tempfile::tempdir().expect("tempdir");

    let text = logged_under(dir.path(), "text", "text", identity).await;
    assert!(!text.is_empty());
    for line in text.lines() {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "no syslog priority: {line:?}"
        );
    }
    let running = text
        .lines()
        .find(|l| l.contains("topology running"))
        .expect("the topology running line");
    assert!(running.starts_with("<6> INFO "), "{running:?}");
    assert!(!text.contains('\u{1b}'), "ANSI escapes: {text:?}");

    let json = logged_under(dir.path(), "json", "json", identity).await;
    let running = json
        .lines()
        .find(|l| l.contains("topology running"))
        .expect("the topology running line");
    let value: serde_json::Value =
        serde_json::from_str(running.strip_prefix("<6>").expect("the info prefix"))
            .expect("JSON after the prefix");
    assert_eq!(value["level"], "INFO");

    // JOURNAL_STREAM inherited, but stderr is not that stream: the usual lines, timestamped.
    let plain = logged_under(dir.path(), "plain", "text", |_| "1:1".to_owned()).await;
    let running = plain
        .lines()
        .find(|l| l.contains("topology running"))
        .expect("the topology running line");
    let running = without_ansi(running);
    assert!(!running.starts_with('<'), "{running:?}");
    assert!(
        running.starts_with("20") && running.get(..30).is_some_and(|head| head.contains('T')),
        "a timestamp first: {running:?}"
    );
}

/// `line` without ANSI colour sequences (`ESC [ ... m`).
fn without_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn validate_errors_carry_the_error_priority_under_journald() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "sinks:\n  out: { type: file, inptus: [nothing], path: out.ndjson }\n",
    )
    .expect("write");
    let log = dir.path().join("validate.log");
    let stderr = std::fs::File::create(&log).expect("create the log file");
    let status = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("validate")
        .arg(&file)
        .env("JOURNAL_STREAM", identity(&log))
        .stderr(stderr)
        .status()
        .expect("run weir validate");
    assert_eq!(status.code(), Some(78));
    let text = std::fs::read_to_string(&log).expect("read the log");
    assert!(text.contains("inptus"), "{text}");
    for line in text.lines() {
        assert!(line.starts_with("<3>"), "not an error line: {line:?}");
    }
}
