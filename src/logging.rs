//! runc-compatible logging. `--log FILE --log-format json` gets one object per
//! line with lowercase `level`, `msg` and `time` (what containerd and podman
//! parse); text is logrus-style `time="..." level=error msg="..."`.
//!
//! Without `--debug` nothing is logged but the single error line of a failed
//! command: podman reads the whole log file as one JSON object.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::cli::{GlobalOpts, LogFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A command run by a user or a client: logs to --log, else stderr.
    Command,
    /// The bridge monitor: its stderr belongs to the container, so it logs
    /// to --log only.
    Monitor,
}

pub fn init(global: &GlobalOpts, role: Role) {
    let level = match (global.debug, role) {
        (true, _) => Level::DEBUG,
        (false, Role::Monitor) => Level::ERROR,
        (false, Role::Command) => return,
    };
    let sink: Box<dyn Write + Send> = match (&global.log, role) {
        (Some(path), _) => match open(path) {
            Some(f) => Box::new(f),
            None => return,
        },
        (None, Role::Command) => Box::new(std::io::stderr()),
        (None, Role::Monitor) => return,
    };
    let layer = LineLayer {
        sink: Mutex::new(sink),
        format: global.log_format,
        level,
    };
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
}

fn open(path: &Path) -> Option<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path).ok()
}

/// One line in the chosen format.
pub fn format_line(format: LogFormat, level: &str, msg: &str, time: &str) -> String {
    match format {
        LogFormat::Json => {
            let v = serde_json::json!({"level": level, "msg": msg, "time": time});
            format!("{v}\n")
        }
        LogFormat::Text => format!("time={time:?} level={level} msg={msg:?}\n"),
    }
}

/// RFC 3339 UTC timestamp with nanoseconds, as runc writes `created`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// An error message as one printable line. Messages quote the input they
/// refuse (serde echoes an unknown enum value whole): a newline would split
/// the line clients read, a CR or an escape sequence would rewrite what a
/// terminal shows. Newlines become blanks as before; other controls are
/// shown escaped.
pub fn one_line(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for c in msg.chars() {
        match c {
            '\n' => out.push(' '),
            c if c.is_control() => out.extend(c.escape_debug()),
            c => out.push(c),
        }
    }
    out
}

/// A failed command: `nexcage: <msg>` on stderr, and one line in --log.
pub fn report_error(global: &GlobalOpts, msg: &str) {
    let msg = one_line(msg);
    eprintln!("nexcage: {msg}");
    if let Some(path) = &global.log {
        if let Some(mut f) = open(path) {
            let _ = f.write_all(
                format_line(global.log_format, "error", &msg, &now_rfc3339()).as_bytes(),
            );
        }
    }
}

struct LineLayer {
    sink: Mutex<Box<dyn Write + Send>>,
    format: LogFormat,
    level: Level,
}

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *meta.level() <= self.level
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() > self.level {
            return;
        }
        let mut m = Message::default();
        event.record(&mut m);
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let line = format_line(self.format, &level, m.0.trim_start(), &now_rfc3339());
        if let Ok(mut sink) = self.sink.lock() {
            let _ = sink.write_all(line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_have_exactly_the_keys_clients_parse() {
        let line = format_line(
            LogFormat::Json,
            "error",
            "container does not exist: x",
            "2026-01-01T00:00:00Z",
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container does not exist: x");
        assert_eq!(v["time"], "2026-01-01T00:00:00Z");
        assert_eq!(v.as_object().unwrap().len(), 3);
    }

    #[test]
    fn error_messages_print_as_one_line_without_terminal_controls() {
        let got = one_line("unknown variant `p\nid\r\u{1b}[31m\0\u{85}`, expected");
        assert_eq!(
            got,
            "unknown variant `p id\\r\\u{1b}[31m\\0\\u{85}`, expected"
        );
        assert!(!got.chars().any(char::is_control));
        assert_eq!(one_line("plain: ok"), "plain: ok");
    }

    #[test]
    fn text_lines_are_logrus_style() {
        let line = format_line(LogFormat::Text, "error", "a \"b\"", "T");
        assert_eq!(line, "time=\"T\" level=error msg=\"a \\\"b\\\"\"\n");
    }
}
