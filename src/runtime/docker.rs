//! The docker runtime: the docker CLI through std::process, one command per step. Every
//! function here only builds a `Command` (or parses its output); the supervisor's loop runs
//! them as [`super::job::Job`]s so a slow engine never blocks it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The worker image's Dockerfile, embedded so an installed binary can build its own image.
pub const DOCKERFILE: &str = include_str!("../../Dockerfile.worker");

/// Label carrying the instance name on every container we start.
pub const LABEL_INSTANCE: &str = "goloadbalancer.instance";
/// Label carrying the worker port.
pub const LABEL_PORT: &str = "goloadbalancer.port";

/// How the supervisor runs docker: the instance's labels and the worker image.
#[derive(Clone, Debug)]
pub struct Docker {
    /// `instance` from the config.
    pub instance: String,
    /// `goloadbalancer-worker:<hash>`.
    pub image: String,
    /// uid:gid the containers run as (never root; see `sys::privilege::prepare_container_database`).
    pub user: (u32, u32),
}

/// Everything a worker container is started with.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Worker port, published on `address` and listened on inside.
    pub port: u16,
    /// Host address the port is published on.
    pub address: IpAddr,
    /// Absolute path of the stats database (its directory is bind-mounted at the same path).
    pub db: PathBuf,
    /// Mean hello delay in ms.
    pub avg_delay: u64,
    /// Failure rate in percent.
    pub failure: f64,
    /// Time the worker gives in-flight requests on SIGTERM.
    pub drain_timeout_ms: u64,
    /// `--pids-limit` (`worker-pids-limit`).
    pub pids_limit: u64,
    /// `--memory`, MiB (`worker-memory-mb`); swap is not allowed on top.
    pub memory_mb: u64,
}

fn docker() -> Command {
    let mut cmd = Command::new("docker");
    // The classic builder: no buildx plugin needed, and FROM scratch pulls nothing.
    cmd.env("DOCKER_BUILDKIT", "0");
    cmd
}

/// `docker info`: succeeds when an engine answers.
pub fn info() -> Command {
    let mut cmd = docker();
    cmd.args(["info", "--format", "{{.ServerVersion}}"]);
    cmd
}

impl Docker {
    /// The filter selecting this instance's containers.
    fn filter(&self) -> String {
        format!("label={LABEL_INSTANCE}={}", self.instance)
    }

    /// The container name of the worker on `port`.
    pub fn name(&self, port: u16) -> String {
        format!("{}-worker-{port}", self.instance)
    }

    /// Lists this instance's containers, running or not: one `id state image port` line
    /// each (the port label last: it may be empty).
    pub fn ps(&self) -> Command {
        let mut cmd = docker();
        cmd.args([
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &self.filter(),
            "--format",
            &format!("{{{{.ID}}}} {{{{.State}}}} {{{{.Image}}}} {{{{.Label \"{LABEL_PORT}\"}}}}"),
        ]);
        cmd
    }

    /// `docker events` of this instance's containers dying, one container id per line, until
    /// killed.
    pub fn events(&self) -> Command {
        let mut cmd = docker();
        cmd.args([
            "events",
            "--filter",
            "type=container",
            "--filter",
            &self.filter(),
            "--filter",
            "event=die",
            "--format",
            "{{.Actor.ID}}",
        ]);
        cmd
    }

    /// `docker image inspect` of the worker image: succeeds when it is already built.
    pub fn image_inspect(&self) -> Command {
        let mut cmd = docker();
        cmd.args(["image", "inspect", "--format", "{{.Id}}", &self.image]);
        cmd
    }

    /// Builds the worker image from a context prepared by [`prepare_context`].
    pub fn build(&self, context: &Path) -> Command {
        let mut cmd = docker();
        cmd.args(["build", "-q", "-t", &self.image, "-f"])
            .arg(context.join("Dockerfile"))
            .arg(context);
        cmd
    }

