//! A helper command (a docker CLI call) run as a child process the supervisor's loop polls.
//! Its stdout and stderr go to unlinked temp files, read once it exits: a chatty command can
//! never block on a full pipe, and the loop never blocks on it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Instant;

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
