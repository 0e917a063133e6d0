#!/usr/bin/env bash
# End-to-end test under a real systemd as PID 1, on a machine where no systemd runs: a minimal
# Debian root (debootstrap) imported as a docker image, booted with systemd as the container's
# init; goloadbalancer is installed into it with scripts/install.sh and driven with systemctl,
# curl and journalctl. Exits non-zero on the first broken expectation; always removes its
# container.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/systemd-e2e.sh [options]

  --binary PATH   the goloadbalancer binary to install (default: cargo build --release)
  --boot-only     only build the root, boot systemd and check systemctl works
  --rebuild-root  rebuild the Debian root even when its image is cached
  --keep          leave the container running at the end (for debugging; remove it with
                  `docker rm -f <name>`)
  -h, --help      this text

Needs: root, a docker engine, debootstrap (apt-get install debootstrap; installed
automatically when missing and apt-get is there), and Debian's mirror for the first run
(GLB_DEBIAN_MIRROR, default http://deb.debian.org/debian). The root is cached as the docker
image glb-systemd:<hash of its recipe>, so later runs skip debootstrap.
GLB_E2E_DOCKER_ARGS overrides the privilege search with fixed `docker run` arguments.
EOF
}

repo="$(cd "$(dirname "$0")/.." && pwd)"
binary=""
boot_only=0
rebuild=0
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --boot-only) boot_only=1; shift ;;
        --rebuild-root) rebuild=1; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "systemd-e2e: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

suite="bookworm"
mirror="${GLB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# systemd + systemd-sysv: PID 1 and /sbin/init; procps: /bin/kill (ExecReload) and pgrep;
# curl: traffic from inside the container.
packages="systemd,systemd-sysv,procps,curl"

t_start=$(date +%s)
phase_start=$t_start
log() { printf '\n=== systemd-e2e: %s (%s)\n' "$*" "$(date +%T)"; }
fail() {
    printf '\nsystemd-e2e: FAIL: %s\n' "$*" >&2
    dump_diagnostics >&2 || true
    exit 1
}
phase_done() {
    local now
    now=$(date +%s)
    printf 'systemd-e2e: %s took %ss\n' "$1" $((now - phase_start))
    phase_start=$now
}

container=""
root_dir=""
cleanup() {
    local rc=$?
    if [ -n "$container" ]; then
        if [ $keep = 1 ]; then
            echo "systemd-e2e: container $container kept (docker rm -f $container)"
        else
            docker rm -f "$container" >/dev/null 2>&1 || true
        fi
    fi
    [ -n "$root_dir" ] && rm -rf "$root_dir"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# in CMD...: runs a command inside the container (bounded).
cx() { timeout 180 docker exec "$container" "$@"; }
cx_sh() { timeout 180 docker exec "$container" bash -c "$1"; }

dump_diagnostics() {
    [ -n "$container" ] || return 0
    docker inspect -f '{{.State.Running}}' "$container" 2>/dev/null | grep -q true || {
        echo "--- container log"; docker logs "$container" 2>&1 | tail -40; return 0; }
    echo "--- systemctl status goloadbalancer"
    cx systemctl status --no-pager -l goloadbalancer 2>&1 | tail -30 || true
    echo "--- journalctl -u goloadbalancer (last 60)"
    cx journalctl -u goloadbalancer --no-pager -n 60 2>&1 || true
    echo "--- processes"
    cx ps -eo pid,ppid,user,stat,args 2>&1 | grep -v '\[' || true
}

# --- preflight ---------------------------------------------------------------------------
command -v docker >/dev/null || fail "docker CLI not found"
timeout 30 docker info >/dev/null 2>&1 || fail "no docker engine answers (docker info)"
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap and the root's ownership need it)"

# --- the Debian root, cached as an image ------------------------------------------------------
# Everything that shapes the root feeds the image tag, so editing this function (or the
# package list) builds a new root and a second run with an unchanged recipe reuses the image.
prepare_root() {
    local dir="$1"
    timeout 900 debootstrap --variant=minbase --include="$packages" "$suite" "$dir" "$mirror" \
        >"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; fail "debootstrap failed (log above)"; }
    rm -f "$dir.log"
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    # An empty machine-id: systemd makes a fresh one at each boot, as in a container image.
    : >"$dir/etc/machine-id"
    # No consoles in a container: the getty units would only wait on ttys that do not exist.
    chroot "$dir" systemctl mask console-getty.service getty@tty1.service >/dev/null 2>&1 || true
}
recipe="$(declare -f prepare_root) $suite $packages"
image="glb-systemd:$(printf '%s' "$recipe" | sha256sum | cut -c1-12)"

log "root image $image"
if [ $rebuild = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "systemd-e2e: cached, no debootstrap"
else
    if ! command -v debootstrap >/dev/null; then
        command -v apt-get >/dev/null || fail "debootstrap not found (apt-get install debootstrap)"
        echo "systemd-e2e: installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } ||
            fail "could not install debootstrap"
    fi
    root_dir="$(mktemp -d "${TMPDIR:-/var/tmp}/glb-e2e-root.XXXXXX")"
    echo "systemd-e2e: debootstrap $suite ($packages) from $mirror"
    prepare_root "$root_dir"
    tar -C "$root_dir" -c . | docker import -c 'CMD ["/sbin/init"]' -c 'ENV container=docker' - "$image" >/dev/null ||
        fail "docker import failed"
    rm -rf "$root_dir"
    root_dir=""
    # Older roots of this script are dead weight.
    for old in $(docker images glb-systemd --format '{{.Repository}}:{{.Tag}}'); do
        [ "$old" = "$image" ] || docker rmi "$old" >/dev/null 2>&1 || true
    done
fi
phase_done "root image"

# --- boot systemd with the least privilege that works -------------------------------------------
# Tried in order; the first whose systemd reaches running/degraded is used. On this kind of
# machine (cgroup v1 hierarchy, docker cgroupfs driver) the first is refused ("Failed to create
# /init.scope control group: Read-only file system") and the second works: with CAP_SYS_ADMIN
# in its own cgroup namespace systemd mounts a writable cgroup2 for itself.
candidates=(
    "--cgroupns=private"
    "--cgroupns=private --cap-add SYS_ADMIN"
    "--cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw --cap-add SYS_ADMIN"
    "--privileged --cgroupns=private"
)
[ -n "${GLB_E2E_DOCKER_ARGS:-}" ] && candidates=("$GLB_E2E_DOCKER_ARGS")

# Waits (bounded) for systemd in the container to finish booting; 0 when it did.
wait_booted() {
    local state=""
    for _ in $(seq 1 120); do
        docker inspect -f '{{.State.Running}}' "$container" 2>/dev/null | grep -q true || return 1
        state="$(timeout 10 docker exec "$container" systemctl is-system-running 2>/dev/null || true)"
        case "$state" in
            running) return 0 ;;
            degraded)
                echo "systemd-e2e: system degraded, failed units:"
                timeout 10 docker exec "$container" systemctl --failed --no-legend --no-pager || true
                return 0 ;;
        esac
        sleep 0.5
    done
    return 1
}

