//! config.yaml: load it, print it (`check-config`), and the types the other modules use.
//!
//! The parts, in the order a file goes through them:
//! - `read`: the file (missing, a directory, too large, not UTF-8), then the text through the
//!   steps below, every failure becoming one `ConfigError` (`file:line: key: message`);
//! - `node`: YAML into a `Node` tree that keeps every entry, and `key_line`, which asks the
//!   YAML parser on which line a key is;
//! - `tree`: the tree into the structs through the key tables (unknown keys, duplicates,
//!   types), and `ProxySettings::apply_override` for `goloadbalancer proxy --KEY VALUE`;
//! - `rules`: each key's own range, then the rules between keys;
//! - `schema`: the key tables (one row per key: field, type, default, doc, reader, range),
//!   from which `table::section!` derives the structs, their `Default` and their key lists.

mod node;
mod read;
mod rules;
mod schema;
mod table;
mod tree;

use std::path::{Path, PathBuf};

pub use read::{ConfigError, parse_and_check};
pub use rules::Violation;
pub use schema::{
    AccessLogFormat, AccessLogMode, Autoscale, Balance, Config, HealthCheckMode, Mode,
    ProxySettings, RuntimeKind, Swarm,
};

/// Loads and validates `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read::read_text(path)?;
    parse_and_check(path, &text)
}

/// System-wide config path, used when it exists and no `--config` is given.
pub const SYSTEM_PATH: &str = "/etc/goloadbalancer/config.yaml";

/// The config file to use: `explicit` (`--config`), else /etc/goloadbalancer/config.yaml if
/// it exists, else ./config.yaml.
pub fn default_path(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(p) = explicit {
        return p;
    }
    let system = Path::new(SYSTEM_PATH);
    if system.is_file() {
        system.to_path_buf()
    } else {
        PathBuf::from("config.yaml")
    }
}

/// `goloadbalancer check-config [PATH]`: validates and prints the effective configuration
/// (every key with its value, defaults filled in) as YAML; exit 0, or the error and exit 2.
pub fn check_config_cmd(path: Option<PathBuf>) -> i32 {
    let path = default_path(path);
    match load(&path).and_then(|c| swarm_manager_check(&path, c)) {
        Ok(config) => match serde_yaml_ng::to_string(&config) {
            Ok(yaml) => {
                println!(
                    "# {}: valid; effective configuration (defaults filled in):",
                    path.display()
                );
                print!("{yaml}");
                0
            }
            Err(e) => {
                eprintln!("{}: cannot print the configuration: {e}", path.display());
                1
            }
        },
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

/// How long check-config waits for `docker info` with `runtime: swarm`.
const MANAGER_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `runtime: swarm`: the docker engine must be a swarm manager now, else an error at `runtime`.
fn swarm_manager_check(path: &Path, config: Config) -> Result<Config, ConfigError> {
    if config.runtime != RuntimeKind::Swarm {
        return Ok(config);
    }
    match crate::runtime::swarm::check_manager(MANAGER_CHECK_TIMEOUT) {
        Ok(()) => Ok(config),
        Err(message) => {
            let text = read::read_text(path)?;
            Err(ConfigError {
                file: path.to_path_buf(),
                line: node::key_line(&text, &["runtime"], 1),
                key: Some("runtime".into()),
                message: message
                    .strip_prefix("runtime: ")
                    .unwrap_or(&message)
                    .to_string(),
            })
        }
    }
}

/// `goloadbalancer check-config --listen-addresses [PATH]`: one `address:port` line per
/// socket the supervisor listens on (LB listeners, then admin; IPv6 in brackets), the form a
/// systemd `ListenStream=` takes; exit 0, or the error and exit 2.
pub fn listen_addresses_cmd(path: Option<PathBuf>) -> i32 {
    let path = default_path(path);
    match load(&path) {
        Ok(config) => {
            for addr in config.listen_addresses() {
                println!("{addr}");
            }
            0
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, String> {
        parse_and_check(Path::new("c.yaml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn seed_keys_and_defaults() {
        let c = load_text("worker: 4\npool: 1\nfailure: 0\n").unwrap();
        assert_eq!(c.worker, 4);
        assert_eq!(c.pool, 1);
        assert_eq!(c.failure, 0.0);
        assert_eq!(c.avg_delay, 500);
        assert_eq!(c.proxy, ProxySettings::default());
    }

    #[test]
    fn misplaced_autoscale_key_is_pointed_to_its_block() {
        assert_eq!(
            load_text("worker: 3\nstep: 2\n").unwrap_err(),
            "c.yaml:2: step: unknown key (did you mean `autoscale: {step: ...}`?)"
        );
    }

    #[test]
    fn mutated_files_never_panic_and_errors_stay_one_line() {
        use rand::RngExt;
        let base = include_str!("../config.yaml").to_string()
            + "autoscale:\n  enabled: true\n  min: 2\n  max: 4\n";
        let alphabet: &[u8] = b" \n\t:-#[]{}!&*?|>'\",.~0123456789abcwp\\\x00\xff";
        let mut rng = rand::rng();
        for _ in 0..3000 {
            let mut bytes = base.clone().into_bytes();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..bytes.len());
                let b = alphabet[rng.random_range(0..alphabet.len())];
                match rng.random_range(0..3) {
                    0 => bytes[at] = b,
                    1 => bytes.insert(at, b),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let lines = text.lines().count() + 1;
            if let Err(e) = parse_and_check(Path::new("c.yaml"), &text) {
                let shown = e.to_string();
                assert!(
                    !shown.contains('\n'),
                    "multi-line error {shown:?}\nfor:\n{text}"
                );
                if let Some(l) = e.line {
                    assert!((1..=lines).contains(&l), "line {l} of {lines}: {shown}");
                }
            }
        }
    }

    #[test]
    fn listen_addresses_are_the_lb_ports_then_admin() {
        let c = load_text("pool: 3\nload-balancer-port: 7000\nadmin-port: 7100\n").unwrap();
        let shown: Vec<String> = c.listen_addresses().iter().map(|a| a.to_string()).collect();
        assert_eq!(
            shown,
            [
                "0.0.0.0:7000",
                "0.0.0.0:7001",
                "0.0.0.0:7002",
                "127.0.0.1:7100"
            ]
        );
        let c = load_text("pool: 3\nshared-port: true\nlisten-address: \"::1\"\n").unwrap();
        let shown: Vec<String> = c.listen_addresses().iter().map(|a| a.to_string()).collect();
        assert_eq!(shown, ["[::1]:5050", "127.0.0.1:8404"]);
    }

    #[test]
    fn default_path_prefers_explicit() {
        assert_eq!(
            default_path(Some(PathBuf::from("/x/y.yaml"))),
            PathBuf::from("/x/y.yaml")
        );
        let p = default_path(None);
        assert!(p == Path::new(SYSTEM_PATH) || p == Path::new("config.yaml"));
    }
}
