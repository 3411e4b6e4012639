//! A Mosquitto of a test's own: on a free port, in the test's directory, optionally
//! refusing anonymous clients, and killed when dropped. For what the shared broker cannot
//! do without disturbing other tests (a password file, clients fighting over an id).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `mosquitto` process started by the test.
pub struct PrivateMosquitto {
    child: Child,
    pub port: u16,
}

impl PrivateMosquitto {
    /// Starts `mosquitto` on a free port with its files in `dir`. With `user`
    /// (name, password) it refuses everyone else (`allow_anonymous false`, a password
    /// file made with `mosquitto_passwd`).
    pub async fn start(dir: &Path, user: Option<(&str, &str)>) -> PrivateMosquitto {
        let port = super::free_port();
        let mut config = format!("listener {port} 127.0.0.1\npersistence false\n");
        match user {
            Some((name, password)) => {
                let file = dir.join("mosquitto.passwd");
                let made = Command::new("mosquitto_passwd")
                    .args(["-c", "-b"])
                    .arg(&file)
                    .args([name, password])
                    .output()
                    .expect("run mosquitto_passwd");
                assert!(
                    made.status.success(),
                    "mosquitto_passwd: {}",
                    String::from_utf8_lossy(&made.stderr)
                );
                config += &format!("allow_anonymous false\npassword_file {}\n", file.display());
            }
            None => config += "allow_anonymous true\n",
        }
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, config).expect("write mosquitto.conf");
        let log = std::fs::File::create(dir.join("mosquitto.log")).expect("mosquitto.log");
        // Under a name of its own: the broker restart tests (of this process or of another
        // checkout's) stop the shared broker with `pkill -x mosquitto`.
        let binary = dir.join("test-mosquitto");
        let installed = which("mosquitto");
        std::os::unix::fs::symlink(&installed, &binary).expect("link the mosquitto binary");
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto (is it installed?)");
        let mut broker = PrivateMosquitto { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
                panic!("mosquitto exited with {status}: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        broker
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// Where `name` is installed, from `PATH` and the sbin directories (not always on it).
fn which(name: &str) -> std::path::PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed"))
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
