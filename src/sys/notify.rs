//! sd_notify over a plain unix datagram socket (NOTIFY_SOCKET), no libsystemd.
//! Implemented in the systemd issue.
