//! The swarm runtime's docker CLI calls (`runtime: swarm`): the manager check, the worker
//! service (created or adopted by label, dnsrr with host-mode published ports), its scaling,
//! and task discovery (`docker service ps`, `docker inspect` of the tasks, `docker node
//! inspect`). Like `docker.rs`, every function only builds a `Command` or parses its output;
//! the driver (`swarm_driver.rs`) runs them as jobs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use super::docker::LABEL_INSTANCE;
use super::job::Job;

/// Where the database lives inside a task: a node-local named volume (a FROM-scratch image
/// has no /tmp, and the node's tasks share the file as containers on one host do).
pub const DATA_DIR: &str = "/data";

fn docker() -> Command {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_BUILDKIT", "0");
    cmd
}

/// `docker info`: the engine's swarm state and whether it is a manager.
pub fn manager_info() -> Command {
    let mut cmd = docker();
    cmd.args([
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]);
    cmd
}

/// Reads [`manager_info`]'s answer: `Ok` on a manager of an active swarm.
pub fn parse_manager_info(success: bool, stdout: &str, error: &str) -> Result<(), String> {
    if !success {
        return Err(format!(
            "runtime: swarm needs a swarm manager, and docker info failed: {error}"
        ));
    }
    let mut parts = stdout.split_whitespace();
    let state = parts.next().unwrap_or("");
    let manager = parts.next() == Some("true");
    if state == "active" && manager {
        return Ok(());
    }
    let why = if state == "active" {
        "this engine is a swarm worker, not a manager"
    } else {
        "this engine is not in a swarm"
    };
    Err(format!(
        "runtime: swarm needs a swarm manager (the engine DOCKER_HOST or the docker context points at), but {why} (Swarm.LocalNodeState={})",
        if state.is_empty() { "?" } else { state }
    ))
}

/// Asks the engine whether it is a swarm manager, blocking at most `timeout` (check-config).
pub fn check_manager(timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut job = Job::spawn(manager_info(), "docker info".into(), deadline)
        .map_err(|e| format!("runtime: swarm needs the docker CLI: {e}"))?;
    let out = job.wait_blocking();
    parse_manager_info(out.success, &out.stdout, &out.error_text())
}

/// How the supervisor drives its worker service.
#[derive(Clone, Debug)]
pub struct SwarmCli {
    /// `instance` from the config (the service's label).
    pub instance: String,
    /// The service name (`swarm.service`, default `<instance>-workers`).
    pub service: String,
    /// The worker image reference.
    pub image: String,
    /// True when the image is a local build every node already has (no registry lookup).
    pub local_image: bool,
    /// Placement constraints.
    pub constraints: Vec<String>,
}

/// Everything the service is created with besides the replica count.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    /// Worker port inside each task (published in host mode on a port swarm picks).
    pub port: u16,
    /// File name of the database inside [`DATA_DIR`].
    pub db_name: String,
    /// Mean hello delay in ms.
    pub avg_delay: u64,
    /// Failure rate in percent.
    pub failure: f64,
    /// Time the worker gives in-flight requests on SIGTERM.
    pub drain_timeout_ms: u64,
    /// Time the worker answers `/healthz` 503 on SIGTERM before it closes its listener.
    pub drain_grace_ms: u64,
    /// `--limit-pids`.
    pub pids_limit: u64,
    /// `--limit-memory`, MiB.
    pub memory_mb: u64,
}

impl ServiceSpec {
    /// Swarm's stop grace: the worker's drain grace and drain, plus 5 s.
    pub fn stop_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms + self.drain_timeout_ms) + Duration::from_secs(5)
    }
}

/// The `--label` value marking our service.
fn instance_label(instance: &str) -> String {
    format!("{LABEL_INSTANCE}={instance}")
}

/// The default service name of an instance.
pub fn default_service(instance: &str) -> String {
    format!("{instance}-workers")
}

impl SwarmCli {
    /// Our services (by label): one `id name image` line each.
    pub fn service_ls(&self) -> Command {
        let mut cmd = docker();
        cmd.args([
            "service",
            "ls",
            "--filter",
            &format!("label={}", instance_label(&self.instance)),
            "--format",
            "{{.ID}} {{.Name}} {{.Image}}",
        ]);
        cmd
    }

