//! Log setup: every line says which process wrote it (`primary` or `worker N`).
//!
//! Logs go to stderr; workers inherit the primary's stderr, so journald (or whatever reads the
//! primary's output) sees one stream. `--log-level` filters them, else `RUST_LOG`, else `info`.
//! `--log-format text` prefixes each line with the process (`primary`, `worker 1`);
//! `--log-format json` writes one JSON object per line with `process` and, for a worker's lines,
//! `worker` (its index) as fields.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Which process writes the lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The primary.
    Primary,
    /// The worker in this slot.
    Worker(usize),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Primary => f.write_str("primary"),
            Role::Worker(i) => write!(f, "worker {i}"),
        }
    }
}

/// Text lines: `primary <tracing's full format>`.
struct Prefixed {
    prefix: String,
    inner: Format<Full>,
}

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{} ", self.prefix)?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// JSON lines: `{"timestamp", "level", "target", "process", "worker"?, "message", fields...}`.
struct JsonLines {
    role: Role,
}

/// Collects an event's fields into a JSON object.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), value.to_string().into());
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let mut obj = serde_json::Map::new();
        obj.insert("timestamp".into(), ts.into());
        obj.insert("level".into(), meta.level().as_str().into());
        obj.insert("target".into(), meta.target().into());
        match self.role {
            Role::Primary => {
                obj.insert("process".into(), "primary".into());
            }
            Role::Worker(i) => {
                obj.insert("process".into(), "worker".into());
                obj.insert("worker".into(), i.into());
            }
        }
        let mut fields = serde_json::Map::new();
        event.record(&mut JsonFields(&mut fields));
        for (k, v) in fields {
            // An event field never replaces the line's own keys.
            obj.entry(k).or_insert(v);
        }
        let line = serde_json::to_string(&obj).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// The filter: `--log-level` if given (validated with the configuration), else `RUST_LOG`,
/// else `info`.
fn filter(level: Option<&str>) -> EnvFilter {
    match level {
        Some(l) => EnvFilter::try_new(l).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    }
}

/// Installs the global subscriber unless the application already installed one.
pub(crate) fn init(role: Role, format: LogFormat, level: Option<&str>) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(std::io::stderr)
        .fmt_fields(DefaultFields::new());
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .event_format(Prefixed {
                prefix: role.to_string(),
                inner: Format::default().with_target(false),
            })
            .try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .event_format(JsonLines { role })
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::LockExt;

    #[test]
    fn json_lines_parse_and_carry_the_worker_index() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock_unpoisoned().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .event_format(JsonLines {
                role: Role::Worker(3),
            })
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(pid = 42u64, ok = true, name = "x\"y", "worker ready");
            tracing::warn!(message2 = 1.5f64, "second\nline");
        });
        let text = String::from_utf8(buf.0.lock_unpoisoned().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["worker"], 3);
        assert_eq!(lines[0]["process"], "worker");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["message"], "worker ready");
        assert_eq!(lines[0]["pid"], 42);
        assert_eq!(lines[0]["ok"], true);
        assert_eq!(lines[0]["name"], "x\"y");
        assert_eq!(lines[1]["message"], "second\nline");
        assert!(lines[1]["timestamp"].as_str().is_some_and(|t| t.len() > 10));
    }
}
