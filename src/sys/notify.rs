//! sd_notify over a plain unix datagram socket (NOTIFY_SOCKET), no libsystemd.
//! Every call is a no-op when NOTIFY_SOCKET is unset (not started by systemd), and in any
//! process other than the one that first used it: a forked LB child shares the supervisor's
//! memory and environment but must never speak for the service (NotifyAccess=main).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Pid of the process allowed to notify: the first one that called [`notify`] (0 = not yet).
static OWNER_PID: AtomicU32 = AtomicU32::new(0);

/// Sends one notification (`READY=1`, `STATUS=...`, several lines allowed) to NOTIFY_SOCKET.
/// Returns Ok(false) when there is no socket to notify, or when called from a process forked
/// after the first notification (an LB child).
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let me = std::process::id();
    let owner = match OWNER_PID.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => me,
        Err(first) => first,
    };
    if owner != me {
        return Ok(false);
    }
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract namespace socket: '@' stands for the leading NUL byte.
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}"));
}

/// `RELOADING=1` with `MONOTONIC_USEC` (required by Type=notify-reload semantics).
pub fn reloading() {
    send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

/// `STOPPING=1`.
pub fn stopping() {
    send("STOPPING=1");
}

/// `STATUS=...`: the line `systemctl status` shows.
pub fn status(status: &str) {
    send(&format!("STATUS={status}"));
}

/// `EXTEND_TIMEOUT_USEC=`: asks systemd to wait `d` longer before the timeout of the current
/// phase (start, stop) fires, e.g. at STOPPING=1 for a drain-timeout-ms above the unit's
/// TimeoutStopSec. Must be repeated before `d` runs out to extend again (systemd >= 236).
pub fn extend_timeout(d: Duration) {
    send(&format!("EXTEND_TIMEOUT_USEC={}", d.as_micros()));
}

/// `WATCHDOG=1`: the supervisor's loop is alive.
pub fn watchdog() {
    send("WATCHDOG=1");
}

/// How often to send WATCHDOG=1: half of WATCHDOG_USEC, when set for this pid.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] on given values: systemd sets WATCHDOG_PID to the main pid, so a
/// process that inherited the variables (a child) gets None.
fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok()? != me
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Removes NOTIFY_SOCKET and WATCHDOG_* from the environment `cmd` will run with, so spawned
/// programs (worker processes, the docker CLI) never talk to systemd as if they were the main
/// process. Forked LB children need nothing: notify() is a no-op in them once the supervisor
/// has sent its first notification (do that before forking, e.g. `status("starting")`).
pub fn forget_for_children(cmd: &mut std::process::Command) {
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
}

fn send(state: &str) {
    if let Err(e) = notify(state) {
        crate::warn!(
            "sd_notify_failed",
            "error={}",
            crate::sys::log::quote(&e.to_string())
        );
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd expects in MONOTONIC_USEC.
pub fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_the_socket_in_notify_socket() {
        let dir = std::env::temp_dir().join(format!("glb-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).expect("bind");
        // SAFETY: this unit test is the only one touching NOTIFY_SOCKET in this binary.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(notify("READY=1").expect("notify"));
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec_for_the_main_pid_only() {
        let half = Some(Duration::from_millis(15_000));
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("42"), 42),
            half
        );
        assert_eq!(watchdog_interval_from(Some("30000000"), None, 42), half);
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("41"), 42),
            None
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("x"), 42),
            None
        );
        assert_eq!(watchdog_interval_from(Some("0"), Some("42"), 42), None);
        assert_eq!(watchdog_interval_from(Some("-5"), None, 42), None);
        assert_eq!(watchdog_interval_from(None, Some("42"), 42), None);
    }

    #[test]
    fn monotonic_usec_moves_forward() {
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(2));
        let b = monotonic_usec();
        assert!(a > 0 && b > a, "{a} then {b}");
    }
}
