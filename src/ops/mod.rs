//! Operator tools that watch a running weir through its admin API: `weir tap` (live
//! samples of events, [`tap`]) and `weir top` (a terminal dashboard of its metrics,
//! [`top`]).

pub mod format;
pub mod tap;
pub mod top;

/// A current-thread runtime for a command-line client.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}
