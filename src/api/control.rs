//! The control socket: `POST /v1/reload` for `weir reload`, without a token.
//!
//! `data_dir/control.sock` is a Unix socket of mode 0600: only the user weir runs as (and
//! root) can connect, so the file system is its authentication, and no browser can reach
//! it. This is what `ExecReload=weir reload --wait` of the systemd unit uses; SIGHUP
//! stays another way to reload. Nothing else is served here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use tokio_util::sync::CancellationToken;

use super::ApiState;

/// The socket's name in `data_dir`.
pub const SOCKET_FILE: &str = "control.sock";

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Listens on `data_dir/control.sock` now and serves until `shutdown`; the socket file is
/// removed when it ends.
pub async fn serve(
    data_dir: &Path,
    state: Arc<ApiState>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(data_dir);
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data_dir {}: {e}", data_dir.display()))?;
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        anyhow::bail!(
            "another weir serves {} (two weirs cannot share a data_dir)",
            path.display()
        );
    }
    // Bound under another name and made private before it takes the real one, so it is
    // never reachable with wider permissions. The real name may be a socket left by a
    // weir that was killed: the rename replaces it.
    let fresh = data_dir.join(format!("{SOCKET_FILE}.new"));
    let _ = std::fs::remove_file(&fresh);
    let listener = tokio::net::UnixListener::bind(&fresh)
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (data_dir): {e}", fresh.display()))?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&fresh, &path))
        .map_err(|e| anyhow::anyhow!("cannot make {} private: {e}", path.display()))?;
    let app = Router::new()
        .route("/v1/reload", post(super::reload::reload))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::audit::record,
        ))
        .layer(axum::Extension(super::Caller::everywhere(
            "control-socket",
            crate::tokens::Role::Admin,
        )))
        .with_state(state);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!("the control socket failed: {err}");
        }
        let _ = std::fs::remove_file(&path);
    }))
}
