//! The connection to Redis: one server through redis-rs's `ConnectionManager` (reconnects
//! by itself after the server went away), or a Redis Cluster through its cluster client
//! (follows MOVED/ASK and slot changes). Both multiplex one TCP (or TLS) connection per
//! node, so a pipeline of a thousand commands is one write and one read.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{IntoConnectionInfo, Pipeline, RedisResult, TlsCertificates};

use super::scripts;
use crate::tls::TlsConfig;

/// One reply per command of a pipeline, in order; `Err` for a command Redis refused.
pub(super) type Replies = Vec<RedisResult<redis::Value>>;

/// How to reach Redis.
#[derive(Clone)]
pub(super) struct Target {
    /// One URL, or the seed nodes of a cluster.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// Read when the sink is built, so a missing file fails the start, not each attempt.
    pub certificates: Option<TlsCertificates>,
    /// Connect and response timeout.
    pub timeout: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

/// The PEM files of `tls`, read.
pub(super) fn certificates(tls: &TlsConfig) -> anyhow::Result<TlsCertificates> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        (None, None) => None,
        _ => anyhow::bail!("mutual TLS needs both `cert_file` and `key_file`"),
    };
    let root_cert = tls.ca_file.as_deref().map(read).transpose()?;
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// The URLs in `url`: one, or (for a cluster) a comma-separated list of seed nodes.
pub(super) fn split_urls(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Why a URL cannot be used, without connecting.
pub(super) fn check_url(url: &str) -> Result<(), String> {
    const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
    if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
        return Err(format!(
            "`{}` is not a Redis URL: expected `redis://host:port/db`, `rediss://...` (TLS) \
             or `redis+unix:///path`",
            crate::redact::url(url)
        ));
    }
    url.into_connection_info()
        .map(|_| ())
        .map_err(|err| format!("`{}` is not a Redis URL: {err}", crate::redact::url(url)))
}

/// A live connection; cheap to clone (clones share the connection).
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Target {
    /// The URLs without passwords, for messages.
    pub fn describe(&self) -> String {
        self.urls
            .iter()
            .map(|url| crate::redact::url(url))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Connects (one attempt); the caller retries with backoff.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let certificates = self.certificates.clone();
        if self.cluster {
            let mut builder = ClusterClient::builder(self.urls.clone())
                .connection_timeout(self.timeout)
                .response_timeout(self.timeout);
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            let client = builder.build()?;
            return Ok(Connection::Cluster(client.get_async_connection().await?));
        }
        let url = self.urls.first().context("no Redis URL")?.as_str();
        let client = match certificates {
            Some(certificates) => redis::Client::build_with_tls(url, certificates)?,
            None => redis::Client::open(url)?,
        };
        // One quick retry inside the manager; longer outages are retried (with backoff,
        // counted and logged) by the sink around each write.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(self.max_backoff);
        Ok(Connection::Single(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }
}

impl Connection {
    /// Loads the `only_newer` scripts (on every primary of a cluster).
    pub async fn load_scripts(&self) -> RedisResult<()> {
        for script in [&*scripts::HASH, &*scripts::JSON] {
            match self {
                Self::Single(manager) => script.load_async(&mut manager.clone()).await?,
                Self::Cluster(cluster) => script.load_async(&mut cluster.clone()).await?,
            };
        }
        Ok(())
    }

    /// Sends the commands of `pipe`, whose keys are `keys` (one per command, in order), and
    /// returns one reply per command. `Err` means the pipeline as a whole got no answer (a
    /// connection failure): none of its replies are known.
    pub async fn send(&self, pipe: Pipeline, keys: &[&str]) -> RedisResult<Replies> {
        match self {
            Self::Single(manager) => {
                let mut manager = manager.clone();
                let mut pipe = pipe;
                pipe.ignore_errors().query_async(&mut manager).await
            }
            Self::Cluster(cluster) => send_by_slot(cluster, pipe, keys).await,
        }
    }
}

/// A cluster node only takes pipelines whose keys share one slot: split the pipeline by
/// slot, send the parts at once, and put the replies back in the original order.
async fn send_by_slot(
    cluster: &ClusterConnection,
    pipe: Pipeline,
    keys: &[&str],
) -> RedisResult<Replies> {
    let mut parts: HashMap<Slot, (Pipeline, Vec<usize>)> = HashMap::new();
    for (index, (command, key)) in pipe.cmd_iter().zip(keys).enumerate() {
        let (part, indexes) = parts
            .entry(Slot::for_key(key))
            .or_insert_with(|| (redis::pipe(), Vec::new()));
        part.add_command(command.clone());
        indexes.push(index);
    }
    let sends = parts.into_values().map(|(mut part, indexes)| {
        let mut cluster = cluster.clone();
        async move {
            let replies: Replies = part.ignore_errors().query_async(&mut cluster).await?;
            Ok::<_, redis::RedisError>((indexes, replies))
        }
    });
    let mut ordered: Vec<Option<RedisResult<redis::Value>>> = vec![None; keys.len()];
    for result in futures::future::join_all(sends).await {
        let (indexes, replies) = result?;
        for (index, reply) in indexes.into_iter().zip(replies) {
            ordered[index] = Some(reply);
        }
    }
    Ok(ordered
        .into_iter()
        .map(|reply| {
            reply.unwrap_or_else(|| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "no reply for a command of the pipeline",
                )))
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_are_split() {
        assert_eq!(
            split_urls("redis://a:7000, redis://b:7001,"),
            vec!["redis://a:7000", "redis://b:7001"]
        );
    }
}
