//! scripts/install.sh, staged under a temp root (`--root`): what it installs, that a second run
//! changes nothing, that an edited config survives, the docker-group drop-in, and that
//! `--uninstall` takes everything back. And once as a real install (no `--root`), inside a
//! private mount namespace whose /etc, /var/lib and /run are empty tmpfs, with systemctl faked.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TempDir;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn install(args: &[&str]) -> Output {
    let out = Command::new("bash")
        .arg(repo_file("scripts/install.sh"))
        .args(args)
        .output()
        .expect("run install.sh");
    println!(
        "install.sh {args:?} -> {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn install_ok(args: &[&str]) -> String {
    let out = install(args);
    assert!(out.status.success(), "install.sh {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every regular file under `root` (relative path -> (mode, content)).
fn tree(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            if meta.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string();
                let content = std::fs::read(&p).expect("read");
                out.insert(rel, (meta.permissions().mode() & 0o7777, content));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

const BIN: &str = "usr/local/bin/goloadbalancer";
const UNIT: &str = "etc/systemd/system/goloadbalancer.service";
const SOCKET: &str = "etc/systemd/system/goloadbalancer.socket";
const DROPIN: &str = "etc/systemd/system/goloadbalancer.service.d/10-docker.conf";
const CONF: &str = "etc/goloadbalancer/config.yaml";
const CONF_DEFAULT: &str = "etc/goloadbalancer/config.yaml.default";
const SYSUSERS: &str = "usr/local/lib/sysusers.d/goloadbalancer.conf";
const DOC: &str = "usr/local/share/doc/goloadbalancer/README.md";

#[test]
fn staged_install_is_complete_idempotent_and_reversible() {
    // A space in the path: every path in the script must be quoted.
    let dir = TempDir::new("systemd install");
    let root = dir.join("staged root");
    let root_s = root.to_str().expect("utf-8 path");
    let args = ["--binary", common::bin(), "--root", root_s];

    let first = install_ok(&args);
    assert!(
        !first.contains("WARNING"),
        "the shipped config must pass check-config"
    );
    let t1 = tree(&root);
    let names: Vec<&str> = t1.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [CONF, CONF_DEFAULT, UNIT, SOCKET, BIN, SYSUSERS, DOC],
        "exactly these files (no docker group in the staged root, so no drop-in)"
    );
    assert_eq!(t1[BIN].0, 0o755);
    assert_eq!(
        t1[BIN].1,
        std::fs::read(common::bin()).expect("read binary")
    );
    assert_eq!(t1[UNIT].0, 0o644);
    assert_eq!(
        t1[UNIT].1,
        std::fs::read(repo_file("systemd/goloadbalancer.service")).expect("unit")
    );
    // The shipped config's addresses are the shipped socket unit's.
    assert_eq!(t1[SOCKET].0, 0o644);
    assert_eq!(
        t1[SOCKET].1,
        std::fs::read(repo_file("systemd/goloadbalancer.socket")).expect("socket unit")
    );
    let shipped = std::fs::read(repo_file("config.yaml")).expect("config.yaml");
    assert_eq!(t1[CONF].1, shipped);
    assert_eq!(t1[CONF_DEFAULT].1, shipped);
    let sysusers = String::from_utf8_lossy(&t1[SYSUSERS].1).into_owned();
    assert!(
        sysusers.lines().any(
            |l| l.starts_with("u goloadbalancer - ") && l.ends_with(" /var/lib/goloadbalancer")
        ),
        "{sysusers}"
    );

    // Again: nothing changes, and it says so.
    let second = install_ok(&args);
    assert_eq!(tree(&root), t1);
    assert!(
        !second.contains("installed "),
        "second run installed something:\n{second}"
    );

    // An edited config is never overwritten; the shipped default is beside it.
    let conf = root.join(CONF);
    let edited = b"# mine\nworker: 1\npool: 3\nload-balancer-port: 7000\nadmin-port: 7100\n";
    std::fs::write(&conf, edited).expect("edit config");
    let third = install_ok(&args);
    assert!(third.contains("kept your edited /etc/goloadbalancer/config.yaml"));
    assert_eq!(std::fs::read(&conf).expect("config"), edited);
    // The socket unit follows the installed config's ports.
    let socket = std::fs::read_to_string(root.join(SOCKET)).expect("socket unit");
    let listen: Vec<&str> = socket
        .lines()
        .filter(|l| l.starts_with("ListenStream="))
        .collect();
    assert_eq!(
        listen,
        [
            "ListenStream=0.0.0.0:7000",
            "ListenStream=0.0.0.0:7001",
            "ListenStream=0.0.0.0:7002",
            "ListenStream=127.0.0.1:7100"
        ]
    );
    assert_eq!(
        std::fs::read(root.join(CONF_DEFAULT)).expect("default"),
        shipped
    );

    // Uninstall keeps only the edited config; --purge removes it; both are idempotent.
    install_ok(&["--uninstall", "--root", root_s]);
    let left: Vec<String> = tree(&root).into_keys().collect();
    assert_eq!(left, [CONF]);
    install_ok(&["--uninstall", "--root", root_s]);
    install_ok(&["--uninstall", "--purge", "--root", root_s]);
    assert!(
        tree(&root).is_empty(),
        "left behind: {:?}",
        tree(&root).keys()
    );
}

#[test]
fn unedited_config_goes_with_uninstall() {
    let dir = TempDir::new("systemd-install-plain");
    let root = dir.join("root");
    let root_s = root.to_str().expect("utf-8 path");
    install_ok(&["--binary", common::bin(), "--root", root_s]);
    // The state directory (the stats database) is kept without --purge.
    let state = root.join("var/lib/goloadbalancer");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(state.join("worker-stats.db"), b"x").expect("db");
    let out = install_ok(&["--uninstall", "--root", root_s]);
    assert!(out.contains("kept /var/lib/goloadbalancer"), "{out}");
    let left: Vec<String> = tree(&root).into_keys().collect();
    assert_eq!(left, ["var/lib/goloadbalancer/worker-stats.db"]);
}

#[test]
fn docker_group_gets_a_dropin_and_losing_it_removes_the_dropin() {
    let dir = TempDir::new("systemd-install-docker");
    let root = dir.join("root");
    let root_s = root.to_str().expect("utf-8 path");
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    std::fs::write(root.join("etc/group"), "root:x:0:\ndocker:x:998:\n").expect("group");
    install_ok(&["--binary", common::bin(), "--root", root_s]);
    let dropin = std::fs::read_to_string(root.join(DROPIN)).expect("drop-in");
    let directives: Vec<&str> = dropin
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert_eq!(directives, ["[Service]", "SupplementaryGroups=docker"]);

    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    install_ok(&["--binary", common::bin(), "--root", root_s]);
    assert!(
        !root.join(DROPIN).exists(),
        "a drop-in naming a missing group breaks the unit"
    );
    assert!(
        !root
            .join("etc/systemd/system/goloadbalancer.service.d")
            .exists()
    );
}

#[test]
fn prefix_moves_the_binary_and_the_unit_follows() {
    let dir = TempDir::new("systemd-install-prefix");
    let root = dir.join("root");
    let root_s = root.to_str().expect("utf-8 path");
    install_ok(&[
        "--binary",
        common::bin(),
        "--root",
        root_s,
        "--prefix",
        "/opt/glb",
    ]);
    assert!(root.join("opt/glb/bin/goloadbalancer").is_file());
    assert!(!root.join(BIN).exists());
    let unit = std::fs::read_to_string(root.join(UNIT)).expect("unit");
    assert!(unit.contains(
        "ExecStart=/opt/glb/bin/goloadbalancer run --config /etc/goloadbalancer/config.yaml\n"
    ));
    assert!(!unit.contains("/usr/local"), "{unit}");
    // /opt/glb/lib is not on systemd-sysusers' path: the user file goes to /etc.
    assert!(root.join("etc/sysusers.d/goloadbalancer.conf").is_file());
    install_ok(&["--uninstall", "--root", root_s, "--prefix", "/opt/glb"]);
    assert!(
        tree(&root).is_empty(),
        "left behind: {:?}",
        tree(&root).keys()
    );
}

#[test]
fn bad_usage_is_refused_with_a_reason() {
    let help = install(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: scripts/install.sh"));

    let unknown = install(&["--frobnicate"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown option --frobnicate"));

    let dir = TempDir::new("systemd-install-bad");
    let root = dir.join("root");
    let missing = dir.join("no-such-binary");
    let out = install(&[
        "--binary",
        missing.to_str().expect("utf-8"),
        "--root",
        root.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an executable file"));
    assert!(tree(&root).is_empty(), "nothing installed on a refused run");

    let purge_alone = install(&["--purge", "--root", root.to_str().expect("utf-8")]);
    assert_eq!(purge_alone.status.code(), Some(2));
}

/// The real (not staged) install and `--uninstall --purge`, run by bash inside a private mount
/// namespace: tmpfs over /etc, /var/lib and /run (the script writes nothing else there), a
/// `/run/systemd/system` so it believes systemd runs (and `/etc/systemd/system`, which every
/// systemd machine has), and logging fakes of `systemctl` and
/// `systemd-sysusers` first on PATH. Positional: install.sh, binary, prefix, fake dir.
const LIVE_SANDBOX: &str = r#"
set -u
mount -t tmpfs glb-etc /etc && mount -t tmpfs glb-var-lib /var/lib && mount -t tmpfs glb-run /run || exit 97
# What every systemd machine has.
mkdir -p /run/systemd/system /etc/systemd/system
echo SANDBOX-READY
install_sh="$1" binary="$2" prefix="$3" fakes="$4"
export PATH="$fakes:$PATH"
echo "== install" >>"$fakes/calls"
bash "$install_sh" --binary "$binary" --prefix "$prefix" || echo "INSTALL-FAILED $?"
echo "--- unit"
cat /etc/systemd/system/goloadbalancer.service
echo "--- end unit"
# What a running service leaves: its database, an edited config.
mkdir -p /var/lib/goloadbalancer && echo db >/var/lib/goloadbalancer/worker-stats.db
echo "worker: 1" >>/etc/goloadbalancer/config.yaml
echo "== uninstall --purge" >>"$fakes/calls"
bash "$install_sh" --uninstall --purge --prefix "$prefix" || echo "UNINSTALL-FAILED $?"
echo "--- left"
find /etc /var/lib /run -mindepth 1 ! -path '*/systemd' ! -path '*/systemd/system'
echo "--- end left"
"#;

/// The lines between `--- NAME` and `--- end NAME` in `text`.
fn section<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| *l != format!("--- {name}"))
        .skip(1)
        .take_while(|l| *l != format!("--- end {name}"))
        .collect()
}

#[test]
fn real_install_with_spaces_then_uninstall_purge_removes_everything_and_reloads() {
    let dir = TempDir::new("systemd install live");
    let fakes = dir.join("fake bin");
    std::fs::create_dir_all(&fakes).expect("fakes");
    for tool in ["systemctl", "systemd-sysusers"] {
        let path = fakes.join(tool);
        let script = format!(
            "#!/bin/sh\necho \"{tool} $*\" >>\"$(dirname \"$0\")/calls\"\n\
             [ \"$1\" = is-active ] && exit 3\nexit 0\n"
        );
        std::fs::write(&path, script).expect("fake");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let prefix = dir.join("my prefix");
    // Root makes a mount namespace; anyone else needs a user namespace mapping them to root.
    let as_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut cmd = Command::new("unshare");
    if !as_root {
        cmd.arg("--map-root-user");
    }
    let out = cmd
        .args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            LIVE_SANDBOX,
            "bash",
        ])
        .arg(repo_file("scripts/install.sh"))
        .arg(common::bin())
        .arg(&prefix)
        .arg(&fakes)
        .output();
    let Ok(out) = out else {
        println!("SKIP: no unshare (util-linux) to make a mount namespace");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    if !text.starts_with("SANDBOX-READY") {
        println!("SKIP: no private mount namespace here (unshare refused)");
        return;
    }
    let calls = std::fs::read_to_string(fakes.join("calls")).expect("calls");
    println!("calls:\n{calls}");

    assert!(!text.contains("INSTALL-FAILED"), "install failed");
    let unit = section(&text, "unit");
    let exec = format!(
        "ExecStart=\"{}/bin/goloadbalancer\" run --config /etc/goloadbalancer/config.yaml",
        prefix.display()
    );
    assert!(unit.contains(&exec.as_str()), "{exec} not in the unit");
    let doc = format!(
        "Documentation=file://{}/share/doc/goloadbalancer/README.md",
        prefix.display().to_string().replace(' ', "%%20")
    );
    assert!(unit.contains(&doc.as_str()), "{doc} not in the unit");

    assert!(
        !text.contains("UNINSTALL-FAILED"),
        "uninstall --purge failed"
    );
    assert_eq!(section(&text, "left"), Vec::<&str>::new(), "left behind");
    assert!(
        tree(&prefix).is_empty(),
        "left under the prefix: {:?}",
        tree(&prefix).keys()
    );
    let uninstall: Vec<&str> = calls
        .lines()
        .skip_while(|l| *l != "== uninstall --purge")
        .skip(1)
        .collect();
    assert_eq!(
        uninstall,
        [
            "systemctl disable --now goloadbalancer.service goloadbalancer.socket",
            "systemctl daemon-reload",
            "systemctl reset-failed goloadbalancer.service goloadbalancer.socket"
        ]
    );
    assert!(
        calls.starts_with("== install\nsystemd-sysusers "),
        "the user is created on a real install"
    );
}
