#!/usr/bin/env bash
# A real multi-node Docker Swarm on one machine, for the `runtime: swarm` end-to-end test: three
# node containers, each a Debian root (debootstrap, cached as a docker image) running Debian's
# docker engine, joined into one swarm on a docker network of their own; our worker image loaded
# into every node; a dnsrr service with host-mode published ports; a hello from the host to a
# task on every node. Everything it starts carries the run id and is removed on exit, failure
# included, unless --keep.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/swarm-e2e.sh [options]

  --binary PATH    the static goloadbalancer binary for the worker image (default: the
                   release build if there is one, else the debug build, else cargo build)
  --nodes N        swarm nodes, 2..5 (default 3); node 1 is the manager
  --keep           leave the cluster up at the end, failed or not, and print how to reach it
                   (for developing the swarm runtime driver); remove it with --down RUNID.
                   The node-loss step leaves the last node dead: add --no-node-loss to keep
                   every node
  --down RUNID     remove what the run RUNID left (service, swarm, node containers, network)
                   and exit
  --list           list the runs whose node containers exist, and exit
  --no-overlay     no attachable overlay network for the service (and no overlay check)
  --no-scale       skip the scaling step (docker service scale out to twice the nodes, back in)
  --no-node-loss   skip the node-loss step (the last node killed; swarm reschedules its
                   tasks): with the supervisor checks it happens there, under load
  --no-supervisor  skip the goloadbalancer run (runtime: swarm) checks
  --rebuild-root   rebuild the node root even when its image is cached
  --timeout S      stop (and clean up) S seconds after the root image is ready (default 600)
  -h, --help       this text

