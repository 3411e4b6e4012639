//! A port that is dead until a test brings it to life: nothing listens on it (connections
//! are refused, as by a broker that is down) until [`Forwarder::open`] starts forwarding it
//! to a real service.

use tokio::task::JoinHandle;

pub struct Forwarder {
    pub port: u16,
    accepting: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// A port nobody listens on yet.
    pub fn closed() -> Forwarder {
        Forwarder {
            port: super::free_port(),
            accepting: None,
        }
    }

    /// Listens on the port and forwards every connection to 127.0.0.1:`upstream`.
    pub async fn open(&mut self, upstream: u16) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the forwarded port");
        self.accepting = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut service) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut service).await;
                });
            }
        }));
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(task) = self.accepting.take() {
            task.abort();
        }
    }
}
