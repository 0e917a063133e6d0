//! Process plumbing shared by every role: logging, signals, sd_notify, listeners (bound or
//! inherited through socket activation), privileges.

pub mod activation;
pub mod log;
pub mod net;
pub mod notify;
pub mod privilege;
pub mod signals;