    /// The attachable overlay network the tasks find each other on (`tasks.<service>`).
    pub fn network(&self) -> String {
        format!("{}-peers", self.service)
    }

    /// Creates [`SwarmCli::network`] (an error when it exists is harmless).
    pub fn network_create(&self) -> Command {
        let mut cmd = docker();
        cmd.args(["network", "create", "--driver", "overlay", "--attachable"])
            .args(["--label", &instance_label(&self.instance)])
            .arg(self.network());
        cmd
    }

    /// Removes [`SwarmCli::network`].
    pub fn network_remove(&self) -> Command {
        let mut cmd = docker();
        cmd.args(["network", "rm"]).arg(self.network());
        cmd
    }

    /// Creates the service with `replicas` tasks (detached: the tasks are discovered later);
    /// with `peers`, on the overlay network, each worker merging its peers' stats.
    pub fn create(&self, spec: &ServiceSpec, replicas: usize, peers: bool) -> Command {
        let grace_ms = spec.stop_grace().as_millis();
        let mut cmd = docker();
        cmd.args(["service", "create", "--detach", "--quiet"])
            .args(["--name", &self.service])
            .args(["--label", &instance_label(&self.instance)])
            .args(["--container-label", &instance_label(&self.instance)])
            // No VIP and no routing mesh: every task is reached directly on its node.
            .args(["--endpoint-mode", "dnsrr"])
            .args(["--publish", &format!("mode=host,target={}", spec.port)])
            .args(["--replicas", &replicas.to_string()])
            .args(["--stop-grace-period", &format!("{grace_ms}ms")])
            .args(["--update-order", "start-first"])
            // One task at a time, the next once the last one's stop grace is over: the slot
            // of the task it replaced has drained and taken the new task by then, so a rolling
            // update never leaves every slot draining at once.
            .args(["--update-parallelism", "1"])
            .args(["--update-delay", &format!("{grace_ms}ms")])
            .args([
                "--mount",
                &format!(
                    "type=volume,source={}-stats,target={DATA_DIR}",
                    self.service
                ),
            ])
            .args(["--cap-drop", "ALL"])
            .arg("--read-only")
            .args(["--limit-pids", &spec.pids_limit.to_string()])
            .args(["--limit-memory", &format!("{}M", spec.memory_mb)]);
        for c in &self.constraints {
            cmd.args(["--constraint", c]);
        }
        if peers {
            cmd.args(["--network", &self.network()]);
        }
        if self.local_image {
            cmd.arg("--no-resolve-image");
        }
        cmd.arg(&self.image).args(self.worker_args(spec, peers));
        cmd
    }

