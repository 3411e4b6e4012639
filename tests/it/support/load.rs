//! Steady HTTP load on an `http` source for as long as a test needs it: a few clients post
//! requests of readings at a fixed pace, ids unique within the load, and every answer is
//! recorded, so a test can say which readings were acknowledged (2xx) and which refused.
//!
//! The pace is fixed, not "as fast as possible", so the load a test makes does not depend
//! on the machine's speed or on the tests running beside it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How the load is made.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Clients posting at once, each waiting for its answer before the next request.
    pub clients: usize,
    /// Readings per request.
    pub readings: u64,
    /// Each client starts a request at most this often.
    pub every: Duration,
    /// Bytes of filler per reading (a `pad` string field), to fill a disk faster.
    pub padding: usize,
}

/// The answer to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub first_id: u64,
    pub readings: u64,
    /// The HTTP status; 0 when no answer came (connection refused, timed out).
    pub status: u16,
}

impl Answer {
    pub fn ids(&self) -> std::ops::Range<u64> {
        self.first_id..self.first_id + self.readings
    }

    pub fn acknowledged(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Load running in the background until [`Load::stop`].
pub struct Load {
    stop: CancellationToken,
    answers: Arc<Mutex<Vec<Answer>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts posting to `http://127.0.0.1:{port}/v1/devices/{device}/messages`.
    pub fn start(port: u16, device: &str, shape: Shape) -> Load {
        let stop = CancellationToken::new();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let next_id = Arc::new(AtomicU64::new(0));
        let url = format!("http://127.0.0.1:{port}/v1/devices/{device}/messages");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let clients = (0..shape.clients)
            .map(|_| {
                let (stop, answers, next_id) =
                    (stop.clone(), Arc::clone(&answers), Arc::clone(&next_id));
                let (http, url) = (http.clone(), url.clone());
                tokio::spawn(async move {
                    let mut pace = tokio::time::interval(shape.every);
                    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            _ = pace.tick() => {}
                        }
                        let first_id = next_id.fetch_add(shape.readings, Ordering::Relaxed);
                        let body = readings(first_id..first_id + shape.readings, shape.padding);
                        let status = http
                            .post(&url)
                            .json(&body)
                            .send()
                            .await
                            .map_or(0, |r| r.status().as_u16());
                        lock(&answers).push(Answer {
                            first_id,
                            readings: shape.readings,
                            status,
                        });
                    }
                })
            })
            .collect();
        Load {
            stop,
            answers,
            clients,
        }
    }

    /// The answers so far.
    pub fn answers(&self) -> Vec<Answer> {
        lock(&self.answers).clone()
    }

    /// Stops posting, waits for the requests in flight, and returns every answer.
    pub async fn stop(mut self) -> Vec<Answer> {
        self.stop.cancel();
        for client in std::mem::take(&mut self.clients) {
            client.await.expect("a load client panicked");
        }
        lock(&self.answers).clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock(answers: &Mutex<Vec<Answer>>) -> std::sync::MutexGuard<'_, Vec<Answer>> {
    answers.lock().unwrap_or_else(|p| p.into_inner())
}

/// Readings `ids`, each `{"id", "temperature"}` plus `padding` bytes of `pad`.
pub fn readings(ids: std::ops::Range<u64>, padding: usize) -> Vec<Value> {
    ids.map(|id| {
        let mut reading = json!({"id": id, "temperature": 20.0 + (id % 7) as f64});
        if padding > 0 {
            reading["pad"] = Value::String("x".repeat(padding));
        }
        reading
    })
    .collect()
}

/// Requests by status.
pub fn statuses(answers: &[Answer]) -> BTreeMap<u16, usize> {
    let mut statuses = BTreeMap::new();
    for answer in answers {
        *statuses.entry(answer.status).or_default() += 1;
    }
    statuses
}

/// The ids of every acknowledged (2xx) reading.
pub fn acknowledged(answers: &[Answer]) -> BTreeSet<u64> {
    answers
        .iter()
        .filter(|a| a.acknowledged())
        .flat_map(Answer::ids)
        .collect()
}
