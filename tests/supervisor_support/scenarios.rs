//! The supervisor scenarios, each run with the process runtime (tests/supervisor_process.rs)
//! and the docker runtime (tests/supervisor_docker.rs).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use super::common;
use super::support::*;

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const SIGHUP: i32 = 1;

fn worker_field(status: &serde_json::Value, port: u64, key: &str) -> serde_json::Value {
    status["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["port"].as_u64() == Some(port)))
        .map(|w| w[key].clone())
        .unwrap_or(serde_json::Value::Null)
}

fn worker_pids(status: &serde_json::Value) -> Vec<i64> {
    status["workers"]
        .as_array()
        .map(|ws| ws.iter().filter_map(|w| w["pid"].as_i64()).collect())
        .unwrap_or_default()
}

/// Seed config: both LB ports answer, hellos rotate through the three workers evenly,
/// /worker/stats totals equal the requests made, /metrics and `status` agree.
pub fn seed(name: &str, runtime: &'static str) {
    let s = Stack::start_ready(name, StackSpec::seed(runtime));
    let ids: BTreeSet<String> = s.active_worker_ids().into_iter().collect();
    assert_eq!(ids.len(), 3, "three active workers: {ids:?}");
    if runtime == "docker" {
        for id in &ids {
            assert_eq!(
                id.len(),
                12,
                "docker worker id is the short container id: {id}"
            );
        }
    }
    let mut per_worker = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..60 {
        let lb = s.lb(i % 2);
        let id = hello(lb).unwrap_or_else(|e| panic!("hello {i} via {lb}: {e:?}"));
        *per_worker.entry(id).or_default() += 1;
    }
    let seen: BTreeSet<String> = per_worker.keys().cloned().collect();
    assert_eq!(
        seen, ids,
        "hello answers come from exactly the active workers"
    );
    for (id, n) in &per_worker {
        assert_eq!(
            *n, 20,
            "round robin: 60 requests over 3 workers, {id} got {n}: {per_worker:?}"
        );
    }
    // The workers group-commit their stats within milliseconds. Asked of a worker directly,
    // so the LB's own counts below stay at the 60 hellos.
    let st = s.status();
    let worker: std::net::SocketAddr = st["workers"][0]["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("worker address");
    wait_until("/worker/stats totals = 60", Duration::from_secs(15), || {
        stats_totals(worker) == Some((60, 60))
    });
    // The children report metrics about once a second.
    wait_until(
        "/metrics counts 20 2xx per worker",
        Duration::from_secs(15),
        || {
            let Ok(m) = try_get(s.admin(), "/metrics") else {
                return false;
            };
            let text = m.text();
            ids.iter().all(|id| {
                text.contains(&format!(
                    "goloadbalancer_requests_total{{backend=\"{id}\",class=\"2xx\"}} 20\n"
                ))
            }) && text.contains("goloadbalancer_workers_desired 3\n")
                && text.contains("goloadbalancer_workers_actual 3\n")
        },
    );
    let st = s.status();
    assert_eq!(st["requests_total"].as_u64(), Some(60), "{st}");
    assert_eq!(st["runtime"], runtime);
    let out = Command::new(common::bin())
        .args(["status", "--admin", &s.admin_port.to_string()])
        .output()
        .expect("status command");
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("workers 3/3 healthy"), "{table}");
    for id in &ids {
        assert!(
            table.contains(id.as_str()),
            "status table lists {id}: {table}"
        );
    }
}

/// `goloadbalancer status` against nothing: exit 1.
pub fn status_not_running() {
    let port = common::free_port();
    let out = Command::new(common::bin())
        .args(["status", "--admin", &port.to_string()])
        .output()
        .expect("status command");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

/// kill -9 an LB child under load: the port keeps answering (only requests the dead child
/// held fail, none is refused), a new child serves the same listener.
pub fn lb_child_killed(name: &str, runtime: &'static str) {
    let mut s = Stack::start_ready(name, StackSpec::seed(runtime));
    let threads = 4;
    let load = Load::start(vec![s.lb(0), s.lb(1)], threads);
    std::thread::sleep(Duration::from_millis(800));
    let before = s.status();
    let old = before["children"][0]["pid"].as_i64().expect("lb.0 pid");
    let _ = Command::new("kill").args(["-9", &old.to_string()]).status();
    s.wait_status("lb.0 re-forked", Duration::from_secs(30), |st| {
        st["children"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["name"] == "lb.0" && c["state"] == "running" && c["pid"].as_i64() != Some(old)
            })
        })
    });
    std::thread::sleep(Duration::from_millis(800));
    let c = load.finish();
    eprintln!("lb child kill under load: {c:?}");
    assert_eq!(c.refused, 0, "no refused connection: {:?}", c.errors);
    assert!(
        c.failed <= threads as u64,
        "only requests in flight on the killed child may fail: {c:?}"
    );
    assert!(c.ok > 0);
    for _ in 0..20 {
        hello(s.lb(0)).expect("lb.0 serves after the re-fork");
    }
    assert!(s.log_text().contains("event=lb_child_died lb=0"));
}

