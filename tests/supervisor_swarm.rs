//! The supervisor with `runtime: swarm` on a single-node swarm made for the test
//! (`docker swarm init --advertise-addr 127.0.0.1`) and left again afterwards, failure
//! included. Skipped (with `SKIPPED reason` printed) without a docker engine, or when the
//! engine is already part of a swarm (the test must not touch a swarm it did not make).

mod common;
#[path = "supervisor_support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use support::{Load, Stack, StackSpec, hello, wait_until};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;

/// A docker call's trimmed stdout, or its stderr as the error.
fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The swarm this test made: left (`docker swarm leave --force`) when dropped, and the
/// service's node-local volume removed.
struct SwarmGuard {
    volumes: Vec<String>,
}

impl SwarmGuard {
    /// Makes a single-node swarm, or says why the test is skipped.
    fn init(test: &str) -> Option<SwarmGuard> {
        if let Err(why) = support::docker_available() {
            eprintln!("SKIPPED {test}: no docker engine ({why})");
            return None;
        }
        match docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]) {
            Ok(state) if state == "inactive" => {}
            Ok(state) => {
                eprintln!("SKIPPED {test}: this engine is already in a swarm (state {state})");
                return None;
            }
            Err(e) => {
                eprintln!("SKIPPED {test}: docker info failed ({e})");
                return None;
            }
        }
        if let Err(e) = docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]) {
            eprintln!("SKIPPED {test}: docker swarm init failed ({e})");
            let _ = docker(&["swarm", "leave", "--force"]);
            return None;
        }
        Some(SwarmGuard {
            volumes: Vec::new(),
        })
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        let _ = docker(&["swarm", "leave", "--force"]);
        // The tasks' containers go with the swarm; their volumes are ours to remove.
        for v in &self.volumes {
            for _ in 0..50 {
                if docker(&["volume", "rm", "-f", v]).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn spec() -> StackSpec {
    StackSpec {
        workers: 3,
        drain_timeout_ms: 3000,
        worker_ports: 1,
        ..StackSpec::seed("swarm")
    }
}

/// Our services (by instance label).
fn services(instance: &str) -> String {
    docker(&[
        "service",
        "ls",
        "-q",
        "--filter",
        &format!("label=goloadbalancer.instance={instance}"),
    ])
    .unwrap_or_else(|e| e)
}

#[test]
fn swarm_serves_round_robin_scales_under_load_and_stops_clean() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let test = "swarm_serves_round_robin_scales_under_load_and_stops_clean";
    let Some(mut guard) = SwarmGuard::init(test) else {
        return;
    };
    let mut s = Stack::new("sw-main", spec());
    let service = format!("{}-workers", s.instance);
    guard.volumes.push(format!("{service}-stats"));
    s.start();
    s.wait_status("3 swarm tasks active", Duration::from_secs(240), |st| {
        st["state"] == "running" && st["workers_actual"].as_u64() == Some(3)
    });
    let st = s.status();
    assert_eq!(st["runtime"], "swarm", "{st}");
    let ids: std::collections::BTreeSet<String> = s.active_worker_ids().into_iter().collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    for id in &ids {
        assert_eq!(
            id.len(),
            12,
            "a task's worker id is its container's short id: {id}"
        );
    }
    // Round robin over the three tasks.
    let mut per = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..30 {
        let id = hello(s.lb(0)).unwrap_or_else(|e| panic!("hello {i}: {e:?}\n{}", s.log_tail()));
        *per.entry(id).or_default() += 1;
    }
    assert_eq!(
        per.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        ids
    );
    assert!(per.values().all(|n| *n == 10), "round robin: {per:?}");
    let tasks = docker(&[
        "service",
        "ps",
        "-q",
        "--filter",
        "desired-state=running",
        &service,
    ])
    .expect("service ps");
    assert_eq!(tasks.lines().count(), 3, "{tasks}");

    // Reload 3 -> 5 -> 2 under load: docker service scale, nothing lost.
    let load = Load::start(vec![s.lb(0), s.lb(1)], 4);
    std::thread::sleep(Duration::from_millis(1000));
    s.write_config(5, "retries: 3");
    s.signal(SIGHUP);
    s.wait_status("5 tasks after reload", Duration::from_secs(180), |st| {
        st["workers_actual"].as_u64() == Some(5) && st["reloads"].as_u64() == Some(1)
    });
    std::thread::sleep(Duration::from_millis(1000));
    s.write_config(2, "retries: 3");
    s.signal(SIGHUP);
    s.wait_status("2 tasks after reload", Duration::from_secs(180), |st| {
        st["workers_actual"].as_u64() == Some(2)
            && st["workers"].as_array().map(|w| w.len()) == Some(2)
            && st["reloads"].as_u64() == Some(2)
    });
    wait_until("swarm runs 2 tasks", Duration::from_secs(60), || {
        docker(&[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            &service,
        ])
        .map(|t| t.lines().count() == 2)
        .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_millis(1000));
    let c = load.finish();
    eprintln!(
        "swarm reload 3->5->2 under load: ok={} refused={} failed={} workers={}",
        c.ok,
        c.refused,
        c.failed,
        c.by_worker.len()
    );
    assert_eq!(c.refused, 0, "{:?}", c.errors);
    assert_eq!(c.failed, 0, "{:?}", c.errors);
    assert!(
        c.by_worker.len() >= 5,
        "the scaled-out tasks served: {:?}",
        c.by_worker
    );

    // A reload changing the worker flags: a rolling update of the service; each old task
    // leaves (drained), its slot relaunched onto a new one; nothing fails.
    let old: std::collections::BTreeSet<String> = s.active_worker_ids().into_iter().collect();
    let load = Load::start(vec![s.lb(0), s.lb(1)], 4);
    s.spec.avg_delay = 1;
    s.write_config(2, "retries: 3");
    s.signal(SIGHUP);
    s.wait_status(
        "2 new tasks after the update",
        Duration::from_secs(180),
        |st| {
            let ws = st["workers"].as_array().cloned().unwrap_or_default();
            ws.len() == 2
                && ws.iter().all(|w| {
                    w["state"] == "active" && !old.contains(w["id"].as_str().unwrap_or(""))
                })
        },
    );
    std::thread::sleep(Duration::from_millis(1000));
    let c = load.finish();
    eprintln!(
        "swarm rolling update under load: ok={} refused={} failed={}",
        c.ok, c.refused, c.failed
    );
    assert_eq!(c.refused, 0, "{:?}", c.errors);
    assert_eq!(c.failed, 0, "{:?}", c.errors);
    assert!(s.log_text().contains("event=service_update"));

    // SIGTERM: drain, scale in, remove the service; nothing of it left.
    s.signal(SIGTERM);
    let mut p = s.proc.take().expect("supervisor");
    let code = p.wait_exit(Duration::from_secs(120));
    assert_eq!(code, Some(0), "clean stop exits 0\n{}", s.log_tail());
    assert_eq!(services(&s.instance), "", "no service left");
    let left = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ])
    .unwrap_or_default();
    assert_eq!(left, "", "no task container left\n{}", s.log_tail());
    let log = s.log_text();
    for line in log.lines().filter(|l| l.contains("event=worker_task_")) {
        eprintln!("{line}");
    }
    assert!(log.contains("event=service_create"), "{}", s.log_tail());
    assert!(log.contains("event=service_scale"), "{}", s.log_tail());
    assert!(log.contains("event=service_removed"), "{}", s.log_tail());
    assert!(
        !log.contains("event=peers_network_failed"),
        "{}",
        s.log_tail()
    );
    let nets = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name={service}-peers"),
    ]);
    assert_eq!(nets.unwrap_or_default(), "", "the peers network is removed");
}

