//! A helper command (a docker CLI call) run as a child process the supervisor's loop polls.
//! Its stdout and stderr go to unlinked temp files, read once it exits: a chatty command can
//! never block on a full pipe, and the loop never blocks on it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Instant;

use crate::sys::log::quote;

/// Most bytes of a job's stdout or stderr kept (docker output we read is small).
const MAX_OUTPUT: u64 = 256 * 1024;

/// A running helper command.
#[derive(Debug)]
pub struct Job {
    child: Child,
    stdout: File,
    stderr: File,
    /// What the command is, for logs (`docker run ...`).
    pub describe: String,
    /// When it was started.
    pub started: Instant,
    /// Killed (SIGKILL) when still running at this instant.
    pub deadline: Instant,
}

/// A finished helper command.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// True when it exited 0.
    pub success: bool,
    /// Exit code, or None when killed by a signal (or by its deadline).
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error, trimmed: what to log when it failed.
    pub stderr: String,
    /// True when the supervisor killed it at its deadline.
    pub timed_out: bool,
}

impl JobOutput {
    /// A one-line reason for a failure, for logs.
    pub fn error_text(&self) -> String {
        if self.timed_out {
            return "timed out".into();
        }
        let msg = self.stderr.trim();
        let msg = if msg.is_empty() {
            self.stdout.trim()
        } else {
            msg
        };
        match (self.code, msg.is_empty()) {
            (Some(c), true) => format!("exit status {c}"),
            (None, true) => "killed by a signal".into(),
            (_, false) => {
                // Docker's own message comes first; its "See --help" hints add nothing.
                let text: Vec<&str> = msg
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with("Run '") && !l.starts_with("See '"))
                    .collect();
                let text = if text.is_empty() {
                    msg.to_string()
                } else {
                    text.join("; ")
                };
                text.chars().take(500).collect()
            }
        }
    }
}

/// An anonymous temp file: created, then unlinked at once, so nothing is left behind.
fn scratch_file() -> std::io::Result<File> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        ".glb-job-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

