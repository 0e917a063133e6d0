//! goloadbalancer: a non-async load-balancer daemon (supervisor, LB children, workers).

pub mod config;
pub mod evloop;
pub mod http;
pub mod proxy;
pub mod runtime;
pub mod supervisor;
pub mod sys;
pub mod worker;
