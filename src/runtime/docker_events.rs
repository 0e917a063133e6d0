//! `docker events` as a long-running CLI child whose output the loop reads without blocking:
//! one container id per line for each of our containers that dies.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys::log::quote;

/// Longest line kept (a container id is 64 hex digits).
const MAX_LINE: usize = 256;

/// The running `docker events` child.
#[derive(Debug)]
pub struct EventsWatch {
    child: Child,
    stdout: ChildStdout,
    /// Bytes of a line not complete yet.
    partial: Vec<u8>,
    /// Why it ended, once its output closed (reported after the last ids).
    ended: Option<String>,
}

impl EventsWatch {
    /// Starts `cmd` (from `Docker::events`) with its stdout a non-blocking pipe. It dies with
    /// the supervisor (PDEATHSIG), so a killed supervisor leaves no watcher behind.
    pub fn start(mut cmd: Command) -> io::Result<EventsWatch> {
        crate::sys::notify::forget_for_children(&mut cmd);
        crate::sys::privilege::no_ambient_caps_on_exec(&mut cmd);
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // calls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(io::Error::from)?;
                if nix::unistd::getppid() != parent {
                    return Err(io::Error::other("supervisor already gone"));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("no stdout pipe"));
        };
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = OFlag::from_bits_truncate(fcntl(&stdout, FcntlArg::F_GETFL)?);
        fcntl(&stdout, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(EventsWatch {
            child,
            stdout,
            partial: Vec::new(),
            ended: None,
        })
    }

    /// The container ids reported since the last call; `Err` once the watcher has ended
    /// (the caller restarts it).
    pub fn read_ids(&mut self) -> Result<Vec<String>, String> {
        if let Some(why) = &self.ended {
            return Err(why.clone());
        }
        let mut buf = [0u8; 4096];
        let mut ids = Vec::new();
        loop {
            match self.stdout.read(&mut buf) {
                Ok(0) => {
                    let why = self.ended();
                    self.ended = Some(why.clone());
                    return if ids.is_empty() { Err(why) } else { Ok(ids) };
                }
                Ok(n) => {
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            let line = String::from_utf8_lossy(&self.partial).trim().to_string();
                            if !line.is_empty() {
                                ids.push(line);
                            }
                            self.partial.clear();
                        } else if self.partial.len() < MAX_LINE {
                            self.partial.push(b);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ids),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn ended(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(st)) => format!("docker events exited: {st}"),
            _ => "docker events closed its output".to_string(),
        }
    }
}

/// A watcher that failed to start, or ended, is started again after this.
const EVENTS_RETRY: Duration = Duration::from_secs(2);

/// A driver's `docker events` feed: the watcher kept running (restarted after a pause when it
/// fails or ends), read without blocking. Both docker drivers use it.
#[derive(Debug)]
pub struct EventsFeed {
    watch: Option<EventsWatch>,
    retry: Instant,
}

impl Default for EventsFeed {
    fn default() -> Self {
        EventsFeed {
            watch: None,
            retry: Instant::now(),
        }
    }
}

impl EventsFeed {
    /// The ids reported since the last call, starting the watcher (`command`) when none runs
    /// and its pause is over; a watcher that ended is logged and dropped (restarted later).
    pub fn poll(&mut self, now: Instant, command: impl FnOnce() -> Command) -> Vec<String> {
        if self.watch.is_none() && now >= self.retry {
            match EventsWatch::start(command()) {
                Ok(w) => self.watch = Some(w),
                Err(e) => {
                    crate::warn!("docker_events_failed", "error={}", quote(&e.to_string()));
                    self.retry = now + EVENTS_RETRY;
                }
            }
        }
        let Some(w) = self.watch.as_mut() else {
            return Vec::new();
        };
        match w.read_ids() {
            Ok(ids) => ids,
            Err(e) => {
                crate::warn!(
                    "docker_events_ended",
                    "error={} retry_in_ms={}",
                    quote(&e),
                    EVENTS_RETRY.as_millis()
                );
                self.watch = None;
                self.retry = now + EVENTS_RETRY;
                Vec::new()
            }
        }
    }

    /// Stops the watcher (it is started again by the next `poll`).
    pub fn stop(&mut self) {
        self.watch = None;
    }
}

impl Drop for EventsWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn reads_lines_without_blocking_and_reports_the_end() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo abc; sleep 0.3; printf 'def\\nghi'; sleep 0.3; echo; exit 0",
        ]);
        let mut w = EventsWatch::start(cmd).expect("start");
        let started = Instant::now();
        let mut ids = Vec::new();
        let end = loop {
            match w.read_ids() {
                Ok(more) => ids.extend(more),
                Err(e) => break e,
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no end seen");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(ids, vec!["abc", "def", "ghi"]);
        assert!(end.contains("exit") || end.contains("closed"), "{end}");
    }
}
