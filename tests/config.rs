//! `goloadbalancer check-config`: every error case gets exactly one message naming file,
//! line and key, and exit code 2; valid files print the effective configuration.

mod common;

use std::path::Path;
use std::process::Command;

use common::TempDir;

/// Result of one `check-config` run.
struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn check_config(path: &Path) -> Checked {
    let out = Command::new(common::bin())
        .arg("check-config")
        .arg(path)
        .output()
        .expect("run check-config");
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes `text` to `<tmp>/config.yaml`, runs check-config on it and asserts exit 2 with
/// exactly `<path>:<expected>` on stderr (`expected` starts after the path) and nothing on
/// stdout.
fn rejects(name: &str, text: &str, expected: &str) {
    let dir = TempDir::new(name);
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).expect("write config");
    let r = check_config(&path);
    assert_eq!(
        r.stderr,
        format!("{}{expected}\n", path.display()),
        "config:\n{text}"
    );
    assert_eq!(r.code, Some(2), "config:\n{text}");
    assert_eq!(r.stdout, "", "nothing printed on error");
}

/// The seed's seven keys.
const SEED: &str = "\
worker: 3
pool: 2
stats-dir: worker-stats.db
avg-delay: 500
failure: 12
load-balancer-port: 5050
worker-port: 6000
";

