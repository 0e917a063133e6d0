//! Listening sockets, bound the same way by every role, and the sockets this process
//! inherited (systemd socket activation): `listener_for(addr)` is the one way the supervisor
//! gets a listener, inherited when one matches, else bound.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use super::activation::PassedFd;

/// An inherited listening socket, by the address it is bound to.
#[derive(Debug)]
struct Inherited {
    addr: SocketAddr,
    name: String,
    socket: TcpListener,
    /// Handed out at least once by `listener_for`.
    claimed: bool,
}

/// The inherited listeners. The originals stay here for the process's life (a copy is handed
/// out), so a port a reload closes and a later reload asks for again is found again: systemd
/// keeps its own copy bound, so binding it ourselves would fail with EADDRINUSE.
static INHERITED: Mutex<Vec<Inherited>> = Mutex::new(Vec::new());

fn inherited() -> std::sync::MutexGuard<'static, Vec<Inherited>> {
    INHERITED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The listener for `addr`: a copy of the inherited socket bound to exactly that address if
/// there is one (logged as `listener_inherited`), else a new one from [`bind_listener`].
pub fn listener_for(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut list = inherited();
    if let Some(entry) = list.iter_mut().find(|e| e.addr == addr) {
        let copy = entry.socket.try_clone()?;
        if !entry.claimed {
            crate::info!("listener_inherited", "addr={addr} name={}", entry.name);
        }
        entry.claimed = true;
        return Ok(copy);
    }
    drop(list);
    bind_listener(addr)
}

/// Keeps every passed fd that is a listening TCP socket for [`listener_for`] (made
/// non-blocking, with the deepest accept queue); closes the others. Returns one line per fd
/// closed, saying why.
pub fn adopt_passed(passed: Vec<PassedFd>) -> Vec<String> {
    let mut rejected = Vec::new();
    let mut list = inherited();
    for p in passed {
        match listening_tcp(&p.fd) {
            Ok(addr) => {
                let socket = TcpListener::from(p.fd);
                if let Err(e) = socket.set_nonblocking(true) {
                    rejected.push(format!("{} ({addr}): non-blocking: {e}", p.name));
                    continue;
                }
                // listen() again only deepens the queue the socket unit gave it.
                let _ = nix::sys::socket::listen(&socket, nix::sys::socket::Backlog::MAXCONN);
                list.push(Inherited {
                    addr,
                    name: p.name,
                    socket,
                    claimed: false,
                });
            }
            Err(why) => rejected.push(format!("{}: {why}", p.name)),
        }
    }
    rejected
}

/// Closes the inherited sockets no [`listener_for`] asked for (the socket unit lists an
/// address the config no longer has); returns their addresses and names.
pub fn close_unclaimed() -> Vec<String> {
    let mut list = inherited();
    let mut closed = Vec::new();
    list.retain(|e| {
        if !e.claimed {
            closed.push(format!("{}({})", e.addr, e.name));
        }
        e.claimed
    });
    closed
}

/// The address of a listening TCP socket; Err says what else the fd is.
fn listening_tcp(fd: &OwnedFd) -> Result<SocketAddr, String> {
    use nix::sys::socket::{SockType, SockaddrStorage, getsockname, getsockopt, sockopt};
    let kind = getsockopt(fd, sockopt::SockType).map_err(|e| format!("not a socket: {e}"))?;
    if kind != SockType::Stream {
        return Err(format!("a {kind:?} socket, not a stream"));
    }
    if !getsockopt(fd, sockopt::AcceptConn).map_err(|e| e.to_string())? {
        return Err("a stream socket that is not listening".into());
    }
    use std::os::fd::AsRawFd;
    let raw = fd.as_fd().as_raw_fd();
    let addr: SockaddrStorage = getsockname(raw).map_err(|e| e.to_string())?;
    if let Some(v4) = addr.as_sockaddr_in() {
        Ok(SocketAddr::V4((*v4).into()))
    } else if let Some(v6) = addr.as_sockaddr_in6() {
        Ok(SocketAddr::V6((*v6).into()))
    } else {
        Err(format!("not an IP socket ({addr})"))
    }
}

/// Binds a non-blocking, close-on-exec listener with SO_REUSEADDR and the deepest accept queue
/// the kernel allows (std's is 128: a burst of thousands of connects, or the moment an LB child
/// is being replaced, would otherwise meet SYN retransmits instead of a queue).
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    bind_with(addr, false)
}

/// Another listening socket on `first`'s address, in one SO_REUSEPORT group with it: the
/// kernel spreads new connections over the group's members by a hash of the client's address
/// and port, so each LB child of a shared port accepts from its own queue (no thundering
/// herd, an even spread). `first` gets SO_REUSEPORT now; Linux lets a listening socket join
/// this way, including one systemd bound (same uid).
pub fn join_port_group(first: &TcpListener) -> io::Result<TcpListener> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(first, sockopt::ReusePort, &true)?;
    bind_with(first.local_addr()?, true)
}

/// Takes a member out of its port group at once (shutdown unhashes it, for every process
/// holding it: no new connection is queued on it), then closes our copy. Connections still
/// queued and not accepted are reset, or moved to another member when the host sets
/// `net.ipv4.tcp_migrate_req=1`.
pub fn leave_port_group(member: TcpListener) {
    use nix::sys::socket::{Shutdown, shutdown};
    use std::os::fd::AsRawFd;
    let _ = shutdown(member.as_raw_fd(), Shutdown::Read);
}

fn bind_with(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, listen,
        setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuse_port {
        setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    match addr {
        SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?,
    }
    // The kernel caps the backlog at net.core.somaxconn.
    listen(&fd, Backlog::MAXCONN)?;
    Ok(TcpListener::from(fd))
}

#[cfg(test)]
mod tests {
    #[test]
    fn binds_a_nonblocking_listener() {
        let l = super::bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let err = l.accept().expect_err("no pending connection");
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_port_group_spreads_connections_and_a_member_leaves_at_once() {
        let first = super::bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let second = super::join_port_group(&first).expect("join");
        let addr = first.local_addr().expect("addr");
        assert_eq!(second.local_addr().expect("addr"), addr);
        let accepted = |l: &std::net::TcpListener| std::iter::from_fn(|| l.accept().ok()).count();
        let clients: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (a, b) = (accepted(&first), accepted(&second));
        assert_eq!(a + b, clients.len());
        assert!(a > 0 && b > 0, "both members get connections: {a}/{b}");
        super::leave_port_group(second);
        let more: Vec<_> = (0..16)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(
            accepted(&first),
            more.len(),
            "the one left takes every new one"
        );
    }
}
