//! The signing keys of `api.auth.jwt`, fetched and cached by `kid`.
//!
//! Keys are read once at the first JWT, then again only when a token names a `kid` the
//! cache lacks (the provider rotated its keys), and then at most once per
//! [`REFETCH_INTERVAL`]: a stream of tokens with made-up `kid`s cannot make weir hammer
//! the provider. A failed fetch keeps the keys it had. Only RS256 and ES256 keys are kept.

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
pub struct Jwks {
    source: JwksSource,
    client: reqwest::Client,
    cached: Mutex<Cached>,
}

impl Jwks {
    pub fn new(source: JwksSource) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("api.auth.jwt: cannot make an HTTP client: {e}"))?;
        Ok(Self {
            source,
            client,
            cached: Mutex::new(Cached::default()),
        })
    }

    /// The key `kid`, refetching the set if it is unknown and the last fetch is old enough.
    pub async fn key(&self, kid: &str) -> Option<SigningKey> {
        let mut cached = self.cached.lock().await;
        if let Some(key) = cached.keys.get(kid) {
            return Some(key.clone());
        }
        if cached
            .fetched
            .is_some_and(|at| at.elapsed() < REFETCH_INTERVAL)
        {
            return None;
        }
        cached.fetched = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => cached.keys = usable_keys(&set),
            Err(e) => tracing::warn!("api.auth.jwt: cannot read the signing keys: {e}"),
        }
        cached.keys.get(kid).cloned()
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
