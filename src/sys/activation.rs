//! systemd socket activation without libsystemd: the listening sockets a `.socket` unit (or a
//! parent using the same convention) passed as fds 3.. with `LISTEN_PID`, `LISTEN_FDS` and
//! `LISTEN_FDNAMES`. The variables are read once and removed, so no child sees them.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The first passed fd (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;
/// More passed fds than this is a broken environment, not a socket unit.
const MAX_FDS: usize = 1024;

/// What the `LISTEN_*` variables say.
#[derive(Debug, PartialEq, Eq)]
pub enum Passed {
    /// No `LISTEN_FDS` (not socket-activated).
    Nothing,
    /// `LISTEN_PID` names another process: the variables were inherited, the fds are not ours.
    OtherPid(String),
    /// Fds `3..3+n`, each with its name (`unknown` when `LISTEN_FDNAMES` does not list n names).
    Fds(Vec<(RawFd, String)>),
}

/// Reads the three variables' values for the process `me`. `Err` for values that make no
/// sense (`LISTEN_FDS=x`, more than 1024 fds).
pub fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    me: u32,
) -> Result<Passed, String> {
    let Some(count) = listen_fds else {
        return Ok(Passed::Nothing);
    };
    // Without LISTEN_PID the fds cannot be proven ours (sd_listen_fds insists on it too).
    let pid = listen_pid.unwrap_or("").trim();
    if pid.parse::<u32>().ok() != Some(me) {
        return Ok(Passed::OtherPid(pid.to_string()));
    }
    let n: usize = count
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS is not a number: {count:?}"))?;
    if n > MAX_FDS {
        return Err(format!("LISTEN_FDS={n}: more than {MAX_FDS}"));
    }
    let names: Vec<&str> = listen_fdnames
        .map(|s| s.split(':').collect())
        .unwrap_or_default();
    let names_fit = names.len() == n;
    Ok(Passed::Fds(
        (0..n)
            .map(|i| {
                let name = if names_fit { names[i] } else { "unknown" };
                (FIRST_FD + i as RawFd, name.to_string())
            })
            .collect(),
    ))
}

/// One passed fd, now owned by this process and close-on-exec.
#[derive(Debug)]
pub struct PassedFd {
    /// The fd.
    pub fd: OwnedFd,
    /// Its `FileDescriptorName=` (or `unknown`).
    pub name: String,
}

/// Takes the passed fds of this process: reads and removes `LISTEN_PID`, `LISTEN_FDS` and
/// `LISTEN_FDNAMES`, marks each fd close-on-exec (so no worker or docker CLI inherits it) and
/// returns them. Call once, first thing, while the process has one thread (it edits the
/// environment). Fds that are not open are skipped, with the reason in the second list.
pub fn take_passed() -> (Vec<PassedFd>, Vec<String>) {
    let var = |k: &str| std::env::var(k).ok();
    let parsed = parse(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    // SAFETY: called at start, before any thread exists (see above).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let fds = match parsed {
        Ok(Passed::Fds(fds)) => fds,
        Ok(Passed::Nothing) => return (Vec::new(), Vec::new()),
        Ok(Passed::OtherPid(pid)) => {
            return (
                Vec::new(),
                vec![format!("LISTEN_PID={pid} is not this process: ignored")],
            );
        }
        Err(e) => return (Vec::new(), vec![e]),
    };
    let mut taken = Vec::new();
    let mut skipped = Vec::new();
    for (raw, name) in fds {
        use nix::fcntl::{F_GETFD, F_SETFD, FdFlag, fcntl};
        // SAFETY: only flags of the fd are read or set; an fd that is not open fails with
        // EBADF and is skipped before anything takes ownership of it.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        if let Err(e) = fcntl(borrowed, F_GETFD) {
            skipped.push(format!("fd {raw} ({name}): {e}"));
            continue;
        }
        if let Err(e) = fcntl(borrowed, F_SETFD(FdFlag::FD_CLOEXEC)) {
            skipped.push(format!("fd {raw} ({name}): close-on-exec: {e}"));
            continue;
        }
        // SAFETY: the fd is open (checked above) and was passed to this process for it alone;
        // nothing else in this process refers to it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        taken.push(PassedFd { fd, name });
    }
    (taken, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(list: &[(RawFd, &str)]) -> Passed {
        Passed::Fds(list.iter().map(|&(f, n)| (f, n.to_string())).collect())
    }

    #[test]
    fn nothing_without_listen_fds() {
        assert_eq!(parse(None, None, None, 7), Ok(Passed::Nothing));
        assert_eq!(parse(Some("7"), None, Some("a"), 7), Ok(Passed::Nothing));
    }

    #[test]
    fn fds_from_three_with_their_names() {
        assert_eq!(
            parse(Some("7"), Some("2"), Some("lb:admin"), 7),
            Ok(fds(&[(3, "lb"), (4, "admin")]))
        );
        assert_eq!(parse(Some(" 7\n"), Some("0"), None, 7), Ok(fds(&[])));
    }

    #[test]
    fn names_that_do_not_fit_are_unknown() {
        assert_eq!(
            parse(Some("7"), Some("2"), Some("only-one"), 7),
            Ok(fds(&[(3, "unknown"), (4, "unknown")]))
        );
        assert_eq!(
            parse(Some("7"), Some("1"), None, 7),
            Ok(fds(&[(3, "unknown")]))
        );
    }

    #[test]
    fn another_pid_or_none_means_not_ours() {
        assert_eq!(
            parse(Some("8"), Some("2"), None, 7),
            Ok(Passed::OtherPid("8".into()))
        );
        assert_eq!(
            parse(None, Some("2"), None, 7),
            Ok(Passed::OtherPid(String::new()))
        );
        assert_eq!(
            parse(Some("x"), Some("2"), None, 7),
            Ok(Passed::OtherPid("x".into()))
        );
    }

    #[test]
    fn nonsense_counts_are_errors() {
        assert!(parse(Some("7"), Some("two"), None, 7).is_err());
        assert!(parse(Some("7"), Some("-1"), None, 7).is_err());
        assert!(parse(Some("7"), Some("5000"), None, 7).is_err());
    }
}
