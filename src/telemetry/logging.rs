//! Structured logs: one line per event of interest, as text or JSON.
//!
//! Under systemd, stderr is a stream into journald (`JOURNAL_STREAM` names it): journald
//! adds its own timestamp and shows no colours, so lines carry neither; instead each line
//! starts with its syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug),
//! which journald strips and records, so `journalctl -u weir -p warning` filters by level.
//! A message of several lines gets the prefix on every line (journald makes each line an
//! entry of its own). JSON lines get the prefix too, so they are selectable the same way.

use std::fmt;

use clap::ValueEnum;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Libraries that log routine work at INFO (the Delta kernel logs every snapshot load):
/// weir's own lines are the ones an operator needs at INFO.
const QUIET_LIBRARIES: &str =
    "hyper=warn,h2=warn,buoyant_kernel=warn,delta_kernel=warn,deltalake_core=warn,deltalake=warn";

/// Installs the global subscriber. `RUST_LOG` overrides `level` when set.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},{QUIET_LIBRARIES}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let journal = stderr_is_journal();
    // A second init (tests) keeps the first subscriber.
    let _ = match (format, journal) {
        (LogFormat::Text, false) => builder.try_init(),
        (LogFormat::Json, false) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Text, true) => builder
            .with_ansi(false)
            .event_format(SyslogPriority(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .try_init(),
        (LogFormat::Json, true) => builder
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(SyslogPriority(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .try_init(),
    };
}

/// Whether stderr is the journald stream `JOURNAL_STREAM` (`<device>:<inode>`) names, as
/// systemd sets it for `StandardError=journal`; a child whose stderr was redirected
/// elsewhere inherits the variable but not the stream, and keeps the usual format.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some(expected) = stream.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    stderr_identity().is_some_and(|actual| actual == expected)
}

/// `<device>:<inode>`, both decimal.
fn parse_journal_stream(text: &str) -> Option<(u64, u64)> {
    let (dev, ino) = text.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The device and inode of what fd 2 is.
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let metadata = std::fs::File::from(fd).metadata().ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// The syslog priority journald reads from a `<N>` prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Formats with the inner format, then puts the event's syslog priority before every line.
struct SyslogPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let prefix = priority(event.metadata().level());
        for part in line.lines() {
            writeln!(writer, "<{prefix}>{part}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn text(buffer: &Buffer) -> String {
        String::from_utf8(buffer.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .expect("utf-8 log lines")
    }

    #[test]
    fn journal_text_lines_carry_priorities_and_no_time_or_colour() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_max_level(Level::DEBUG)
            .with_ansi(false)
            .event_format(SyslogPriority(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(component_id = "out", "it broke");
            tracing::warn!("careful");
            tracing::info!("reload refused:\nfirst error\nsecond error");
            tracing::debug!("detail");
        });
        let out = text(&buffer);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "{out}");
        assert!(
            lines[0].starts_with("<3>ERROR ") && lines[0].contains("it broke"),
            "{out}"
        );
        assert!(lines[1].starts_with("<4> WARN "), "{out}");
        assert!(lines[2].starts_with("<6> INFO "), "{out}");
        assert_eq!(lines[3], "<6>first error");
        assert_eq!(lines[4], "<6>second error");
        assert!(lines[5].starts_with("<7>DEBUG "), "{out}");
        assert!(!out.contains('\u{1b}'), "no ANSI escapes: {out:?}");
        // No timestamp: the level comes right after the prefix.
        assert!(!out.contains("Z "), "{out}");
    }

    #[test]
    fn journal_json_lines_keep_json_after_the_prefix() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(SyslogPriority(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(component_id = "out", "slow");
        });
        let out = text(&buffer);
        let json = out
            .trim_end()
            .strip_prefix("<4>")
            .expect("the warning prefix");
        let value: serde_json::Value = serde_json::from_str(json).expect("a JSON line");
        assert_eq!(value["level"], "WARN");
        assert_eq!(value["message"], "slow");
        assert_eq!(value["component_id"], "out");
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("64768:1234"), Some((64768, 1234)));
        assert_eq!(parse_journal_stream("garbage"), None);
        assert_eq!(parse_journal_stream("1:x"), None);
    }
}
