//! Who may call the admin API: every route of the access table with every role (and with
//! roles limited to devices by tag, in and out of their scope), keys shown to admins only, the same 401 for every failure, the failure limit, and API
//! tokens made, used, listed and revoked through the CLI — on a stopped weir's data_dir and
//! through the API of a running one.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use weir::api::access::{ACCESS, Access};
use weir::tokens::Role;

use crate::support::{Weir, free_port, metric_in, registry_pipeline};

async fn start(dir: &Path, auth: &str) -> Weir {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pipeline = registry_pipeline(dir, api, &format!("auth: {{ {auth} }}"));
    Weir::start(dir, &pipeline, api).await
}

/// `weir tokens ARGS` with `env`.
fn tokens(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("tokens")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A token of `role`, made through the API with the admin token.
async fn token_of(weir: &Weir, role: Role) -> String {
    weir.make_token(&format!("probe-{role}"), role.as_str())
        .await
}

/// A token of `role` limited to devices tagged `site=<site>`, made through the API.
async fn scoped_token_of(weir: &Weir, role: Role, site: &str) -> String {
    let made = weir
        .request(Method::POST, "/v1/tokens")
        .json(&json!({ "name": format!("{role}-{site}"), "role": role, "scope": { "site": site } }))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    made["token"].as_str().unwrap().to_owned()
}

/// The ids `GET /v1/devices` lists to `token`.
async fn device_ids(weir: &Weir, token: &str) -> Vec<String> {
    let listed: Value = reqwest::Client::new()
        .get(format!("http://{}/v1/devices", weir.api))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let devices = listed["devices"].as_array().cloned().unwrap_or_default();
    devices
        .iter()
        .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn call(weir: &Weir, method: &Method, path: &str, token: Option<&str>) -> StatusCode {
    let mut request =
        reqwest::Client::new().request(method.clone(), format!("http://{}{path}", weir.api));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if matches!(*method, Method::POST | Method::PATCH) {
        request = request.json(&json!({}));
    }
    request.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_as_the_access_table_says() {
    let dir = tempfile::tempdir().unwrap();
    let weir = start(dir.path(), "failures_per_minute: 100000").await;
    // `probe` is called on every route; `doomed` only by the deletion, so the routes after
    // it still find `probe`.
    for id in ["probe", "doomed"] {
        let created = weir
            .request(Method::POST, "/v1/devices")
            .json(&json!({ "id": id, "tags": { "site": "plant-3" } }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let roles = [Role::Viewer, Role::Operator, Role::Admin];
    // Who calls: a token, its role, and whether that role is limited to devices (and the
    // probe device is then in its scope or not).
    let mut callers: Vec<(String, Option<String>, Option<Role>, Scoped)> = vec![
        ("nobody".into(), None, None, Scoped::No),
        (
            "a wrong token".into(),
            Some("weir_wrong".into()),
            None,
            Scoped::No,
        ),
    ];
    for role in roles {
        let token = token_of(&weir, role).await;
        callers.push((role.to_string(), Some(token), Some(role), Scoped::No));
    }
    for role in [Role::Viewer, Role::Operator] {
        let inside = scoped_token_of(&weir, role, "plant-3").await;
        callers.push((
            format!("{role} for site=plant-3"),
            Some(inside),
            Some(role),
            Scoped::In,
        ));
        let outside = scoped_token_of(&weir, role, "plant-9").await;
        callers.push((
            format!("{role} for site=plant-9"),
            Some(outside),
            Some(role),
            Scoped::Out,
        ));
    }
    for (method, pattern, access) in ACCESS {
        let device = match (method, *pattern) {
            (&Method::DELETE, "/v1/devices/{id}") => "doomed",
            _ => "probe",
        };
        let path = pattern.replace("{id}", device).replace("{name}", "nobody");
        for (who, token, role, scoped) in &callers {
            let status = call(&weir, method, &path, token.as_deref()).await;
            let (needed, on_devices) = match access {
                Access::Public => (None, false),
                Access::Metrics => (Some(Role::Viewer), false),
                Access::Role(role) => (Some(*role), false),
                Access::Device(role) => (Some(*role), true),
            };
            let one_device = path.starts_with("/v1/devices/");
            let expected = match (needed, role, scoped) {
                (None, _, _) => "served",
                (Some(_), None, _) => "401",
                (Some(needed), Some(role), _) if role < &needed => "403",
                // A scoped role reaches device routes only, and on them only its devices.
                (Some(_), Some(_), Scoped::In | Scoped::Out) if !on_devices => "403",
                (Some(_), Some(_), Scoped::Out) if one_device => "404",
                (Some(_), Some(_), _) => "served",
            };
            let got = match status.as_u16() {
                401 => "401",
                403 => "403",
                404 if on_devices => "404",
                500.. => "5xx",
                _ => "served",
            };
            assert_eq!(got, expected, "{method} {pattern} by {who}: {status}");
        }
    }
}

/// Whether a caller's role is limited to devices by tag, and the probe device is in that
/// scope.
enum Scoped {
    No,
    In,
    Out,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_scoped_by_tag_sees_and_changes_only_its_devices() {
    let dir = tempfile::tempdir().unwrap();
    let weir = start(dir.path(), "").await;
    for (id, site) in [
        ("p3-a", "plant-3"),
        ("p3-b", "plant-3"),
        ("p9-a", "plant-9"),
    ] {
        let created = weir
            .request(Method::POST, "/v1/devices")
            .json(&json!({ "id": id, "tags": { "site": site } }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let plant3 = scoped_token_of(&weir, Role::Operator, "plant-3").await;
    let http = reqwest::Client::new();
    let api = format!("http://{}", weir.api);
    assert_eq!(device_ids(&weir, &plant3).await, ["p3-a", "p3-b"]);

    // (what, method, path, body, status)
    let table: &[(&str, Method, &str, Value, u16)] = &[
        (
            "disable a device in scope",
            Method::POST,
            "/v1/devices/p3-a/disable",
            json!({}),
            200,
        ),
        (
            "disable one out of scope",
            Method::POST,
            "/v1/devices/p9-a/disable",
            json!({}),
            404,
        ),
        (
            "read one out of scope",
            Method::GET,
            "/v1/devices/p9-a",
            Value::Null,
            404,
        ),
        (
            "a device that does not exist",
            Method::GET,
            "/v1/devices/nope",
            Value::Null,
            404,
        ),
        (
            "desired properties in scope",
            Method::PATCH,
            "/v1/devices/p3-b",
            json!({ "desired": { "fw": "2.1" } }),
            200,
        ),
        (
            "tags that keep it in scope",
            Method::PATCH,
            "/v1/devices/p3-b",
            json!({ "tags": { "site": "plant-3", "line": "2" } }),
            200,
        ),
        (
            "tags that take it out",
            Method::PATCH,
            "/v1/devices/p3-b",
            json!({ "tags": { "site": "plant-9" } }),
            403,
        ),
        (
            "a SAS token out of scope",
            Method::POST,
            "/v1/devices/p9-a/sas-token",
            json!({}),
            404,
        ),
        (
            "a SAS token in scope",
            Method::POST,
            "/v1/devices/p3-a/sas-token",
            json!({}),
            200,
        ),
        (
            "alarms are not a device route",
            Method::GET,
            "/v1/alarms",
            Value::Null,
            403,
        ),
    ];
    for (what, method, path, body, status) in table {
        let mut request = http
            .request(method.clone(), format!("{api}{path}"))
            .bearer_auth(&plant3);
        if !body.is_null() {
            request = request.json(body);
        }
        let got = request.send().await.unwrap().status().as_u16();
        assert_eq!(got, *status, "{what}: {method} {path}");
    }
    let p9 = weir.get_json("/v1/devices/p9-a").await;
    assert_eq!(p9["status"], "enabled", "untouched");
    let p3 = weir.get_json("/v1/devices/p3-a").await;
    assert_eq!(p3["status"], "disabled");

    // The CLI makes scoped tokens too.
    let online = [
        ("WEIR_API", api.as_str()),
        ("WEIR_TOKEN", weir.token.as_str()),
    ];
    let cli = stdout(&tokens(
        &[
            "create",
            "--name",
            "cli-p9",
            "--role",
            "viewer",
            "--scope",
            "site=plant-9",
        ],
        &online,
    ));
    assert_eq!(device_ids(&weir, &cli).await, ["p9-a"]);

    // Admin cannot be scoped: an admin makes tokens.
    let refused = weir
        .request(Method::POST, "/v1/tokens")
        .json(&json!({ "name": "boss", "role": "admin", "scope": { "site": "plant-3" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_for_admins_and_every_failure_looks_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let weir = start(dir.path(), "").await;
    weir.request(Method::POST, "/v1/devices")
        .json(&json!({ "id": "pump-1" }))
        .send()
        .await
        .unwrap();
    let viewer = token_of(&weir, Role::Viewer).await;
    let operator = token_of(&weir, Role::Operator).await;
    let http = reqwest::Client::new();
    let device = format!("http://{}/v1/devices/pump-1", weir.api);

    let seen = weir.get_json("/v1/devices/pump-1").await;
    assert!(seen["primary_key"].is_string(), "an admin reads keys");
    let seen: Value = http
        .get(&device)
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["id"], "pump-1");
    assert!(seen.get("primary_key").is_none() && seen.get("secondary_key").is_none());

    let patch = |body: Value| {
        http.patch(&device)
            .bearer_auth(&operator)
            .json(&body)
            .send()
    };
    let keys = patch(json!({ "primary_key": seen["id"] })).await.unwrap();
    assert_eq!(keys.status(), 403, "keys need admin");
    let desired = patch(json!({ "desired": { "interval": 5 } }))
        .await
        .unwrap();
    assert_eq!(
        desired.status(),
        200,
        "desired properties are an operator's"
    );
    let sas = http
        .post(format!("{device}/sas-token"))
        .bearer_auth(&operator)
        .json(&json!({ "ttl": "1h" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sas.status(), 200);
    let sas: Value = sas.json().await.unwrap();
    assert!(
        sas["token"]
            .as_str()
            .unwrap()
            .starts_with("SharedAccessSignature ")
    );

    let mut bodies = Vec::new();
    for authorization in [
        None,
        Some("Bearer weir_guess"),
        Some("Basic YWRtaW46YWRtaW4="),
    ] {
        let mut request = http.get(&device);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 401, "{authorization:?}");
        assert_eq!(
            answer.headers()["www-authenticate"],
            "Bearer realm=\"weir\""
        );
        bodies.push(answer.text().await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    let metrics = weir.metrics().await;
    for reason in ["missing", "unknown_token", "malformed"] {
        let counted = metric_in(
            &metrics,
            "api_auth_failures_total",
            &[&format!("reason=\"{reason}\"")],
        );
        assert_eq!(counted, 1.0, "{reason}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_fails_too_often_is_refused_for_a_while() {
    let dir = tempfile::tempdir().unwrap();
    let weir = start(dir.path(), "failures_per_minute: 3, public_metrics: true").await;
    let devices = format!("http://{}/v1/devices", weir.api);
    let http = reqwest::Client::new();
    for n in 0..3 {
        let guess = http
            .get(&devices)
            .bearer_auth(format!("weir_guess{n}"))
            .send();
        assert_eq!(guess.await.unwrap().status(), 401, "guess {n}");
    }
    let limited = http
        .get(&devices)
        .bearer_auth(&weir.token)
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429, "even a valid token, once limited");
    assert!(limited.headers().contains_key("retry-after"));
    // Public routes stay public; `/metrics` is, by configuration.
    let metrics = http
        .get(format!("http://{}/metrics", weir.api))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.unwrap();
    let by = |reason: &str| {
        metric_in(
            &metrics,
            "api_auth_failures_total",
            &[&format!("reason=\"{reason}\"")],
        )
    };
    assert_eq!((by("unknown_token"), by("rate_limited")), (3.0, 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_made_on_a_stopped_data_dir_and_through_the_api_of_a_running_weir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let offline = [("WEIR_DATA_DIR", data_dir)];
    // Before the first start: the first admin token is the operator's own.
    let own = stdout(&tokens(
        &["create", "--name", "me", "--role", "admin"],
        &offline,
    ));
    assert!(own.starts_with("weir_"), "{own}");
    let weir = start(dir.path(), "").await;
    assert!(
        !dir.path().join("initial-admin-token").exists(),
        "tokens existed: no initial token"
    );
    let refused = tokens(&["list"], &offline);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("weir is running"),
        "{refused:?}"
    );

    let api = format!("http://{}", weir.api);
    let online = [("WEIR_API", api.as_str()), ("WEIR_TOKEN", own.as_str())];
    let ci = stdout(&tokens(
        &["create", "--name", "ci", "--role", "viewer", "--ttl", "90d"],
        &online,
    ));
    let http = reqwest::Client::new();
    let alarms = format!("{api}/v1/alarms");
    let used = http.get(&alarms).bearer_auth(&ci).send().await.unwrap();
    assert_eq!(used.status(), 200);
    let list: Value = serde_json::from_str(&stdout(&tokens(&["list"], &online))).unwrap();
    let listed = list["tokens"].as_array().unwrap();
    let names: Vec<&str> = listed.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ci", "me"]);
    assert!(listed[0]["last_used_at"].is_string(), "{list}");
    assert!(listed[0]["expires_at"].is_string(), "{list}");
    assert!(!list.to_string().contains(&ci), "no value is ever listed");

    let viewer_creates = tokens(
        &["create", "--name", "x", "--role", "admin"],
        &[("WEIR_API", api.as_str()), ("WEIR_TOKEN", ci.as_str())],
    );
    assert!(!viewer_creates.status.success(), "a viewer makes no tokens");
    stdout(&tokens(&["revoke", "ci"], &online));
    let revoked = http.get(&alarms).bearer_auth(&ci).send().await.unwrap();
    assert_eq!(revoked.status(), 401, "refused from the next request on");

    let short = stdout(&tokens(
        &[
            "create", "--name", "short", "--role", "viewer", "--ttl", "1s",
        ],
        &online,
    ));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let expired = http.get(&alarms).bearer_auth(&short).send().await.unwrap();
    assert_eq!(expired.status(), 401, "expired");

    // Stopped again: the data_dir is the CLI's, and what the API made is there.
    assert!(weir.terminate().success());
    let list: Value = serde_json::from_str(&stdout(&tokens(&["list"], &offline))).unwrap();
    assert_eq!(list["tokens"].as_array().unwrap().len(), 2, "{list}");
}