/// The seed file with `key`'s line replaced by `line`.
fn seed_with(key: &str, line: &str) -> String {
    SEED.lines()
        .map(|l| {
            if l.starts_with(&format!("{key}:")) {
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

// ---- file-level errors ----

#[test]
fn missing_file() {
    let dir = TempDir::new("cfg-missing");
    let path = dir.join("nope.yaml");
    let r = check_config(&path);
    assert_eq!(r.stderr, format!("{}: no such file\n", path.display()));
    assert_eq!(r.code, Some(2));
}

#[test]
fn directory_in_place_of_the_file() {
    let dir = TempDir::new("cfg-dir");
    let path = dir.join("config.yaml");
    std::fs::create_dir(&path).unwrap();
    let r = check_config(&path);
    assert_eq!(
        r.stderr,
        format!(
            "{}: is a directory, expected a config file (e.g. config.yaml)\n",
            path.display()
        )
    );
    assert_eq!(r.code, Some(2));
}

#[test]
fn empty_file() {
    let empty = ": the file is empty: expected keys like `worker: 3` (see the config.yaml shipped with goloadbalancer)";
    rejects("cfg-empty", "", empty);
    rejects("cfg-empty-ws", "\n   \n", empty);
    rejects("cfg-comments", "# worker: 3\n# nothing else\n---\n", empty);
    rejects(
        "cfg-null-doc",
        "~\n",
        ": the file is empty: expected keys like `worker: 3`",
    );
}

#[test]
fn invalid_yaml_names_the_line() {
    rejects(
        "cfg-bad-yaml",
        "worker: 3\npool: [2\nfailure: 1\n",
        ":3: invalid YAML: did not find expected ',' or ']', while parsing a flow sequence on line 2",
    );
    rejects(
        "cfg-bad-indent",
        "worker: 3\n  pool: 2\n",
        ":2: invalid YAML: mapping values are not allowed in this context",
    );
    rejects(
        "cfg-two-docs",
        "worker: 3\n---\nworker: 4\n",
        ": invalid YAML: deserializing from YAML containing more than one document is not supported",
    );
}

#[test]
fn not_utf8() {
    let dir = TempDir::new("cfg-latin1");
    let path = dir.join("config.yaml");
    std::fs::write(&path, b"worker: 3\npool: 2\ninstance: caf\xe9\n").unwrap();
    let r = check_config(&path);
    assert_eq!(
        r.stderr,
        format!("{}:3: is not UTF-8 text\n", path.display())
    );
    assert_eq!(r.code, Some(2));
}

#[test]
fn byte_order_mark_and_crlf_are_plain_text() {
    rejects(
        "cfg-bom-crlf",
        "\u{feff}worker: 3\r\npool: 0\r\n",
        ":2: pool: must be between 1 and 1024, got 0",
    );
}

#[test]
fn top_level_must_be_a_mapping() {
    rejects(
        "cfg-list",
        "# comment\n- worker: 3\n- pool: 2\n",
        ":2: the top level must be a mapping of keys like `worker: 3`, got a list",
    );
    rejects(
        "cfg-scalar",
        "worker\n",
        ":1: the top level must be a mapping of keys like `worker: 3`, got a string",
    );
}

// ---- keys ----

#[test]
fn unknown_keys() {
    rejects(
        "cfg-unknown",
        &format!("{SEED}frobnicate: 1\n"),
        ":8: frobnicate: unknown key",
    );
    rejects(
        "cfg-unknown-close",
        "worker: 3\navg_delay: 10\n",
        ":2: avg_delay: unknown key (did you mean `avg-delay`?)",
    );
    rejects(
        "cfg-unknown-nested",
        "worker: 3\nautoscale:\n  enabled: false\n  minimum: 2\n",
        ":4: autoscale.minimum: unknown key (did you mean `min`?)",
    );
    rejects(
        "cfg-misplaced-nested",
        "worker: 3\nautoscale:\n  pool: 2\n",
        ":3: autoscale.pool: unknown key (`pool` belongs at the top level, not under autoscale:)",
    );
    rejects(
        "cfg-misplaced-top",
        "worker: 3\ncooldown-ms: 5\n",
        ":2: cooldown-ms: unknown key (did you mean `autoscale: {cooldown-ms: ...}`?)",
    );
}

#[test]
fn duplicate_keys() {
    rejects(
        "cfg-dup",
        &format!("{SEED}# again\nworker: 4\n"),
        ":9: worker: duplicate key (first set on line 1)",
    );
    rejects(
        "cfg-dup-nested",
        "worker: 3\nautoscale:\n  min: 1\n  # comment\n  min: 2\n",
        ":5: autoscale.min: duplicate key (first set on line 3)",
    );
    rejects(
        "cfg-dup-block",
        "autoscale:\n  min: 1\nworker: 3\nautoscale:\n  max: 4\n",
        ":4: autoscale: duplicate key (first set on line 1)",
    );
}

#[test]
fn wrong_types() {
    rejects(
        "cfg-type-worker",
        &seed_with("worker", "worker: three"),
        ":1: worker: must be a whole number, got \"three\"",
    );
    rejects(
        "cfg-type-neg",
        &seed_with("pool", "pool: -1"),
        ":2: pool: must not be negative, got -1",
    );
    rejects(
        "cfg-type-frac",
        &seed_with("avg-delay", "avg-delay: 2.5"),
        ":4: avg-delay: must be a whole number, got 2.5",
    );
    rejects(
        "cfg-type-failure",
        &seed_with("failure", "failure: high"),
        ":5: failure: must be a number, got \"high\"",
    );
    rejects(
        "cfg-type-stats",
        &seed_with("stats-dir", "stats-dir: [a, b]"),
        ":3: stats-dir: must be a string, got a list (quote it: \"a list\")",
    );
    rejects(
        "cfg-type-null",
        &seed_with("worker", "worker:"),
        ":1: worker: has no value (remove the key to get the default)",
    );
    rejects(
        "cfg-type-bool",
        "shared-port: yes\n",
        ":1: shared-port: must be true or false, got \"yes\"",
    );
    rejects(
        "cfg-type-ip",
        "worker: 3\nlisten-address: localhost\n",
        ":2: listen-address: must be an IP address (like 127.0.0.1 or ::1), got \"localhost\"",
    );
    rejects(
        "cfg-type-enum",
        "mode: udp\n",
        ":1: mode: must be one of http, tcp, got \"udp\"",
    );
    rejects(
        "cfg-type-balance",
        "balance: random\n",
        ":1: balance: must be one of round-robin, weighted, least-connections, got \"random\"",
    );
    rejects(
        "cfg-type-nested",
        "worker: 3\nautoscale:\n  enabled: maybe\n",
        ":3: autoscale.enabled: must be true or false, got \"maybe\"",
    );
    rejects(
        "cfg-type-block",
        "worker: 3\nautoscale: 5\n",
        ":2: autoscale: must be a mapping of autoscale keys (enabled, min, max, target-inflight, target-p90-ms, breach-ms, cooldown-ms, step, idle-ms), got a number",
    );
    rejects(
        "cfg-type-key",
        "worker: 3\n7: x\n",
        ":2: 7: keys must be names like `worker`, got a number",
    );
    rejects(
        "cfg-complex-key",
        "worker: 3\n? [a, b]\n: 1\n",
        ": keys must be names like `worker`, got a list",
    );
    rejects(
        "cfg-complex-key-nested",
        "worker: 3\nautoscale:\n  ? {a: 1}\n  : 2\n",
        ":2: autoscale: keys must be names like `min`, got a mapping",
    );
    rejects(
        "cfg-type-tag",
        "worker: !big 3\n",
        ":1: worker: must be a whole number, got a value tagged !big",
    );
}

// ---- ranges ----

#[test]
fn failure_out_of_range_example_from_the_issue() {
    rejects(
        "cfg-failure",
        "# goloadbalancer\nworker: 3\npool: 2\nfailure: 120\n",
        ":4: failure: must be between 0 and 100, got 120",
    );
    rejects(
        "cfg-failure-neg",
        &seed_with("failure", "failure: -0.5"),
        ":5: failure: must be between 0 and 100, got -0.5",
    );
}

#[test]
fn counts_and_timeouts() {
    rejects(
        "cfg-worker0",
        &seed_with("worker", "worker: 0"),
        ":1: worker: must be between 1 and 10000, got 0",
    );
    rejects(
        "cfg-pool0",
        &seed_with("pool", "pool: 0"),
        ":2: pool: must be between 1 and 1024, got 0",
    );
    rejects(
        "cfg-delay",
        &seed_with("avg-delay", "avg-delay: 3600001"),
        ":4: avg-delay: must be between 0 and 3600000, got 3600001",
    );
    rejects(
        "cfg-timeout0",
        &format!("{SEED}response-timeout-ms: 0\n"),
        ":8: response-timeout-ms: must be between 1 and 604800000, got 0",
    );
    rejects(
        "cfg-drain0",
        "drain-timeout-ms: 0\n",
        ":1: drain-timeout-ms: must be between 1 and 604800000, got 0",
    );
    rejects(
        "cfg-rise0",
        "worker: 3\nhealth-rise: 0\n",
        ":2: health-rise: must be between 1 and 1000, got 0",
    );
    rejects(
        "cfg-fall0",
        "health-fall: 0\n",
        ":1: health-fall: must be between 1 and 1000, got 0",
    );
    rejects(
        "cfg-maxconn",
        "max-connections: 0\n",
        ":1: max-connections: must be between 1 and 1000000, got 0",
    );
    rejects(
        "cfg-health-path",
        "health-path: healthz\n",
        ":1: health-path: must be a path starting with / without spaces or control characters (at most 1024 bytes), got \"healthz\"",
    );
    rejects(
        "cfg-reqline",
        "max-header-bytes: 1024\nmax-request-line: 2048\n",
        ":2: max-request-line: must not exceed max-header-bytes (1024), the head it is part of, got 2048",
    );
    rejects(
        "cfg-reqline-default",
        "max-header-bytes: 1024\n",
        ":1: max-header-bytes: max-request-line must not exceed max-header-bytes (1024), the head it is part of, got 8192",
    );
    rejects(
        "cfg-instance",
        "instance: my lb\n",
        ":1: instance: must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit (it names containers), got \"my lb\"",
    );
}

#[test]
fn traffic_management_ranges() {
    let cases = [
        (
            "max-conn-per-worker: 1000001\n",
            ":1: max-conn-per-worker: must be between 0 and 1000000, got 1000001",
        ),
        (
            "worker: 3\nqueue-size: 2000000\n",
            ":2: queue-size: must be between 0 and 1000000, got 2000000",
        ),
        (
            "queue-timeout-ms: 0\n",
            ":1: queue-timeout-ms: must be between 1 and 604800000, got 0",
        ),
        (
            "slow-start-ms: 604800001\n",
            ":1: slow-start-ms: must be between 0 and 604800000, got 604800001",
        ),
        (
            "eject-consecutive-5xx: 1001\n",
            ":1: eject-consecutive-5xx: must be between 0 and 1000, got 1001",
        ),
        (
            "eject-ms: 0\n",
            ":1: eject-ms: must be between 1 and 604800000, got 0",
        ),
        (
            "max-ejection-percent: 101\n",
            ":1: max-ejection-percent: must be between 0 and 100, got 101",
        ),
        (
            "retry-budget-percent: 150\n",
            ":1: retry-budget-percent: must be between 0 and 100, got 150",
        ),
        (
            "retry-budget-percent: -1\n",
            ":1: retry-budget-percent: must not be negative, got -1",
        ),
        (
            "body-timeout-ms: 0\n",
            ":1: body-timeout-ms: must be between 1 and 604800000, got 0",
        ),
        (
            "allowed-upgrades: web socket\n",
            ":1: allowed-upgrades: must be protocol names separated by commas, like \"websocket,h2c\" (empty: none), got \"web socket\"",
        ),
        (
            "allowed-upgrades: websocket,,h2c\n",
            ":1: allowed-upgrades: must be protocol names separated by commas, like \"websocket,h2c\" (empty: none), got \"websocket,,h2c\"",
        ),
        (
            "max-interim-responses: 0\n",
            ":1: max-interim-responses: must be between 1 and 1000, got 0",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        rejects(&format!("cfg-traffic-{i}"), text, expected);
    }
    // The widest and narrowest accepted values.
    let out = accepted(
        "cfg-traffic-ok",
        "max-conn-per-worker: 1\nqueue-size: 0\nslow-start-ms: 0\nmax-ejection-percent: 100\nretry-budget-percent: 0\nallowed-upgrades: \"\"\nmax-interim-responses: 1000\n",
    );
    for line in [
        "max-conn-per-worker: 1",
        "queue-size: 0",
        "max-ejection-percent: 100",
        "retry-budget-percent: 0",
        "allowed-upgrades: ''",
        "max-interim-responses: 1000",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
}

#[test]
fn traffic_management_flags_are_checked_like_the_file() {
    // `goloadbalancer proxy --KEY VALUE`: same rule, same message, exit 2 before binding.
    for (flag, value, expected) in [
        (
            "--max-ejection-percent",
            "101",
            "goloadbalancer proxy: --max-ejection-percent: must be between 0 and 100, got 101\n",
        ),
        (
            "--queue-timeout-ms",
            "0",
            "goloadbalancer proxy: --queue-timeout-ms: must be between 1 and 604800000, got 0\n",
        ),
        (
            "--allowed-upgrades",
            "h2c;x",
            "goloadbalancer proxy: --allowed-upgrades: must be protocol names separated by commas, like \"websocket,h2c\" (empty: none), got \"h2c;x\"\n",
        ),
    ] {
        let out = Command::new(common::bin())
            .args([
                "proxy",
                "--listen",
                "127.0.0.1:1",
                "--backend",
                "127.0.0.1:2",
            ])
            .args([flag, value])
            .env_remove("JOURNAL_STREAM")
            .output()
            .expect("run proxy");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "{flag}");
        assert_eq!(out.status.code(), Some(2), "{flag}");
    }
}

#[test]
fn ports() {
    rejects(
        "cfg-port-big",
        &seed_with("worker-port", "worker-port: 70000"),
        ":7: worker-port: must be between 1 and 65535, got 70000",
    );
    rejects(
        "cfg-port-zero",
        &seed_with("load-balancer-port", "load-balancer-port: 0"),
        ":6: load-balancer-port: must be between 1 and 65535, got 0",
    );
    rejects(
        "cfg-admin-port",
        "admin-port: 65536\n",
        ":1: admin-port: must be between 1 and 65535, got 65536",
    );
    rejects(
        "cfg-lb-range-end",
        &seed_with("load-balancer-port", "load-balancer-port: 65535"),
        ":6: load-balancer-port: 2 load balancer ports from 65535 would end at 65536, past 65535",
    );
    rejects(
        "cfg-worker-range-end",
        &seed_with("worker-port", "worker-port: 65534"),
        ":7: worker-port: 3 worker ports from 65534 would end at 65536, past 65535",
    );
}

#[test]
fn overlapping_port_ranges() {
    rejects(
        "cfg-overlap",
        &seed_with("worker-port", "worker-port: 5051"),
        ":7: worker-port: worker ports 5051-5053 overlap load balancer ports 5050-5051",
    );
    // worker-port not in the file (default 6000): reported at the LB key that is.
    rejects(
        "cfg-overlap-default",
        "worker: 3\nload-balancer-port: 5999\n",
        ":2: load-balancer-port: worker ports 6000-6002 overlap load balancer ports 5999-6000",
    );
    rejects(
        "cfg-admin-overlap",
        &format!("{SEED}admin-port: 6001\n"),
        ":8: admin-port: 6001 is one of the worker ports 6000-6002",
    );
    rejects(
        "cfg-admin-overlap-lb",
        &format!("{SEED}admin-port: 5051\n"),
        ":8: admin-port: 5051 is one of the load balancer ports 5050-5051",
    );
    // autoscale.max widens the worker range when autoscaling is on.
    rejects(
        "cfg-overlap-autoscale",
        "worker-port: 5000\nautoscale:\n  enabled: true\n  max: 51\n",
        ":1: worker-port: worker ports 5000-5050 overlap load balancer ports 5050-5051",
    );
}

#[test]
fn shared_port_frees_the_range() {
    let dir = TempDir::new("cfg-shared");
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        seed_with("worker-port", "worker-port: 5051") + "shared-port: true\n",
    )
    .unwrap();
    let r = check_config(&path);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // ...but the one shared port still must not collide.
    rejects(
        "cfg-shared-overlap",
        &(seed_with("worker-port", "worker-port: 5048") + "shared-port: true\n"),
        ":7: worker-port: worker ports 5048-5050 overlap load balancer ports 5050",
    );
}

#[test]
fn autoscale_bounds() {
    rejects(
        "cfg-as-worker",
        "worker: 3\nautoscale:\n  enabled: true\n  min: 4\n",
        ":1: worker: must be between autoscale.min (4) and autoscale.max (10) when autoscale is enabled, got 3",
    );
    // `worker` left at its default: reported at the autoscale key that broke the rule.
    rejects(
        "cfg-as-worker-default",
        "autoscale:\n  enabled: true\n  min: 5\n",
        ":3: autoscale.min: worker must be between autoscale.min (5) and autoscale.max (10) when autoscale is enabled, got 3",
    );
    rejects(
        "cfg-as-minmax",
        "autoscale:\n  min: 5\n  max: 2\n",
        ":3: autoscale.max: must be at least autoscale.min (5), got 2",
    );
    rejects(
        "cfg-as-step",
        "autoscale:\n  step: 0\n",
        ":2: autoscale.step: must be between 1 and 10000, got 0",
    );
    rejects(
        "cfg-as-target",
        "autoscale:\n  target-inflight: 0\n",
        ":2: autoscale.target-inflight: must be a number above 0 (at most 1000000000), got 0",
    );
    rejects(
        "cfg-as-idle",
        "autoscale:\n  enabled: true\n  min: 0\n  idle-ms: 50\n",
        ":4: autoscale.idle-ms: must be between 100 and 604800000, got 50",
    );
    // Scale to zero: min 0 is allowed (the start count `worker` stays at least 1).
    let dir = TempDir::new("cfg-as-zero");
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        "worker: 1\nautoscale:\n  enabled: true\n  min: 0\n  idle-ms: 5000\n",
    )
    .unwrap();
    assert_eq!(check_config(&path).code, Some(0));
    // Disabled: `worker` may sit outside min..max.
    let dir = TempDir::new("cfg-as-off");
    let path = dir.join("config.yaml");
    std::fs::write(&path, "worker: 3\nautoscale:\n  min: 4\n").unwrap();
    assert_eq!(check_config(&path).code, Some(0));
}

#[test]
fn nested_lines_survive_comments_and_flow_style() {
    rejects(
        "cfg-nested-lines",
        "\
# autoscale:
#   step: 0
worker: 3
autoscale:       # the block
  # step: 1 would be fine
  enabled: false

  step: 0
pool: 2
",
        ":8: autoscale.step: must be between 1 and 10000, got 0",
    );
    rejects(
        "cfg-flow",
        "worker: 3\nautoscale: {enabled: true,\n  min: 9}\n",
        ":1: worker: must be between autoscale.min (9) and autoscale.max (10) when autoscale is enabled, got 3",
    );
    rejects(
        "cfg-flow-key",
        "worker: 3\nautoscale: {enabled: true,\n  step: 0}\n",
        ":3: autoscale.step: must be between 1 and 10000, got 0",
    );
}

// ---- valid files ----

/// Effective configuration printed for `text`.
fn accepted(name: &str, text: &str) -> String {
    let dir = TempDir::new(name);
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).expect("write config");
    let r = check_config(&path);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stderr, "");
    r.stdout
}

#[test]
fn repository_config_yaml_passes_with_seed_values() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let r = check_config(&path);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    for line in [
        "worker: 3",
        "pool: 2",
        "stats-dir: worker-stats.db",
        "avg-delay: 500",
        "failure: 12.0",
        "load-balancer-port: 5050",
        "worker-port: 6000",
        "admin-port: 8404",
        "health-path: /healthz",
        "autoscale:",
        "  enabled: false",
        "  max: 10",
    ] {
        assert!(
            r.stdout.lines().any(|l| l == line),
            "missing {line:?} in:\n{}",
            r.stdout
        );
    }
}

