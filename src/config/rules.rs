//! Value rules: each key's own range (from the tables in `schema.rs`), then rules between keys
//! (port ranges, autoscale bounds, `max-request-line <= max-header-bytes`). Shared by the
//! loader and by `Config::validate` / `ProxySettings::validate` for values built in code.
//!
//! The first broken rule is reported. The order is part of the behaviour (it decides which of
//! two errors a file gets): top-level keys, then the LB settings with their rule between keys,
//! then the autoscale keys, then the rules that span sections.

use super::schema::{Autoscale, Config, ProxySettings, RuntimeKind};
use super::table::Section;

/// A value that breaks a rule: the key it is reported under (dotted for `autoscale.*`),
/// why, and the other keys involved (a rule between keys is reported at one of them).
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// The key the rule is about.
    pub key: String,
    /// What is wrong, e.g. `must be between 0 and 100, got 120`.
    pub message: String,
    /// Other keys the rule involves, in order of preference for reporting.
    pub related: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl Config {
    /// Checks every value rule (ranges, port ranges, autoscale bounds): the same checks
    /// `load` applies, for configurations built in code.
    pub fn validate(&self) -> Result<(), Violation> {
        keys_in_range("", self)?;
        self.proxy.validate()?;
        keys_in_range("autoscale.", &self.autoscale)?;
        autoscale_bounds(self)?;
        keys_in_range("swarm.", &self.swarm)?;
        swarm_keys(self)?;
        port_ranges(self)
    }
}

impl ProxySettings {
    /// Checks every value rule of the LB settings (see `Config::validate`).
    pub fn validate(&self) -> Result<(), Violation> {
        keys_in_range("", self)?;
        let p = self;
        between_keys(
            "max-request-line",
            &["max-header-bytes"],
            p.max_request_line <= p.max_header_bytes,
            || {
                format!(
                    "must not exceed max-header-bytes ({}), the head it is part of, got {}",
                    p.max_header_bytes, p.max_request_line
                )
            },
        )
    }
}

/// Each key's own rule from its table, in table order; `prefix` names the block in the
/// reported key (`autoscale.`).
fn keys_in_range<S: Section>(prefix: &str, section: &S) -> Result<(), Violation> {
    for key in S::KEYS {
        (key.check)(section).map_err(|message| Violation {
            key: format!("{prefix}{}", key.name),
            message,
            related: Vec::new(),
        })?;
    }
    Ok(())
}

/// A rule between `key` and `related` keys (reported at `key`, or at a related key when
/// `key` is not written in the file).
fn between_keys(
    key: &str,
    related: &[&str],
    ok: bool,
    message: impl FnOnce() -> String,
) -> Result<(), Violation> {
    if ok {
        return Ok(());
    }
    Err(Violation {
        key: key.to_string(),
        message: message(),
        related: related.iter().map(|s| s.to_string()).collect(),
    })
}

/// `autoscale.min <= autoscale.max`, and `worker` within them when autoscaling is on.
fn autoscale_bounds(c: &Config) -> Result<(), Violation> {
    let a: &Autoscale = &c.autoscale;
    between_keys("autoscale.max", &["autoscale.min"], a.min <= a.max, || {
        format!("must be at least autoscale.min ({}), got {}", a.min, a.max)
    })?;
    if !a.enabled {
        return Ok(());
    }
    between_keys(
        "worker",
        &["autoscale.min", "autoscale.max", "autoscale"],
        a.min <= c.worker && c.worker <= a.max,
        || {
            format!(
                "must be between autoscale.min ({}) and autoscale.max ({}) when autoscale is enabled, got {}",
                a.min, a.max, c.worker
            )
        },
    )
}

/// `runtime: swarm` takes no key of the local runtimes: a task's address is its node's
/// (`docker node inspect`), so `worker-address` would be silently ignored.
fn swarm_keys(c: &Config) -> Result<(), Violation> {
    if c.runtime != RuntimeKind::Swarm {
        return Ok(());
    }
    let default = Config::default();
    between_keys(
        "worker-address",
        &["runtime"],
        c.worker_address == default.worker_address,
        || {
            format!(
                "is a process and docker key: with runtime: swarm each worker is reached at its node's address (remove worker-address, got {})",
                c.worker_address
            )
        },
    )
}

/// Port ranges: each must fit below 65536 and none may overlap another. The check is by
/// number regardless of address: with the default 0.0.0.0 listener any overlap collides,
/// and keeping ranges apart everywhere is simpler to reason about.
fn port_ranges(c: &Config) -> Result<(), Violation> {
    let lb = c.lb_ports();
    let wk = c.worker_ports();
    let admin = (u32::from(c.admin_port), u32::from(c.admin_port));
    between_keys("load-balancer-port", &["pool"], lb.1 <= 65535, || {
        format!(
            "{} load balancer ports from {} would end at {}, past 65535",
            c.pool, c.load_balancer_port, lb.1
        )
    })?;
    let workers = c.worker_slots();
    between_keys(
        "worker-port",
        &["worker", "autoscale.max"],
        wk.1 <= 65535,
        || {
            format!(
                "{workers} worker ports from {} would end at {}, past 65535",
                c.worker_port, wk.1
            )
        },
    )?;
    between_keys(
        "worker-port",
        &["load-balancer-port", "worker", "pool", "autoscale.max"],
        !overlap(lb, wk),
        || {
            format!(
                "worker ports {} overlap load balancer ports {}",
                range_text(wk),
                range_text(lb)
            )
        },
    )?;
    between_keys(
        "admin-port",
        &["load-balancer-port", "pool"],
        !overlap(admin, lb),
        || {
            format!(
                "{} is one of the load balancer ports {}",
                c.admin_port,
                range_text(lb)
            )
        },
    )?;
    between_keys(
        "admin-port",
        &["worker-port", "worker", "autoscale.max"],
        !overlap(admin, wk),
        || {
            format!(
                "{} is one of the worker ports {}",
                c.admin_port,
                range_text(wk)
            )
        },
    )
}

