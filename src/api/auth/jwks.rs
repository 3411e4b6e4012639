//! The signing keys of `api.auth.jwt`, fetched and cached by `kid`.
//!
//! Keys are read once at the first JWT, then again only when a token names a `kid` the
//! cache lacks (the provider rotated its keys), and then at most once per
//! [`REFETCH_INTERVAL`]: a stream of tokens with made-up `kid`s cannot make weir hammer
//! the provider. A failed fetch keeps the keys it had. Only RS256 and ES256 keys are kept.
//! A fetch holds up only the requests that wait for its answer (unknown `kid`s), never
//! those whose key is cached, and concurrent ones are one fetch.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Mutex;

use crate::config::JwksSource;

/// The shortest time between two fetches.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// A key a token may be signed with, and the one algorithm it is for.
#[derive(Clone)]
pub struct SigningKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

#[derive(Default)]
struct Cached {
    keys: HashMap<String, SigningKey>,
    fetched: Option<Instant>,
}

/// The key cache.
///
/// Lookups take `cached` only to copy a key out, never across a fetch: a refetch (up to
/// 10 s against a slow provider) does not hold up requests whose `kid` is known.
/// Refetches are single-flight: callers with an unknown `kid` queue on `refetch`, and
/// those behind the first find its result instead of fetching again.
pub struct Jwks {
    source: JwksSource,
    client: reqwest::Client,
    cached: std::sync::Mutex<Cached>,
    refetch: Mutex<()>,
    interval: Duration,
}

impl Jwks {
    pub fn new(source: JwksSource) -> Result<Self, String> {
        Self::with_interval(source, REFETCH_INTERVAL)
    }

    fn with_interval(source: JwksSource, interval: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("api.auth.jwt: cannot make an HTTP client: {e}"))?;
        Ok(Self {
            source,
            client,
            cached: std::sync::Mutex::new(Cached::default()),
            refetch: Mutex::new(()),
            interval,
        })
    }

    /// The cache, even if a thread panicked holding it (it holds no half-made state).
    fn cached(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lookup(&self, kid: &str) -> Option<SigningKey> {
        self.cached().keys.get(kid).cloned()
    }

    /// The key `kid`, refetching the set if it is unknown and the last fetch is old enough.
    pub async fn key(&self, kid: &str) -> Option<SigningKey> {
        if let Some(key) = self.lookup(kid) {
            return Some(key);
        }
        let _flight = self.refetch.lock().await;
        {
            // The fetch this caller queued behind may have brought the key, or be recent.
            let mut cached = self.cached();
            if let Some(key) = cached.keys.get(kid) {
                return Some(key.clone());
            }
            if cached
                .fetched
                .is_some_and(|at| at.elapsed() < self.interval)
            {
                return None;
            }
            cached.fetched = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(set) => {
                let keys = usable_keys(&set);
                let found = keys.get(kid).cloned();
                self.cached().keys = keys;
                found
            }
            Err(e) => {
                tracing::warn!("api.auth.jwt: cannot read the signing keys: {e}");
                None
            }
        }
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        match &self.source {
            JwksSource::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                serde_json::from_str(&text).map_err(|e| {
                    format!("{}: not a JWKS ({{\"keys\": [...]}}): {e}", path.display())
                })
            }
            JwksSource::Uri(uri) => self.get_json(uri).await,
            JwksSource::Discovery { issuer } => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let document: serde_json::Value = self.get_json(&discovery).await?;
                let uri = document
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| {
                        format!("{}: no `jwks_uri` string", crate::redact::url(&discovery))
                    })?;
                self.get_json(uri).await
            }
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, uri: &str) -> Result<T, String> {
        let response = self
            .client
            .get(uri)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("{}: {}", crate::redact::url(uri), e.without_url()))?;
        response.json().await.map_err(|e| {
            format!(
                "{}: not the JSON expected: {}",
                crate::redact::url(uri),
                e.without_url()
            )
        })
    }
}

/// The RS256 and ES256 keys of `set` that have a `kid`.
fn usable_keys(set: &JwkSet) -> HashMap<String, SigningKey> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let algorithm = algorithm_of(jwk)?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, SigningKey { key, algorithm }))
        })
        .collect()
}

/// RS256 for an RSA key, ES256 for a P-256 key; nothing else (a key's own `alg`, if it
/// has one, must agree).
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    let agrees = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => algorithm == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => algorithm == Algorithm::ES256,
        Some(_) => false,
    };
    agrees.then_some(algorithm)
}

#[cfg(test)]
mod tests {
    //! Against a real JWKS endpoint (axum on a local port) that the test can stall.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    /// An RSA JWK: the cache only decodes the modulus and exponent, it never checks them.
    fn jwk(kid: &str) -> serde_json::Value {
        serde_json::json!({ "kty": "RSA", "kid": kid, "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB" })
    }

    /// Serves `{kid-1}` first; a later fetch answers with `{kid-1, kid-2}` only once
    /// `release` is notified.
    async fn stalling_server(fetches: Arc<AtomicUsize>, release: Arc<Notify>) -> String {
        let app = axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let (fetches, release) = (fetches.clone(), release.clone());
                async move {
                    if fetches.fetch_add(1, Ordering::SeqCst) > 0 {
                        release.notified().await;
                        axum::Json(serde_json::json!({ "keys": [jwk("kid-1"), jwk("kid-2")] }))
                    } else {
                        axum::Json(serde_json::json!({ "keys": [jwk("kid-1")] }))
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}/keys")
    }

    #[tokio::test]
    async fn a_stalled_refetch_holds_up_neither_known_kids_nor_a_second_fetch() {
        let fetches = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let uri = stalling_server(fetches.clone(), release.clone()).await;
        let jwks = Arc::new(Jwks::with_interval(JwksSource::Uri(uri), Duration::ZERO).unwrap());
        assert!(jwks.key("kid-1").await.is_some(), "the first fetch");

        // Two requests with a kid the cache lacks: one refetch, which the server stalls.
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let jwks = jwks.clone();
                tokio::spawn(async move { jwks.key("kid-2").await })
            })
            .collect();
        while fetches.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // A request with a known kid answers at once.
        let started = Instant::now();
        let known = tokio::time::timeout(Duration::from_secs(2), jwks.key("kid-1")).await;
        assert!(
            matches!(known, Ok(Some(_))),
            "a known kid waited on the refetch"
        );
        assert!(started.elapsed() < Duration::from_millis(500));

        release.notify_one();
        for task in waiting {
            let found = tokio::time::timeout(Duration::from_secs(5), task).await;
            assert!(matches!(found, Ok(Ok(Some(_)))), "the refetch found kid-2");
        }
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "one refetch for both callers"
        );
    }
}