#[test]
fn swarm_killed_task_is_replaced_and_a_restarted_supervisor_adopts_the_service() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let test = "swarm_killed_task_is_replaced_and_a_restarted_supervisor_adopts_the_service";
    let Some(mut guard) = SwarmGuard::init(test) else {
        return;
    };
    let mut s = Stack::new("sw-adopt", spec());
    let service = format!("{}-workers", s.instance);
    guard.volumes.push(format!("{service}-stats"));
    s.start();
    s.wait_status("3 swarm tasks active", Duration::from_secs(240), |st| {
        st["state"] == "running" && st["workers_actual"].as_u64() == Some(3)
    });
    let before: std::collections::BTreeSet<String> = s.active_worker_ids().into_iter().collect();
    // A task's container killed: swarm starts a new task, the supervisor replaces the worker.
    let victim = before.iter().next().expect("a worker").clone();
    docker(&["kill", &victim]).expect("docker kill of a task container");
    s.wait_status(
        "a new task replaces the killed one",
        Duration::from_secs(120),
        |st| {
            let ids: Vec<&str> = st["workers"]
                .as_array()
                .map(|w| {
                    w.iter()
                        .filter(|w| w["state"] == "active")
                        .filter_map(|w| w["id"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            ids.len() == 3 && !ids.contains(&victim.as_str())
        },
    );
    assert!(
        s.log_text().contains("event=worker_task_gone"),
        "{}",
        s.log_tail()
    );
    let serving: std::collections::BTreeSet<String> = s.active_worker_ids().into_iter().collect();
    // kill -9 of the supervisor: the service keeps running; the next start adopts its tasks.
    s.signal(9);
    let mut p = s.proc.take().expect("supervisor");
    let _ = p.wait_exit(Duration::from_secs(10));
    assert_eq!(
        services(&s.instance).lines().count(),
        1,
        "the service outlives a crash"
    );
    s.start();
    s.wait_status("the same 3 tasks adopted", Duration::from_secs(120), |st| {
        st["state"] == "running" && st["workers_actual"].as_u64() == Some(3)
    });
    let adopted: std::collections::BTreeSet<String> = s.active_worker_ids().into_iter().collect();
    assert_eq!(adopted, serving, "adopted, not recreated\n{}", s.log_tail());
    assert!(
        s.log_text().contains("event=service_adopted"),
        "{}",
        s.log_tail()
    );
    s.signal(SIGTERM);
    let mut p = s.proc.take().expect("supervisor");
    assert_eq!(
        p.wait_exit(Duration::from_secs(120)),
        Some(0),
        "{}",
        s.log_tail()
    );
    assert_eq!(services(&s.instance), "", "no service left");
}