fn overlap(a: (u32, u32), b: (u32, u32)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

fn range_text((lo, hi): (u32, u32)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    fn check(c: &Config) -> Result<(), Violation> {
        c.validate()
    }

    fn violation(c: &Config) -> (String, String) {
        let v = check(c).expect_err("should be invalid");
        (v.key, v.message)
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(check(&Config::default()), Ok(()));
        assert_eq!(ProxySettings::default().validate(), Ok(()));
    }

    #[test]
    fn failure_range() {
        let mut c = Config::default();
        c.failure = 120.0;
        assert_eq!(
            violation(&c),
            (
                "failure".into(),
                "must be between 0 and 100, got 120".into()
            )
        );
        c.failure = f64::NAN;
        assert_eq!(violation(&c).0, "failure");
        c.failure = 100.0;
        assert_eq!(check(&c), Ok(()));
    }

    #[test]
    fn first_broken_rule_stops_the_check() {
        // A pool too large for a port count must be reported, not reach the port arithmetic.
        let mut c = Config::default();
        c.pool = 1 << 32;
        assert_eq!(
            violation(&c),
            (
                "pool".into(),
                "must be between 1 and 1024, got 4294967296".into()
            )
        );
        // Rules between keys of the LB settings come before the autoscale keys' own rules.
        c.pool = 2;
        c.proxy.max_request_line = 40_000;
        c.autoscale.step = 0;
        assert_eq!(violation(&c).0, "max-request-line");
    }

    #[test]
    fn ports_must_fit() {
        let mut c = Config::default();
        c.load_balancer_port = 65535;
        assert_eq!(
            violation(&c),
            (
                "load-balancer-port".into(),
                "2 load balancer ports from 65535 would end at 65536, past 65535".into()
            )
        );
        c.shared_port = true;
        assert_eq!(check(&c), Ok(()));
        c.worker_port = 65534;
        assert_eq!(
            violation(&c),
            (
                "worker-port".into(),
                "3 worker ports from 65534 would end at 65536, past 65535".into()
            )
        );
        c.worker_port = 0;
        assert_eq!(
            violation(&c),
            (
                "worker-port".into(),
                "must be between 1 and 65535, got 0".into()
            )
        );
    }

    #[test]
    fn overlaps() {
        let mut c = Config::default();
        c.worker_port = 5051;
        assert_eq!(
            violation(&c),
            (
                "worker-port".into(),
                "worker ports 5051-5053 overlap load balancer ports 5050-5051".into()
            )
        );
        // With one shared LB port, 5051 is free for workers.
        c.shared_port = true;
        assert_eq!(check(&c), Ok(()));
        c.admin_port = 5052;
        assert_eq!(
            violation(&c),
            (
                "admin-port".into(),
                "5052 is one of the worker ports 5051-5053".into()
            )
        );
        c.admin_port = 5050;
        assert_eq!(
            violation(&c),
            (
                "admin-port".into(),
                "5050 is one of the load balancer ports 5050".into()
            )
        );
    }

    #[test]
    fn worker_range_grows_with_autoscale_max() {
        let mut c = Config::default();
        c.worker_port = 5000;
        c.autoscale.max = 60;
        assert_eq!(
            check(&c),
            Ok(()),
            "autoscale off: only `worker` ports count"
        );
        c.autoscale.enabled = true;
        assert_eq!(
            violation(&c),
            (
                "worker-port".into(),
                "worker ports 5000-5059 overlap load balancer ports 5050-5051".into()
            )
        );
    }

    #[test]
    fn autoscale_bounds() {
        let mut c = Config::default();
        c.autoscale.enabled = true;
        c.autoscale.min = 4;
        assert_eq!(
            violation(&c),
            (
                "worker".into(),
                "must be between autoscale.min (4) and autoscale.max (10) when autoscale is enabled, got 3"
                    .into()
            )
        );
        c.autoscale.min = 11;
        assert_eq!(
            violation(&c),
            (
                "autoscale.max".into(),
                "must be at least autoscale.min (11), got 10".into()
            )
        );
        c.autoscale.min = 1;
        c.autoscale.step = 0;
        assert_eq!(
            violation(&c),
            (
                "autoscale.step".into(),
                "must be between 1 and 10000, got 0".into()
            )
        );
    }

    #[test]
    fn proxy_rules() {
        let mut p = ProxySettings::default();
        p.health_rise = 0;
        assert_eq!(
            p.validate().map_err(|v| (v.key, v.message)),
            Err((
                "health-rise".into(),
                "must be between 1 and 1000, got 0".into()
            ))
        );
        let mut p = ProxySettings::default();
        p.health_path = "healthz".into();
        assert_eq!(p.validate().unwrap_err().key, "health-path");
        let mut p = ProxySettings::default();
        p.max_request_line = 40_000;
        assert_eq!(
            p.validate().map_err(|v| (v.key, v.message)),
            Err((
                "max-request-line".into(),
                "must not exceed max-header-bytes (32768), the head it is part of, got 40000"
                    .into()
            ))
        );
        let mut p = ProxySettings::default();
        p.connect_timeout_ms = 0;
        assert_eq!(p.validate().unwrap_err().key, "connect-timeout-ms");
    }

    #[test]
    fn instance_names_are_container_safe() {
        let mut c = Config::default();
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(64)] {
            c.instance = bad.to_string();
            assert_eq!(violation(&c).0, "instance", "{bad:?}");
        }
        c.instance = "glb-test_1.a".into();
        assert_eq!(check(&c), Ok(()));
    }
}