/// `key: ...` or `  key: ...` (a commented-out setting, not prose).
fn is_key_line(s: &str) -> bool {
    let first = s.split_whitespace().next().unwrap_or("");
    first.len() > 1
        && first.ends_with(':')
        && first[..first.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[test]
fn repository_config_yaml_documents_every_key_with_its_default() {
    // Uncommenting every optional key must give the same effective configuration as leaving
    // them out: the documented defaults are the real ones, and every key is listed.
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml")).unwrap();
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if is_key_line(rest) => rest.to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let body = |s: String| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    let plain = body(accepted("cfg-repo-plain", &text));
    let full = body(accepted("cfg-repo-full", &uncommented));
    assert_eq!(plain, full, "uncommented file:\n{uncommented}");
    let keys_set = uncommented
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(':'))
        .count();
    let keys_printed = plain
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(':'))
        .count();
    assert_eq!(
        keys_set, keys_printed,
        "every key documented in config.yaml"
    );
}

#[test]
fn omitted_keys_get_defaults() {
    let out = accepted("cfg-defaults", "worker: 5\nautoscale:\n  max: 20\n");
    for line in [
        "worker: 5",
        "pool: 2",
        "stats-dir: worker-stats.db",
        "avg-delay: 500",
        "failure: 12.0",
        "load-balancer-port: 5050",
        "worker-port: 6000",
        "instance: goloadbalancer",
        "listen-address: 0.0.0.0",
        "runtime: auto",
        "mode: http",
        "balance: round-robin",
        "response-timeout-ms: 30000",
        "health-fall: 3",
        "  enabled: false",
        "  min: 1",
        "  max: 20",
        "  step: 1",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
}

#[test]
fn printed_configuration_loads_back_unchanged() {
    let first = accepted(
        "cfg-roundtrip-1",
        "worker: 4\nfailure: 2.5\nmode: tcp\nlisten-address: \"::1\"\nautoscale: {enabled: true, max: 8}\n",
    );
    let second = accepted("cfg-roundtrip-2", &first);
    let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&first), body(&second));
    assert!(first.contains("listen-address: ::1"), "{first}");
    assert!(first.contains("failure: 2.5"), "{first}");
}

