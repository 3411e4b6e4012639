//! `weir top` in a real terminal (tmux) against a running weir: a component row with a
//! non-zero rate, the sort key reordering the rows, `q` quitting, and a clear message when
//! the API cannot be reached.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Weir, free_port};

/// tmux, installed with apt-get if the machine lacks it (as other tests install tools).
fn tmux() -> &'static str {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(|| {
        let present = Command::new("tmux")
            .arg("-V")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            let status = Command::new("sh")
                .arg("-c")
                .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux")
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "tmux is missing and apt-get could not install it"
            );
        }
    });
    "tmux"
}

/// A tmux server of this test's own (`-L`), so no other test's sessions are touched.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(name: &str) -> Tmux {
        Tmux {
            socket: format!("weir-{name}-{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(tmux())
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Runs `command` in a new 200x50 session `session`.
    fn start(&self, session: &str, command: &str) {
        let out = self.run(&[
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "200",
            "-y",
            "50",
            command,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn keys(&self, session: &str, keys: &str) {
        let out = self.run(&["send-keys", "-t", session, keys]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn screen(&self, session: &str) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", session]).stdout)
            .into_owned()
    }

    fn alive(&self, session: &str) -> bool {
        self.run(&["has-session", "-t", session]).status.success()
    }

    /// Polls the screen of `session` until `check` holds; the last screen either way.
    async fn until(&self, session: &str, check: impl Fn(&str) -> bool) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen(session);
            if check(&screen) {
                return (true, screen);
            }
            if Instant::now() > deadline {
                return (false, screen);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The row of `id` on a screen: its cells split on whitespace.
fn row<'a>(screen: &'a str, id: &str) -> Option<(usize, Vec<&'a str>)> {
    screen.lines().enumerate().find_map(|(n, line)| {
        let cells: Vec<&str> = line.split_whitespace().collect();
        (cells.first() == Some(&id)).then_some((n, cells))
    })
}

/// The OUT/S cell (the fifth column) of `id`'s row.
fn out_rate(screen: &str, id: &str) -> f64 {
    row(screen, id)
        .and_then(|(_, cells)| cells.get(4)?.parse().ok())
        .unwrap_or(0.0)
}

/// Whether `first`'s row is above `second`'s.
fn above(screen: &str, first: &str, second: &str) -> bool {
    match (row(screen, first), row(screen, second)) {
        (Some((a, _)), Some((b, _))) => a < b,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_rates_sorts_by_a_key_and_quits() {
    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "data_dir: '{d}'
api: {{ listen: '127.0.0.1:{api}' }}
sources:
  aaa_slow: {{ type: simulator, devices: 1, rate: 1 }}
  zzz_fast: {{ type: simulator, devices: 4, rate: 200 }}
sinks:
  top_out: {{ type: blackhole, inputs: [aaa_slow, zzz_fast] }}
",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let weir = Weir::start(dir.path(), &pipeline, ([127, 0, 0, 1], api).into()).await;
    let tmux = Tmux::new("top");
    let command = format!(
        "{} top --api http://{} --token {} --interval 500ms",
        env!("CARGO_BIN_EXE_weir"),
        weir.api,
        weir.token
    );
    tmux.start("top", &command);

    // Sorted by id: the slow source first; the fast one's rate shows.
    let (shown, screen) = tmux
        .until("top", |s| {
            out_rate(s, "zzz_fast") > 0.0 && row(s, "aaa_slow").is_some()
        })
        .await;
    assert!(shown, "no rate for zzz_fast:\n{screen}");
    assert!(screen.contains("1ID▲"), "sorted by id:\n{screen}");
    assert!(above(&screen, "aaa_slow", "zzz_fast"), "{screen}");
    let (_, cells) = row(&screen, "zzz_fast").unwrap();
    assert_eq!(cells[1..3], ["source", "simulator"]);
    assert!(
        row(&screen, "top_out").is_some(),
        "the sink's row:\n{screen}"
    );
    assert!(screen.contains("connected devices: 0"), "{screen}");

    // `5`: by OUT/S, largest first.
    tmux.keys("top", "5");
    let (sorted, screen) = tmux
        .until("top", |s| {
            s.contains("5OUT/S▼") && above(s, "zzz_fast", "aaa_slow")
        })
        .await;
    assert!(sorted, "the sort key did not reorder the rows:\n{screen}");

    // `/` filters by id, kind or type.
    tmux.keys("top", "/");
    tmux.keys("top", "sink");
    tmux.keys("top", "Enter");
    let (filtered, screen) = tmux
        .until("top", |s| {
            row(s, "top_out").is_some() && row(s, "zzz_fast").is_none()
        })
        .await;
    assert!(filtered, "the filter did not apply:\n{screen}");

    tmux.keys("top", "q");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.alive("top") {
        assert!(Instant::now() < deadline, "q did not quit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(weir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_says_so_when_the_api_cannot_be_reached() {
    let nobody = free_port();
    let tmux = Tmux::new("top-down");
    let command = format!(
        "{} top --api http://127.0.0.1:{nobody} --interval 200ms",
        env!("CARGO_BIN_EXE_weir")
    );
    tmux.start("down", &command);
    let (said, screen) = tmux
        .until("down", |s| s.contains("cannot reach the weir API"))
        .await;
    assert!(said, "{screen}");
    assert!(screen.contains(&format!("127.0.0.1:{nobody}")), "{screen}");
    tmux.keys("down", "q");
}
