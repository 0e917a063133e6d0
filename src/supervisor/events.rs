//! Recent supervisor events for `/status` and the dashboard: a bounded ring fed from one
//! place, the supervisor's own log (`sys::log::set_hook`), so every event line (worker
//! started, died, reload, scale decision...) is recorded exactly as it is logged, and a new
//! log line needs no second call to show up here.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::sys::log::Level;

/// Events kept; the oldest is dropped beyond it.
pub const CAPACITY: usize = 200;
/// Longest `fields` text kept per event (a docker error can be long).
const MAX_FIELDS: usize = 512;

/// One logged event in `/status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event since start (a client can tell which ones are new).
    pub seq: u64,
    /// Wall-clock time, ms since the Unix epoch.
    pub time_ms: u64,
    /// `error`, `warning` or `info`.
    pub level: String,
    /// The log line's `event=` name.
    pub event: String,
    /// The rest of the log line (`key=value ...`), cut at 512 bytes.
    pub fields: String,
}

/// The ring itself; a plain value so it is unit-tested without the global.
#[derive(Debug, Default)]
struct Ring {
    next_seq: u64,
    events: VecDeque<Event>,
}

impl Ring {
    const fn new() -> Ring {
        Ring {
            next_seq: 0,
            events: VecDeque::new(),
        }
    }

    fn push(&mut self, time_ms: u64, level: Level, event: &str, fields: &str) {
        if self.events.len() >= CAPACITY {
            self.events.pop_front();
        }
        self.next_seq += 1;
        self.events.push_back(Event {
            seq: self.next_seq,
            time_ms,
            level: level.name().to_string(),
            event: event.to_string(),
            fields: truncate(fields, MAX_FIELDS).to_string(),
        });
    }
}

/// The supervisor's ring. A global because the log is: the hook is a plain function.
static RING: Mutex<Ring> = Mutex::new(Ring::new());

/// Starts recording this process's log events (call once, in the supervisor).
pub fn install() {
    crate::sys::log::set_hook(record);
}

fn record(level: Level, event: &str, fields: &str) {
    if let Ok(mut ring) = RING.lock() {
        ring.push(unix_ms(), level, event, fields);
    }
}

/// Wall-clock now, ms since the Unix epoch (the time base of `/status`'s events and series).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The recorded events, oldest first.
pub fn recent() -> Vec<Event> {
    RING.lock()
        .map(|r| r.events.iter().cloned().collect())
        .unwrap_or_default()
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_capacity_events_in_order() {
        let mut r = Ring::new();
        for i in 0..CAPACITY + 50 {
            r.push(i as u64, Level::Info, "worker_started", &format!("n={i}"));
        }
        assert_eq!(r.events.len(), CAPACITY);
        assert_eq!(r.events.front().map(|e| e.seq), Some(51));
        assert_eq!(
            r.events.back().map(|e| e.fields.as_str()),
            Some(format!("n={}", CAPACITY + 49).as_str())
        );
        assert!(
            r.events
                .iter()
                .zip(r.events.iter().skip(1))
                .all(|(a, b)| a.seq + 1 == b.seq)
        );
    }

    #[test]
    fn long_fields_are_cut_on_a_char_boundary() {
        let mut r = Ring::new();
        let long = "é".repeat(MAX_FIELDS);
        r.push(0, Level::Warning, "job_failed", &long);
        let kept = &r.events[0].fields;
        assert!(kept.len() <= MAX_FIELDS && kept.len() >= MAX_FIELDS - 1);
        assert_eq!(r.events[0].level, "warning");
    }
}