#[test]
fn autoscale_block_may_be_empty() {
    let out = accepted("cfg-as-empty", "worker: 3\nautoscale:\n");
    assert!(out.contains("  enabled: false"), "{out}");
}

#[test]
fn readme_documents_every_key_with_its_default() {
    // The README's configuration tables list exactly the keys check-config prints, with the
    // same defaults.
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let mut documented: Vec<(String, String)> = readme
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let key = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let default = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((key.to_string(), default.to_string()))
        })
        .collect();
    documented.sort();
    let printed = accepted("cfg-readme", "worker: 3\n");
    let mut effective: Vec<(String, String)> = Vec::new();
    let mut section = "";
    for line in printed.lines().skip(1) {
        let (k, v) = line.split_once(':').expect("key: value");
        let v = v.trim();
        // `12.0` is printed for the float keys; the table says `12`.
        let v = v
            .strip_suffix(".0")
            .filter(|n| n.parse::<u64>().is_ok())
            .unwrap_or(v)
            .to_string();
        if let Some(nested) = k.strip_prefix("  ") {
            effective.push((format!("{section}.{nested}"), v));
        } else if v.is_empty() {
            section = k;
        } else {
            effective.push((k.to_string(), v));
        }
    }
    effective.sort();
    assert_eq!(documented, effective);
}

