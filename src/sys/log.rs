//! One line per event, `key=value` fields, with systemd priority prefixes when stderr is the
//! journal (JOURNAL_STREAM set), plain otherwise.

use std::fmt::Arguments;
use std::io::Write;
use std::sync::OnceLock;

/// Severity of a log line; the numbers are syslog priorities, as journald reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error = 3,
    Warning = 4,
    Info = 6,
    Debug = 7,
}

impl Level {
    /// `error`, `warning`, `info`, `debug`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

struct Logger {
    journal: bool,
    role: String,
    debug: bool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Sets this process's role (`supervisor`, `lb.0`, `worker.<id>`...) printed on every line.
/// Call once at start; later calls are ignored (a forked child keeps its parent's settings
/// unless it calls [`set_role`]).
pub fn init(role: &str) {
    let _ = LOGGER.set(new_logger(role));
}

fn new_logger(role: &str) -> Logger {
    Logger {
        journal: std::env::var_os("JOURNAL_STREAM").is_some(),
        role: role.to_string(),
        debug: std::env::var("GLB_DEBUG").is_ok_and(|v| v == "1"),
    }
}

/// Sees every line (but debug ones) as `(level, event, fields)`; see [`set_hook`].
pub type Hook = fn(Level, &str, &str);

/// The hook and the pid of the process that installed it.
static HOOK: OnceLock<(u32, Hook)> = OnceLock::new();

/// Installs `hook` for this process (the supervisor's event ring). Only the installing process
/// calls it: a forked child shares the memory but not the pid, so its lines stay out. Later
/// calls are ignored.
pub fn set_hook(hook: Hook) {
    let _ = HOOK.set((std::process::id(), hook));
}

static ROLE_OVERRIDE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Changes the role after a fork (the child is single-threaded, so the lock is free).
pub fn set_role(role: &str) {
    if let Ok(mut r) = ROLE_OVERRIDE.lock() {
        *r = Some(role.to_string());
    }
}

/// Writes one line: `[<N>]role=<role> level=<level> event=<event> <fields>`.
/// Use the `info!`, `warn!`, `error!`, `debug!` macros rather than calling this.
pub fn write(level: Level, event: &str, fields: Arguments<'_>) {
    let logger = LOGGER.get_or_init(|| new_logger("goloadbalancer"));
    if level == Level::Debug && !logger.debug {
        return;
    }
    let mut line = prefix(level, event);
    let rest = fields.to_string();
    if level != Level::Debug
        && let Some((pid, hook)) = HOOK.get()
        && *pid == std::process::id()
    {
        hook(level, event, &rest);
    }
    if !rest.is_empty() {
        line.push(' ');
        line.push_str(&rest);
    }
    // A log line never contains a raw newline: it would split the event in the journal.
    let mut line = line.replace('\n', "\\n");
    line.push('\n');
    // One write per line so lines from several processes sharing stderr do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The start of a line: `[<N>]role=<role> level=<level> event=<event>` (the access log
/// computes it once and writes its own lines in batches).
pub fn prefix(level: Level, event: &str) -> String {
    let logger = LOGGER.get_or_init(|| new_logger("goloadbalancer"));
    let role_override = ROLE_OVERRIDE.lock().ok().and_then(|r| r.clone());
    let role = role_override.as_deref().unwrap_or(&logger.role);
    let mut line = String::with_capacity(128);
    if logger.journal {
        line.push_str(&format!("<{}>", level as u8));
    }
    line.push_str(&format!("role={role} level={} event={event}", level.name()));
    line
}

/// Quotes a value for a `key=value` field when it holds spaces, quotes or is empty.
pub fn quote(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '"', '=', '\\']) {
        return v.to_string();
    }
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Logs an info event: `info!("worker_started", "port={} id={}", port, id)`.
#[macro_export]
macro_rules! info {
    ($event:expr) => { $crate::sys::log::write($crate::sys::log::Level::Info, $event, format_args!("")) };
    ($event:expr, $($arg:tt)+) => { $crate::sys::log::write($crate::sys::log::Level::Info, $event, format_args!($($arg)+)) };
}

/// Logs a warning event.
#[macro_export]
macro_rules! warn {
    ($event:expr) => { $crate::sys::log::write($crate::sys::log::Level::Warning, $event, format_args!("")) };
    ($event:expr, $($arg:tt)+) => { $crate::sys::log::write($crate::sys::log::Level::Warning, $event, format_args!($($arg)+)) };
}

/// Logs an error event.
#[macro_export]
macro_rules! error {
    ($event:expr) => { $crate::sys::log::write($crate::sys::log::Level::Error, $event, format_args!("")) };
    ($event:expr, $($arg:tt)+) => { $crate::sys::log::write($crate::sys::log::Level::Error, $event, format_args!($($arg)+)) };
}

/// Logs a debug event (printed only when GLB_DEBUG=1).
#[macro_export]
macro_rules! debug {
    ($event:expr) => { $crate::sys::log::write($crate::sys::log::Level::Debug, $event, format_args!("")) };
    ($event:expr, $($arg:tt)+) => { $crate::sys::log::write($crate::sys::log::Level::Debug, $event, format_args!($($arg)+)) };
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quote_only_when_needed() {
        assert_eq!(quote("abc"), "abc");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
    }
}
