//! The alarm board, a shared service: the active alarms of every `alarm` transform, which
//! the API lists and acknowledges (`/v1/alarms`).
//!
//! It has no settings. The first `alarm` transform makes it, through
//! `Services::get_or_insert_with`; the API finds it with `Services::get`, and sees no
//! alarms while no alarm transform has run.

mod board;
mod severity;

pub use board::{AckOutcome, AckRequest, AlarmBoard, AlarmSummary, BoardEntry, BoardInbox};
pub use severity::Severity;
