//! Listeners handed over by a previous supervisor across exec (the in-place upgrade, SIGUSR2):
//! the old one clears FD_CLOEXEC on its listening sockets and names them in
//! `GLB_INHERIT_FDS=<fd>=<addr>,...`; the new one takes them here, before anything else, and
//! [`take`] hands out the one bound to an address (the caller binds only when there is none).
//! Kept apart from systemd's `LISTEN_FDS` parsing so both can feed one "inherited, else
//! bound" lookup.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// The environment variable naming the inherited listeners.
pub const ENV: &str = "GLB_INHERIT_FDS";

/// Inherited listeners not taken yet.
static INHERITED: Mutex<Vec<(SocketAddr, TcpListener)>> = Mutex::new(Vec::new());

fn inherited() -> std::sync::MutexGuard<'static, Vec<(SocketAddr, TcpListener)>> {
    INHERITED.lock().unwrap_or_else(|e| e.into_inner())
}

/// `fd=addr,fd=addr`, for [`ENV`].
pub fn encode(listeners: &[(RawFd, SocketAddr)]) -> String {
    listeners
        .iter()
        .map(|(fd, addr)| format!("{fd}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses [`ENV`]'s value; entries that do not parse are returned as errors.
fn decode(text: &str) -> (Vec<(RawFd, SocketAddr)>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for item in text.split(',').filter(|i| !i.is_empty()) {
        let parsed = item
            .split_once('=')
            .and_then(|(fd, addr)| Some((fd.parse().ok()?, addr.parse().ok()?)));
        match parsed {
            Some(p) => ok.push(p),
            None => bad.push(format!("{item}: not <fd>=<addr>")),
        }
    }
    (ok, bad)
}

/// Takes the listeners named in [`ENV`] (close-on-exec again, non-blocking) and removes the
/// variable. An fd that is not a listening socket bound to its address is not used. Call
/// first thing, while the process has one thread. Returns one line per problem.
pub fn take_from_env() -> Vec<String> {
    let Some(text) = std::env::var_os(ENV) else {
        return Vec::new();
    };
    // SAFETY: called at start, single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::remove_var(ENV) };
    let (entries, mut problems) = decode(&text.to_string_lossy());
    let mut list = inherited();
    for (fd, addr) in entries {
        if fd < 3 || nix::fcntl::fcntl(fd_ref(fd), nix::fcntl::FcntlArg::F_GETFD).is_err() {
            problems.push(format!("fd {fd} ({addr}): not open"));
            continue;
        }
        // SAFETY: the fd is open (checked above) and was handed to us to own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        match check(&owned, addr) {
            Ok(()) => list.push((addr, TcpListener::from(owned))),
            Err(e) => problems.push(format!("fd {fd} ({addr}): {e}")),
        }
    }
    problems
}

/// A borrowed view of a raw fd for fcntl.
fn fd_ref(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used for an fcntl probe of an fd number; fcntl on a closed fd is EBADF.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// The fd is a listening socket bound to `addr`; made close-on-exec and non-blocking.
fn check(fd: &OwnedFd, addr: SocketAddr) -> Result<(), String> {
    use nix::sys::socket::{SockaddrStorage, getsockname, getsockopt, sockopt};
    if !getsockopt(fd, sockopt::AcceptConn).map_err(|e| format!("not a socket: {e}"))? {
        return Err("not listening".into());
    }
    let bound: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(|e| e.to_string())?;
    let bound = bound
        .as_sockaddr_in()
        .map(|v4| SocketAddr::V4((*v4).into()))
        .or_else(|| {
            bound
                .as_sockaddr_in6()
                .map(|v6| SocketAddr::V6((*v6).into()))
        });
    if bound != Some(addr) {
        return Err(format!("bound to {bound:?}"));
    }
    set_cloexec(fd.as_fd(), true).map_err(|e| e.to_string())?;
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// The inherited listener bound to `addr`, if there is one (each is handed out once).
pub fn take(addr: SocketAddr) -> Option<TcpListener> {
    let mut list = inherited();
    let k = list.iter().position(|(a, _)| *a == addr)?;
    crate::info!("listener_inherited", "addr={addr} from=upgrade");
    Some(list.remove(k).1)
}

/// Closes the inherited listeners nobody took; returns their addresses.
pub fn close_rest() -> Vec<SocketAddr> {
    std::mem::take(&mut *inherited())
        .into_iter()
        .map(|(a, _)| a)
        .collect()
}

/// Sets or clears FD_CLOEXEC.
pub fn set_cloexec(fd: std::os::fd::BorrowedFd<'_>, on: bool) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD)?);
    let flags = if on {
        flags | FdFlag::FD_CLOEXEC
    } else {
        flags - FdFlag::FD_CLOEXEC
    };
    fcntl(fd, FcntlArg::F_SETFD(flags)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_fd_address_pairs() {
        let pairs = vec![
            (5, "127.0.0.1:5050".parse().expect("addr")),
            (6, "[::1]:9000".parse().expect("addr")),
        ];
        let text = encode(&pairs);
        assert_eq!(text, "5=127.0.0.1:5050,6=[::1]:9000");
        let (ok, bad) = decode(&format!("{text},x=1,7=nope"));
        assert_eq!(ok, pairs);
        assert_eq!(bad.len(), 2);
    }

    #[test]
    fn a_listener_is_checked_against_its_address() {
        let l = crate::sys::net::bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = l.local_addr().expect("addr");
        let fd: OwnedFd = l.into();
        assert!(check(&fd, addr).is_ok());
        let other: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert!(check(&fd, other).is_err());
    }
}