    /// Removes worker images (ours by label) no container uses and built over a day ago: every
    /// new binary gets a new tag, so old ones would pile up. An image in use is never removed.
    pub fn prune_images(&self) -> Command {
        let mut cmd = docker();
        cmd.args([
            "image",
            "prune",
            "-a",
            "-f",
            "--filter",
            "label=goloadbalancer.worker-image=1",
            "--filter",
            "until=24h",
        ]);
        cmd
    }

    /// Starts the worker container for `spec` (detached; prints the container id).
    pub fn run(&self, spec: &RunSpec) -> Command {
        self.container_command(&["run", "-d"], spec)
    }

    /// Creates the worker container for `spec` without starting it (prints the container id):
    /// a spare, started by [`Docker::start`] when a worker is wanted.
    pub fn create(&self, spec: &RunSpec) -> Command {
        self.container_command(&["create"], spec)
    }

    /// `docker start` of a created container (prints the id given).
    pub fn start(&self, id: &str) -> Command {
        let mut cmd = docker();
        cmd.args(["start", id]);
        cmd
    }

    /// `docker <verb...>` with everything a worker container is made of.
    fn container_command(&self, verb: &[&str], spec: &RunSpec) -> Command {
        let dir = spec
            .db
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let (uid, gid) = self.user;
        let memory = format!("{}m", spec.memory_mb);
        let mut cmd = docker();
        cmd.args(verb)
            .args(["--name", &self.name(spec.port)])
            .args(["--label", &format!("{LABEL_INSTANCE}={}", self.instance)])
            .args(["--label", &format!("{LABEL_PORT}={}", spec.port)])
            // The owner of the database files, never root.
            .args(["--user", &format!("{uid}:{gid}")])
            // A worker parses untrusted bytes: no capability, no way to gain one, nothing
            // writable but the database's directory, bounded processes and memory.
            .args(["--cap-drop", "ALL"])
            .args(["--security-opt", "no-new-privileges"])
            .arg("--read-only")
            .args(["--pids-limit", &spec.pids_limit.to_string()])
            .args(["--memory", &memory, "--memory-swap", &memory])
            .args(["--restart", "no"])
            .arg("-v")
            .arg(format!("{}:{}", dir.display(), dir.display()))
            .args([
                "-p",
                &format!("{}:{}:{}", publish_ip(spec.address), spec.port, spec.port),
            ])
            .arg(&self.image)
            .args(["--listen", "0.0.0.0", "--port", &spec.port.to_string()])
            .arg("--db")
            .arg(&spec.db)
            .args(["--avg-delay", &spec.avg_delay.to_string()])
            .args(["--failure", &spec.failure.to_string()])
            .args(["--drain-timeout-ms", &spec.drain_timeout_ms.to_string()]);
        cmd
    }

    /// `docker stop -t <secs>`: SIGTERM (the worker drains and flushes), SIGKILL after secs.
    pub fn stop(&self, id: &str, grace_secs: u64) -> Command {
        let mut cmd = docker();
        cmd.args(["stop", "-t", &grace_secs.to_string(), id]);
        cmd
    }

    /// The last `lines` lines a container wrote (to tell why it did not come up).
    pub fn logs(&self, id: &str, lines: u32) -> Command {
        let mut cmd = docker();
        cmd.args(["logs", "--tail", &lines.to_string(), id]);
        cmd
    }

    /// `docker rm -f` of containers (ids or names).
    pub fn remove(&self, ids: &[String]) -> Command {
        let mut cmd = docker();
        cmd.args(["rm", "-f"]).args(ids);
        cmd
    }
}

/// A publish address docker accepts (IPv6 in brackets).
fn publish_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// One container from [`Docker::ps`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Full container id.
    pub id: String,
    /// `running`, `exited`, `created`, ...
    pub state: String,
    /// The image it was created from, as docker names it (our tag, or an id once the tag
    /// moved to a newer image).
    pub image: String,
    /// Its `goloadbalancer.port` label, when it parses.
    pub port: Option<u16>,
}

/// Parses [`Docker::ps`] output.
pub fn parse_ps(out: &str) -> Vec<Container> {
    out.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let id = parts.next()?.to_string();
            let state = parts.next().unwrap_or("").to_string();
            let image = parts.next().unwrap_or("").to_string();
            let port = parts.next().and_then(|p| p.parse().ok());
            Some(Container {
                id,
                state,
                image,
                port,
            })
        })
        .collect()
}