log "boot systemd"
used=""
refused=()
for args in "${candidates[@]}"; do
    container="glb-e2e-$$-$RANDOM"
    # shellcheck disable=SC2086 # $args is a list of docker options
    # -t: a console, so what systemd prints at boot reaches `docker logs`.
    if ! docker run -d -t --name "$container" --network none --tmpfs /run --tmpfs /run/lock \
        --tmpfs /tmp $args "$image" >/dev/null 2>"/tmp/$container.err"; then
        refused+=("$args: docker run refused: $(head -c 300 "/tmp/$container.err")")
        rm -f "/tmp/$container.err"
        docker rm -f "$container" >/dev/null 2>&1 || true
        container=""
        continue
    fi
    rm -f "/tmp/$container.err"
    if wait_booted; then
        used="$args"
        break
    fi
    why="$(docker logs "$container" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep -iE 'fail|error|denied|read-only' | grep -vE 'compat|symlink' | head -3 | tr '\n' ' ' || true)"
    refused+=("$args: systemd did not boot: ${why:-no reason printed}")
    docker rm -f "$container" >/dev/null 2>&1 || true
    container=""
done
for r in "${refused[@]}"; do echo "systemd-e2e: refused: $r"; done
[ -n "$used" ] || fail "no privilege level let systemd boot"
echo "systemd-e2e: systemd $(cx systemctl --version | head -1 | cut -d' ' -f2) is PID 1 in $container with: $used"
[ "$(cx cat /proc/1/comm)" = systemd ] || fail "PID 1 in the container is not systemd"
phase_done "boot"

if [ $boot_only = 1 ]; then
    # systemctl drives a unit and its cgroup: start, stop, nothing left behind.
    cx systemd-run --unit=glb-probe --property=KillMode=mixed sleep 600 >/dev/null 2>&1 ||
        fail "systemd-run refused"
    sleep 0.5
    [ "$(cx systemctl is-active glb-probe)" = active ] || fail "transient unit not active"
    cx systemctl stop glb-probe
    cx pgrep -x sleep >/dev/null && fail "sleep still runs after systemctl stop"
    echo "systemd-e2e: PASS (boot only: systemd boots, systemctl starts and stops a unit) in $(($(date +%s) - t_start))s"
    exit 0
fi

# --- the goloadbalancer part ------------------------------------------------------------------
echo "the goloadbalancer part needs the supervisor (goloadbalancer run)" >&2
exit 1