/// Kill a worker (kill -9 / docker kill): it is replaced on its port; requests keep
/// succeeding and spread over the three workers again.
pub fn worker_killed(name: &str, runtime: &'static str) {
    let mut s = Stack::start_ready(name, StackSpec::seed(runtime));
    let st = s.status();
    let port = s.worker_port as u64;
    let old_id = worker_field(&st, port, "id");
    if runtime == "docker" {
        let cid = worker_field(&st, port, "container");
        let cid = cid.as_str().expect("container id");
        let out = Command::new("docker")
            .args(["kill", cid])
            .output()
            .expect("docker kill");
        assert!(out.status.success(), "docker kill: {out:?}");
    } else {
        let pid = worker_field(&st, port, "pid").as_i64().expect("worker pid");
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        // Right away, before any replacement is healthy: the LB children stop sending to
        // it (a refused upstream connect is retried on the next worker).
        for i in 0..12 {
            hello(s.lb(i % 2)).unwrap_or_else(|e| panic!("hello {i} after the kill: {e:?}"));
        }
    }
    let after = s.wait_status("worker replaced", Duration::from_secs(90), |st| {
        worker_field(st, port, "state") == "active"
            && worker_field(st, port, "restarts").as_u64() >= Some(1)
            && (runtime != "docker" || worker_field(st, port, "id") != old_id)
            && st["workers_actual"].as_u64() == Some(3)
    });
    let ids: BTreeSet<String> = after["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter_map(|w| w["id"].as_str().map(str::to_string))
        .collect();
    // The children learn the new backend set from the supervisor at once; allow a moment.
    let mut seen = BTreeSet::new();
    for i in 0..60 {
        let id = hello(s.lb(i % 2)).unwrap_or_else(|e| panic!("hello {i}: {e:?}"));
        seen.insert(id);
    }
    assert_eq!(seen, ids, "requests spread over the replacement too");
    assert!(s.log_text().contains("event=worker_died"));
}

/// SIGHUP with a changed worker count under continuous load: 0 refused, 0 failed, and the
/// count changes in /status (up to 5, then down to 2, drained before stopped).
pub fn reload_under_load(name: &str, runtime: &'static str) {
    let mut s = Stack::start_ready(name, StackSpec::seed(runtime));
    let load = Load::start(vec![s.lb(0), s.lb(1)], 6);
    std::thread::sleep(Duration::from_millis(1000));
    s.write_config(5, "retries: 3");
    s.signal(SIGHUP);
    let t = if runtime == "docker" { 120 } else { 60 };
    s.wait_status("5 workers after reload", Duration::from_secs(t), |st| {
        st["workers_desired"].as_u64() == Some(5)
            && st["workers_actual"].as_u64() == Some(5)
            && st["reloads"].as_u64() == Some(1)
    });
    std::thread::sleep(Duration::from_millis(1000));
    s.write_config(2, "retries: 3");
    s.signal(SIGHUP);
    s.wait_status("2 workers after reload", Duration::from_secs(t), |st| {
        st["workers_desired"].as_u64() == Some(2)
            && st["workers_actual"].as_u64() == Some(2)
            && st["workers"].as_array().map(|w| w.len()) == Some(2)
            && st["reloads"].as_u64() == Some(2)
    });
    std::thread::sleep(Duration::from_millis(1000));
    let c = load.finish();
    eprintln!(
        "reload under load ({runtime}): ok={} refused={} failed={} per worker={:?}",
        c.ok, c.refused, c.failed, c.by_worker
    );
    assert_eq!(
        c.refused, 0,
        "no refused connection across reloads: {:?}",
        c.errors
    );
    assert_eq!(
        c.failed, 0,
        "no failed request across reloads: {:?}",
        c.errors
    );
    assert!(c.ok > 50, "the load ran: {c:?}");
    assert!(
        c.by_worker.len() >= 5,
        "the scaled-up workers served: {:?}",
        c.by_worker
    );
    let log = s.log_text();
    assert!(log.contains("event=worker_draining"));
    assert!(log.contains("event=worker_drained") || log.contains("event=worker_drain_timeout"));
}

/// kill -9 the supervisor: its LB children (and process workers) exit; docker containers
/// are left, and the next start removes them before starting its own.
pub fn supervisor_killed(name: &str, runtime: &'static str) {
    let mut s = Stack::start_ready(name, StackSpec::seed(runtime));
    let st = s.status();
    let children = child_pids(&st);
    let workers = worker_pids(&st);
    assert_eq!(children.len(), 2);
    let old_containers = if runtime == "docker" {
        let c = containers(&s.instance);
        assert_eq!(c.len(), 3, "three containers: {c:?}");
        c
    } else {
        assert_eq!(workers.len(), 3);
        Vec::new()
    };
    let mut p = s.proc.take().expect("supervisor");
    p.signal(SIGKILL);
    let _ = p.wait_exit(Duration::from_secs(10));
    drop(p);
    wait_until(
        "LB children exit with the supervisor",
        Duration::from_secs(15),
        || children.iter().all(|&pid| !alive(pid)),
    );
    wait_until(
        "worker processes exit with the supervisor",
        Duration::from_secs(30),
        || workers.iter().all(|&pid| !alive(pid)),
    );
    if runtime == "docker" {
        assert_eq!(
            containers(&s.instance).len(),
            3,
            "containers outlive a killed supervisor (the next start cleans them)"
        );
    }
    s.start();
    s.wait_ready();
    if runtime == "docker" {
        let now = containers(&s.instance);
        assert_eq!(now.len(), 3, "only the new run's containers: {now:?}");
        for c in &now {
            assert!(!old_containers.contains(c), "leftover {c} was removed");
        }
        assert!(
            s.log_text()
                .contains("event=removing_leftover_containers count=3")
        );
    }
    hello(s.lb(0)).expect("the new run serves");
}

/// SIGTERM under load: exit 0, nothing left running, every answered request is in the stats.
pub fn sigterm(name: &str, runtime: &'static str) {
    let mut s = Stack::start_ready(name, StackSpec::seed(runtime));
    let st = s.status();
    let children = child_pids(&st);
    let workers = worker_pids(&st);
    let load = Load::start(vec![s.lb(0), s.lb(1)], 4);
    std::thread::sleep(Duration::from_millis(1500));
    s.signal(SIGTERM);
    let mut p = s.proc.take().expect("supervisor");
    let code = p.wait_exit(Duration::from_secs(90));
    let c = load.finish();
    eprintln!("sigterm under load ({runtime}): {c:?}");
    assert_eq!(code, Some(0), "clean stop exits 0\n{}", s.log_tail());
    for pid in children.iter().chain(workers.iter()) {
        assert!(!alive(*pid), "pid {pid} still running after the stop");
    }
    if runtime == "docker" {
        assert_eq!(
            containers(&s.instance),
            Vec::<String>::new(),
            "no container left"
        );
    }
    assert!(c.ok > 0);
    let (total, ok) = stats_from_db(&s.db());
    assert_eq!(
        (total, ok),
        (c.ok, c.ok),
        "every answered hello (and nothing else) is in the flushed stats"
    );
    let log = s.log_text();
    assert!(
        log.contains("event=stopped exit_code=0"),
        "{}",
        s.log_tail()
    );
}

/// A broken config on reload: logged, old config kept, still serving; a fixed one applies.
pub fn broken_reload(name: &str, runtime: &'static str) {
    let mut s = Stack::start_ready(name, StackSpec::seed(runtime));
    std::fs::write(&s.config, "worker: [\n").expect("write");
    s.signal(SIGHUP);
    let st = s.wait_status("reload rejected", Duration::from_secs(20), |st| {
        st["last_reload_error"].is_string()
    });
    let err = st["last_reload_error"].as_str().unwrap_or("");
    assert!(
        err.contains("config.yaml"),
        "the error names the file: {err}"
    );
    assert_eq!(st["state"], "running");
    assert_eq!(st["workers_actual"].as_u64(), Some(3));
    assert_eq!(st["reloads"].as_u64(), Some(0));
    for i in 0..6 {
        hello(s.lb(i % 2)).expect("still serving with the old config");
    }
    assert!(s.log_text().contains("event=reload_rejected"));
    s.write_config(2, "");
    s.signal(SIGHUP);
    s.wait_status("fixed config applied", Duration::from_secs(60), |st| {
        st["last_reload_error"].is_null()
            && st["workers_desired"].as_u64() == Some(2)
            && st["workers"].as_array().map(|w| w.len()) == Some(2)
            && st["reloads"].as_u64() == Some(1)
    });
}

/// An invalid config at start: exit 2 with the config error.
pub fn invalid_config_exits_2() {
    let dir = common::TempDir::new("badcfg");
    let path = dir.join("config.yaml");
    std::fs::write(&path, "worker: 3\npool: lots\n").expect("write");
    let out = Command::new(common::bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.yaml:2"), "names file and line: {err}");
    assert!(err.contains("pool"), "names the key: {err}");
}

/// A worker that cannot start (its port is taken): start fails with an error naming it,
/// and nothing is left running.
pub fn worker_never_healthy(name: &str) {
    let mut spec = StackSpec::seed("process");
    spec.workers = 2;
    spec.start_timeout_ms = 3000;
    let mut s = Stack::new(name, spec);
    // Hold the second worker's port so that worker can never listen.
    let blocker = std::net::TcpListener::bind(("127.0.0.1", s.worker_port + 1)).expect("bind");
    s.start();
    let code = s
        .proc
        .as_mut()
        .expect("proc")
        .wait_exit(Duration::from_secs(60));
    drop(blocker);
    assert_eq!(code, Some(1), "{}", s.log_tail());
    let log = s.log_text();
    assert!(
        log.contains(&format!("worker on port {}", s.worker_port + 1)),
        "the error names the worker: {}",
        s.log_tail()
    );
    assert!(log.contains("event=stopped"), "{}", s.log_tail());
}

/// A reload that needs new LB children (`mode` and `pool` change) under load: the new
/// children are forked on the kept listeners before the old ones drain, so no connection is
/// refused and no request fails; the new port serves too.
pub fn reload_replaces_children(name: &str, runtime: &'static str) {
    let mut s = Stack::start_ready(name, StackSpec::seed(runtime));
    let old: Vec<i64> = child_pids(&s.status());
    let load = Load::start(vec![s.lb(0), s.lb(1)], 6);
    std::thread::sleep(Duration::from_millis(1000));
    // pool 2 -> 3 in TCP mode: lb.0 and lb.1 are replaced (mode), lb.2 is new on a new port.
    let text = s
        .config_text(3, "mode: tcp")
        .replace("pool: 2\n", "pool: 3\n");
    std::fs::write(&s.config, text).expect("write config");
    s.signal(SIGHUP);
    let st = s.wait_status("3 new children", Duration::from_secs(60), |st| {
        let cs = st["children"].as_array().cloned().unwrap_or_default();
        cs.len() == 3
            && cs
                .iter()
                .all(|c| c["state"] == "running" && !old.contains(&c["pid"].as_i64().unwrap_or(0)))
    });
    std::thread::sleep(Duration::from_millis(1000));
    let c = load.finish();
    eprintln!("reload replacing children ({runtime}): {c:?}");
    assert_eq!(c.refused, 0, "no refused connection: {:?}", c.errors);
    assert_eq!(c.failed, 0, "no failed request: {:?}", c.errors);
    assert!(c.ok > 20, "the load ran: {c:?}");
    assert_eq!(st["listeners"].as_array().map(|l| l.len()), Some(3));
    for pid in old {
        wait_until(
            "old children exit after draining",
            Duration::from_secs(30),
            || !alive(pid),
        );
    }
    hello(s.lb(2)).expect("the new port serves");
}

/// A second SIGTERM while the first one waits for a slow client forces the stop: exit 1 at
/// once, no child or worker left.
pub fn second_signal_forces(name: &str, runtime: &'static str) {
    let mut spec = StackSpec::seed(runtime);
    spec.drain_timeout_ms = 60_000;
    let mut s = Stack::start_ready(name, spec);
    let st = s.status();
    let pids: Vec<i64> = child_pids(&st)
        .into_iter()
        .chain(worker_pids(&st))
        .collect();
    // Half a request head: the LB child keeps waiting for it while it drains.
    let mut slow = std::net::TcpStream::connect(s.lb(0)).expect("connect");
    std::io::Write::write_all(&mut slow, b"GET /api/v1/hello HTTP/1.1\r\n").expect("write");
    std::thread::sleep(Duration::from_millis(300));
    s.signal(SIGTERM);
    std::thread::sleep(Duration::from_millis(1000));
    let p = s.proc.as_mut().expect("supervisor");
    assert!(p.alive(), "the first SIGTERM waits for the draining child");
    p.signal(SIGTERM);
    let code = p.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "a forced stop exits 1\n{}", s.log_tail());
    wait_until("everything killed", Duration::from_secs(15), || {
        pids.iter().all(|&pid| !alive(pid))
    });
    if runtime == "docker" {
        assert_eq!(containers(&s.instance), Vec::<String>::new());
    }
    assert!(s.log_text().contains("event=forced_stop"));
    drop(slow);
}
