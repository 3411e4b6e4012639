//! JWT bearer tokens (`api.auth.jwt`): keys and a JWKS made here, served by a small HTTP
//! server (or written to a file); a valid token gets its mapped role's access, and every
//! refused one (expired, wrong audience or issuer, unknown `kid`, `alg: none`, HS256
//! signed with the RSA public key) gets the same 401 as a bad API token.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Weir, free_port, registry_pipeline};

const ISSUER: &str = "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/v2.0";
const AUDIENCE: &str = "api://weir-test";

/// A signing key made here, with its JWK.
struct Signer {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
    public_pem: String,
    jwk: Jwk,
}

impl Signer {
    fn rsa(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let key = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap();
        Self::new(kid, Algorithm::RS256, key, pair.public_key_pem())
    }

    fn ec(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        Self::new(kid, Algorithm::ES256, key, pair.public_key_pem())
    }

    fn new(kid: &str, algorithm: Algorithm, key: EncodingKey, public_pem: String) -> Signer {
        let mut jwk = Jwk::from_encoding_key(&key, algorithm).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        Signer {
            kid: kid.to_owned(),
            algorithm,
            key,
            public_pem,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Claims that pass every check, with `roles`.
fn claims(roles: &[&str]) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "0f1e2d3c",
        "name": "Ada Operator",
        "iat": now(),
        "nbf": now() - 10,
        "exp": now() + 600,
        "roles": roles,
    })
}

fn with(mut claims: Value, field: &str, value: Value) -> Value {
    claims[field] = value;
    claims
}

/// A JWKS served over HTTP, that the test can change, counting its fetches.
struct JwksServer {
    uri: String,
    /// The issuer whose discovery document names `uri`.
    issuer: String,
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: Vec<Jwk>) -> JwksServer {
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let (served, counted) = (served.clone(), counted.clone());
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let keys = served.lock().unwrap().clone();
                    axum::Json(JwkSet { keys })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let discovery = json!({ "issuer": format!("http://{address}"), "jwks_uri": format!("http://{address}/keys") });
        let app = app.route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || async move { axum::Json(discovery) }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        JwksServer {
            uri: format!("http://{address}/keys"),
            issuer: format!("http://{address}"),
            keys,
            fetches,
        }
    }
}

const ROLE_MAP: &str = "role_map: { Weir.Read: viewer, Weir.Operate: operator, Weir.Admin: admin, Plant3.Operate: { role: operator, scope: { site: plant-3 } } }";

async fn start(dir: &Path, keys: &str) -> Weir {
    start_for(dir, ISSUER, keys).await
}

async fn start_for(dir: &Path, issuer: &str, keys: &str) -> Weir {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let jwt = format!("jwt: {{ issuer: '{issuer}', audience: '{AUDIENCE}', {keys}{ROLE_MAP} }}");
    let auth = format!("auth: {{ failures_per_minute: 100000, {jwt} }}");
    let pipeline = registry_pipeline(dir, api, &auth);
    Weir::start(dir, &pipeline, api).await
}

async fn get(weir: &Weir, path: &str, token: &str) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{}{path}", weir.api))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

