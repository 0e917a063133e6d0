//! Value rules: ranges of single keys, then rules between keys (port ranges, autoscale
//! bounds). Shared by the loader, `Config::validate` and `ProxySettings::apply_override`.

use super::{Config, ProxySettings, Violation};

/// Longest timeout accepted anywhere (one week): keeps `Instant + Duration` far from overflow.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most LB children.
pub const MAX_POOL: usize = 1024;
/// Most workers (`worker`, `autoscale.max`).
pub const MAX_WORKERS: usize = 10_000;
/// Longest mean delay of /api/v1/hello (one hour).
pub const MAX_AVG_DELAY_MS: u64 = 3_600_000;

/// Collects the first broken rule. `only` restricts checking to one key's own rules (a
/// command-line override is checked alone; rules between keys wait for the whole set).
pub struct Rules<'a> {
    only: Option<&'a str>,
    found: Option<Violation>,
}

impl<'a> Rules<'a> {
    pub fn new(only: Option<&'a str>) -> Rules<'a> {
        Rules { only, found: None }
    }

    pub fn finish(self) -> Result<(), Violation> {
        match self.found {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// A rule about `key` alone.
    fn check(&mut self, key: &str, ok: bool, message: impl FnOnce() -> String) {
        if self.found.is_some() || ok || self.only.is_some_and(|k| k != key) {
            return;
        }
        self.found = Some(Violation {
            key: key.to_string(),
            message: message(),
            related: Vec::new(),
        });
    }

    /// A rule between `key` and `related` keys (reported at `key`, or at a related key when
    /// `key` is not written in the file).
    fn cross(&mut self, key: &str, related: &[&str], ok: bool, message: impl FnOnce() -> String) {
        if self.found.is_some() || ok || self.only.is_some() {
            return;
        }
        self.found = Some(Violation {
            key: key.to_string(),
            message: message(),
            related: related.iter().map(|s| s.to_string()).collect(),
        });
    }

    fn between(&mut self, key: &str, v: u64, lo: u64, hi: u64) {
        self.check(key, (lo..=hi).contains(&v), || {
            format!("must be between {lo} and {hi}, got {v}")
        });
    }

    fn timeout(&mut self, key: &str, v: u64) {
        self.between(key, v, 1, MAX_TIMEOUT_MS);
    }

    /// Rules of the LB loop's settings.
    pub fn proxy(&mut self, p: &ProxySettings) {
        self.between("max-connections", p.max_connections as u64, 1, 1_000_000);
        self.timeout("header-timeout-ms", p.header_timeout_ms);
        self.timeout("idle-timeout-ms", p.idle_timeout_ms);
        self.timeout("connect-timeout-ms", p.connect_timeout_ms);
        self.timeout("response-timeout-ms", p.response_timeout_ms);
        self.timeout("tunnel-timeout-ms", p.tunnel_timeout_ms);
        self.between("max-request-line", p.max_request_line as u64, 16, 1 << 20);
        self.between("max-header-bytes", p.max_header_bytes as u64, 64, 1 << 20);
        self.between("max-headers", p.max_headers as u64, 1, 1024);
        self.between("retries", p.retries.into(), 0, 100);
        self.between(
            "upstream-pool-size",
            p.upstream_pool_size as u64,
            0,
            100_000,
        );
        let path = &p.health_path;
        self.check(
            "health-path",
            path.starts_with('/')
                && path.len() <= 1024
                && path.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            || {
                format!(
                    "must be a path starting with / without spaces or control characters (at most 1024 bytes), got {path:?}"
                )
            },
        );
        self.timeout("health-interval-ms", p.health_interval_ms);
        self.timeout("health-timeout-ms", p.health_timeout_ms);
        self.between("health-rise", p.health_rise.into(), 1, 1000);
        self.between("health-fall", p.health_fall.into(), 1, 1000);
        self.cross(
            "max-request-line",
            &["max-header-bytes"],
            p.max_request_line <= p.max_header_bytes,
            || {
                format!(
                    "must not exceed max-header-bytes ({}), the head it is part of, got {}",
                    p.max_header_bytes, p.max_request_line
                )
            },
        );
    }

    /// Rules of the whole file.
    pub fn config(&mut self, c: &Config) {
        let a = &c.autoscale;
        self.between("worker", c.worker as u64, 1, MAX_WORKERS as u64);
        self.between("pool", c.pool as u64, 1, MAX_POOL as u64);
        let stats = c.stats_dir.as_os_str();
        self.check(
            "stats-dir",
            !stats.is_empty() && !stats.as_encoded_bytes().contains(&0),
            || "must be a file path, got an empty string".to_string(),
        );
        self.between("avg-delay", c.avg_delay, 0, MAX_AVG_DELAY_MS);
        self.check("failure", (0.0..=100.0).contains(&c.failure), || {
            format!("must be between 0 and 100, got {}", c.failure)
        });
        self.between("load-balancer-port", c.load_balancer_port.into(), 1, 65535);
        self.between("worker-port", c.worker_port.into(), 1, 65535);
        let inst = &c.instance;
        self.check(
            "instance",
            !inst.is_empty()
                && inst.len() <= 63
                && inst.as_bytes()[0].is_ascii_alphanumeric()
                && inst
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
            || {
                format!(
                    "must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit (it names containers), got {inst:?}"
                )
            },
        );
        self.between("admin-port", c.admin_port.into(), 1, 65535);
        self.timeout("drain-timeout-ms", c.drain_timeout_ms);
        self.timeout("worker-start-timeout-ms", c.worker_start_timeout_ms);
        self.proxy(&c.proxy);

        self.between("autoscale.min", a.min as u64, 1, MAX_WORKERS as u64);
        self.between("autoscale.max", a.max as u64, 1, MAX_WORKERS as u64);
        self.check(
            "autoscale.target-inflight",
            a.target_inflight.is_finite() && a.target_inflight > 0.0 && a.target_inflight <= 1e9,
            || {
                format!(
                    "must be a number above 0 (at most 1000000000), got {}",
                    a.target_inflight
                )
            },
        );
        self.between(
            "autoscale.target-p90-ms",
            a.target_p90_ms,
            0,
            MAX_TIMEOUT_MS,
        );
        self.between("autoscale.breach-ms", a.breach_ms, 0, MAX_TIMEOUT_MS);
        self.between("autoscale.cooldown-ms", a.cooldown_ms, 0, MAX_TIMEOUT_MS);
        self.between("autoscale.step", a.step as u64, 1, MAX_WORKERS as u64);
        self.cross("autoscale.max", &["autoscale.min"], a.min <= a.max, || {
            format!("must be at least autoscale.min ({}), got {}", a.min, a.max)
        });
        if a.enabled {
            self.cross(
                "worker",
                &["autoscale.min", "autoscale.max", "autoscale"],
                a.min <= c.worker && c.worker <= a.max,
                || {
                    format!(
                        "must be between autoscale.min ({}) and autoscale.max ({}) when autoscale is enabled, got {}",
                        a.min, a.max, c.worker
                    )
                },
            );
        }

        // Port ranges: each must fit below 65536 and none may overlap another. The check is
        // by number regardless of address: with the default 0.0.0.0 listener any overlap
        // collides, and keeping ranges apart everywhere is simpler to reason about.
        let lb = c.lb_ports();
        let wk = c.worker_ports();
        let admin = (u32::from(c.admin_port), u32::from(c.admin_port));
        self.cross("load-balancer-port", &["pool"], lb.1 <= 65535, || {
            format!(
                "{} load balancer ports from {} would end at {}, past 65535",
                c.pool, c.load_balancer_port, lb.1
            )
        });
        let workers = c.worker_slots();
        self.cross(
            "worker-port",
            &["worker", "autoscale.max"],
            wk.1 <= 65535,
            || {
                format!(
                    "{workers} worker ports from {} would end at {}, past 65535",
                    c.worker_port, wk.1
                )
            },
        );
        self.cross(
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
        );
        self.cross(
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
        );
        self.cross(
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
        );
    }
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
    use crate::config::{Config, ProxySettings};

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
