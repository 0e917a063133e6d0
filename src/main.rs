//! Command line of `goloadbalancer`: parses arguments and hands over to one module.

use std::path::PathBuf;
use std::process::ExitCode;

use goloadbalancer::sys::log::quote;
use goloadbalancer::{config, proxy, supervisor, worker};

const USAGE: &str = "\
usage: goloadbalancer <command> [options]

commands:
  run [--config PATH]              the supervisor: workers, LB children, admin endpoint
  worker [options]                 one worker (flags, or the GLB_* environment variables):
      --listen ADDR   (GLB_LISTEN, default 0.0.0.0)   --port N     (GLB_PORT, default 6000)
      --id ID         (GLB_WORKER_ID, default: container hostname or host-<port>)
      --db PATH       (GLB_DB, default worker-stats.db)
      --avg-delay MS  (GLB_AVG_DELAY, default 500)    --failure PCT (GLB_FAILURE, default 12)
      --head-timeout-ms MS (GLB_HEAD_TIMEOUT_MS, 10000)  --idle-timeout-ms MS (GLB_IDLE_TIMEOUT_MS, 60000)
      --stats-flush-ms MS (GLB_STATS_FLUSH_MS, 5)        --drain-timeout-ms MS (GLB_DRAIN_TIMEOUT_MS, 30000)
      --drain-grace-ms MS (GLB_DRAIN_GRACE_MS, 0)        --max-connections N (GLB_MAX_CONNECTIONS, 20000)
      --peers HOST:PORT[,...] (GLB_PEERS): /worker/stats merges these peers' /worker/stats/node
  proxy --listen ADDR --backend ADDR [--backend ADDR ...] [--config PATH] [--KEY VALUE ...]
                                   one LB loop in the foreground; any config key is a flag
  check-config [PATH]              validate a config file and print the effective settings
  check-config --listen-addresses [PATH]
                                   the addresses the supervisor listens on, one per line
                                   (what install.sh writes into goloadbalancer.socket)
  status [--config PATH] [--admin ADDR] [--json] [--watch]
                                   show the running supervisor's state (exit 1 if not running);
                                   --watch: again every second until Ctrl-C (exit 1 after 10 s
                                   without an answer); the live page: http://<admin>/
  --version                        print the version
  help                             this text

signals to `run`: SIGHUP reload the config, SIGTERM/SIGINT drain and stop,
SIGUSR2 re-execute the (possibly replaced) binary on the same listeners (upgrade),
SIGUSR1 reopen the access-log file (passed on to the LB children; `proxy` reopens it too)
";

/// Command-line arguments split into `--key value` pairs and positionals.
struct Args {
    flags: Vec<(String, String)>,
    positional: Vec<String>,
}