    /// The worker's flags (the image's entrypoint is `/goloadbalancer worker`).
    fn worker_args(&self, spec: &ServiceSpec, peers: bool) -> Vec<String> {
        let mut args: Vec<String> = [
            "--listen",
            "0.0.0.0",
            "--port",
            &spec.port.to_string(),
            "--db",
            &format!("{DATA_DIR}/{}", spec.db_name),
            "--avg-delay",
            &spec.avg_delay.to_string(),
            "--failure",
            &spec.failure.to_string(),
            "--drain-timeout-ms",
            &spec.drain_timeout_ms.to_string(),
            "--drain-grace-ms",
            &spec.drain_grace_ms.to_string(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if peers {
            args.push("--peers".into());
            args.push(format!("tasks.{}:{}", self.service, spec.port));
        }
        args
    }

    /// New worker flags (a reload): swarm replaces the tasks one at a time, new one first.
    pub fn update_args(&self, spec: &ServiceSpec, peers: bool) -> Command {
        let grace_ms = spec.stop_grace().as_millis();
        let mut cmd = docker();
        // No argument holds a space (numbers, a file name, a host:port), so the one string
        // docker splits again is exact.
        cmd.args(["service", "update", "--detach", "--quiet"])
            .args(["--stop-grace-period", &format!("{grace_ms}ms")])
            .args(["--update-delay", &format!("{grace_ms}ms")])
            .args(["--args", &self.worker_args(spec, peers).join(" ")])
            .arg(&self.service);
        cmd
    }

    /// Moves an adopted service to our image (a rolling update, new task first).
    pub fn update_image(&self) -> Command {
        let mut cmd = docker();
        cmd.args(["service", "update", "--detach", "--quiet", "--image"])
            .arg(&self.image);
        if self.local_image {
            cmd.arg("--no-resolve-image");
        }
        cmd.arg(&self.service);
        cmd
    }

    /// `docker service scale <service>=<n>`.
    pub fn scale(&self, replicas: usize) -> Command {
        let mut cmd = docker();
        cmd.args(["service", "scale", "--detach"])
            .arg(format!("{}={replicas}", self.service));
        cmd
    }

    /// Every task of the service (history included), one full id per line.
    pub fn task_ids(&self) -> Command {
        let mut cmd = docker();
        cmd.args(["service", "ps", "-q", "--no-trunc", &self.service]);
        cmd
    }

    /// One [`parse_tasks`] line per task.
    pub fn inspect_tasks(&self, ids: &[String]) -> Command {
        let mut cmd = docker();
        cmd.args([
            "inspect",
            "--type",
            "task",
            "--format",
            "{{.ID}}|{{.NodeID}}|{{.DesiredState}}|{{.Status.State}}|{{.Status.ContainerStatus.ContainerID}}|{{.Status.Err}}|{{json .Status.PortStatus}}",
        ])
        .args(ids);
        cmd
    }

    /// One [`parse_nodes`] line per node.
    pub fn inspect_nodes(&self, ids: &[String]) -> Command {
        let mut cmd = docker();
        cmd.args([
            "node",
            "inspect",
            "--format",
            "{{.ID}} {{.Status.Addr}} {{.Status.State}}",
        ])
        .args(ids);
        cmd
    }

    /// `docker events` of swarm services and nodes (one actor id per line): any line means
    /// "look at the tasks now". Task state changes are not swarm events; the poll sees those.
    pub fn events(&self) -> Command {
        let mut cmd = docker();
        cmd.args([
            "events",
            "--filter",
            "scope=swarm",
            "--filter",
            "type=service",
            "--filter",
            "type=node",
            "--format",
            "{{.Actor.ID}}",
        ]);
        cmd
    }

    /// `docker service rm`.
    pub fn remove(&self) -> Command {
        let mut cmd = docker();
        cmd.args(["service", "rm", &self.service]);
        cmd
    }

    /// This engine's containers of the service (a stop waits for them to go).
    pub fn local_containers(&self) -> Command {
        let mut cmd = docker();
        cmd.args([
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={}", self.service),
        ]);
        cmd
    }
}

/// One service from [`SwarmCli::service_ls`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLine {
    /// Service id.
    pub id: String,
    /// Service name.
    pub name: String,
    /// Its image (a digest may follow after `@`).
    pub image: String,
}

/// Parses [`SwarmCli::service_ls`] output.
pub fn parse_services(out: &str) -> Vec<ServiceLine> {
    out.lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some(ServiceLine {
                id: p.next()?.to_string(),
                name: p.next()?.to_string(),
                image: p.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// One task from [`SwarmCli::inspect_tasks`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// Task id.
    pub id: String,
    /// Node id.
    pub node: String,
    /// `running`, `shutdown`, `remove`, ...
    pub desired: String,
    /// `running`, `starting`, `failed`, ...
    pub state: String,
    /// Full container id (empty before the container exists).
    pub container: String,
    /// Swarm's error for the task, when it failed.
    pub error: String,
    /// The host-mode port published on its node (swarm stops reporting it once it stops).
    pub port: Option<u16>,
}

impl Task {
    /// Running, and swarm wants it running.
    pub fn serving(&self) -> bool {
        self.state == "running" && self.desired == "running"
    }
}

/// Parses [`SwarmCli::inspect_tasks`] output (lines of tasks that vanished are simply absent).
pub fn parse_tasks(out: &str) -> Vec<Task> {
    out.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.trim().splitn(7, '|').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(Task {
                id: f[0].to_string(),
                node: f[1].to_string(),
                desired: f[2].to_string(),
                state: f[3].to_string(),
                container: f[4].to_string(),
                error: f[5].to_string(),
                port: published_port(f[6]),
            })
        })
        .collect()
}

/// The first published port in a task's `{{json .Status.PortStatus}}`.
fn published_port(json: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("Ports")?
        .as_array()?
        .iter()
        .find_map(|p| p.get("PublishedPort")?.as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// A node from [`SwarmCli::inspect_nodes`]: its address, and whether it is `ready`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLine {
    /// Address tasks' published ports are reached at.
    pub addr: Option<IpAddr>,
    /// `ready`, `down`, `unknown`.
    pub state: String,
}

/// Parses [`SwarmCli::inspect_nodes`] output, by node id.
pub fn parse_nodes(out: &str) -> BTreeMap<String, NodeLine> {
    out.lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            let id = p.next()?.to_string();
            let addr = p.next().and_then(|a| a.parse().ok());
            let state = p.next().unwrap_or("").to_string();
            Some((id, NodeLine { addr, state }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_info_answers() {
        assert_eq!(parse_manager_info(true, "active true\n", ""), Ok(()));
        let worker = parse_manager_info(true, "active false", "").unwrap_err();
        assert!(worker.contains("swarm worker, not a manager"), "{worker}");
        let none = parse_manager_info(true, "inactive false", "").unwrap_err();
        assert!(none.contains("not in a swarm"), "{none}");
        assert!(none.starts_with("runtime: swarm"), "{none}");
        let down = parse_manager_info(false, "", "Cannot connect").unwrap_err();
        assert!(down.contains("Cannot connect"), "{down}");
    }

    #[test]
    fn parses_tasks_with_and_without_ports() {
        let out = "t1|n1|running|running|c1||{\"Ports\":[{\"Protocol\":\"tcp\",\"TargetPort\":6000,\"PublishedPort\":30001,\"PublishMode\":\"host\"}]}\n\
                   t2|n2|remove|running|c2||{}\n\
                   t3|n1|running|failed|c3|task: non-zero exit (1)|{}\n\
                   garbage\n";
        let t = parse_tasks(out);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].port, Some(30001));
        assert!(t[0].serving());
        assert_eq!(t[1].port, None);
        assert!(!t[1].serving());
        assert_eq!(t[2].error, "task: non-zero exit (1)");
    }

    #[test]
    fn parses_nodes_and_services() {
        let n = parse_nodes("n1 10.0.0.2 ready\nn2 bad down\n");
        assert_eq!(n["n1"].addr, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(n["n2"].addr, None);
        assert_eq!(n["n2"].state, "down");
        let s = parse_services("abc glb-workers img:1@sha256:x\n");
        assert_eq!(s[0].name, "glb-workers");
    }

    #[test]
    fn create_is_dnsrr_with_host_ports_a_volume_and_worker_flags_last() {
        let cli = SwarmCli {
            instance: "glbt".into(),
            service: "glbt-workers".into(),
            image: "goloadbalancer-worker:0123".into(),
            local_image: true,
            constraints: vec!["node.role==worker".into()],
        };
        let spec = ServiceSpec {
            port: 6000,
            db_name: "stats.db".into(),
            avg_delay: 5,
            failure: 0.0,
            drain_timeout_ms: 1000,
            drain_grace_ms: 500,
            pids_limit: 64,
            memory_mb: 128,
        };
        let args: Vec<String> = cli
            .create(&spec, 3, true)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for part in [
            "--name glbt-workers",
            "--label goloadbalancer.instance=glbt",
            "--endpoint-mode dnsrr",
            "--publish mode=host,target=6000",
            "--replicas 3",
            "--stop-grace-period 6500ms",
            "--update-order start-first --update-parallelism 1 --update-delay 6500ms",
            "--mount type=volume,source=glbt-workers-stats,target=/data",
            "--constraint node.role==worker",
            "--no-resolve-image",
            "--db /data/stats.db",
            "--drain-grace-ms 500",
            "--network glbt-workers-peers",
            "--peers tasks.glbt-workers:6000",
        ] {
            assert!(joined.contains(part), "{part} missing: {joined}");
        }
        let image = args.iter().position(|a| a == "goloadbalancer-worker:0123");
        let listen = args.iter().position(|a| a == "--listen");
        assert!(image < listen, "{joined}");
        let update: Vec<String> = cli
            .update_args(&spec, true)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = update.iter().position(|a| a == "--args").expect("--args");
        assert!(
            update[at + 1].starts_with("--listen 0.0.0.0 --port 6000 --db /data/stats.db"),
            "{update:?}"
        );
        assert!(update[at + 1].ends_with("--peers tasks.glbt-workers:6000"));
        assert_eq!(update.last().map(String::as_str), Some("glbt-workers"));
    }
}
