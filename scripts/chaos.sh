#!/usr/bin/env bash
# Chaos under load: while scripts/load.sh drives continuous traffic at the LB ports, in turn
# kill -9 an LB child, kill a worker, SIGHUP with a changed worker count, and make the
# autoscaler scale out and back in. Reports refused connections and failed requests per step.
# Plain bash around real tools. See --help.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/chaos.sh [options]

Starts `goloadbalancer run` with a config of its own (free loopback ports, a temp directory,
process runtime unless --runtime says otherwise), or attaches to a running one, and then, each
step under continuous load (scripts/load.sh --tool curl, which counts refused connections apart
from other failures):

  baseline     no disruption
  kill-lb      kill -9 one LB child; it must be re-forked, the port keeps answering
  kill-worker  kill -9 one worker (process) / docker kill (container); it must be replaced
  reload-up    SIGHUP with `worker` + 1; the count must rise
  reload-down  SIGHUP with `worker` back; the extra worker is drained, then stopped
  scale-out    SIGHUP enabling autoscale (target-inflight 2), heavy load: workers rise to max
  scale-in     light load: workers fall back to min
  stop         (own instance only) SIGTERM: exit 0, no worker left behind

Each step prints requests, refused connections and failed requests. The goal is 0 refused and
0 failed everywhere. kill -9 cannot let the killed process finish what it holds, so kill-lb and
kill-worker allow failed requests up to the load's concurrency (requests in flight inside the
killed process) and still demand 0 refused; --strict demands 0 failed there too.

options:
      --quick            short steps (a few seconds each; for CI)
      --bin PATH         goloadbalancer binary (default: target/*/release, then target/*/debug,
                         then goloadbalancer on PATH)
      --runtime NAME     process | docker | auto for the own instance (default process)
      --concurrency N    load concurrency (default 8, 4 with --quick)
      --step-secs N      load per step (default 15, 4 with --quick)
      --attach PID       use the running supervisor PID instead of starting one; needs --config
      --config PATH      with --attach: the config file it runs with (edited for the reload
                         steps, restored at the end)
      --steps LIST       comma-separated subset of the steps above (default: all)
      --strict           0 failed requests in the kill steps too
      --keep             keep the temp directory (config, logs) for a look afterwards
  -h, --help             this text

exit status: 0 every step met its expectation, 1 a step did not, 2 usage, a missing tool, or
the instance did not come up.

tools: bash, curl, jq, awk, sort, ps (procps); docker for --runtime docker.
Install on Debian/Ubuntu: apt-get install curl jq procps
EOF
}

die() {
    echo "chaos.sh: $*" >&2
    exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

quick=0
bin=""
runtime=process
concurrency=""
step_secs=""
attach=""
attach_config=""
steps="baseline,kill-lb,kill-worker,reload-up,reload-down,scale-out,scale-in,stop"
strict=0
keep=0

while [ $# -gt 0 ]; do
    case "$1" in
    --quick) quick=1; shift ;;
    --bin) bin=${2:?--bin needs a value}; shift 2 ;;
    --runtime) runtime=${2:?--runtime needs a value}; shift 2 ;;
    --concurrency) concurrency=${2:?--concurrency needs a value}; shift 2 ;;
    --step-secs) step_secs=${2:?--step-secs needs a value}; shift 2 ;;
    --attach) attach=${2:?--attach needs a PID}; shift 2 ;;
    --config) attach_config=${2:?--config needs a value}; shift 2 ;;
    --steps) steps=${2:?--steps needs a value}; shift 2 ;;
    --strict) strict=1; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

if [ "$quick" = 1 ]; then
    : "${concurrency:=4}" "${step_secs:=4}"
    bound=30 # seconds allowed for a recovery or a scaling step to show
else
    : "${concurrency:=8}" "${step_secs:=15}"
    bound=60
fi
if ! [[ $concurrency =~ ^[0-9]+$ ]] || [ "$concurrency" -lt 1 ]; then die "--concurrency must be >= 1"; fi
if ! [[ $step_secs =~ ^[0-9]+$ ]] || [ "$step_secs" -lt 2 ]; then die "--step-secs must be >= 2"; fi
case "$runtime" in process | docker | auto) ;; *) die "--runtime must be process, docker or auto" ;; esac
if [ -n "$attach" ]; then
    [[ $attach =~ ^[0-9]+$ ]] || die "--attach takes the supervisor's PID"
    [ -n "$attach_config" ] || die "--attach needs --config PATH (the file it runs with)"
    [ -f "$attach_config" ] || die "no such config file: $attach_config"
    kill -0 "$attach" 2>/dev/null || die "no process $attach"