impl Args {
    /// Splits `args`; `switches` are flags that take no value.
    fn parse(args: &[String], switches: &[&str]) -> Result<Args, String> {
        let mut flags = Vec::new();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if let Some((k, v)) = name.split_once('=') {
                    flags.push((k.to_string(), v.to_string()));
                } else if switches.contains(&name) {
                    flags.push((name.to_string(), "true".to_string()));
                } else {
                    let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    flags.push((name.to_string(), v.clone()));
                }
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Args { flags, positional })
    }

    /// Removes and returns the last value given for `key`.
    fn take(&mut self, key: &str) -> Option<String> {
        let mut found = None;
        self.flags.retain(|(k, v)| {
            if k == key {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    /// Removes and returns every value given for `key`, in order.
    fn take_all(&mut self, key: &str) -> Vec<String> {
        let mut found = Vec::new();
        self.flags.retain(|(k, v)| {
            if k == key {
                found.push(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    /// Fails on any flag or positional left unused.
    fn finish(self, max_positional: usize) -> Result<Vec<String>, String> {
        if let Some((k, _)) = self.flags.first() {
            return Err(format!("unknown option --{k}"));
        }
        if self.positional.len() > max_positional {
            return Err(format!(
                "unexpected argument {}",
                self.positional[max_positional]
            ));
        }
        Ok(self.positional)
    }
}

/// A flag's value, else the environment variable's, else nothing.
fn flag_or_env(args: &mut Args, key: &str, env: &str) -> Option<String> {
    args.take(key)
        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
}

fn parse_num<T: std::str::FromStr>(what: &str, v: Option<String>, default: T) -> Result<T, String> {
    match v {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| format!("{what}: not a valid number: {s:?}")),
    }
}

fn worker_options(mut args: Args) -> Result<worker::Options, String> {
    let listen = flag_or_env(&mut args, "listen", "GLB_LISTEN").unwrap_or_else(|| "0.0.0.0".into());
    let port = parse_num(
        "--port",
        flag_or_env(&mut args, "port", "GLB_PORT"),
        6000u16,
    )?;
    let id = flag_or_env(&mut args, "id", "GLB_WORKER_ID");
    let db = flag_or_env(&mut args, "db", "GLB_DB").unwrap_or_else(|| "worker-stats.db".into());
    let avg_delay_ms = parse_num(
        "--avg-delay",
        flag_or_env(&mut args, "avg-delay", "GLB_AVG_DELAY"),
        500u64,
    )?;
    let failure_pct = parse_num(
        "--failure",
        flag_or_env(&mut args, "failure", "GLB_FAILURE"),
        12f64,
    )?;
    if !(0.0..=100.0).contains(&failure_pct) {
        return Err(format!(
            "--failure: must be between 0 and 100, got {failure_pct}"
        ));
    }
    let mut opts_num = |flag: &str, env: &str, default: u64| {
        parse_num(
            &format!("--{flag}"),
            flag_or_env(&mut args, flag, env),
            default,
        )
    };
    let head_timeout_ms = opts_num("head-timeout-ms", "GLB_HEAD_TIMEOUT_MS", 10_000)?;
    let idle_timeout_ms = opts_num("idle-timeout-ms", "GLB_IDLE_TIMEOUT_MS", 60_000)?;
    let stats_flush_ms = opts_num("stats-flush-ms", "GLB_STATS_FLUSH_MS", 5)?;
    let drain_timeout_ms = opts_num("drain-timeout-ms", "GLB_DRAIN_TIMEOUT_MS", 30_000)?;
    let drain_grace_ms = opts_num("drain-grace-ms", "GLB_DRAIN_GRACE_MS", 0)?;
    let max_connections = opts_num("max-connections", "GLB_MAX_CONNECTIONS", 20_000)? as usize;
    let peers = match flag_or_env(&mut args, "peers", "GLB_PEERS") {
        Some(spec) => worker::peers::parse_peers(&spec)?,
        None => Vec::new(),
    };
    let listen_ip = listen
        .parse()
        .map_err(|_| format!("--listen: not an IP address: {listen:?}"))?;
    args.finish(0)?;
    Ok(worker::Options {
        listen: std::net::SocketAddr::new(listen_ip, port),
        id,
        db: PathBuf::from(db),
        avg_delay_ms,
        failure_pct,
        head_timeout_ms,
        idle_timeout_ms,
        stats_flush_ms,
        drain_timeout_ms,
        drain_grace_ms,
        max_connections,
        peers,
    })
}

fn proxy_options(mut args: Args) -> Result<proxy::StandaloneOptions, String> {
    let listen = args
        .take("listen")
        .ok_or("proxy: --listen ADDR is required")?;
    let backends = args.take_all("backend");
    let config = args.take("config").map(PathBuf::from);
    let positional = std::mem::take(&mut args.positional);
    if let Some(p) = positional.first() {
        return Err(format!("unexpected argument {p}"));
    }
    // Every remaining `--key value` is a config key; the proxy validates them like config.yaml.
    Ok(proxy::StandaloneOptions {
        listen,
        backends,
        config,
        overrides: args.flags,
    })
}

fn real_main() -> Result<i32, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        eprint!("{USAGE}");
        return Ok(2);
    };
    match cmd.as_str() {
        "run" => {
            let mut args = Args::parse(rest, &[])?;
            let config = args.take("config").map(PathBuf::from);
            args.finish(0)?;
            Ok(supervisor::run(config))
        }
        "worker" => Ok(worker::run(worker_options(Args::parse(rest, &[])?)?)),
        "proxy" => Ok(proxy::run_standalone(proxy_options(Args::parse(
            rest,
            &[],
        )?)?)),
        "check-config" => {
            let mut args = Args::parse(rest, &["listen-addresses"])?;
            let addresses = args.take("listen-addresses").is_some();
            let pos = args.finish(1)?;
            let path = pos.first().map(PathBuf::from);
            if addresses {
                Ok(config::listen_addresses_cmd(path))
            } else {
                Ok(config::check_config_cmd(path))
            }
        }
        "status" => {
            let mut args = Args::parse(rest, &["json", "watch"])?;
            let config = args.take("config").map(PathBuf::from);
            let admin = args.take("admin");
            let json = args.take("json").is_some();
            let watch = args.take("watch").is_some();
            args.finish(0)?;
            Ok(supervisor::status_cmd(config, admin, json, watch))
        }
        "--version" | "version" | "-V" => {
            println!("goloadbalancer {}", supervisor::VERSION);
            Ok(0)
        }
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(0)
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(msg) => {
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                // Under systemd a bad ExecStart must reach `journalctl -p err` as one line.
                goloadbalancer::error!("usage", "error={}", quote(&msg));
            } else {
                eprintln!("goloadbalancer: {msg}");
                eprint!("{USAGE}");
            }
            ExitCode::from(2)
        }
    }
}
