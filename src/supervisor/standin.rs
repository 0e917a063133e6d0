//! TEMPORARY stand-ins for pieces other engineers are landing (config loading, the proxy
//! loop). Deleted as each lands on main.

use std::path::{Path, PathBuf};

use crate::config::{Autoscale, Balance, Config, ConfigError, Mode, ProxySettings, RuntimeKind};

fn default_config() -> Config {
    Config {
        worker: 3,
        pool: 2,
        stats_dir: PathBuf::from("worker-stats.db"),
        avg_delay: 500,
        failure: 12.0,
        load_balancer_port: 5050,
        worker_port: 6000,
        instance: "goloadbalancer".into(),
        listen_address: "0.0.0.0".parse().expect("literal"),
        worker_address: "127.0.0.1".parse().expect("literal"),
        shared_port: false,
        runtime: RuntimeKind::Auto,
        admin_address: "127.0.0.1".parse().expect("literal"),
        admin_port: 8404,
        drain_timeout_ms: 30000,
        worker_start_timeout_ms: 30000,
        proxy: ProxySettings {
            mode: Mode::Http,
            balance: Balance::RoundRobin,
            max_connections: 10000,
            header_timeout_ms: 10000,
            idle_timeout_ms: 60000,
            connect_timeout_ms: 2000,
            response_timeout_ms: 30000,
            tunnel_timeout_ms: 3600000,
            max_request_line: 8192,
            max_header_bytes: 32768,
            max_headers: 100,
            max_body_bytes: 0,
            retries: 2,
            upstream_pool_size: 32,
            health_path: "/healthz".into(),
            health_interval_ms: 5000,
            health_timeout_ms: 1000,
            health_rise: 2,
            health_fall: 3,
        },
        autoscale: Autoscale {
            enabled: false,
            min: 1,
            max: 10,
            target_inflight: 50.0,
            target_p90_ms: 0,
            breach_ms: 3000,
            cooldown_ms: 10000,
            step: 1,
        },
    }
}

fn err(path: &Path, message: String) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message,
    }
}

/// Stand-in for `config::load`: the file's keys over the defaults, no precise validation.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    use serde_yaml_ng::Value;
    let text = std::fs::read_to_string(path).map_err(|e| err(path, e.to_string()))?;
    let user: Value = serde_yaml_ng::from_str(&text).map_err(|e| err(path, e.to_string()))?;
    let mut base = serde_yaml_ng::to_value(default_config()).map_err(|e| err(path, e.to_string()))?;
    if let (Value::Mapping(b), Value::Mapping(u)) = (&mut base, user) {
        for (k, v) in u {
            match (b.get_mut(&k), v) {
                (Some(Value::Mapping(inner)), Value::Mapping(v)) => {
                    for (k2, v2) in v {
                        inner.insert(k2, v2);
                    }
                }
                (_, v) => {
                    b.insert(k, v);
                }
            }
        }
    }
    let cfg: Config = serde_yaml_ng::from_value(base).map_err(|e| err(path, e.to_string()))?;
    if cfg.pool == 0 {
        return Err(err(path, "pool: must be at least 1".into()));
    }
    Ok(cfg)
}

/// Stand-in for `config::default_path`.
pub fn default_path(given: Option<PathBuf>) -> PathBuf {
    if let Some(p) = given {
        return p;
    }
    let etc = PathBuf::from("/etc/goloadbalancer/config.yaml");
    if etc.exists() {
        etc
    } else {
        PathBuf::from("config.yaml")
    }
}

/// Stand-in for `proxy::LoopInputs`.
pub struct LoopInputs {
    pub name: String,
    pub listener: std::net::TcpListener,
    pub backends: Vec<crate::proxy::control::BackendSpec>,
    pub settings: ProxySettings,
    pub control: Option<std::os::unix::net::UnixStream>,
}

/// Stand-in for `proxy::run_loop`: answers control messages, serves nothing.
pub fn run_loop(inputs: LoopInputs) -> i32 {
    use crate::proxy::control::{Down, Up};
    use std::io::{BufRead, Write};
    let _keep = inputs.listener;
    let Some(control) = inputs.control else {
        return 1;
    };
    let Ok(mut w) = control.try_clone() else {
        return 1;
    };
    for line in std::io::BufReader::new(control).lines() {
        let Ok(line) = line else { return 0 };
        let Ok(msg) = serde_json::from_str::<Down>(&line) else {
            continue;
        };
        let seq = match &msg {
            Down::Backends { seq, .. } | Down::Settings { seq, .. } | Down::Drain { seq, .. } => {
                *seq
            }
        };
        let ack = Up::Ack {
            seq,
            ok: true,
            error: None,
        };
        let mut out = serde_json::to_string(&ack).unwrap_or_default();
        out.push('\n');
        let _ = w.write_all(out.as_bytes());
        if matches!(msg, Down::Drain { .. }) {
            return 0;
        }
    }
    0
}

/// Stand-in for `worker::store::prepare`: the worker creates its tables itself for now.
pub fn prepare_store(path: &Path) -> Result<(), String> {
    let _ = path;
    Ok(())
}
