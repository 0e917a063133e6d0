//! Process plumbing shared by every role: logging, signals, sd_notify.

pub mod inherit;
pub mod log;
pub mod net;
pub mod notify;
pub mod signals;