Steps, each printing its time: root image (debootstrap; cached as glb-swarm-node:<hash of its
recipe>), boot (dockerd --storage-driver vfs answers in every node), swarm (init on node 1,
the others join as workers), images (the worker image, FROM scratch + the binary +
Dockerfile.worker, `docker save` on the host, `docker load` into each node), service (dnsrr,
host-mode published ports, the database on a node-local volume, attached to an attachable
overlay network), hello (from the host to <node address>:<published port> of every task, read
from `docker inspect <task>` and `docker node inspect`), overlay (from a container on node 2,
`tasks.<service>` resolves to every task and each answers on its overlay address: what
/worker/stats across nodes would use, docs/SCALING.md), scale (`docker service scale` to twice
the nodes and back: the time until all serve; a task being stopped is seen running with desired
state remove and answering /healthz 503 during its drain grace), node lost (the last node container
killed: the time until swarm marks it Down and until every task runs, and answers, on the
surviving nodes) and stats (each node's /worker/stats counts exactly the hellos its tasks
answered; the lost node's hellos are counted, not hidden), then the supervisor (`goloadbalancer
run` with runtime: swarm against the manager, under scripts/load.sh load): round robin over the
tasks of every node, /worker/stats totals equal to the requests made, reload 3 -> 6 -> 2 with 0
failed and 0 refused, the autoscaler out and in, a node lost (failed requests counted, time to
capacity measured; this replaces the swarm-alone node loss), SIGTERM leaving no service, task or
container.

Needs: root, a docker engine that accepts --cap-add ALL (without CAP_SYS_RESOURCE) and
--security-opt seccomp=unconfined, debootstrap (installed with apt-get when missing), curl, jq and
for the first run a Debian mirror: the one this machine's apt uses, or GLB_DEBIAN_MIRROR=URI
(see scripts/lib/debian-root.sh). Engines inside nodes listen on tcp://<node>:2375 without
TLS, reachable only from this machine (the nodes' own bridge network).
EOF
}

repo="$(cd "$(dirname "$0")/.." && pwd)"
binary=""
nodes_wanted=3
keep=0
down_run=""
list_runs=0
rebuild=0
overlay=1
lose_node=1
scale=1
supervisor=1
budget=600
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --nodes) nodes_wanted="${2:?--nodes needs a number}"; shift 2 ;;
        --keep) keep=1; shift ;;
        --down) down_run="${2:?--down needs a run id}"; shift 2 ;;
        --list) list_runs=1; shift ;;
        --no-overlay) overlay=0; shift ;;
        --no-node-loss) lose_node=0; shift ;;
        --no-scale) scale=0; shift ;;
        --no-supervisor) supervisor=0; shift ;;
        --rebuild-root) rebuild=1; shift ;;
        --timeout) budget="${2:?--timeout needs seconds}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "swarm-e2e: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$nodes_wanted" in [2-5]) ;; *) echo "swarm-e2e: --nodes must be 2..5" >&2; exit 2 ;; esac
case "$budget" in ''|*[!0-9]*) echo "swarm-e2e: --timeout must be seconds" >&2; exit 2 ;; esac
case "$down_run" in *[!a-z0-9]*) echo "swarm-e2e: bad run id $down_run (see --list)" >&2; exit 2 ;; esac

suite="bookworm"
# docker.io: dockerd, containerd, runc, the CLI; tini: the nodes' PID 1; iptables: dockerd's bridge and swarm's
# networks; busybox-static: the probe image (nslookup, wget) made inside a node for the overlay
# check (sh, nslookup, nc); procps and iproute2: looking around in a kept node.
packages="docker.io,iptables,tini,busybox-static,procps,iproute2"
# Every node container, network and service of a run carries this label (value: the run id).
run_label="glb-swarm.run"
worker_port=6000

t_start=$(date +%s)
phase_start=$t_start
log() { printf '\n=== swarm-e2e: %s (%s)\n' "$*" "$(date +%T)"; }
say() { printf 'swarm-e2e: %s\n' "$*"; }
fail() {
    printf '\nswarm-e2e: FAIL: %s\n' "$*" >&2
    dump_diagnostics >&2 || true
    exit 1
}
figures=()
phase_done() {
    local now
    now=$(date +%s)
    say "$1 took $((now - phase_start))s"
    figures+=("$1=$((now - phase_start))s")
    phase_start=$now
}

# --- names of a run ---------------------------------------------------------------------------
# A run id is short, lowercase and unique enough for parallel runs on one engine.
run_id=""
net_name() { echo "glb-swarm-$1"; }
node_name() { echo "glb-swarm-$1-n$2"; }
service_name() { echo "glb-swarm-$1-workers"; }
overlay_name() { echo "glb-swarm-$1-overlay"; }

# The node containers of run $1, node 1 first.
run_nodes() {
    docker ps -a --filter "label=$run_label=$1" --format '{{.Names}}' | sort
}

# down RUNID: removes everything of the run, each step bounded and allowed to fail (the point is
# to leave nothing, whatever state the run reached).
down() {
    local id="$1" node manager left
    manager="$(node_name "$id" 1)"
    if docker inspect "$manager" >/dev/null 2>&1; then
        timeout 30 docker exec "$manager" docker service rm "$(service_name "$id")" >/dev/null 2>&1 || true
        timeout 30 docker exec "$manager" docker network rm "$(overlay_name "$id")" >/dev/null 2>&1 || true
    fi
    for node in $(run_nodes "$id"); do
        timeout 20 docker exec "$node" docker swarm leave --force >/dev/null 2>&1 || true
    done
    for node in $(run_nodes "$id"); do
        timeout 60 docker rm -f "$node" >/dev/null 2>&1 || true
    done
    timeout 30 docker network rm "$(net_name "$id")" >/dev/null 2>&1 || true
    left="$(run_nodes "$id")"
    [ -z "$left" ] || say "still there after --down $id: $left"
}

if [ $list_runs = 1 ]; then
    docker ps -a --filter "label=$run_label" --format "{{.Label \"$run_label\"}} {{.Names}} {{.Status}}" | sort
    exit 0
fi
if [ -n "$down_run" ]; then
    down "$down_run"
    say "run $down_run removed"
    exit 0
fi

# shellcheck disable=SC2317 # called by cleanup (EXIT) with --keep
print_access() {
    echo
    say "run $run_id kept: $(run_nodes "$run_id" | tr '\n' ' ')on network $(net_name "$run_id")"
    if [ -n "${manager_ip:-}" ]; then
        echo "  export DOCKER_HOST=tcp://$manager_ip:2375   # the manager's engine, from this machine"
        echo "  docker node ls; docker service ls"
    fi
    if [ -n "${service:-}" ]; then
        tasks 2>/dev/null | awk '{printf "  curl http://%s:%s/api/v1/hello   # task %s on %s\n", $2, $3, $1, $5}'
    fi
    say "remove it with: scripts/swarm-e2e.sh --down $run_id"
}

# --- the time bound and the clean-up ------------------------------------------------------------
watchdog_pid=""
root_dir=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local rc=$?
    # Every step here runs whatever failed before it: errexit would end the trap half-way.
    set +e
    # The watchdog's sleep first (its parent is the watchdog, started here), then the watchdog.
    [ -n "$watchdog_pid" ] && { pkill -P "$watchdog_pid" sleep 2>/dev/null; kill "$watchdog_pid" 2>/dev/null; }
    [ -z "$root_dir" ] || remove_root
    [ -n "${context_dir:-}" ] && rm -rf "$context_dir"
    stop_supervisor
    if [ -n "$run_id" ]; then
        if [ $keep = 1 ]; then
            print_access
        else
            log "tear down run $run_id"
            down "$run_id"
            say "removed: service, swarm, node containers, network $(net_name "$run_id")"
        fi
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'say "stopped by a signal (or the --timeout of ${budget}s)"; exit 124' TERM

# in NODE CMD...: a command inside a node container (bounded).
in_node() { local n="$1"; shift; timeout 120 docker exec "$n" "$@"; }

# The docker CLI of this machine against node 1's engine: what the runtime driver will do with
# DOCKER_HOST set.
mgr() { DOCKER_HOST="tcp://$manager_ip:2375" timeout 60 docker "$@"; }

dump_diagnostics() {
    [ -n "$run_id" ] || return 0
    local node
    for node in $(run_nodes "$run_id"); do
        echo "--- $node: $(docker inspect -f '{{.State.Status}}' "$node" 2>/dev/null)"
        docker logs "$node" 2>&1 | tail -15
    done
    if [ -n "${manager_ip:-}" ]; then
        echo "--- docker node ls"
        mgr node ls 2>&1 || true
        echo "--- docker service ps"
        mgr service ps --no-trunc "$(service_name "$run_id")" 2>&1 | head -20 || true
    fi
}

# --- preflight --------------------------------------------------------------------------------
command -v docker >/dev/null || fail "docker CLI not found"
command -v curl >/dev/null || fail "curl not found (apt-get install curl)"
command -v jq >/dev/null || fail "jq not found (apt-get install jq)"
timeout 30 docker info >/dev/null 2>&1 || fail "no docker engine answers (docker info)"
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap and the root's ownership need it)"
avail_mb="$(df -Pm "${TMPDIR:-/var/tmp}" | awk 'NR == 2 {print $4}')"
[ "$avail_mb" -ge 2048 ] || fail "only ${avail_mb} MB free in ${TMPDIR:-/var/tmp}; the root needs ~1 GB to build"

# shellcheck source=scripts/lib/debian-root.sh
. "$repo/scripts/lib/debian-root.sh"

# --- the node root, cached as an image ----------------------------------------------------------
# Everything that shapes the root feeds the image tag (as in systemd-e2e.sh): editing this
# function, the init below or the package list builds a new root.
prepare_root() {
    local dir="$1" mirror="$2"
    timeout 900 debootstrap --variant=minbase --include="$packages" "$suite" "$dir" "$mirror" \
        >"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; fail "debootstrap failed (log above)"; }
    rm -f "$dir.log"
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    node_init >"$dir/usr/local/sbin/glb-node-init"
    chmod 0755 "$dir/usr/local/sbin/glb-node-init"
}

# The node's PID 1 (under tini, which reaps): make the cgroup hierarchy writable, then run
# dockerd in the foreground, so `docker logs <node>` is the engine's log.
node_init() {
    cat <<'INIT'
#!/bin/bash
set -eu
# Docker mounts a container's cgroups read-only unless --privileged, which is refused here; in a
# private cgroup namespace with CAP_SYS_ADMIN they can be mounted again read-write, each at its
# own directory, so dockerd can make cgroups for its containers.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    # cgroup v2 only: remount, move ourselves out of the root so its controllers can be
    # delegated to the children dockerd makes.
    mount -o remount,rw /sys/fs/cgroup
    mkdir -p /sys/fs/cgroup/init
    xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || true
    sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers >/sys/fs/cgroup/cgroup.subtree_control
else
    # cgroup v1 (and the hybrid layout): every read-only cgroup/cgroup2 mount, again read-write.
    mount -o remount,rw /sys/fs/cgroup 2>/dev/null || true
    awk '$2 ~ "^/sys/fs/cgroup/" && ($3 == "cgroup" || $3 == "cgroup2") && $4 ~ /(^|,)ro(,|$)/ {print $2, $3, $4}' \
        /proc/self/mounts | while read -r dir fstype opts; do
        umount "$dir"
        if [ "$fstype" = cgroup2 ]; then
            mount -t cgroup2 cgroup2 "$dir"
        else
            # The controller options (cpu,cpuacct / name=systemd ...) without the mount flags.
            ctl="$(tr ',' '\n' <<<"$opts" | grep -vxE 'ro|rw|nosuid|nodev|noexec|relatime|noatime' | paste -sd, -)"
            case "$ctl" in name=*) ctl="none,$ctl" ;; esac
            mount -t cgroup -o "$ctl" cgroup "$dir"
        fi
    done
fi
exec dockerd --storage-driver vfs -H unix:///var/run/docker.sock -H tcp://0.0.0.0:2375 \
    --log-level warn
INIT
}

recipe="$(declare -f prepare_root node_init) $suite $packages"
image="glb-swarm-node:$(printf '%s' "$recipe" | sha256sum | cut -c1-12)"

log "root image $image ($packages)"
root_image swarm-e2e "$image" "$rebuild" prepare_root \
    -c 'ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/sbin/glb-node-init"]' ||
    fail "the root image was not built"
say "$image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%d MB", $1 / 1048576}')"
phase_done "root"

# The watchdog, from here on (a first root build has its own bound, debootstrap's 900 s): TERM to
# this script once the budget is spent; the trap then cleans up.
(sleep "$budget" && kill -TERM $$) 2>/dev/null &
watchdog_pid=$!

# --- the worker image ---------------------------------------------------------------------------
# Built as the supervisor builds it (FROM scratch + the static binary + Dockerfile.worker, the
# classic builder: nothing pulled), before the nodes boot so a missing binary fails early.
log "worker image"
if [ -z "$binary" ]; then
    for b in release debug; do
        binary="$repo/target/x86_64-unknown-linux-gnu/$b/goloadbalancer"
        [ -x "$binary" ] && break
    done
    if [ ! -x "$binary" ]; then
        (cd "$repo" && cargo build --release --locked) || fail "cargo build --release failed"
        binary="$repo/target/x86_64-unknown-linux-gnu/release/goloadbalancer"
    fi
fi
[ -x "$binary" ] || fail "no binary at $binary"
file -L "$binary" 2>/dev/null | grep -q 'static' || say "warning: $binary may not be static (FROM scratch needs it)"
worker_image="glb-swarm-worker:$(sha256sum "$binary" | cut -c1-12)"
if ! docker image inspect "$worker_image" >/dev/null 2>&1; then
    context_dir="$(mktemp -d "${TMPDIR:-/var/tmp}/glb-swarm-ctx.XXXXXX")"
    cp "$binary" "$context_dir/goloadbalancer"
    cp "$repo/Dockerfile.worker" "$context_dir/Dockerfile"
    # The legacy builder's deprecation notice goes to stderr: shown only when the build fails.
    out="$(DOCKER_BUILDKIT=0 timeout 300 docker build -q -t "$worker_image" "$context_dir" 2>&1)" ||
        fail "docker build of the worker image failed: $out"
    rm -rf "$context_dir"
    context_dir=""
fi
say "$worker_image from $binary"
# One tag per binary: older ones are dead weight (a run that uses one has loaded it already).
for old in $(docker images glb-swarm-worker --format '{{.Repository}}:{{.Tag}}'); do
    [ "$old" = "$worker_image" ] || docker rmi "$old" >/dev/null 2>&1 || true
done
phase_done "worker-image"

# --- boot the nodes ----------------------------------------------------------------------------
run_id="$(printf '%04x%04x' $$ $RANDOM | tail -c 8)"
log "boot $nodes_wanted nodes, run $run_id"
net="$(net_name "$run_id")"
docker network create --label "$run_label=$run_id" "$net" >/dev/null || fail "docker network create $net"
# The flags the swarm issue verified: all capabilities but CAP_SYS_RESOURCE (which the host
# lacks, so --privileged is refused), a private cgroup namespace (the init remounts it), no
# seccomp/apparmor filter (dockerd makes namespaces, mounts and iptables rules), tmpfs for
# /run and the engine's state (vfs on an overlay upper layer would not work; exec: binaries of
# the images run from it).
node_flags=(
    --cap-add ALL --cap-drop SYS_RESOURCE --cgroupns=private
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined
    --tmpfs /run --tmpfs /var/lib/docker:exec
)
nodes=()
for i in $(seq 1 "$nodes_wanted"); do
    node="$(node_name "$run_id" "$i")"
    err="$(docker run -d --name "$node" --hostname "$node" --network "$net" \
        --label "$run_label=$run_id" "${node_flags[@]}" "$image" 2>&1 >/dev/null)" ||
        fail "docker run $node refused: $err"
    nodes+=("$node")
done
# Waits (bounded) until the engine in every node answers.
for node in "${nodes[@]}"; do
    ready=0
    for _ in $(seq 1 120); do
        [ "$(docker inspect -f '{{.State.Running}}' "$node" 2>/dev/null)" = true ] ||
            fail "$node exited: $(docker logs "$node" 2>&1 | tail -5 | tr '\n' ' ')"
        if timeout 10 docker exec "$node" docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; then
            ready=1
            break
        fi
        sleep 0.5
    done
    [ $ready = 1 ] || fail "the engine in $node never answered (docker info)"
done
manager="${nodes[0]}"
manager_ip="$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$manager")"
[ -n "$manager_ip" ] || fail "no address for $manager on $net"
mgr version --format '{{.Server.Version}}' >/dev/null 2>&1 || fail "the manager's engine does not answer on tcp://$manager_ip:2375"
say "engines: $(in_node "$manager" docker version --format '{{.Server.Version}}') (storage $(in_node "$manager" docker info --format '{{.Driver}}'), cgroup $(in_node "$manager" docker info --format '{{.CgroupVersion}}')) in ${nodes[*]}"
phase_done "boot"

# --- the swarm --------------------------------------------------------------------------------
log "swarm"
in_node "$manager" docker swarm init --advertise-addr "$manager_ip" >/dev/null ||
    fail "docker swarm init on $manager failed"
token="$(in_node "$manager" docker swarm join-token -q worker)" || fail "no worker join token"
for node in "${nodes[@]:1}"; do
    err="$(in_node "$node" docker swarm join --token "$token" "$manager_ip:2377" 2>&1)" ||
        fail "docker swarm join on $node failed: $err"
done
ready=0
for _ in $(seq 1 60); do
    [ "$(mgr node ls --format '{{.Status}}' 2>/dev/null | grep -c Ready)" = "$nodes_wanted" ] && { ready=1; break; }
    sleep 0.5
done
[ $ready = 1 ] || fail "not every node became Ready in the swarm"
say "$nodes_wanted nodes Ready, manager $manager ($manager_ip)"
phase_done "swarm"

# --- the worker image in every node --------------------------------------------------------------
# With no registry each node needs the image: a registry reference (swarm.image) replaces this
# in a real deployment.
load_image_into_nodes() {
    local img="$1" node pids=() pid
    for node in "${nodes[@]}"; do
        docker save "$img" | timeout 300 docker exec -i "$node" docker load -q >/dev/null &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || return 1; done
}
log "load $worker_image into every node"
load_image_into_nodes "$worker_image" || fail "docker save | docker load into the nodes failed"
for node in "${nodes[@]}"; do
    in_node "$node" docker image inspect "$worker_image" >/dev/null 2>&1 || fail "$worker_image missing in $node"
done
phase_done "images"

# Hellos answered, by worker id (the task's container id): what each node's database must hold.
declare -A answered=()
# A hello body's worker id counted as answered; prints the id.
count_hello() {
    local id="${1##*container: }"
    id="${id%%\"*}"
    answered[$id]=$((${answered[$id]:-0} + 1))
}

# --- the service -------------------------------------------------------------------------------
# dnsrr + host-mode published ports: no IPVS here, so no routing mesh and no VIP; and we want
# every task reachable on its own anyway. No published port given: each task gets its own
# from the node's ephemeral range, read back from the task. The database is on a node-local
# named volume: the tasks of one node share one file (as the stats design has it).
log "service"
service="$(service_name "$run_id")"
service_net=()
if [ $overlay = 1 ]; then
    # Attachable: a plain container (the probe below; a worker's peers in the stats design) can
    # join it too.
    mgr network create --driver overlay --attachable --label "$run_label=$run_id" \
        "$(overlay_name "$run_id")" >/dev/null || fail "docker network create --driver overlay failed"
    service_net=(--network "$(overlay_name "$run_id")")
fi
t_create=$(date +%s%N)
# --no-resolve-image: no registry to ask for a digest; every node has the tag (loaded above).
mgr service create --detach --quiet --name "$service" --label "$run_label=$run_id" \
    --no-resolve-image "${service_net[@]}" \
    --endpoint-mode dnsrr --replicas "$nodes_wanted" \
    --publish "mode=host,target=$worker_port" \
    --mount "type=volume,source=$service-stats,target=/data" \
    --stop-grace-period 15s \
    "$worker_image" --listen 0.0.0.0 --port "$worker_port" --db /data/worker-stats.db \
    --avg-delay 20 --failure 0 --drain-grace-ms 4000 --drain-timeout-ms 5000 >/dev/null ||
    fail "docker service create failed"

# One line per task of the service that runs now: "TASK DESIRED NODE_ADDR PUBLISHED_PORT
# CONTAINER_ID NODE_HOSTNAME" (port `-` when swarm no longer reports it). This is the discovery
# the runtime driver does: the task's PortStatus and its node's address; four docker calls
# however many tasks.
running_tasks() {
    local ids node_ids
    ids="$(mgr service ps -q "$service")" || return 1
    [ -n "$ids" ] || return 0
    node_ids="$(mgr node ls -q)" || return 1
    # shellcheck disable=SC2086 # lists of ids
    awk 'NR == FNR { addr[$1] = $2; host[$1] = $3; next }
        $4 == "running" { print $1, $3, addr[$2], (NF == 6 ? $5 : "-"), substr($NF, 1, 12), host[$2] }' \
        <(mgr node inspect $node_ids --format '{{.ID}} {{.Status.Addr}} {{.Description.Hostname}}') \
        <(mgr inspect $ids --format \
            '{{.ID}} {{.NodeID}} {{.DesiredState}} {{.Status.State}} {{range .Status.PortStatus.Ports}}{{.PublishedPort}}{{end}} {{.Status.ContainerStatus.ContainerID}}')
}

# The serving set: tasks running with desired state running and a published port:
# "TASK NODE_ADDR PUBLISHED_PORT CONTAINER_ID NODE_HOSTNAME".
tasks() {
    running_tasks | awk '$2 == "running" && $4 != "-" { print $1, $3, $4, $5, $6 }'
}

# Tasks swarm is stopping that still run (desired state `remove` on a scale-in, `shutdown` on an
# update or a node drain): "TASK CONTAINER_ID". Their published port is no longer reported, so
# the address is the one learned while they served (note_nodes), as the driver would keep it.
leaving_tasks() {
    running_tasks | awk '$2 != "running" { print $1, $5 }'
}

# Remembers the node of every worker and the address of every task listed in $1 (the output of
# tasks).
declare -A node_of=() addr_of=()
note_nodes() {
    local task addr port cid host
    while read -r task addr port cid host; do
        [ -n "$cid" ] || continue
        node_of[$cid]=$host
        addr_of[$task]="$addr:$port"
    done <<<"$1"
}
running=""
first_ms=""
for _ in $(seq 1 120); do
    running="$(tasks 2>/dev/null || true)"
    if [ -z "$first_ms" ] && [ -n "$running" ]; then
        read -r _ addr port _ <<<"$running"
        if body="$(curl -fsS --max-time 1 "http://$addr:$port/api/v1/hello" 2>/dev/null)"; then
            first_ms=$((($(date +%s%N) - t_create) / 1000000))
            count_hello "$body"
        fi
    fi
    [ "$(grep -c . <<<"$running")" = "$nodes_wanted" ] && break
    sleep 0.5
done
[ "$(grep -c . <<<"$running")" = "$nodes_wanted" ] || fail "not $nodes_wanted running tasks: ${running:-none}"
say "tasks (task node-address published-port container node):"
while read -r line; do echo "  $line"; done <<<"$running"
note_nodes "$running"
[ -n "$first_ms" ] && { say "first task served a hello ${first_ms} ms after docker service create"; figures+=("first-task-serving=${first_ms}ms"); }
phase_done "service"

# --- a hello from the host to a task on every node ----------------------------------------------
log "hello from the host to every task"
declare -A seen_nodes=()
while read -r task addr port cid host; do
    body=""
    for _ in $(seq 1 40); do
        body="$(curl -fsS --max-time 5 "http://$addr:$port/api/v1/hello" 2>/dev/null)" && break
        sleep 0.25
    done
    case "$body" in
        *"hello from container: $cid"*) count_hello "$body" ;;
        *) fail "task $task on $host ($addr:$port): expected a hello from container $cid, got: ${body:-nothing}" ;;
    esac
    seen_nodes[$host]=1
    say "$addr:$port -> $body ($host)"
done <<<"$running"
[ "${#seen_nodes[@]}" = "$nodes_wanted" ] ||
    fail "tasks ran on ${#seen_nodes[@]} of $nodes_wanted nodes: ${!seen_nodes[*]}"
say "every node serves: ${!seen_nodes[*]}"
phase_done "hello"

# --- peers through the service's DNS on the overlay -----------------------------------------------
# The stats design (docs/SCALING.md) has a worker find its peers as `tasks.<service>` on an
# attachable overlay network and ask each for its node's rows. Proven here from a container on
# node 2 (busybox from the node's root, imported as an image there): the name resolves to every
# task, and every task answers on its overlay address, across nodes.
if [ $overlay = 1 ]; then
    log "overlay: tasks.$service from node 2"
    probe_node="${nodes[1]}"
    timeout 60 docker exec "$probe_node" sh -c 'tar -C / -c bin/busybox | docker import - glb-swarm-probe' >/dev/null ||
        fail "could not make the probe image in $probe_node"
    probe() { in_node "$probe_node" docker run --rm --network "$(overlay_name "$run_id")" glb-swarm-probe /bin/busybox "$@"; }
    peers=""
    for _ in $(seq 1 20); do
        peers="$(probe nslookup "tasks.$service" 2>/dev/null | awk '/^Name:/ {f = 1} f && /^Address/ {print $2}' | sort)"
        [ "$(grep -c . <<<"$peers")" = "$nodes_wanted" ] && break
        sleep 0.5
    done
    [ "$(grep -c . <<<"$peers")" = "$nodes_wanted" ] ||
        fail "tasks.$service resolved to $(grep -c . <<<"$peers") addresses on the overlay, not $nodes_wanted: $peers"
    ids=""
    for peer in $peers; do
        # nc, not wget: the static busybox's wget crashes (SIGSEGV) in a scratch image.
        body="$(probe sh -c "printf 'GET /api/v1/hello HTTP/1.0\r\n\r\n' | busybox nc -w 5 $peer $worker_port" 2>&1 | tail -1)"
        case "$body" in
            *"hello from container: "*) ;;
            *) fail "no hello from $peer:$worker_port over the overlay (from $probe_node): $body" ;;
        esac
        say "overlay $peer:$worker_port -> $body"
        count_hello "$body"
        ids="$ids ${body##*container: }"
    done
    while read -r _ _ _ cid _; do
        case "$ids" in *"$cid"*) ;; *) fail "task container $cid did not answer over the overlay" ;; esac
    done <<<"$running"
    say "from $probe_node: tasks.$service = $(tr '\n' ' ' <<<"$peers")- every task answers on the overlay"
    phase_done "overlay"
fi

# --- scaling, swarm alone ---------------------------------------------------------------------------
# `docker service scale` out and back in: the time until every task serves, and the premise of
# the driver's draining (docs/SCALING.md): a task swarm stops shows a desired state other than
# `running` while it still runs, and during the worker's --drain-grace-ms it answers /healthz 503 (still
# serving hellos), so the LB can stop sending before it closes.
# wait_serving N: waits (bounded) until N tasks run and each answers a hello; sets $running.
wait_serving() {
    local want="$1" ok task addr port cid host body
    for _ in $(seq 1 120); do
        running="$(tasks 2>/dev/null || true)"
        if [ "$(grep -c . <<<"$running")" = "$want" ]; then
            ok=1
            while read -r task addr port cid host; do
                body="$(curl -fsS --max-time 2 "http://$addr:$port/api/v1/hello" 2>/dev/null)" || { ok=0; break; }
                count_hello "$body"
            done <<<"$running"
            [ $ok = 1 ] && { note_nodes "$running"; return 0; }
        fi
        sleep 0.5
    done
    return 1
}
if [ $scale = 1 ]; then
    scaled=$((nodes_wanted * 2))
    log "scale: $nodes_wanted -> $scaled -> $nodes_wanted (docker service scale)"
    t0=$(date +%s%N)
    mgr service scale --detach "$service=$scaled" >/dev/null || fail "docker service scale $service=$scaled"
    wait_serving "$scaled" || fail "not $scaled tasks serving after the scale-out: ${running:-none}"
    out_ms=$((($(date +%s%N) - t0) / 1000000))
    say "$scaled tasks serving ${out_ms} ms after docker service scale"
    t0=$(date +%s%N)
    mgr service scale --detach "$service=$nodes_wanted" >/dev/null || fail "docker service scale $service=$nodes_wanted"
    declare -A leaving=()
    draining_503=0
    for _ in $(seq 1 120); do
        stopping="$(leaving_tasks 2>/dev/null || true)"
        while read -r task cid; do
            if [ -z "$cid" ] || [ -z "${addr_of[$task]:-}" ]; then continue; fi
            leaving[$cid]=1
            code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://${addr_of[$task]}/healthz" 2>/dev/null || true)"
            [ "$code" = 503 ] && draining_503=$((draining_503 + 1))
        done <<<"$stopping"
        running="$(tasks 2>/dev/null || true)"
        [ "$(grep -c . <<<"$running")" = "$nodes_wanted" ] && [ -z "$stopping" ] && break
        sleep 0.2
    done
    in_ms=$((($(date +%s%N) - t0) / 1000000))
    [ "$(grep -c . <<<"$running")" = "$nodes_wanted" ] || fail "not $nodes_wanted tasks after the scale-in: ${running:-none}"
    [ "${#leaving[@]}" -gt 0 ] || fail "no task was seen stopping (desired state not running, still running)"
    [ "$draining_503" -gt 0 ] || fail "no stopping task answered /healthz 503 during its drain grace"
    say "scale-in: ${#leaving[@]} tasks seen stopping while running, /healthz 503 from them $draining_503 times; $nodes_wanted left after ${in_ms} ms"
    wait_serving "$nodes_wanted" || fail "the $nodes_wanted tasks left do not all serve"
    figures+=("scale-out=${out_ms}ms" "scale-in=${in_ms}ms")
    phase_done "scale"
fi

# --- a node lost, swarm alone ----------------------------------------------------------------------
# What the supervisor's node-lost check will stand on: how long swarm takes to see a node gone
# and to run its tasks elsewhere (no supervisor here: no load, no backend set).
# With the supervisor checks, the loss happens there, under load.
if [ $lose_node = 1 ] && [ $supervisor = 0 ]; then
    victim="${nodes[-1]}"
    log "node lost: docker kill $victim"
    t_kill=$(date +%s%N)
    docker kill "$victim" >/dev/null || fail "docker kill $victim"
    down_ms=""
    back_ms=""
    for _ in $(seq 1 240); do
        if [ -z "$down_ms" ] && mgr node ls --format '{{.Hostname}} {{.Status}}' 2>/dev/null | grep -qx "$victim Down"; then
            down_ms=$((($(date +%s%N) - t_kill) / 1000000))
            say "swarm marked $victim Down after ${down_ms} ms"
        fi
        if [ -n "$down_ms" ]; then
            running="$(tasks 2>/dev/null || true)"
            if [ "$(grep -c . <<<"$running")" = "$nodes_wanted" ] && ! grep -q " $victim\$" <<<"$running"; then
                back_ms=$((($(date +%s%N) - t_kill) / 1000000))
                break
            fi
        fi
        sleep 0.5
    done
    [ -n "$down_ms" ] || fail "swarm never marked $victim Down"
    [ -n "$back_ms" ] || fail "not $nodes_wanted running tasks on the surviving nodes after losing $victim: ${running:-none}"
    while read -r task addr port cid host; do
        body="$(curl -fsS --max-time 5 "http://$addr:$port/api/v1/hello" 2>/dev/null)" || body=""
        case "$body" in
            *"hello from container: $cid"*) count_hello "$body" ;;
            *) fail "task $task on $host ($addr:$port) after the loss: ${body:-no answer}" ;;
        esac
    done <<<"$running"
    note_nodes "$running"
    say "$nodes_wanted tasks serving again on the surviving nodes ${back_ms} ms after the kill:"
    while read -r line; do echo "  $line"; done <<<"$running"
    figures+=("node-down-seen=${down_ms}ms" "capacity-back=${back_ms}ms")
    phase_done "node-lost"
fi

# --- each node's database -----------------------------------------------------------------------
# The premise of the stats design: a node's tasks share its file, so /worker/stats on any task
# of a node counts exactly the hellos that node's tasks answered, and holds no other node's
# worker. What a lost node's workers answered is in no surviving file: that is what the peer
# copies of docs/SCALING.md are for; counted here, not hidden.
log "stats: each node's database"
declare -A in_files=()
while read -r host; do
    read -r _ addr port _ <<<"$(grep " $host\$" <<<"$running" | head -1)"
    rows="$(curl -fsS --max-time 10 "http://$addr:$port/worker/stats" |
        jq -r '.TotalRequests[] | to_entries[] | select(.key != "total") | "\(.key) \(.value)"')" ||
        fail "GET /worker/stats from $addr:$port ($host) failed"
    while read -r id n; do
        [ -n "$id" ] || continue
        [ -z "${in_files[$id]:-}" ] || fail "worker $id is in the files of two nodes"
        in_files[$id]=$n
        [ "$n" = "${answered[$id]:-0}" ] ||
            fail "$host's /worker/stats counts $n hellos for $id, the script got ${answered[$id]:-0} from it"
    done <<<"$rows"
    while read -r _ _ _ cid _; do
        [ -n "${in_files[$cid]:-}" ] || fail "task $cid on $host is not in its node's /worker/stats"
    done < <(grep " $host\$" <<<"$running")
    say "$host: $(tr '\n' ' ' <<<"$rows")(= the hellos the script got from each)"
done < <(awk '{print $5}' <<<"$running" | sort -u)
# A worker missing from every file read: fine only when its node is the lost one, or has no
# running task left to read its file through (counted apart).
lost=0
lost_ids=""
unread=0
serving_nodes=" $(awk '{print $5}' <<<"$running" | sort -u | tr '\n' ' ')"
for id in "${!answered[@]}"; do
    [ -z "${in_files[$id]:-}" ] || continue
    if [ -n "${victim:-}" ] && [ "${node_of[$id]:-}" = "$victim" ]; then
        lost=$((lost + answered[$id]))
        lost_ids="$lost_ids $id"
    elif [[ "$serving_nodes" == *" ${node_of[$id]:-?} "* ]]; then
        fail "worker $id (node ${node_of[$id]}) answered ${answered[$id]} hellos and is in no file of its node"
    else
        unread=$((unread + answered[$id]))
    fi
done
if [ "$lost" -gt 0 ]; then
    say "$lost hellos answered by$lost_ids (on the lost node) are in no surviving node's file"
fi
[ "$unread" = 0 ] || say "$unread hellos answered on nodes with no running task left (their files not read)"
figures+=("hellos-lost-with-node=$lost")
phase_done "stats"

# --- the supervisor against the swarm (runtime: swarm) ------------------------------------------
# `goloadbalancer run` on this machine against the manager (DOCKER_HOST), its own service
# (`swarm.image` = the image loaded into every node), LB on loopback; every check under
# scripts/load.sh load, each printing its figures.
sup_pid=""
sup_dir=""
load_pid=""
# shellcheck disable=SC2317 # called by cleanup
stop_supervisor() {
    [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null
    [ -n "$sup_pid" ] && kill -KILL "$sup_pid" 2>/dev/null
    sup_pid=""
    if [ -n "$sup_dir" ] && [ $keep = 0 ]; then rm -rf "$sup_dir"; fi
}
# A free loopback TCP port (the kernel's pick, read back).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sup_status() { curl -fsS --max-time 2 "http://127.0.0.1:$admin_port/status" 2>/dev/null; }
# wait_workers N SECS: until /status shows exactly N workers, all active; prints the ms it took.
wait_workers() {
    local want="$1" t0 st
    t0=$(date +%s%N)
    for _ in $(seq 1 $(($2 * 5))); do
        kill -0 "$sup_pid" 2>/dev/null || fail "the supervisor exited: $(tail -20 "$sup_dir/run.log")"
        st="$(sup_status | jq -c '[.workers[] | .state]' 2>/dev/null || echo '[]')"
        if [ "$(jq 'length' <<<"$st")" = "$want" ] && [ "$(jq '[.[] | select(. == "active")] | length' <<<"$st")" = "$want" ]; then
            echo $((($(date +%s%N) - t0) / 1000000))
            return 0
        fi
        sleep 0.2
    done
    fail "not $want active workers after $2 s: $(sup_status | jq -c '[.workers[] | [.id, .state]]' 2>/dev/null)"
}
# write_config WORKERS [EXTRA YAML]
write_config() {
    {
        echo "worker: $1"
        echo "pool: 2"
        echo "stats-dir: $sup_dir/db/worker-stats.db"
        echo "avg-delay: 20"
        echo "failure: 0"
        echo "load-balancer-port: $lb_port"
        echo "worker-port: $worker_port"
        echo "instance: glb-swarm-$run_id"
        echo "listen-address: 127.0.0.1"
        echo "runtime: swarm"
        echo "admin-port: $admin_port"
        echo "drain-timeout-ms: 5000"
        echo "worker-start-timeout-ms: 60000"
        echo "health-interval-ms: 1000"
        echo "retries: 3"
        echo "swarm:"
        echo "  service: $sup_service"
        echo "  image: $worker_image"
        echo "${2:-}"
    } >"$sup_dir/config.yaml"
}
# load_start NAME CONCURRENCY: scripts/load.sh (curl: refused counted apart) until load_stop.
load_start() {
    rm -f "$sup_dir/stop-$1"
    "$repo/scripts/load.sh" --tool curl -c "$2" -d 600 --timeout 10 --no-stats \
        --stop-file "$sup_dir/stop-$1" --ports "$lb_port,$((lb_port + 1))" >"$sup_dir/load-$1.out" 2>&1 &
    load_pid=$!
    sleep 1
}
# load_stop NAME: ends the load, prints its SUMMARY and sets load_ok, load_failed, load_refused.
load_stop() {
    touch "$sup_dir/stop-$1"
    wait "$load_pid" || true
    load_pid=""
    local summary
    summary="$(grep '^SUMMARY' "$sup_dir/load-$1.out" | tail -1)"
    [ -n "$summary" ] || fail "load.sh printed no SUMMARY: $(tail -5 "$sup_dir/load-$1.out")"
    load_ok="$(sed -E 's/.* ok=([0-9]+).*/\1/' <<<"$summary")"
    load_failed="$(sed -E 's/.* failed=([0-9]+).*/\1/' <<<"$summary")"
    load_refused="$(sed -E 's/.* refused=([0-9]+).*/\1/' <<<"$summary")"
    made=$((made + load_ok + load_failed))
    say "load $1: $summary"
}
# The TotalRequests total of /worker/stats through the LB (any task: merged across nodes).
stats_total() { curl -fsS --max-time 10 "http://127.0.0.1:$lb_port/worker/stats" | jq '.TotalRequests[0].total'; }

supervisor_start() {
    log "supervisor: goloadbalancer run, runtime: swarm, DOCKER_HOST=tcp://$manager_ip:2375"
    # The cluster-only service goes: the supervisor makes its own.
    mgr service rm "$service" >/dev/null 2>&1 || true
    sup_service="glb-swarm-$run_id-sup"
    service="$sup_service"
    sup_dir="$(mktemp -d "${TMPDIR:-/var/tmp}/glb-swarm-sup.XXXXXX")"
    mkdir -p "$sup_dir/db"
    lb_port="$(free_port)"
    while [ "$lb_port" -ge 65000 ]; do lb_port="$(free_port)"; done
    admin_port="$(free_port)"
    made=0
    write_config 3
    DOCKER_HOST="tcp://$manager_ip:2375" "$binary" check-config "$sup_dir/config.yaml" >/dev/null ||
        fail "check-config with runtime: swarm against the manager failed"
    local t0 start_ms
    t0=$(date +%s%N)
    DOCKER_HOST="tcp://$manager_ip:2375" "$binary" run --config "$sup_dir/config.yaml" >"$sup_dir/run.log" 2>&1 &
    sup_pid=$!
    wait_workers 3 240 >/dev/null
    start_ms=$((($(date +%s%N) - t0) / 1000000))
    say "3 tasks active ${start_ms} ms after goloadbalancer run"
    figures+=("sup-start=${start_ms}ms")
}

# Round robin over the tasks of every node, and the stats totals.
supervisor_round_robin() {
    local body id total
    running="$(tasks)"
    note_nodes "$running"
    declare -A by_id=() rr_nodes=()
    for _ in $(seq 1 30); do
        body="$(curl -fsS --max-time 5 "http://127.0.0.1:$lb_port/api/v1/hello")" || fail "hello through the LB failed"
        id="${body##*container: }"
        id="${id%%\"*}"
        by_id[$id]=$((${by_id[$id]:-0} + 1))
    done
    made=$((made + 30))
    for id in "${!by_id[@]}"; do
        [ "${by_id[$id]}" = 10 ] || fail "round robin: $id answered ${by_id[$id]} of 30"
        rr_nodes[${node_of[$id]:-?}]=1
    done
    if [ "${#by_id[@]}" != 3 ] || [ "${#rr_nodes[@]}" != "$nodes_wanted" ]; then
        fail "30 hellos reached ${#by_id[@]} tasks on ${#rr_nodes[@]} nodes: ${!by_id[*]}"
    fi
    say "round robin: 10 hellos each from ${!by_id[*]} on ${!rr_nodes[*]}"
    sleep 1
    total="$(stats_total)"
    [ "$total" = "$made" ] || fail "/worker/stats total $total, the script made $made requests"
    say "/worker/stats through the LB: total $total = the $made requests made (3 nodes' files merged)"
    figures+=("round-robin=10/10/10")
}

supervisor_reload() {
    local out_ms in_ms total
    log "supervisor: reload 3 -> 6 -> 2 under load"
    load_start reload 8
    write_config 6
    kill -HUP "$sup_pid"
    out_ms="$(wait_workers 6 180)"
    write_config 2
    kill -HUP "$sup_pid"
    in_ms="$(wait_workers 2 180)"
    sleep 1
    load_stop reload
    if [ "$load_failed" != 0 ] || [ "$load_refused" != 0 ]; then
        fail "reload 3->6->2: $load_failed failed, $load_refused refused"
    fi
    say "reload 3->6->2: 6 active after ${out_ms} ms, 2 after ${in_ms} ms more; ok=$load_ok failed=0 refused=0"
    figures+=("reload-3-6-2-ok=$load_ok" "reload-failed=0" "reload-refused=0")
    write_config 3
    kill -HUP "$sup_pid"
    wait_workers 3 180 >/dev/null
    sleep 2
    total="$(stats_total)"
    if [ "$total" = "$made" ]; then
        say "/worker/stats total $total = the $made requests made"
    else
        say "WARNING: /worker/stats total $total, $made requests made (a node with no running task is not asked)"
    fi
    figures+=("stats-total=$total" "requests-made=$made")
}

supervisor_autoscale() {
    local as_out as_in
    log "supervisor: the autoscaler out and back in under load"
    # worker: 2 (the start count): a later reload to 3 is then a change of `worker`, which wins
    # over the autoscaler's count.
    write_config 2 "autoscale: {enabled: true, min: 2, max: 5, target-inflight: 2, breach-ms: 1000, cooldown-ms: 2000, step: 3}"
    kill -HUP "$sup_pid"
    load_start autoscale 24
    as_out="$(wait_workers 5 120)"
    load_stop autoscale
    as_in="$(wait_workers 2 120)"
    [ "$load_failed" = 0 ] || fail "autoscale: $load_failed failed requests"
    say "autoscale: 5 active ${as_out} ms into the load, back to 2 ${as_in} ms after it; ok=$load_ok failed=0 refused=$load_refused"
    figures+=("autoscale-out=${as_out}ms" "autoscale-in=${as_in}ms" "autoscale-failed=0")
    write_config 3
    kill -HUP "$sup_pid"
    wait_workers 3 180 >/dev/null
}

supervisor_node_lost() {
    local t_kill back_ms="" active total
    victim="${nodes[-1]}"
    log "supervisor: node lost under load (docker kill $victim)"
    load_start nodeloss 8
    t_kill=$(date +%s%N)
    docker kill "$victim" >/dev/null || fail "docker kill $victim"
    for _ in $(seq 1 600); do
        running="$(tasks 2>/dev/null || true)"
        active="$(sup_status | jq '[.workers[] | select(.state == "active")] | length' 2>/dev/null || echo 0)"
        if [ "$active" = 3 ] && [ "$(grep -c . <<<"$running")" = 3 ] && ! grep -q " $victim\$" <<<"$running"; then
            back_ms=$((($(date +%s%N) - t_kill) / 1000000))
            break
        fi
        sleep 0.2
    done
    sleep 2
    load_stop nodeloss
    [ -n "$back_ms" ] || fail "capacity never came back to 3 tasks on the surviving nodes"
    say "node lost: 3 tasks active on the survivors ${back_ms} ms after the kill; failed=$load_failed refused=$load_refused ok=$load_ok"
    figures+=("node-loss-capacity-back=${back_ms}ms" "node-loss-failed=$load_failed")
    total="$(stats_total)"
    say "/worker/stats after the loss: total $total of $made made ($((made - total)) counted in the lost node's file, gone with its tmpfs)"
    figures+=("stats-after-loss=$total/$made")
}

supervisor_stop() {
    local code=0 node left
    log "supervisor: SIGTERM"
    kill -TERM "$sup_pid"
    wait "$sup_pid" || code=$?
    sup_pid=""
    [ "$code" = 0 ] || fail "the supervisor exited $code on SIGTERM: $(tail -20 "$sup_dir/run.log")"
    [ -z "$(mgr service ls -q --filter "label=goloadbalancer.instance=glb-swarm-$run_id")" ] || fail "a service is left"
    for node in "${nodes[@]}"; do
        [ "$(docker inspect -f '{{.State.Running}}' "$node" 2>/dev/null)" = true ] || continue
        left="$(in_node "$node" docker ps -aq --filter "label=com.docker.swarm.service.name=$sup_service")"
        [ -z "$left" ] || fail "containers of $sup_service left on $node: $left"
    done
    say "SIGTERM: exit 0; no service, task or container left"
}

if [ $supervisor = 1 ]; then
    supervisor_start
    supervisor_round_robin
    supervisor_reload
    supervisor_autoscale
    if [ $lose_node = 1 ] && [ -z "${victim:-}" ]; then supervisor_node_lost; fi
    supervisor_stop
    phase_done "supervisor"
else
    say "supervisor checks: skipped (--no-supervisor)"
fi

echo
say "PASS in $(($(date +%s) - t_start))s: ${figures[*]}"
