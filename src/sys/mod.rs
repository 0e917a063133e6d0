//! Process plumbing shared by every role: logging, signals, sd_notify, listeners (bound or
//! inherited through socket activation or an upgrade), privileges.

pub mod activation;
pub mod inherit;
pub mod log;
pub mod net;
pub mod notify;
pub mod privilege;
pub mod signals;