#[test]
fn database_in_a_system_directory_is_refused_with_its_line() {
    for (name, dir) in [
        ("cfg-db-root", "/"),
        ("cfg-db-etc", "/etc"),
        ("cfg-db-var", "/var"),
    ] {
        let db = format!("{}/stats.db", dir.trim_end_matches('/'));
        rejects(
            name,
            &seed_with("stats-dir", &format!("stats-dir: {db}")),
            &format!(
                ":3: stats-dir: the database's directory {dir} is a system directory, and it is \
                 bind-mounted into every worker container: give the database a directory of its \
                 own, e.g. /var/lib/goloadbalancer/worker-stats.db"
            ),
        );
    }
    rejects(
        "cfg-db-usr",
        &format!("{SEED}stats-dir: /usr/lib/glb/stats.db\n")
            .replace("stats-dir: worker-stats.db\n", ""),
        ":7: stats-dir: the database's directory /usr/lib/glb is a system directory, and it is \
         bind-mounted into every worker container: give the database a directory of its own, \
         e.g. /var/lib/goloadbalancer/worker-stats.db",
    );
    let dir = TempDir::new("cfg-db-own");
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        seed_with("stats-dir", "stats-dir: /var/lib/glb/stats.db"),
    )
    .expect("write");
    assert_eq!(check_config(&path).code, Some(0));
}