/// The short (12 hex) form of a container id: the container's hostname, so the worker id.
pub fn short_id(id: &str) -> String {
    id.trim().chars().take(12).collect()
}

/// 64-bit FNV-1a over a file's bytes: tags the worker image by the binary's content.
pub fn hash_file(path: &Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h);
        }
        for &b in &buf[..n] {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The image tag for a binary: `goloadbalancer-worker:<first 12 hex of its hash>`.
pub fn image_tag(hash: u64) -> String {
    format!("goloadbalancer-worker:{:012x}", hash >> 16)
}

/// Writes a build context (the Dockerfile and a copy of `exe`) under a fresh directory in
/// `parent`; returns the directory (the caller removes it after the build).
pub fn prepare_context(exe: &Path, parent: &Path) -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = parent.join(format!(
        "glb-build-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("Dockerfile"), DOCKERFILE)?;
    let target = dir.join("goloadbalancer");
    if std::fs::hard_link(exe, &target).is_err() {
        std::fs::copy(exe, &target)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ps_lines() {
        let out =
            "abc123 running img:1 6001\ndef456 exited img:0 6002\nbad\n  \nxyz created img:1\n";
        let c = |id: &str, state: &str, image: &str, port| Container {
            id: id.into(),
            state: state.into(),
            image: image.into(),
            port,
        };
        assert_eq!(
            parse_ps(out),
            vec![
                c("abc123", "running", "img:1", Some(6001)),
                c("def456", "exited", "img:0", Some(6002)),
                c("bad", "", "", None),
                c("xyz", "created", "img:1", None),
            ]
        );
    }

    #[test]
    fn image_tag_is_twelve_hex_digits() {
        let tag = image_tag(0x0123_4567_89ab_cdef);
        assert_eq!(tag, "goloadbalancer-worker:0123456789ab");
    }

    #[test]
    fn fnv_matches_reference_values() {
        let dir = std::env::temp_dir().join(format!("glb-fnv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("a");
        std::fs::write(&p, b"a").expect("write");
        // FNV-1a 64 of "a" (reference value from the FNV spec's test suite).
        assert_eq!(hash_file(&p).expect("hash"), 0xaf63_dc4c_8601_ec8c);
        std::fs::write(&p, b"").expect("write");
        assert_eq!(hash_file(&p).expect("hash"), 0xcbf2_9ce4_8422_2325);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn run_command_carries_labels_name_mount_and_publish() {
        let d = Docker {
            instance: "glbt".into(),
            image: "goloadbalancer-worker:000000000000".into(),
            user: (999, 998),
        };
        let cmd = d.run(&RunSpec {
            port: 6001,
            address: "127.0.0.1".parse().expect("ip"),
            db: PathBuf::from("/var/lib/glb/stats.db"),
            avg_delay: 5,
            failure: 0.0,
            drain_timeout_ms: 1000,
            pids_limit: 64,
            memory_mb: 128,
        });
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("--name glbt-worker-6001"), "{joined}");
        assert!(joined.contains("--label goloadbalancer.instance=glbt"));
        assert!(joined.contains("--label goloadbalancer.port=6001"));
        assert!(joined.contains("-v /var/lib/glb:/var/lib/glb"));
        assert!(joined.contains("-p 127.0.0.1:6001:6001"));
        assert!(joined.contains("--listen 0.0.0.0 --port 6001"));
        assert!(joined.contains("--db /var/lib/glb/stats.db"));
        for hardening in [
            "--user 999:998",
            "--cap-drop ALL",
            "--security-opt no-new-privileges",
            "--read-only",
            "--pids-limit 64",
            "--memory 128m --memory-swap 128m",
        ] {
            assert!(joined.contains(hardening), "{hardening} missing: {joined}");
        }
        // The image comes after every option.
        let image = args
            .iter()
            .position(|a| a.starts_with("goloadbalancer-worker:"));
        let last_option = args.iter().rposition(|a| a == "-p");
        assert!(image > last_option, "{joined}");
    }
}
