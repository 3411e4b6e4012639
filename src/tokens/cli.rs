//! `weir tokens …`: make, list and revoke API tokens.
//!
//! With a token (`--token`, `WEIR_TOKEN`: an admin's), the commands go through the API of
//! the running weir. Without one they work on `data_dir` directly, which only a stopped
//! weir allows (the running one holds the store): that is how the first token of an
//! install is made besides `data_dir/initial-admin-token`. Output is JSON on stdout; a
//! new token's value is printed once, on its own line, so `$(weir tokens create ...)`
//! works.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{Grant, Role, Scope, TokenStore};
use crate::api_client::{ApiArgs, ApiClient};
use crate::audit::{AuditEvent, AuditLog};

#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Without `--token`: the data_dir whose tokens to change (weir must be stopped).
    #[arg(
        long,
        env = "WEIR_DATA_DIR",
        default_value = crate::config::component::DEFAULT_DATA_DIR,
        global = true
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Make a token; prints its value, this once.
    Create {
        /// What the token is for (shown in `list` and the audit log).
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Limit the role to devices with this tag, e.g. `site=plant-3` (repeatable: all
        /// must match). Not for `admin`.
        #[arg(long = "scope", value_parser = parse_tag)]
        scope: Vec<(String, String)>,
        /// How long it is valid, e.g. `90d` (default: until revoked).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Every token, with its role, expiry and last use.
    List,
    /// Revoke a token: it is refused from the next request on.
    Revoke { name: String },
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}`: expected `tag=value`")),
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<crate::config::Duration>()
        .map(crate::config::Duration::get)
}

/// Runs `weir tokens …`.
pub fn main(args: TokensArgs) -> ExitCode {
    let done = match args.api.token.is_some() {
        true => through_api(&args),
        false => on_data_dir(&args),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn on_data_dir(args: &TokensArgs) -> Result<(), String> {
    let store = TokenStore::open(&args.data_dir)
        .map_err(|e| format!("{} ({})", e, args.data_dir.display()))?;
    let (route, target) = match &args.command {
        TokensCommand::Create {
            name,
            role,
            scope,
            ttl,
        } => {
            let grant = Grant {
                role: *role,
                scope: scope.iter().cloned().collect(),
            };
            let (secret, info) = store
                .create_with(name, grant, *ttl)
                .map_err(|e| e.to_string())?;
            eprintln!("{}", json!(info));
            println!("{}", secret.expose());
            ("weir tokens create", name)
        }
        TokensCommand::List => {
            print(&json!({ "tokens": store.list() }));
            return Ok(());
        }
        TokensCommand::Revoke { name } => {
            store.revoke(name).map_err(|e| e.to_string())?;
            ("weir tokens revoke", name)
        }
    };
    // The change is made: a failure to note it is reported, not undone.
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    let event = AuditEvent {
        time: jiff::Timestamp::now(),
        who: format!("local:{user}"),
        role: None,
        route: route.into(),
        target: Some(target.clone()),
        status: 200,
        outcome: "ok".into(),
        etag_before: None,
        etag_after: None,
        client: None,
    };
    AuditLog::new(&args.data_dir)
        .append(&event)
        .map_err(|e| format!("the change is made, but {e}"))
}

fn through_api(args: &TokensArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let client = ApiClient::new(&args.api)?;
    runtime.block_on(async {
        use reqwest::Method;
        match &args.command {
            TokensCommand::Create {
                name,
                role,
                scope,
                ttl,
            } => {
                let mut body = json!({ "name": name, "role": role });
                if !scope.is_empty() {
                    body["scope"] = json!(scope.iter().cloned().collect::<Scope>());
                }
                if let Some(ttl) = ttl {
                    body["ttl"] = json!(crate::config::Duration(*ttl).to_string());
                }
                let answer = client.call(Method::POST, "/v1/tokens", Some(&body)).await?;
                eprintln!("{}", answer["info"]);
                println!(
                    "{}",
                    answer["token"]
                        .as_str()
                        .ok_or("the API answered without a token")?
                );
            }
            TokensCommand::List => print(&client.call(Method::GET, "/v1/tokens", None).await?),
            TokensCommand::Revoke { name } => {
                let path = format!(
                    "/v1/tokens/{}",
                    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                );
                client.call(Method::DELETE, &path, None).await?;
            }
        }
        Ok(())
    })
}