#[test]
fn user_must_exist_and_be_unprivileged() {
    rejects(
        "cfg-user-missing",
        &format!("{SEED}user: no-such-user-glb\n"),
        ":8: user: no user \"no-such-user-glb\" in /etc/passwd",
    );
    rejects(
        "cfg-user-root",
        &format!("{SEED}user: root\n"),
        ":8: user: must be an unprivileged user, got \"root\" (uid 0, gid 0)",
    );
}

// ---- runtime: swarm ----

#[test]
fn swarm_block_is_read_and_printed() {
    let dir = TempDir::new("cfg-swarm-ok");
    let path = dir.join("config.yaml");
    let text = format!(
        "{SEED}runtime: process\nswarm:\n  service: shop-workers\n  constraints: node.role==worker, node.labels.zone!=b\n  image: registry.example/glb-worker:1\n"
    );
    std::fs::write(&path, text).expect("write");
    let r = check_config(&path);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains("swarm:\n  service: shop-workers\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("image: registry.example/glb-worker:1"),
        "{}",
        r.stdout
    );
}

#[test]
fn swarm_keys_are_checked() {
    rejects(
        "cfg-swarm-service",
        &format!("{SEED}swarm:\n  service: -bad name\n"),
        ":9: swarm.service: must be 1-63 letters, digits, '-' or '_', starting with a letter or digit (it names the swarm service), got \"-bad name\"",
    );
    rejects(
        "cfg-swarm-constraint",
        &format!("{SEED}swarm:\n  constraints: node.role\n"),
        ":9: swarm.constraints: each constraint must read `attribute==value` or `attribute!=value` (e.g. node.role==worker), got \"node.role\"",
    );
    rejects(
        "cfg-swarm-unknown",
        &format!("{SEED}swarm:\n  servce: x\n"),
        ":9: swarm.servce: unknown key (did you mean `service`?)",
    );
    rejects(
        "cfg-swarm-misplaced",
        &format!("{SEED}constraints: node.role==worker\n"),
        ":8: constraints: unknown key (did you mean `swarm: {constraints: ...}`?)",
    );
    rejects(
        "cfg-swarm-not-a-map",
        &format!("{SEED}swarm: 3\n"),
        ":8: swarm: must be a mapping of swarm keys (service, constraints, image), got a number",
    );
}

#[test]
fn swarm_refuses_process_only_keys() {
    rejects(
        "cfg-swarm-worker-address",
        &format!("{SEED}runtime: swarm\nworker-address: 10.0.0.5\n"),
        ":9: worker-address: is a process and docker key: with runtime: swarm each worker is reached at its node's address (remove worker-address, got 10.0.0.5)",
    );
}

#[test]
fn swarm_without_a_reachable_manager_is_an_error_at_runtime() {
    let dir = TempDir::new("cfg-swarm-manager");
    let path = dir.join("config.yaml");
    std::fs::write(&path, format!("{SEED}runtime: swarm\n")).expect("write");
    let out = Command::new(common::bin())
        .arg("check-config")
        .arg(&path)
        .env(
            "DOCKER_HOST",
            format!("unix://{}", dir.join("no.sock").display()),
        )
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let prefix = format!("{}:8: runtime: swarm needs ", path.display());
    assert!(stderr.starts_with(&prefix), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty());
}
