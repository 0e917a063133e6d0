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
  --no-docker     skip the phase that runs the docker runtime under the unit against the
                  host's engine (it needs /var/run/docker.sock and host ports)
  --keep          leave the container running at the end (for debugging; remove it with
                  `docker rm -f <name>`)
  -h, --help      this text

  --print-mirror  print the Debian mirror debootstrap would use, and exit

Needs: root, a docker engine, debootstrap (apt-get install debootstrap; installed
automatically when missing and apt-get is there), and for the first run a Debian mirror: the
one this machine's apt already uses (the URI of an enabled `deb` source with the component
main whose suite is bookworm, else another Debian release suite, from sources.list,
sources.list.d/*.list and *.sources; APT_CONFIG is honoured), or GLB_DEBIAN_MIRROR=URI. The
root is cached as the docker image glb-systemd:<hash of its recipe>, so later runs skip
debootstrap. GLB_E2E_DOCKER_ARGS overrides the privilege search with fixed `docker run`
arguments.
EOF
}

repo="$(cd "$(dirname "$0")/.." && pwd)"
binary=""
boot_only=0
rebuild=0
keep=0
docker_phase=1
print_mirror=0
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --boot-only) boot_only=1; shift ;;
        --rebuild-root) rebuild=1; shift ;;
        --keep) keep=1; shift ;;
        --no-docker) docker_phase=0; shift ;;
        --print-mirror) print_mirror=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "systemd-e2e: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

suite="bookworm"
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
created=()
root_dir=""
instance=""
db_dir=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local rc=$?
    local c
    for c in "${created[@]}"; do
        if [ $keep = 1 ]; then
            echo "systemd-e2e: container $c kept (docker rm -f $c)"
        else
            docker rm -f "$c" >/dev/null 2>&1 || true
        fi
    done
    if [ -n "$instance" ] && [ $keep = 0 ]; then
        # Worker containers of the docker phase, should the supervisor not have removed them.
        docker ps -aq --filter "label=goloadbalancer.instance=$instance" | xargs -r docker rm -f >/dev/null 2>&1 || true
    fi
    [ -n "$db_dir" ] && [ $keep = 0 ] && rm -rf "$db_dir"
    [ -z "$root_dir" ] || remove_root
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# in CMD...: runs a command inside the container (bounded).
cx() { timeout 180 docker exec "$container" "$@"; }
cx_sh() { timeout 180 docker exec "$container" bash -c "$1"; }

dump_diagnostics() {
    [ -n "$container" ] || return 0
    docker inspect -f '{{.State.Running}}' "$container" 2>/dev/null | grep true >/dev/null || {
        echo "--- container log"; docker logs "$container" 2>&1 | tail -40; return 0; }
    echo "--- systemctl status goloadbalancer"
    cx systemctl status --no-pager -l goloadbalancer 2>&1 | tail -30 || true
    echo "--- journalctl -u goloadbalancer (last 60)"
    cx journalctl -u goloadbalancer --no-pager -n 60 2>&1 || true
    echo "--- processes"
    cx ps -eo pid,ppid,user,stat,args 2>&1 | grep -v '\[' || true
}

# --- the Debian mirror (the machine's own) and the root image: scripts/lib/debian-root.sh --------
# shellcheck source=scripts/lib/debian-root.sh
. "$repo/scripts/lib/debian-root.sh"

if [ $print_mirror = 1 ]; then
    debian_mirror "$suite" || no_mirror systemd-e2e "$suite"
    exit 0
fi

# --- preflight ---------------------------------------------------------------------------
command -v docker >/dev/null || fail "docker CLI not found"
timeout 30 docker info >/dev/null 2>&1 || fail "no docker engine answers (docker info)"
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap and the root's ownership need it)"

# --- the Debian root, cached as an image ------------------------------------------------------
# Everything that shapes the root feeds the image tag, so editing this function (or the
# package list) builds a new root and a second run with an unchanged recipe reuses the image.
prepare_root() {
    local dir="$1" mirror="$2"
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

log "root image $image ($packages)"
root_image systemd-e2e "$image" "$rebuild" prepare_root -c 'CMD ["/sbin/init"]' -c 'ENV container=docker' ||
    fail "the root image was not built"

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
        docker inspect -f '{{.State.Running}}' "$container" 2>/dev/null | grep true >/dev/null || return 1
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
    created+=("$container")
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
log "binary"
if [ -z "$binary" ]; then
    (cd "$repo" && cargo build --release --locked) || fail "cargo build --release failed"
    binary="$repo/target/x86_64-unknown-linux-gnu/release/goloadbalancer"
fi
[ -x "$binary" ] || fail "no binary at $binary"
echo "systemd-e2e: $binary ($(du -h "$binary" | cut -f1))"
phase_done "binary"

log "install with scripts/install.sh"
cx mkdir -p /opt/glb-src /opt/glb
docker cp "$binary" "$container:/opt/glb/goloadbalancer" >/dev/null
tar -C "$repo" -c scripts/install.sh systemd config.yaml README.md |
    docker exec -i "$container" tar -C /opt/glb-src -x
cx /opt/glb-src/scripts/install.sh --binary /opt/glb/goloadbalancer || fail "install.sh failed"
cx getent passwd goloadbalancer >/dev/null || fail "install.sh created no user goloadbalancer"
cx systemctl cat goloadbalancer.service >/dev/null || fail "systemd does not know the unit"
# The test's configuration: workers as local processes (no docker engine in here), a short
# delay, no random failures, so any failed request is the reload's fault.
docker exec -i "$container" tee /etc/goloadbalancer/config.yaml >/dev/null <<'YAML'
# systemd-e2e
worker: 2
pool: 2
stats-dir: worker-stats.db
avg-delay: 20
failure: 0
load-balancer-port: 5050
worker-port: 6000
runtime: process
listen-address: 127.0.0.1
drain-timeout-ms: 5000
health-interval-ms: 1000
YAML
cx cp /etc/goloadbalancer/config.yaml /opt/glb/config.edited
# Idempotent, and an edited config survives a second install.
cx /opt/glb-src/scripts/install.sh --binary /opt/glb/goloadbalancer >/dev/null ||
    fail "second install.sh failed"
cx cmp -s /etc/goloadbalancer/config.yaml /opt/glb/config.edited ||
    fail "a second install overwrote the edited config"
# A short watchdog so this run proves the pings arrive (WATCHDOG_USEC=4s: a ping every 2s).
cx mkdir -p /etc/systemd/system/goloadbalancer.service.d
printf '[Service]\nWatchdogSec=4s\n' |
    docker exec -i "$container" tee /etc/systemd/system/goloadbalancer.service.d/50-e2e.conf >/dev/null
cx systemctl daemon-reload
phase_done "install"

show() { cx systemctl show goloadbalancer -p "$1" --value; }
# Least privilege: every LB child of the supervisor $1 has no supplementary group, no
# capability (CapEff/CapPrm/CapAmb 0) and no_new_privs, whatever the supervisor holds.
check_lb_children_unprivileged() {
    local pids pid st
    pids="$(cx ps -o pid=,args= --ppid "$1" | awk '/ run /{print $1}')"
    [ -n "$pids" ] || fail "no LB child under the supervisor $1"
    for pid in $pids; do
        st="$(cx cat "/proc/$pid/status")"
        grep -qE '^Groups:\s*$' <<<"$st" || fail "LB child $pid has groups: $(grep ^Groups <<<"$st")"
        for cap in CapEff CapPrm CapAmb CapInh; do
            grep -qE "^$cap:\s*0+$" <<<"$st" || fail "LB child $pid: $(grep "^$cap" <<<"$st")"
        done
        grep -qE '^NoNewPrivs:\s*1$' <<<"$st" || fail "LB child $pid: no NoNewPrivs"
    done
    echo "systemd-e2e: LB children $(tr '\n' ' ' <<<"$pids")have no groups, no capabilities, NoNewPrivs 1 (supervisor: $(cx grep -E '^(Groups|CapEff)' "/proc/$1/status" | tr -s '\t\n' '  '))"
}

log "systemctl start"
timeout 150 docker exec "$container" systemctl start goloadbalancer || fail "systemctl start failed"
[ "$(cx systemctl is-active goloadbalancer)" = active ] || fail "not active after start"
main_pid="$(show MainPID)"
echo "systemd-e2e: active, MainPID $main_pid, status: $(show StatusText)"
[ "$(cx ps -o user= -p "$main_pid" | tr -d ' ')" = goloadbalancer ] ||
    fail "the supervisor does not run as goloadbalancer"
[ "$(show WatchdogUSec)" = 4s ] || fail "WatchdogUSec is $(show WatchdogUSec), not 4s"
check_lb_children_unprivileged "$main_pid"
for port in 5050 5051; do
    body="$(cx curl -fsS --max-time 10 "http://127.0.0.1:$port/api/v1/hello")" ||
        fail "GET :$port/api/v1/hello failed"
    case "$body" in *"hello from"*) ;; *) fail "unexpected body on :$port: $body" ;; esac
done
echo "systemd-e2e: both LB ports answer"
# Socket activation: the service pulled in goloadbalancer.socket and adopted its three sockets
# (two LB ports, admin) rather than binding them.
[ "$(cx systemctl is-active goloadbalancer.socket)" = active ] || fail "goloadbalancer.socket is not active"
inherited="$(cx journalctl -u goloadbalancer --no-pager -o cat | grep -c 'event=listener_inherited' || true)"
[ "$inherited" = 3 ] || fail "$inherited listener_inherited events at start, expected 3 (2 LB ports + admin)"
echo "systemd-e2e: the supervisor took its 3 listeners from goloadbalancer.socket"
phase_done "start"

log "systemctl reload under load"
# Four curl loops (two per LB port) run until told to stop; each counts 200s and the rest.
docker exec -i "$container" tee /opt/glb/load.sh >/dev/null <<'LOAD'
#!/bin/bash
port=$1; ok=0; bad=0; refused=0
while [ ! -e /opt/glb/stop ]; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 15 "http://127.0.0.1:$port/api/v1/hello")
    rc=$?
    # curl exit 7: the connection was refused.
    [ "$rc" = 7 ] && refused=$((refused + 1))
    if [ "$code" = 200 ]; then ok=$((ok + 1)); else bad=$((bad + 1)); echo "$port $code curl-exit=$rc" >>/opt/glb/bad; fi
done
echo "$ok $bad $refused" >"/opt/glb/result.$port.$$"
LOAD
cx chmod +x /opt/glb/load.sh
# Starts the four loops (two per LB port).
start_load() {
    cx rm -f /opt/glb/stop /opt/glb/bad
    cx_sh 'rm -f /opt/glb/result.*'
    local port
    for port in 5050 5050 5051 5051; do
        docker exec -d "$container" /opt/glb/load.sh "$port"
    done
}
# Stops them and sums their counts into load_ok, load_bad, load_refused.
finish_load() {
    cx touch /opt/glb/stop
    for _ in $(seq 1 60); do
        [ "$(cx_sh 'ls /opt/glb/result.* 2>/dev/null | wc -l')" = 4 ] && break
        sleep 0.5
    done
    [ "$(cx_sh 'ls /opt/glb/result.* 2>/dev/null | wc -l')" = 4 ] || fail "not every load loop finished"
    read -r load_ok load_bad load_refused <<<"$(cx_sh 'cat /opt/glb/result.*' | awk '{o += $1; b += $2; r += $3} END {print o, b, r}')"
}
start_load
sleep 2
# A real change: one more worker.
cx sed -i 's/^worker: 2$/worker: 3/' /etc/goloadbalancer/config.yaml
timeout 60 docker exec "$container" systemctl reload goloadbalancer || fail "systemctl reload failed"
# The reload is done when the supervisor has said READY=1 again (systemd: active) and the
# new worker shows in the STATUS= line.
state=""
status=""
for _ in $(seq 1 120); do
    state="$(show ActiveState)"
    status="$(show StatusText)"
    if [ "$state" = active ]; then
        case "$status" in *"workers 3/3"*) break ;; esac
    fi
    sleep 0.5
done
echo "systemd-e2e: after reload: $state, status: $status"
[ "$state" = active ] || fail "not active after reload ($state)"
case "$status" in *"workers 3/3"*) ;; *) fail "STATUS never showed workers 3/3: $status" ;; esac
[ "$(show MainPID)" = "$main_pid" ] || fail "the main process changed across a reload"
# A second reload that replaces the LB children (mode http -> tcp): the new children inherit
# the listeners, the old ones drain. Requests keep flowing through both.
lb_children() { cx ps -o pid=,args= --ppid "$main_pid" | awk '/ run /{print $1}' | sort | tr '\n' ' '; }
old_children="$(lb_children)"
[ -n "$old_children" ] || fail "no LB child processes under the supervisor"
echo "mode: tcp" | docker exec -i "$container" tee -a /etc/goloadbalancer/config.yaml >/dev/null
timeout 60 docker exec "$container" systemctl reload goloadbalancer || fail "systemctl reload (mode) failed"
new_children=""
for _ in $(seq 1 60); do
    new_children="$(lb_children)"
    all_new=1
    for pid in $old_children; do
        case " $new_children " in *" $pid "*) all_new=0 ;; esac
    done
    [ "$all_new" = 1 ] && [ -n "$new_children" ] && break
    sleep 0.5
done
echo "systemd-e2e: LB children $old_children-> $new_children"
[ "$all_new" = 1 ] || fail "the LB children were not replaced by the mode reload"
[ "$(show MainPID)" = "$main_pid" ] || fail "the main process changed across a reload"
# Keep the load going past the watchdog timeout: a missing WATCHDOG=1 would get it killed.
sleep 5
finish_load
ok=$load_ok bad=$load_bad
echo "systemd-e2e: load across both reloads: $ok ok, $bad failed"
if [ "$bad" != 0 ]; then
    cx_sh 'sort /opt/glb/bad | uniq -c' || true
    fail "$bad requests failed across systemctl reload"
fi
[ "$ok" -ge 40 ] || fail "only $ok requests ran: the load did not span the reload"
[ "$(show NRestarts)" = 0 ] || fail "restarted $(show NRestarts) times (watchdog?)"
phase_done "reload"

log "systemctl reload with a broken config keeps serving"
cx cp /etc/goloadbalancer/config.yaml /opt/glb/config.good
cx_sh 'echo "failure: 120" >> /etc/goloadbalancer/config.yaml'
timeout 60 docker exec "$container" systemctl reload goloadbalancer || fail "systemctl reload (broken config) failed"
for _ in $(seq 1 60); do
    cx journalctl -u goloadbalancer -p err --no-pager -o cat | grep 'event=reload_rejected' >/dev/null && break
    sleep 0.5
done
cx journalctl -u goloadbalancer -p err --no-pager -o cat | grep 'event=reload_rejected' | grep 'failure' >/dev/null ||
    fail "no reload_rejected error naming the key in journalctl -p err"
[ "$(show MainPID)" = "$main_pid" ] || fail "a broken config on reload changed the main process"
for port in 5050 5051; do
    cx curl -fsS --max-time 10 -o /dev/null "http://127.0.0.1:$port/api/v1/hello" ||
        fail "port $port stopped answering after a rejected reload"
done
cx cp /opt/glb/config.good /etc/goloadbalancer/config.yaml
echo "systemd-e2e: the rejected reload is an error in the journal; still serving with the old config"
phase_done "broken reload"

log "systemctl restart under load: the sockets stay open (socket activation)"
# The old supervisor drains (in-flight requests finish), stops its workers and exits; the new
# one starts workers and forks LB children on the same sockets. Meanwhile the kernel queues
# new connections on the sockets systemd holds: none is refused, none fails.
start_load
sleep 2
timeout 150 docker exec "$container" systemctl restart goloadbalancer || fail "systemctl restart failed"
[ "$(cx systemctl is-active goloadbalancer)" = active ] || fail "not active after restart"
restarted_pid="$(show MainPID)"
[ "$restarted_pid" != "$main_pid" ] || fail "systemctl restart kept MainPID $main_pid"
sleep 3
finish_load
echo "systemd-e2e: load across systemctl restart: $load_ok ok, $load_bad failed, $load_refused refused (MainPID $main_pid -> $restarted_pid)"
if [ "$load_bad" != 0 ] || [ "$load_refused" != 0 ]; then
    cx_sh 'sort /opt/glb/bad | uniq -c' || true
    fail "$load_bad requests failed ($load_refused refused) across systemctl restart"
fi
[ "$load_ok" -ge 40 ] || fail "only $load_ok requests ran: the load did not span the restart"
inherited="$(cx journalctl -u goloadbalancer --no-pager -o cat "_PID=$restarted_pid" | grep -c 'event=listener_inherited' || true)"
[ "$inherited" = 3 ] || fail "the restarted supervisor adopted $inherited sockets, expected 3"
cx journalctl -u goloadbalancer --no-pager -o cat "_PID=$main_pid" | grep 'event=stopped exit_code=0' >/dev/null ||
    fail "the old supervisor (pid $main_pid) did not stop cleanly"
main_pid="$restarted_pid"
phase_done "restart"

log "journal"
journal="$(cx journalctl -u goloadbalancer -p info --no-pager -o cat)"
for want in 'event=ready' 'event=reload_started' 'event=reloaded'; do
    grep -q -- "$want" <<<"$journal" || fail "journalctl -u goloadbalancer -p info has no $want"
done
grep -qE '^role=lb\.[0-9]+ ' <<<"$journal" || fail "no line from an LB child in the journal"
grep -qE '^role=worker\.' <<<"$journal" || fail "no line from a worker in the journal"
# The <N> prefixes were read as priorities (and stripped), and -p warning leaves info out.
if grep -qE '^<[0-7]>' <<<"$journal"; then
    fail "journal lines still carry <N>: the prefix was not parsed"
fi
if cx journalctl -u goloadbalancer -p warning --no-pager -o cat | grep 'level=info' >/dev/null; then
    fail "journalctl -p warning shows info lines: priorities are not applied"
fi
# Every line our processes wrote is one key=value event (no stray eprintln! text).
ours="$(cx journalctl -u goloadbalancer --no-pager -o cat SYSLOG_IDENTIFIER=goloadbalancer)"
[ "$(wc -l <<<"$ours")" -ge 20 ] || fail "fewer than 20 lines from goloadbalancer in the journal"
stray="$(grep -v '^role=[^ ]* level=[a-z]* event=' <<<"$ours" || true)"
[ -z "$stray" ] || fail "lines in the journal that are not key=value events: $stray"
echo "systemd-e2e: the journal has the start and reload events, priorities applied"
echo "--- journalctl -u goloadbalancer -p warning"
cx journalctl -u goloadbalancer -p warning --no-pager -o short-monotonic | tail -20 || true
phase_done "journal"

log "watchdog: a stuck supervisor is killed and restarted"
cx kill -STOP "$main_pid"
for _ in $(seq 1 120); do
    if [ "$(show NRestarts)" = 1 ] && [ "$(cx systemctl is-active goloadbalancer || true)" = active ]; then
        break
    fi
    sleep 0.5
done
[ "$(show NRestarts)" = 1 ] || fail "no restart after the watchdog timeout (NRestarts=$(show NRestarts))"
[ "$(cx systemctl is-active goloadbalancer)" = active ] || fail "not active after the watchdog restart"
new_pid="$(show MainPID)"
[ "$new_pid" != "$main_pid" ] || fail "same MainPID after a watchdog restart"
cx journalctl -u goloadbalancer --no-pager -o cat | grep 'Watchdog timeout' >/dev/null ||
    fail "no 'Watchdog timeout' in the journal"
for port in 5050 5051; do
    cx curl -fsS --max-time 10 -o /dev/null "http://127.0.0.1:$port/api/v1/hello" ||
        fail "port $port does not answer after the restart"
done
echo "systemd-e2e: the watchdog killed the stopped supervisor, systemd restarted it (MainPID $new_pid)"
phase_done "watchdog"

log "systemctl stop"
timeout 150 docker exec "$container" systemctl stop goloadbalancer || fail "systemctl stop failed"
state="$(cx systemctl is-active goloadbalancer || true)"
[ "$state" = inactive ] || fail "state after stop: $state"
[ "$(show Result)" = success ] || fail "Result=$(show Result) after stop (not a clean exit)"
[ "$(show ExecMainStatus)" = 0 ] || fail "the supervisor exited $(show ExecMainStatus)"
if cx pgrep -a goloadbalancer; then fail "goloadbalancer processes left after systemctl stop"; fi
# The restarted supervisor logged its own clean end (drained, workers stopped, exit 0).
cx journalctl -u goloadbalancer --no-pager -o cat "_PID=$new_pid" | grep 'event=stopped exit_code=0' >/dev/null ||
    fail "no event=stopped exit_code=0 from the supervisor (pid $new_pid) in the journal"
# The socket unit outlives a stop of the service alone (a new connection would start it
# again); stopping it closes the ports.
[ "$(cx systemctl is-active goloadbalancer.socket)" = active ] || fail "goloadbalancer.socket stopped with the service"
cx systemctl stop goloadbalancer.socket
if cx curl -sS --max-time 5 -o /dev/null http://127.0.0.1:5050/ 2>/dev/null; then
    fail "port 5050 still answers after stopping the service and its socket"
fi
[ "$(cx systemctl is-active goloadbalancer || true)" = inactive ] || fail "a connection after the stop started the service"
echo "systemd-e2e: stopped cleanly, nothing left running; with the socket stopped the ports are closed"
phase_done "stop"

log "systemctl start with a broken config fails once, without a restart loop"
cx cp /etc/goloadbalancer/config.yaml /opt/glb/config.good
cx_sh 'echo "failure: 120" >> /etc/goloadbalancer/config.yaml'
if timeout 60 docker exec "$container" systemctl start goloadbalancer 2>/dev/null; then
    fail "systemctl start succeeded with a broken config"
fi
sleep 3
[ "$(cx systemctl is-active goloadbalancer || true)" = failed ] || fail "not failed after a broken start"
[ "$(show ExecMainStatus)" = 2 ] || fail "exit status $(show ExecMainStatus), not 2, for a broken config"
[ "$(show NRestarts)" = 0 ] || fail "restarted $(show NRestarts) times on a broken config"
cx journalctl -u goloadbalancer -p err --no-pager -o cat | grep 'event=config_invalid' | grep 'config.yaml:[0-9]*: failure' >/dev/null ||
    fail "no config_invalid error with file:line: key in journalctl -p err"
cx cp /opt/glb/config.good /etc/goloadbalancer/config.yaml
cx systemctl reset-failed goloadbalancer
echo "systemd-e2e: a broken config fails the start with exit 2, no restart, the error in the journal"
phase_done "broken start"

log "uninstall"
cx /opt/glb-src/scripts/install.sh --uninstall || fail "install.sh --uninstall failed"
if cx systemctl cat goloadbalancer.service >/dev/null 2>&1; then fail "unit still known after uninstall"; fi
cx test ! -e /usr/local/bin/goloadbalancer || fail "binary left after uninstall"
cx test -f /etc/goloadbalancer/config.yaml || fail "uninstall removed the edited config"
cx test -d /var/lib/goloadbalancer || fail "uninstall removed the state directory"
cx /opt/glb-src/scripts/install.sh --uninstall --purge || fail "install.sh --uninstall --purge failed"
cx test ! -e /etc/goloadbalancer || fail "--purge left /etc/goloadbalancer"
cx test ! -e /var/lib/goloadbalancer || fail "--purge left /var/lib/goloadbalancer"
echo "systemd-e2e: uninstall keeps the edited config and the database; --purge removes them"
phase_done "uninstall"

log "docker runtime under the hardened unit"
# The same unit, now with `runtime: auto` and the host's docker engine reachable: the docker
# CLI in the container talks to the host's socket, so workers are real containers on the
# host. Paths and ports must mean the same on both sides: the container shares the host's
# network, and the database directory is bind-mounted at the same path.
if [ $docker_phase = 0 ]; then
    echo "systemd-e2e: skipped (--no-docker)"
elif [ ! -S /var/run/docker.sock ] || ! command -v docker >/dev/null; then
    echo "systemd-e2e: skipped: no /var/run/docker.sock here"
else
    docker rm -f "$container" >/dev/null 2>&1 || true
    instance="glb-e2e-$$"
    db_dir="/var/lib/$instance"
    mkdir -p "$db_dir"
    docker_gid="$(stat -c %g /var/run/docker.sock)"
    # Three free host ports runs: LB (2), workers (3), admin (1), below the ephemeral range.
    port_free() { ! ss -Hltn "sport = :$1" | grep . >/dev/null; }
    pick_base() {
        local n="$1" base i ok
        for _ in $(seq 1 50); do
            base=$((20000 + RANDOM % 10000))
            ok=1
            for i in $(seq 0 $((n - 1))); do port_free $((base + i)) || ok=0; done
            [ $ok = 1 ] && { echo "$base"; return 0; }
        done
        return 1
    }
    lb_port="$(pick_base 2)" || fail "no free host ports"
    worker_port="$(pick_base 3)" || fail "no free host ports"
    admin_port="$(pick_base 1)" || fail "no free host ports"
    container="glb-e2e-docker-$$-$RANDOM"
    # shellcheck disable=SC2086 # $used is a list of docker options
    docker run -d -t --name "$container" --network host --tmpfs /run --tmpfs /run/lock \
        --tmpfs /tmp -v /var/run/docker.sock:/run/docker.sock -v "$db_dir:$db_dir" \
        $used "$image" >/dev/null || fail "docker run (docker phase) refused"
    created+=("$container")
    wait_booted || fail "systemd did not boot in the docker-phase container"
    cx mkdir -p /opt/glb-src /opt/glb
    docker cp "$binary" "$container:/opt/glb/goloadbalancer" >/dev/null
    docker cp "$(command -v docker)" "$container:/usr/local/bin/docker" >/dev/null
    tar -C "$repo" -c scripts/install.sh systemd config.yaml README.md |
        docker exec -i "$container" tar -C /opt/glb-src -x
    # The docker group with the socket's gid: install.sh then writes the drop-in.
    cx groupadd -g "$docker_gid" docker
    cx /opt/glb-src/scripts/install.sh --binary /opt/glb/goloadbalancer >/dev/null || fail "install.sh failed"
    cx test -f /etc/systemd/system/goloadbalancer.service.d/10-docker.conf ||
        fail "install.sh wrote no docker drop-in although the docker group exists"
    chown "$(cx id -u goloadbalancer):$(cx id -g goloadbalancer)" "$db_dir"
    chmod 0750 "$db_dir"
    docker exec -i "$container" tee /etc/goloadbalancer/config.yaml >/dev/null <<YAML
# systemd-e2e, docker phase
worker: 2
pool: 2
stats-dir: $db_dir/worker-stats.db
avg-delay: 20
failure: 0
load-balancer-port: $lb_port
worker-port: $worker_port
admin-port: $admin_port
instance: $instance
listen-address: 127.0.0.1
runtime: auto
drain-timeout-ms: 5000
YAML
    # A database outside the state directory needs a ReadWritePaths= drop-in (README).
    printf '[Service]\nReadWritePaths=%s\n' "$db_dir" |
        docker exec -i "$container" tee /etc/systemd/system/goloadbalancer.service.d/50-e2e-db.conf >/dev/null
    cx systemctl daemon-reload
    timeout 300 docker exec "$container" systemctl start goloadbalancer || fail "systemctl start (docker) failed"
    main_pid="$(show MainPID)"
    cx journalctl -u goloadbalancer --no-pager -o cat | grep 'event=runtime_chosen runtime=docker' >/dev/null ||
        fail "runtime auto did not choose docker under the unit"
    running="$(docker ps -q --filter "label=goloadbalancer.instance=$instance" | wc -l)"
    [ "$running" = 2 ] || fail "$running worker containers for $instance, expected 2"
    for port in "$lb_port" $((lb_port + 1)); do
        body="$(curl -fsS --max-time 10 "http://127.0.0.1:$port/api/v1/hello")" ||
            fail "GET :$port/api/v1/hello (docker workers) failed"
        case "$body" in *"hello from container: "*) ;; *) fail "unexpected body: $body" ;; esac
    done
    echo "systemd-e2e: hardened unit as user goloadbalancer started 2 worker containers; LB ports answer"
    # The supervisor keeps the docker group; its LB children do not.
    cx grep -E "^Groups:.*\b$docker_gid\b" "/proc/$main_pid/status" >/dev/null ||
        fail "the supervisor lacks the docker group ($docker_gid)"
    check_lb_children_unprivileged "$main_pid"
    # Worker containers: the service user, no capability, read-only, bounded.
    svc_uid="$(cx id -u goloadbalancer)"
    for id in $(docker ps -q --filter "label=goloadbalancer.instance=$instance"); do
        got="$(docker inspect -f '{{.Config.User}} {{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.PidsLimit}} {{.HostConfig.Memory}}' "$id")"
        [ "$got" = "$svc_uid:$(cx id -g goloadbalancer) [ALL] [no-new-privileges] true 256 268435456" ] ||
            fail "worker container $id is not hardened: $got"
    done
    echo "systemd-e2e: worker containers run as $svc_uid, cap-drop ALL, no-new-privileges, read-only, pids 256, 256 MiB"
    # Reload under load: one more container, no failed request.
    ok=0
    bad=0
    (
        o=0 b=0
        while [ ! -e "$db_dir/stop" ]; do
            code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 15 "http://127.0.0.1:$lb_port/api/v1/hello")"
            if [ "$code" = 200 ]; then o=$((o + 1)); else b=$((b + 1)); fi
        done
        echo "$o $b" >"$db_dir/load.result"
    ) &
    load_pid=$!
    sleep 2
    cx sed -i 's/^worker: 2$/worker: 3/' /etc/goloadbalancer/config.yaml
    timeout 60 docker exec "$container" systemctl reload goloadbalancer || fail "systemctl reload (docker) failed"
    for _ in $(seq 1 120); do
        case "$(show StatusText)" in *"workers 3/3"*) break ;; esac
        sleep 0.5
    done
    case "$(show StatusText)" in *"workers 3/3"*) ;; *) fail "never workers 3/3: $(show StatusText)" ;; esac
    sleep 2
    touch "$db_dir/stop"
    wait "$load_pid"
    read -r ok bad <"$db_dir/load.result"
    echo "systemd-e2e: docker reload under load: $ok ok, $bad failed"
    [ "$bad" = 0 ] || fail "$bad requests failed across the reload (docker runtime)"
    [ "$ok" -ge 10 ] || fail "only $ok requests ran across the reload (docker runtime)"
    running="$(docker ps -q --filter "label=goloadbalancer.instance=$instance" | wc -l)"
    [ "$running" = 3 ] || fail "$running worker containers after the reload, expected 3"
    timeout 150 docker exec "$container" systemctl stop goloadbalancer || fail "systemctl stop (docker) failed"
    [ "$(show Result)" = success ] || fail "Result=$(show Result) after stop (docker)"
    left="$(docker ps -aq --filter "label=goloadbalancer.instance=$instance" | wc -l)"
    [ "$left" = 0 ] || fail "$left containers of $instance left after systemctl stop"
    cx journalctl -u goloadbalancer --no-pager -o cat "_PID=$main_pid" | grep 'event=stopped exit_code=0' >/dev/null ||
        fail "no clean event=stopped from the supervisor (docker)"
    echo "systemd-e2e: stopped: every worker container removed, exit 0"
fi
phase_done "docker runtime"

echo
echo "systemd-e2e: PASS in $(($(date +%s) - t_start))s (privileges: $used)"