/// The 401 weir gives a made-up API token: every refused JWT must get the same.
async fn bad_api_token_answer(weir: &Weir) -> (StatusCode, String) {
    let answer = get(weir, "/v1/devices", "weir_not_a_token_at_all").await;
    assert_eq!(answer.0, StatusCode::UNAUTHORIZED);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_jwt_gets_its_mapped_role_and_refused_ones_the_one_401() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = Signer::rsa("rsa-1");
    let ec = Signer::ec("ec-1");
    let server = JwksServer::start(vec![rsa.jwk.clone(), ec.jwk.clone()]).await;
    let weir = start(dir.path(), &format!("jwks_uri: '{}', ", server.uri)).await;

    let viewer = rsa.sign(&claims(&["Weir.Read", "Unmapped"]));
    assert_eq!(get(&weir, "/v1/devices", &viewer).await.0, StatusCode::OK);
    let (status, body) = get(&weir, "/v1/tokens", &viewer).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let admin = rsa.sign(&claims(&["Weir.Read", "Weir.Admin"]));
    assert_eq!(get(&weir, "/v1/tokens", &admin).await.0, StatusCode::OK);
    let es256 = ec.sign(&claims(&["Weir.Admin"]));
    assert_eq!(get(&weir, "/v1/tokens", &es256).await.0, StatusCode::OK);
    let unmapped = rsa.sign(&claims(&["Unmapped"]));
    assert_eq!(
        get(&weir, "/v1/devices", &unmapped).await.0,
        StatusCode::FORBIDDEN
    );

    let refused = bad_api_token_answer(&weir).await;
    let base = claims(&["Weir.Admin"]);
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#);
    let none_claims = URL_SAFE_NO_PAD.encode(base.to_string());
    let mut confused_header = Header::new(Algorithm::HS256);
    confused_header.kid = Some("rsa-1".to_owned());
    let confused = jsonwebtoken::encode(
        &confused_header,
        &base,
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let cases = [
        (
            "expired",
            rsa.sign(&with(base.clone(), "exp", json!(now() - 3600))),
        ),
        (
            "not yet valid",
            rsa.sign(&with(base.clone(), "nbf", json!(now() + 3600))),
        ),
        (
            "wrong audience",
            rsa.sign(&with(base.clone(), "aud", json!("api://other"))),
        ),
        (
            "wrong issuer",
            rsa.sign(&with(
                base.clone(),
                "iss",
                json!("https://sts.windows.net/other/"),
            )),
        ),
        ("unknown kid", Signer::rsa("rsa-unknown").sign(&base)),
        ("alg none", format!("{none_header}.{none_claims}.")),
        ("HS256 with the RSA public key", confused),
        ("signed by another key", {
            let mut other = Signer::rsa("x");
            other.kid = "rsa-1".to_owned();
            other.sign(&base)
        }),
    ];
    for (case, token) in cases {
        assert_eq!(get(&weir, "/v1/devices", &token).await, refused, "{case}");
    }
    // Within the leeway an expired token still passes.
    let just_expired = rsa.sign(&with(base.clone(), "exp", json!(now() - 20)));
    assert_eq!(
        get(&weir, "/v1/devices", &just_expired).await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_is_found_by_a_refetch_at_most_every_30_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let first = Signer::rsa("first");
    let server = JwksServer::start(vec![first.jwk.clone()]).await;
    let weir = start(dir.path(), &format!("jwks_uri: '{}', ", server.uri)).await;
    let viewer = claims(&["Weir.Read"]);
    assert_eq!(
        get(&weir, "/v1/devices", &first.sign(&viewer)).await.0,
        StatusCode::OK
    );
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

    // The provider rotates in a new key: right away weir does not fetch again (a
    // stream of unknown kids cannot make it hammer the provider)...
    let rotated = Signer::rsa("rotated");
    server.keys.lock().unwrap().push(rotated.jwk.clone());
    let token = rotated.sign(&viewer);
    let refused = bad_api_token_answer(&weir).await;
    for _ in 0..5 {
        assert_eq!(get(&weir, "/v1/devices", &token).await, refused);
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    // ...and once 30 s have passed since its fetch, it fetches once and finds the key.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    while get(&weir, "/v1/devices", &token).await.0 != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated key was never found"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_can_come_from_a_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::rsa("file-key");
    let file = dir.path().join("jwks.json");
    let set = JwkSet {
        keys: vec![signer.jwk.clone()],
    };
    std::fs::write(&file, serde_json::to_string(&set).unwrap()).unwrap();
    let weir = start(dir.path(), &format!("jwks_file: '{}', ", file.display())).await;
    let operator = signer.sign(&claims(&["Weir.Operate"]));
    assert_eq!(get(&weir, "/v1/devices", &operator).await.0, StatusCode::OK);
    assert_eq!(
        get(&weir, "/v1/tokens", &operator).await.0,
        StatusCode::FORBIDDEN
    );
    let refused = bad_api_token_answer(&weir).await;
    let stranger = Signer::rsa("not-in-file").sign(&claims(&["Weir.Admin"]));
    assert_eq!(get(&weir, "/v1/devices", &stranger).await, refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_jwks_setting_the_keys_are_found_by_oidc_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::rsa("discovered");
    let server = JwksServer::start(vec![signer.jwk.clone()]).await;
    let weir = start_for(dir.path(), &server.issuer, "").await;
    let admin = signer.sign(&with(claims(&["Weir.Admin"]), "iss", json!(server.issuer)));
    assert_eq!(get(&weir, "/v1/tokens", &admin).await.0, StatusCode::OK);
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_mapped_to_a_scoped_role_acts_only_on_its_devices() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::rsa("scoped");
    let server = JwksServer::start(vec![signer.jwk.clone()]).await;
    let weir = start(dir.path(), &format!("jwks_uri: '{}', ", server.uri)).await;
    for (id, site) in [("p3", "plant-3"), ("p9", "plant-9")] {
        let created = weir
            .request(reqwest::Method::POST, "/v1/devices")
            .json(&json!({ "id": id, "tags": { "site": site } }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let post = |token: String, path: &str| {
        reqwest::Client::new()
            .post(format!("http://{}{path}", weir.api))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
    };
    let listed = |body: String| -> Vec<String> {
        let page: Value = serde_json::from_str(&body).unwrap();
        page["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };

    // Only the scoped group: its devices, nothing else.
    let plant3 = signer.sign(&claims(&["Plant3.Operate"]));
    let (status, body) = get(&weir, "/v1/devices", &plant3).await;
    assert_eq!(
        (status, listed(body)),
        (StatusCode::OK, vec!["p3".to_owned()])
    );
    assert_eq!(
        get(&weir, "/v1/devices/p9", &plant3).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&weir, "/v1/alarms", &plant3).await.0,
        StatusCode::FORBIDDEN
    );
    let disabled = post(plant3.clone(), "/v1/devices/p3/disable")
        .await
        .unwrap();
    assert_eq!(disabled.status(), StatusCode::OK);
    let other = post(plant3, "/v1/devices/p9/disable").await.unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);

    // With a reader group too: every device is visible, still only its own are operated.
    let both = signer.sign(&claims(&["Weir.Read", "Plant3.Operate"]));
    let (status, body) = get(&weir, "/v1/devices", &both).await;
    assert_eq!(
        (status, listed(body)),
        (StatusCode::OK, vec!["p3".to_owned(), "p9".to_owned()])
    );
    assert_eq!(get(&weir, "/v1/alarms", &both).await.0, StatusCode::OK);
    let enabled = post(both.clone(), "/v1/devices/p3/enable").await.unwrap();
    assert_eq!(enabled.status(), StatusCode::OK);
    let other = post(both, "/v1/devices/p9/disable").await.unwrap();
    assert_eq!(
        other.status(),
        StatusCode::FORBIDDEN,
        "visible, but only to read"
    );
}
