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
const SIGUSR2: i32 = 12;

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
            }) && ids.iter().all(|id| {
                text.contains(&format!(
                    "goloadbalancer_backend_retries_total{{backend=\"{id}\"}} 0\n"
                ))
            }) && text.contains("goloadbalancer_retry_budget_refused_total 0\n")
                && text.contains("goloadbalancer_queue_depth 0\n")
                && text.contains("goloadbalancer_queue_requests_total{outcome=\"expired\"} 0\n")
                && text.contains("goloadbalancer_workers_desired 3\n")
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
    let killed_at = std::time::Instant::now();
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
    if runtime == "docker" {
        s.wait_status("the death noticed", Duration::from_secs(30), |st| {
            worker_field(st, port, "id") != old_id || worker_field(st, port, "state") != "active"
        });
        eprintln!(
            "FIGURE worker kill (docker): death noticed {} ms after the kill",
            killed_at.elapsed().as_millis()
        );
    }
    let after = s.wait_status("worker replaced", Duration::from_secs(90), |st| {
        worker_field(st, port, "state") == "active"
            && worker_field(st, port, "restarts").as_u64() >= Some(1)
            && (runtime != "docker" || worker_field(st, port, "id") != old_id)
            && st["workers_actual"].as_u64() == Some(3)
    });
    eprintln!(
        "FIGURE worker kill ({runtime}): replacement active {} ms after the kill",
        killed_at.elapsed().as_millis()
    );
    if runtime == "docker" {
        // From the supervisor's own event times: death seen -> replacement running -> healthy.
        let at = |name: &str| {
            after["events"].as_array().and_then(|evs| {
                evs.iter()
                    .rev()
                    .find(|e| e["event"] == name)
                    .and_then(|e| e["time_ms"].as_u64())
            })
        };
        if let (Some(died), Some(started), Some(healthy)) = (
            at("worker_container_died"),
            at("worker_container_started"),
            at("worker_healthy"),
        ) {
            eprintln!(
                "FIGURE worker kill (docker): event -> replacement container started {} ms, \
                 -> healthy {} ms",
                started.saturating_sub(died),
                healthy.saturating_sub(died)
            );
        }
        assert!(
            s.log_text().contains("source=events"),
            "the death was seen through docker events\n{}",
            s.log_tail()
        );
    }
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

/// kill -9 the supervisor (process runtime): its LB children and worker processes exit with
/// it; the next start launches new workers.
pub fn supervisor_killed(name: &str, runtime: &'static str) {
    let mut s = Stack::start_ready(name, StackSpec::seed(runtime));
    let st = s.status();
    let children = child_pids(&st);
    let workers = worker_pids(&st);
    assert_eq!(children.len(), 2);
    assert_eq!(workers.len(), 3);
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
    s.start();
    s.wait_ready();
    hello(s.lb(0)).expect("the new run serves");
}

/// Worker ids `/worker/stats` (asked of `addr`) has a row for.
pub fn stats_ids(addr: std::net::SocketAddr) -> BTreeSet<String> {
    let Ok(r) = try_get(addr, "/worker/stats") else {
        return BTreeSet::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    v["TotalRequests"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|row| row.as_object())
                .flat_map(|o| o.keys().cloned())
                .filter(|k| k != "total")
                .collect()
        })
        .unwrap_or_default()
}