impl Job {
    /// Spawns `cmd` with stdin closed and its output captured; `deadline` bounds its run.
    pub fn spawn(mut cmd: Command, describe: String, deadline: Instant) -> std::io::Result<Job> {
        let stdout = scratch_file()?;
        let stderr = scratch_file()?;
        crate::sys::notify::forget_for_children(&mut cmd);
        crate::sys::privilege::no_ambient_caps_on_exec(&mut cmd);
        // Own process group: a terminal's Ctrl-C must not kill a docker call half-way.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout.try_clone()?))
            .stderr(Stdio::from(stderr.try_clone()?))
            .spawn()?;
        Ok(Job {
            child,
            stdout,
            stderr,
            describe,
            started: Instant::now(),
            deadline,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns the output once the command has exited (never blocks); kills it first when
    /// its deadline has passed.
    pub fn poll(&mut self, now: Instant) -> Option<JobOutput> {
        let mut timed_out = false;
        let status: ExitStatus = match self.child.try_wait() {
            Ok(Some(st)) => st,
            Ok(None) if now >= self.deadline => {
                let _ = self.child.kill();
                timed_out = true;
                // SIGKILL is not ignorable: the wait below is immediate.
                match self.child.wait() {
                    Ok(st) => st,
                    Err(_) => return Some(self.failed("wait failed")),
                }
            }
            Ok(None) => return None,
            Err(e) => return Some(self.failed(&e.to_string())),
        };
        Some(JobOutput {
            success: status.success() && !timed_out,
            code: status.code(),
            stdout: read_all(&mut self.stdout),
            stderr: read_all(&mut self.stderr).trim().to_string(),
            timed_out,
        })
    }

    fn failed(&self, why: &str) -> JobOutput {
        JobOutput {
            success: false,
            code: None,
            stdout: String::new(),
            stderr: why.to_string(),
            timed_out: false,
        }
    }

    /// Kills the command now (used on a forced stop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the command (bounded by its deadline). Only where blocking is fine: when
    /// leaving, or in a one-shot command like check-config.
    pub fn wait_blocking(&mut self) -> JobOutput {
        loop {
            if let Some(out) = self.poll(Instant::now()) {
                return out;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The docker calls a driver has running, each tagged with what it is for (`S`): the job
/// plumbing the docker and swarm drivers share.
#[derive(Debug)]
pub struct Jobs<S> {
    running: Vec<(Job, S)>,
}

impl<S: std::fmt::Debug> Default for Jobs<S> {
    fn default() -> Self {
        Jobs {
            running: Vec::new(),
        }
    }
}

impl<S: std::fmt::Debug> Jobs<S> {
    /// Runs `cmd` for `step`; false (and logged) when it could not be spawned.
    pub fn spawn(&mut self, cmd: Command, step: S, deadline: Instant) -> bool {
        let describe = describe(&cmd);
        match Job::spawn(cmd, describe.clone(), deadline) {
            Ok(job) => {
                crate::debug!("job_started", "pid={} cmd={}", job.pid(), quote(&describe));
                self.running.push((job, step));
                true
            }
            Err(e) => {
                crate::warn!(
                    "job_spawn_failed",
                    "cmd={} error={}",
                    quote(&describe),
                    quote(&e.to_string())
                );
                false
            }
        }
    }

    /// The calls that finished since the last call (never blocks; failures logged at debug).
    pub fn finished(&mut self, now: Instant) -> Vec<(S, JobOutput)> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            let Some(out) = self.running[i].0.poll(now) else {
                i += 1;
                continue;
            };
            let (job, step) = self.running.swap_remove(i);
            if !out.success {
                crate::debug!(
                    "job_failed",
                    "cmd={} error={}",
                    quote(&job.describe),
                    quote(&out.error_text())
                );
            }
            done.push((step, out));
        }
        done
    }

    /// Kills every running call; returns what they were for.
    pub fn kill_all(&mut self) -> Vec<S> {
        std::mem::take(&mut self.running)
            .into_iter()
            .map(|(mut job, step)| {
                crate::debug!("job_abandoned", "step={step:?}");
                job.kill();
                step
            })
            .collect()
    }

    /// Whether any call runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Whether a call matching `pred` runs.
    pub fn any(&self, pred: impl Fn(&S) -> bool) -> bool {
        self.running.iter().any(|(_, s)| pred(s))
    }
}

/// `docker run ...`: a command line for logs.
pub fn describe(cmd: &Command) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
}

/// Logs a failed call under `event` (a failure that changes nothing else).
pub fn log_failure(event: &str, out: &JobOutput) {
    if !out.success {
        crate::warn!(event, "error={}", quote(&out.error_text()));
    }
}

fn read_all(f: &mut File) -> String {
    let mut out = Vec::new();
    if f.seek(SeekFrom::Start(0)).is_ok() {
        let _ = f.take(MAX_OUTPUT).read_to_end(&mut out);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wait(job: &mut Job) -> JobOutput {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(out) = job.poll(Instant::now()) {
                return out;
            }
            assert!(Instant::now() < end, "job did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn captures_stdout_stderr_and_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let far = Instant::now() + Duration::from_secs(30);
        let mut job = Job::spawn(cmd, "sh".into(), far).expect("spawn");
        let out = wait(&mut job);
        assert!(!out.success);
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err");
        assert_eq!(out.error_text(), "err");
    }

    #[test]
    fn a_job_past_its_deadline_is_killed() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut job = Job::spawn(cmd, "sleep".into(), Instant::now()).expect("spawn");
        let out = wait(&mut job);
        assert!(out.timed_out);
        assert!(!out.success);
        assert_eq!(out.error_text(), "timed out");
    }

    #[test]
    fn large_output_does_not_block_the_command() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "head -c 300000 /dev/zero | tr '\\0' x"]);
        let far = Instant::now() + Duration::from_secs(30);
        let mut job = Job::spawn(cmd, "sh".into(), far).expect("spawn");
        let out = wait(&mut job);
        assert!(out.success);
        assert_eq!(out.stdout.len() as u64, MAX_OUTPUT);
    }
}
