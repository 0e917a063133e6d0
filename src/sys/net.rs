//! Listening sockets, bound the same way by every role.

use std::io;
use std::net::{SocketAddr, TcpListener};

/// Binds a non-blocking, close-on-exec listener with SO_REUSEADDR and the deepest accept queue
/// the kernel allows (std's is 128: a burst of thousands of connects, or the moment an LB child
/// is being replaced, would otherwise meet SYN retransmits instead of a queue).
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
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
}