/// Docker: kill -9 the supervisor while its containers serve; the next start adopts them:
/// the same container ids serve, none is recreated, `/worker/stats` has no new id.
pub fn supervisor_killed_adopts(name: &str) {
    let mut s = Stack::start_ready(name, StackSpec::seed("docker"));
    let st = s.status();
    let children = child_pids(&st);
    let before: BTreeSet<String> = containers(&s.instance).into_iter().collect();
    assert_eq!(before.len(), 3, "three containers: {before:?}");
    let ids: BTreeSet<String> = s.active_worker_ids().into_iter().collect();
    for i in 0..30 {
        hello(s.lb(i % 2)).expect("hello before the kill");
    }
    let worker: std::net::SocketAddr = st["workers"][0]["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("worker address");
    let stats_before = stats_ids(worker);
    let mut p = s.proc.take().expect("supervisor");
    p.signal(SIGKILL);
    let _ = p.wait_exit(Duration::from_secs(10));
    drop(p);
    wait_until("LB children exit with it", Duration::from_secs(15), || {
        children.iter().all(|&pid| !alive(pid))
    });
    let started = std::time::Instant::now();
    s.start();
    s.wait_ready();
    eprintln!(
        "FIGURE adoption: ready {} ms after the restart (3 containers adopted)",
        started.elapsed().as_millis()
    );
    let after: BTreeSet<String> = containers(&s.instance).into_iter().collect();
    assert_eq!(after, before, "the same containers, none recreated");
    let ids_after: BTreeSet<String> = s.active_worker_ids().into_iter().collect();
    assert_eq!(ids_after, ids, "the same worker ids serve");
    let mut seen = BTreeSet::new();
    for i in 0..30 {
        seen.insert(hello(s.lb(i % 2)).expect("hello after the restart"));
    }
    assert_eq!(seen, ids, "answers come from the adopted workers");
    assert_eq!(
        stats_ids(worker),
        stats_before,
        "no new id in /worker/stats"
    );
    assert_eq!(s.log_text().matches("event=worker_adopted ").count(), 3);
}

/// Docker: a container of an older worker image present at start is adopted, then replaced
/// through a surge worker; the active count never falls below `worker`, and the load sees
/// no failure.
pub fn outdated_container_replaced(name: &str) {
    let mut s = Stack::start_ready(name, StackSpec::seed("docker"));
    let st = s.status();
    let port = s.worker_port as u64 + 1;
    let cid = worker_field(&st, port, "container")
        .as_str()
        .expect("container")
        .to_string();
    let image = docker_out(&["inspect", "--format", "{{.Config.Image}}", &cid]);
    let old_tag = format!("goloadbalancer-worker:older-{}", std::process::id());
    docker_out(&["tag", &image, &old_tag]);
    let mut p = s.proc.take().expect("supervisor");
    p.signal(SIGKILL);
    let _ = p.wait_exit(Duration::from_secs(10));
    drop(p);
    // The same worker, from the "older" image.
    let args = docker_out(&["inspect", "--format", "{{json .Config.Cmd}}", &cid]);
    let cmd: Vec<String> = serde_json::from_str(&args).expect("cmd");
    let name_c = docker_out(&["inspect", "--format", "{{.Name}}", &cid]);
    let user = docker_out(&["inspect", "--format", "{{.Config.User}}", &cid]);
    let db_dir = s
        .db()
        .parent()
        .expect("db dir")
        .canonicalize()
        .expect("dir");
    docker_out(&["rm", "-f", &cid]);
    let mut run: Vec<String> = [
        "run",
        "-d",
        "--name",
        name_c.trim_start_matches('/'),
        "--label",
        &format!("goloadbalancer.instance={}", s.instance),
        "--label",
        &format!("goloadbalancer.port={port}"),
        "--user",
        &user,
        "-v",
        &format!("{0}:{0}", db_dir.display()),
        "-p",
        &format!("127.0.0.1:{port}:{port}"),
        &old_tag,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    run.extend(cmd);
    let run_refs: Vec<&str> = run.iter().map(String::as_str).collect();
    let old_cid = docker_out(&run_refs);
    s.start();
    s.wait_ready();
    let load = Load::start(vec![s.lb(0), s.lb(1)], 4);
    let mut lowest = u64::MAX;
    let t0 = std::time::Instant::now();
    s.wait_status(
        "outdated container replaced",
        Duration::from_secs(120),
        |st| {
            lowest = lowest.min(st["workers_actual"].as_u64().unwrap_or(0));
            let ws = st["workers"].as_array().cloned().unwrap_or_default();
            ws.len() == 3
                && ws.iter().all(|w| w["state"] == "active")
                && ws
                    .iter()
                    .all(|w| w["container"].as_str() != Some(old_cid.as_str()))
        },
    );
    let took = t0.elapsed();
    // The old container can be gone (3 active: the surge one among them) a moment before the
    // renewed slot serves and the surge worker goes: the replacement ends with its log line.
    wait_until("worker_replaced logged", Duration::from_secs(60), || {
        s.log_text().contains("event=worker_replaced")
    });
    std::thread::sleep(Duration::from_millis(500));
    let c = load.finish();
    let _ = Command::new("docker").args(["rmi", &old_tag]).output();
    eprintln!(
        "FIGURE outdated replacement: {} ms, lowest active count {lowest}, load {c:?}",
        took.as_millis()
    );
    assert!(lowest >= 3, "the active count fell to {lowest}");
    assert_eq!(c.refused, 0, "{:?}", c.errors);
    assert_eq!(c.failed, 0, "{:?}", c.errors);
    assert!(!containers(&s.instance).contains(&old_cid));
    let log = s.log_text();
    assert!(
        log.contains("event=worker_adopted_outdated"),
        "{}",
        s.log_tail()
    );
    assert!(log.contains("event=worker_replaced"), "{}", s.log_tail());
}

/// A docker CLI call's trimmed stdout; panics when it fails.
fn docker_out(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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

/// Stops a supervisor the test did not start itself (the one an upgrade started) when
/// dropped: SIGTERM, then SIGKILL if it is still there after 60 s.
struct Successor(i64);

impl Drop for Successor {
    fn drop(&mut self) {
        if self.0 <= 0 || !alive(self.0) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .status();
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while alive(self.0) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive(self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// SIGUSR2 under load with the binary in place: a new supervisor takes the listeners over
/// (0 refused, 0 failed), reports its own pid and version, keeps the same worker ids (docker:
/// the same containers; process: the workers restarted one at a time, drained first), and
/// the old one exits.
pub fn upgrade_under_load(name: &str, runtime: &'static str) {
    upgrade(name, runtime, false);
}

/// SIGUSR2 while clients are midway through sending a request head to the old LB children
/// (slow clients, or a client descheduled between two writes): each head finished once the old
/// children drain is answered 200 by a worker, with `Connection: close`, not 503 (the old
/// children keep the backend set they had; the old supervisor used to send them an empty one).
pub fn upgrade_answers_requests_held_by_the_old_children(name: &str) {
    use std::io::Write;
    let mut s = Stack::new(name, StackSpec::seed("process"));
    s.start();
    s.wait_ready();
    let mut held: Vec<std::net::TcpStream> = (0..4)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(s.lb(i % 2)).expect("connect");
            // A started head: not idle, so the drain keeps the connection until its deadline
            // (drain-timeout-ms, 5 s here) instead of closing it after the idle grace.
            c.write_all(b"GET /api/v1/hello HTTP/1.1\r\nHost: t\r\n")
                .expect("write the start of the head");
            c
        })
        .collect();
    // The old children take them now, before any new child exists.
    std::thread::sleep(Duration::from_millis(300));
    s.signal(SIGUSR2);
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while s.log_text().matches("event=drain_started").count() < 2 {
        assert!(
            std::time::Instant::now() < end,
            "the old children never drained\n{}",
            s.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Several of the old supervisor's ticks (100 ms), well inside the drain: whatever it
    // sends its draining children has arrived.
    std::thread::sleep(Duration::from_millis(500));
    for c in &mut held {
        c.set_read_timeout(Some(Duration::from_secs(15))).ok();
        c.write_all(b"\r\n").expect("finish the head");
    }
    for (i, c) in held.iter_mut().enumerate() {
        let r = common::read_response(c, &mut Vec::new(), false)
            .unwrap_or_else(|e| panic!("held request {i}: {e}\n{}", s.log_tail()));
        assert_eq!(
            (r.status, r.header("connection")),
            (200, Some("close")),
            "held request {i}: {}\n{}",
            r.text(),
            s.log_tail()
        );
        assert!(
            r.text().contains("hello from container: "),
            "held request {i}: {}",
            r.text()
        );
    }
}

/// SIGUSR2 after a new binary replaced the running one at its path (rename over it, as a
/// package manager does): the new supervisor runs the new file.
pub fn upgrade_to_a_new_binary(name: &str) {
    upgrade(name, "process", true);
}

fn upgrade(name: &str, runtime: &'static str, new_binary: bool) {
    let mut s = Stack::new(name, StackSpec::seed(runtime));
    let path = s.dir.join("bin-goloadbalancer");
    if new_binary {
        std::fs::copy(common::bin(), &path).expect("copy the binary");
        s.bin = Some(path.clone());
    }
    s.start();
    s.wait_ready();
    let old_pid = i64::from(s.pid());
    let st = s.status();
    let ids: BTreeSet<String> = s.active_worker_ids().into_iter().collect();
    let old_worker_pids = worker_pids(&st);
    let before: BTreeSet<String> = containers(&s.instance).into_iter().collect();
    let load = Load::start(vec![s.lb(0), s.lb(1)], 4);
    std::thread::sleep(Duration::from_millis(800));
    if new_binary {
        // A different file (trailing bytes do not change what the ELF runs), renamed over.
        let next = s.dir.join("bin-goloadbalancer.new");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(b"\nglb-upgrade-test\n");
        std::fs::write(&next, bytes).expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::rename(&next, &path).expect("rename");
    }
    let t0 = std::time::Instant::now();
    s.signal(SIGUSR2);
    let mut successor = Successor(0);
    let mut took_over = None;
    wait_until(
        "the new supervisor serves alone",
        Duration::from_secs(120),
        || {
            let Some(st) = s.try_status() else {
                return false;
            };
            let pid = st["pid"].as_i64().unwrap_or(0);
            if pid != old_pid && successor.0 == 0 {
                successor.0 = pid;
                took_over = Some(t0.elapsed());
            }
            let workers = st["workers"].as_array().cloned().unwrap_or_default();
            let renewed = runtime != "process"
                || worker_pids(&st)
                    .iter()
                    .all(|p| !old_worker_pids.contains(p));
            let now_ids: BTreeSet<String> = workers
                .iter()
                .filter_map(|w| w["id"].as_str().map(str::to_string))
                .collect();
            pid != old_pid
                && !alive(old_pid)
                && st["state"] == "running"
                && now_ids == ids
                && workers.iter().all(|w| w["state"] == "active")
                && renewed
        },
    );
    let done = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let c = load.finish();
    eprintln!(
        "FIGURE upgrade ({runtime}): new supervisor answering /status after {:?}, old one gone \
         and workers settled after {} ms; load {c:?}",
        took_over.map(|d| d.as_millis()),
        done.as_millis()
    );
    assert_eq!(c.refused, 0, "no refused connection: {:?}", c.errors);
    assert_eq!(c.failed, 0, "no failed request: {:?}", c.errors);
    assert!(c.ok > 50, "the load ran: {c:?}");
    let st = s.try_status().expect("status");
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    let after: BTreeSet<String> = st["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter_map(|w| w["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(after, ids, "the same worker ids serve");
    if runtime == "docker" {
        let now: BTreeSet<String> = containers(&s.instance).into_iter().collect();
        assert_eq!(now, before, "the same containers, none recreated");
    }
    let out = Command::new(common::bin())
        .args(["status", "--admin", &s.admin_port.to_string()])
        .output()
        .expect("status command");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("pid {}", successor.0)),
        "status shows the new pid: {table}"
    );
    let log = s.log_text();
    assert!(
        log.contains("event=upgrade_handed_over"),
        "{}",
        s.log_tail()
    );
    if new_binary {
        let exe = std::fs::read_link(format!("/proc/{}/exe", successor.0)).expect("exe");
        assert_eq!(
            exe, path,
            "the new supervisor runs the new file (not a deleted one)"
        );
    }
    for i in 0..6 {
        hello(s.lb(i % 2)).expect("the new supervisor serves");
    }
}

/// `goloadbalancer --version` prints the version.
pub fn version_flag() {
    let out = Command::new(common::bin())
        .arg("--version")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("goloadbalancer {}", env!("CARGO_PKG_VERSION"))
    );
}