fi

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is not installed (Debian/Ubuntu: apt-get install $2)"
}
need curl curl
need jq jq
need awk mawk
need ps procps
[ "$runtime" != docker ] || need docker docker.io

if [ -z "$bin" ] && [ -z "$attach" ]; then
    for c in "$root"/target/*/release/goloadbalancer "$root"/target/release/goloadbalancer \
        "$root"/target/*/debug/goloadbalancer "$root"/target/debug/goloadbalancer; do
        if [ -x "$c" ]; then bin=$c; break; fi
    done
    [ -n "$bin" ] || bin=$(command -v goloadbalancer || true)
    [ -n "$bin" ] || die "no goloadbalancer binary: run 'cargo build --release' or pass --bin PATH"
fi
[ -n "$attach" ] || [ -x "$bin" ] || die "not an executable: $bin"

work=$(mktemp -d "${TMPDIR:-/tmp}/glb-chaos.XXXXXX")
sup=""
own=0
config=""
config_backup=""
load_pid=""

# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    local rc=$?
    [ -z "$load_pid" ] || kill "$load_pid" 2>/dev/null || true
    if [ "$own" = 1 ] && [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null; then
        kill -TERM "$sup" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$sup" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$sup" 2>/dev/null || true
    fi
    if [ -n "$config_backup" ] && [ -f "$config_backup" ]; then
        cp "$config_backup" "$config"
        [ -z "$sup" ] || kill -HUP "$sup" 2>/dev/null || true
    fi
    if [ "$keep" = 1 ] || [ "$rc" -ne 0 ]; then
        echo "chaos.sh: files (config, supervisor log) kept in $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- config helpers --------------------------------------------------------------------

# Top-level scalar from the YAML config (plain `key: value` lines, as we write them).
cfg_get() { awk -v k="$1" -F': *' '$1 == k { sub(/ *#.*/, "", $2); print $2; exit }' "$config"; }

# Sets a top-level scalar in place (appends it when absent).
cfg_set() {
    if grep -q "^$1:" "$config"; then
        sed -i -E "s|^$1:.*|$1: $2|" "$config"
    else
        printf '%s: %s\n' "$1" "$2" >>"$config"
    fi
}

# Replaces the autoscale block (an indented block after `autoscale:`) with the given lines.
cfg_autoscale() {
    awk 'skip && /^[^ #]/ { skip = 0 } /^autoscale:/ { skip = 1; next } !skip' "$config" >"$work/cfg.tmp"
    {
        cat "$work/cfg.tmp"
        echo "autoscale:"
        for line in "$@"; do echo "  $line"; done
    } >"$config"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A base port with `n` free ports after it (nothing answers there now).
free_range() {
    local n=$1 base i ok
    for _ in $(seq 1 200); do
        # Below the ephemeral range (32768+), where client sockets could hold a port.
        base=$((10000 + RANDOM % 22000))
        ok=1
        for ((i = 0; i < n; i++)); do port_free $((base + i)) || { ok=0; break; }; done
        [ "$ok" = 0 ] || { echo "$base"; return; }
    done
    die "no run of $n free ports"
}

# ---- start or attach --------------------------------------------------------------------

if [ -n "$attach" ]; then
    sup=$attach
    config=$attach_config
    config_backup="$work/config.backup"
    cp "$config" "$config_backup"
else
    own=1
    config="$work/config.yaml"
    lb_port=$(free_range 2)
    worker_port=$(free_range 12)
    admin_port=$(free_range 1)
    cat >"$config" <<EOF
# Written by scripts/chaos.sh for one run.
worker: 2
pool: 2
stats-dir: $work/db/worker-stats.db
avg-delay: 100
failure: 0
load-balancer-port: $lb_port
worker-port: $worker_port
instance: chaos-$$
runtime: $runtime
listen-address: 127.0.0.1
admin-port: $admin_port
drain-timeout-ms: 10000
worker-start-timeout-ms: 20000
health-interval-ms: 1000
autoscale:
  enabled: false
EOF
    "$bin" run --config "$config" >"$work/supervisor.log" 2>&1 &
    sup=$!
fi

lb_port=$(cfg_get load-balancer-port)
pool=$(cfg_get pool)
admin_port=$(cfg_get admin-port)
admin_addr=$(cfg_get admin-address)
: "${lb_port:=5050}" "${pool:=2}" "${admin_port:=8404}" "${admin_addr:=127.0.0.1}"
[ "$(cfg_get shared-port)" != true ] || pool=1
admin="http://$admin_addr:$admin_port"
lb_ports=$(seq -s, "$lb_port" $((lb_port + pool - 1)))

# ---- observing the instance ---------------------------------------------------------------

status_json() { curl -s --max-time 3 "$admin/status" 2>/dev/null || true; }

# Workers taking requests (healthy and active), from the admin /status.
active_workers() {
    status_json | jq -r '
        .workers_actual // ([ (.workers // [])[]
          | select((.state // "active") == "active" and (.health // "healthy") == "healthy") ]
          | length)' 2>/dev/null || echo "?"
}

# Workers known at all (any state), from /status.
all_workers() { status_json | jq -r '(.workers // []) | length' 2>/dev/null || echo "?"; }

# argv[1] of a process ("run", "worker", ...), empty when it is gone.
subcommand() { tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | sed -n 2p || true; }

# LB children: the supervisor's children running the same binary that are not workers (forked
# without exec they even share its command line; docker CLI calls are another binary).
lb_children() {
    local exe c
    exe=$(readlink "/proc/$sup/exe" 2>/dev/null || true)
    for c in $(ps -o pid= --ppid "$sup" 2>/dev/null); do
        [ "$(readlink "/proc/$c/exe" 2>/dev/null || true)" = "$exe" ] || continue
        [ "$(subcommand "$c")" = worker ] || echo "$c"
    done
}

# Worker processes (process runtime): children running `goloadbalancer worker`.
worker_pids() {
    local c
    for c in $(ps -o pid= --ppid "$sup" 2>/dev/null); do
        [ "$(subcommand "$c")" != worker ] || echo "$c"
    done
}

instance=$(cfg_get instance)
: "${instance:=goloadbalancer}"
worker_containers() {
    command -v docker >/dev/null 2>&1 || return 0
    docker ps -q --filter "label=goloadbalancer.instance=$instance" 2>/dev/null || true
}

# Waits until `cmd` prints `want` (or `want` is a predicate "ge N"); bounded by $bound.
wait_for() { # description, want, command...
    local what=$1 want=$2 got=""
    shift 2
    local end=$((SECONDS + bound))
    while [ "$SECONDS" -lt "$end" ]; do
        got=$("$@" 2>/dev/null || true)
        case "$want" in
        ge\ *) [[ $got =~ ^[0-9]+$ ]] && [ "$got" -ge "${want#ge }" ] && return 0 ;;
        *) [ "$got" = "$want" ] && return 0 ;;
        esac
        sleep 0.25
    done
    echo "    $what: wanted $want within ${bound}s, last saw '$got'"
    return 1
}

lb_answers() {
    local p
    for p in ${lb_ports//,/ }; do
        curl -s -o /dev/null --max-time 2 -w '%{http_code}' "http://127.0.0.1:$p/api/v1/hello" | grep -q '^2' || return 1
    done
}

echo "chaos: supervisor pid $sup, LB ports $lb_ports, admin $admin, config $config"
end=$((SECONDS + bound * 2))
until lb_answers && [ "$(all_workers)" != "?" ]; do
    if ! kill -0 "$sup" 2>/dev/null; then
        echo "chaos.sh: the supervisor exited while starting; its log:" >&2
        tail -n 30 "$work/supervisor.log" >&2 || true
        exit 2
    fi
    if [ "$SECONDS" -ge "$end" ]; then
        echo "chaos.sh: the instance did not come up within $((bound * 2))s; log:" >&2
        tail -n 30 "$work/supervisor.log" >&2 || true
        exit 2
    fi
    sleep 0.25
done
start_workers=$(cfg_get worker)
: "${start_workers:=$(active_workers)}"
wait_for "workers at start" "$start_workers" active_workers || die "workers did not come up"

# The first line a command prints (without `| head`, whose early exit would SIGPIPE the
# command and, under pipefail, fail the script).
first() { local out; out=$("$@"); printf '%s\n' "${out%%$'\n'*}"; }

# LB children other than the one killed in the kill-lb step.
victim=""
# shellcheck disable=SC2317 # called through wait_for
lb_count_without_victim() { lb_children | grep -cvx "$victim" || true; }

# ---- steps -------------------------------------------------------------------------------

results=()
overall=0

# Starts the load in the background: load_start CONCURRENCY SECONDS
load_start() {
    rm -f "$work/stop" "$work/load.out"
    "$here/load.sh" --tool curl --no-stats -q -c "$1" -d "$2" --timeout 10 \
        --ports "$lb_ports" --stop-file "$work/stop" --raw "$work/load.raw" \
        >"$work/load.out" 2>"$work/load.err" &
    load_pid=$!
}

# Stops it (at once, or at its deadline when "wait") and reads its SUMMARY into variables.
load_stop() {
    [ "${1:-}" = wait ] || touch "$work/stop"
    wait "$load_pid" || true
    load_pid=""
    local s
    s=$(grep '^SUMMARY' "$work/load.out" || true)
    l_requests=$(sed -nE 's/.* requests=([0-9]+).*/\1/p' <<<"$s")
    l_refused=$(sed -nE 's/.* refused=([0-9]+).*/\1/p' <<<"$s")
    l_failed=$(sed -nE 's/.* failed=([0-9]+).*/\1/p' <<<"$s")
    : "${l_requests:=0}" "${l_refused:=0}" "${l_failed:=0}"
    # failed counts refused ones too; report them apart.
    l_other=$((l_failed - l_refused))
    l_codes=$(awk '$3 != 0 || $1 !~ /^[23]/ { c[$1 "/exit" $3]++ } END { for (k in c) printf "%s:%d ", k, c[k] }' \
        "$work/load.raw" 2>/dev/null || true)
}

# Records a step: record NAME OK(0|1) ALLOWED_FAILED NOTE
record() {
    local name=$1 cond=$2 allowed=$3 note=$4 verdict=ok
    if [ "$cond" != 0 ] || [ "$l_refused" -ne 0 ] || [ "$l_other" -gt "$allowed" ] || [ "$l_requests" -eq 0 ]; then
        verdict=FAIL
        overall=1
    fi
    local line
    if [ "$name" = stop ]; then
        line=$(printf '%-12s %-4s %s' "$name" "$verdict" "$note")
    else
        line=$(printf '%-12s %-4s requests %6d  refused %3d  failed %3d (allowed %d)  %s' \
            "$name" "$verdict" "$l_requests" "$l_refused" "$l_other" "$allowed" "$note")
    fi
    results+=("$line")
    echo "  $line"
    [ -z "$l_codes" ] || echo "    failures by status/curl exit: $l_codes"
}

want_step() { [[ ,$steps, == *,$1,* ]]; }
kill_allow() { if [ "$strict" = 1 ]; then echo 0; else echo "$concurrency"; fi; }
half=$((step_secs / 2))

if want_step baseline; then
    echo "step baseline: ${step_secs}s of load, no disruption"
    load_start "$concurrency" "$step_secs"
    load_stop wait
    record baseline 0 0 ""
fi

if want_step kill-lb; then
    echo "step kill-lb: kill -9 one LB child under load"
    before=$(lb_children | sort | tr '\n' ' ')
    victim=$(first lb_children)
    load_start "$concurrency" $((step_secs + bound))
    sleep "$half"
    cond=1
    note="no LB child found"
    if [ -n "$victim" ]; then
        kill -9 "$victim"
        if wait_for "LB children after kill -9 $victim" "$pool" lb_count_without_victim; then
            cond=0
            note="killed $victim (children were: $before), re-forked"
        else
            note="killed $victim, not re-forked"
        fi
    fi
    sleep "$half"
    load_stop
    record kill-lb "$cond" "$(kill_allow)" "$note"
fi

if want_step kill-worker; then
    echo "step kill-worker: kill one worker under load"
    n=$(active_workers)
    load_start "$concurrency" $((step_secs + bound))
    sleep "$half"
    cond=1
    note="no worker found"
    victim=$(first worker_pids)
    container=$(first worker_containers)
    if [ -n "$container" ]; then
        docker kill "$container" >/dev/null 2>&1 || true
        note="docker kill $container"
    elif [ -n "$victim" ]; then
        kill -9 "$victim"
        note="kill -9 worker $victim"
    fi
    if [ "$note" != "no worker found" ]; then
        sleep 1
        if wait_for "active workers after the kill" "$n" active_workers; then
            cond=0
            note="$note, replaced ($n active)"
        else
            note="$note, not replaced"
        fi
    fi
    sleep "$half"
    load_stop
    record kill-worker "$cond" "$(kill_allow)" "$note"
fi

if want_step reload-up || want_step reload-down; then
    base=$(cfg_get worker)
    : "${base:=1}"
fi
if want_step reload-up; then
    echo "step reload-up: SIGHUP with worker: $((base + 1)) under load"
    load_start "$concurrency" $((step_secs + bound))
    sleep "$half"
    cfg_set worker $((base + 1))
    kill -HUP "$sup"
    cond=1
    note="worker $base -> $((base + 1))"
    if wait_for "active workers after reload" $((base + 1)) active_workers; then cond=0; fi
    sleep "$half"
    load_stop
    record reload-up "$cond" 0 "$note"
fi
if want_step reload-down; then
    echo "step reload-down: SIGHUP with worker: $base under load"
    load_start "$concurrency" $((step_secs + bound))
    sleep "$half"
    cfg_set worker "$base"
    kill -HUP "$sup"
    cond=1
    note="worker back to $base (drained, then stopped)"
    if wait_for "workers after reload" "$base" all_workers; then cond=0; fi
    sleep "$half"
    load_stop
    record reload-down "$cond" 0 "$note"
fi

if want_step scale-out || want_step scale-in; then
    as_min=1
    as_max=3
    cfg_autoscale "enabled: true" "min: $as_min" "max: $as_max" "target-inflight: 2" \
        "breach-ms: 1000" "cooldown-ms: 1000" "step: 1"
    kill -HUP "$sup"
fi
if want_step scale-out; then
    heavy=$((concurrency * 3))
    [ "$heavy" -ge 12 ] || heavy=12
    echo "step scale-out: autoscale on (min $as_min, max $as_max, target-inflight 2), load $heavy"
    t0=$SECONDS
    load_start "$heavy" $((step_secs + bound))
    cond=1
    note="did not reach $as_max"
    if wait_for "active workers under heavy load" "$as_max" active_workers; then
        cond=0
        note="reached $as_max workers in $((SECONDS - t0))s"
    fi
    sleep "$half"
    load_stop
    record scale-out "$cond" 0 "$note"
fi
if want_step scale-in; then
    echo "step scale-in: light load (1 connection)"
    t0=$SECONDS
    load_start 1 $((step_secs + bound))
    cond=1
    note="did not fall to $as_min"
    if wait_for "workers under light load" "$as_min" all_workers; then
        cond=0
        note="fell to $as_min workers in $((SECONDS - t0))s"
    fi
    sleep "$half"
    load_stop
    record scale-in "$cond" 0 "$note"
fi

if want_step stop && [ "$own" = 1 ]; then
    echo "step stop: SIGTERM"
    workers_before=$(worker_pids | tr '\n' ' ')
    kill -TERM "$sup"
    rc=""
    end=$((SECONDS + bound))
    while [ "$SECONDS" -lt "$end" ] && kill -0 "$sup" 2>/dev/null; do sleep 0.1; done
    if kill -0 "$sup" 2>/dev/null; then
        note="still running after ${bound}s"
        cond=1
    else
        wait "$sup" && rc=0 || rc=$?
        left=""
        for p in $workers_before; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
        containers=$(worker_containers | wc -l | tr -d ' ')
        cond=0
        [ "$rc" = 0 ] && [ -z "$left" ] && [ "$containers" = 0 ] || cond=1
        note="exit $rc, workers left:${left:- none}, containers left: $containers"
    fi
    l_requests=1 l_refused=0 l_other=0 l_codes=""
    record stop "$cond" 0 "$note"
fi

echo
echo "chaos summary ($( [ "$quick" = 1 ] && echo quick || echo full ), concurrency $concurrency, ${step_secs}s steps):"
for r in "${results[@]}"; do echo "  $r"; done
if [ "$overall" = 0 ]; then echo "chaos: all steps ok"; else echo "chaos: FAILED"; fi
exit "$overall"
