#!/usr/bin/env bash
# Benchmarks the bare proxy (`goloadbalancer proxy`) against HAProxy and nginx configured
# equivalently, in one run, in front of the same fast local backends. See --help.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/bench.sh [options]

Starts two fast backends (nginx answering a 6-byte body when nginx is installed, else
`goloadbalancer worker --avg-delay 0 --failure 0`), then puts each proxy in front of them in
turn, one process / one thread each (N with --pool N):
  glb      goloadbalancer proxy (release build), round-robin, upstream-pool-size 512
  haproxy  HAProxy, nbthread 1, mode http, roundrobin, http-reuse always   (when installed)
  nginx    nginx, worker_processes 1, upstream keepalive 512                (when installed)
(idle upstream connections kept: up to 512 for each, HAProxy's default being unlimited, so
none of them reconnects per request at 512 client connections)
  direct   wrk straight at one backend (the ceiling)
For each, at each connection count: wrk req/s, p50 and p99 latency, the proxy's CPU time
per request (utime+stime from /proc, the figure least disturbed by noisy neighbours) and
its RSS; and RSS per idle connection with N idle keep-alive connections (each sent one
request, then stays open), twice: cold (the proxy's first clients, before any load) and warm
(after the wrk runs, once the proxy's RSS has settled), each read 3 s after the last
connection was answered. Each wrk measurement is repeated and the median reported.

options:
  -c, --connections LIST  wrk connection counts, comma-separated (default 64,512)
  -d, --duration SECS     seconds per wrk run (default 10)
  -r, --reps N            repetitions per measurement (default 3)
  -i, --idle N            idle keep-alive connections for the memory figure (default 10000)
      --only LIST         proxies to run, comma-separated (default glb,haproxy,nginx,direct)
      --quick             CI smoke: 64 connections, 2 s, 1 rep, 1000 idle connections
      --full-stack        the whole product instead of nginx backends: `goloadbalancer run`
                          (process runtime, 2 workers at avg-delay 0, failure 0, one LB
                          child) measured as proxy "stack" at /api/v1/hello, and the other
                          proxies in front of the same two worker processes
      --pool N            N load balancers (implies --full-stack): `pool: N` with
                          `shared-port: true`, HAProxy with nbthread N, nginx with N
                          worker processes; reports each process's (thread's) share of
                          the proxy's CPU time in every run (SHARE lines)
      --no-build          use the existing release binary
      --bin PATH          use this goloadbalancer binary (implies --no-build; figures
                          from a debug build are not performance figures)
      --glb-args ARGS     extra flags for `goloadbalancer proxy`, split on spaces (e.g.
                          "--access-log all --access-log-path /tmp/a.log")
  -h, --help              this text

The last lines are machine-readable:
  RESULT proxy=.. conns=.. rps=.. p50_ms=.. p99_ms=.. cpu_us_per_req=.. rss_kib=..
  IDLE proxy=.. conns=.. rss_per_conn_bytes=.. when=cold|warm base_rss_kib=..
  SHARE proxy=.. conns=.. shares=P1,P2,.. (percent of the proxy's CPU time, --pool only)
exit status: 0 ok, 1 a run failed (errors or no requests), 2 usage or a missing tool.

tools: bash, awk, python3, wrk (required); haproxy, nginx (optional comparisons).
Install on Debian/Ubuntu: apt-get install wrk haproxy nginx-light python3
EOF
}

die() {
    echo "bench.sh: $*" >&2
    exit 2
}

conns_list="64,512"
duration=10
reps=3
idle=10000
only=""
full=0
pool=1
build=1
bin=""
glb_args=()
while [ $# -gt 0 ]; do
    case "$1" in
    -c | --connections) conns_list="${2:?}"; shift 2 ;;
    -d | --duration) duration="${2:?}"; shift 2 ;;
    -r | --reps) reps="${2:?}"; shift 2 ;;
    -i | --idle) idle="${2:?}"; shift 2 ;;
    --only) only="${2:?}"; shift 2 ;;
    --quick) conns_list=64; duration=2; reps=1; idle=1000; shift ;;
    --full-stack) full=1; shift ;;
    --pool) pool="${2:?}"; full=1; shift 2 ;;
    --no-build) build=0; shift ;;
    --bin) bin="${2:?}"; build=0; shift 2 ;;
    --glb-args) read -r -a glb_args <<<"${2:?}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done

if [ -z "$only" ]; then
    if [ "$full" = 1 ]; then only="stack,glb,haproxy,nginx,direct"; else only="glb,haproxy,nginx,direct"; fi
fi
path=/
[ "$full" = 1 ] && path=/api/v1/hello
command -v wrk >/dev/null || die "wrk not found (apt-get install wrk)"
command -v python3 >/dev/null || die "python3 not found (apt-get install python3)"
has() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
bin_of() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }

cd "$(dirname "$0")/.."
root=$(pwd)
if [ "$build" = 1 ]; then
    cargo build --release --quiet
fi
glb="${bin:-$root/target/x86_64-unknown-linux-gnu/release/goloadbalancer}"
[ -x "$glb" ] || die "no binary at $glb (run without --no-build)"

work=$(mktemp -d /tmp/glb-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# Raise the descriptor limit for the idle-connection figure (soft up to hard).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 1 200); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    die "nothing listens on port $1"
}

# --- backends ------------------------------------------------------------------------------
b1=$(free_port)
b2=$(free_port)
if [ "$full" = 1 ]; then
    # Four consecutive free ports: the LB, two workers, the admin endpoint.
    base=$(python3 -c '
import socket
for _ in range(200):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); b = s.getsockname()[1]; s.close()
    if b + 4 > 65535: continue
    held = []
    try:
        for i in range(4):
            t = socket.socket(); t.bind(("127.0.0.1", b + i)); held.append(t)
        print(b); break
    except OSError:
        pass
    finally:
        for t in held: t.close()
')
    lb_port=$base b1=$((base + 1)) b2=$((base + 2)) admin_port=$((base + 3))
    cat >"$work/config.yaml" <<EOF
# Written by scripts/bench.sh --full-stack for one run.
worker: 2
pool: $pool
shared-port: $([ "$pool" -gt 1 ] && echo true || echo false)
stats-dir: $work/worker-stats.db
avg-delay: 0
failure: 0
load-balancer-port: $lb_port
worker-port: $b1
instance: bench-$$
runtime: process
listen-address: 127.0.0.1
admin-port: $admin_port
max-connections: 20000
upstream-pool-size: 512
EOF
    "$glb" run --config "$work/config.yaml" >"$work/supervisor.log" 2>&1 &
    sup=$!
    pids+=($sup)
    wait_port "$b1"
    wait_port "$b2"
    wait_port "$lb_port"
    backend_kind="goloadbalancer workers (process runtime, avg-delay 0, failure 0)"
elif has nginx; then
    mkdir -p "$work/backend"
    cat >"$work/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/backend/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$b1; location / { return 200 "hello\n"; } }
    server { listen 127.0.0.1:$b2; location / { return 200 "hello\n"; } }
}
EOF
    "$(bin_of nginx)" -p "$work/backend" -c "$work/backend/nginx.conf" >"$work/backend.log" 2>&1 &
    pids+=($!)
    backend_kind="nginx (return 200, 6 bytes)"
else
    for p in $b1 $b2; do
        "$glb" worker --listen 127.0.0.1 --port "$p" --avg-delay 0 --failure 0 \
            --db "$work/stats.db" >/dev/null 2>&1 &
        pids+=($!)
    done
    backend_kind="goloadbalancer worker (avg-delay 0)"
fi
wait_port "$b1"
wait_port "$b2"

# --- proxies -------------------------------------------------------------------------------
# Each start_* sets `port`, `ppids` (the PIDs whose CPU and RSS count as the proxy's) and
# `units` (the /proc stat files of the processes or threads that proxy: the SHARE figures).
# Run in this shell (not in $(...)): the background processes must not hold a pipe open.
# The stack's LB child: a forked child of the supervisor still running `run`.
start_stack() {
    port=$lb_port
    ppids=()
    local c
    for c in $(pgrep -P "$sup"); do
        if tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null | grep -q ' run '; then
            ppids+=("$c")
        fi
    done
    [ "${#ppids[@]}" -gt 0 ] || die "no LB child found under the supervisor ($sup)"
    units=()
    for c in "${ppids[@]}"; do units+=("/proc/$c/stat"); done
}

start_glb() {
    port=$(free_port)
    "$glb" proxy --listen "127.0.0.1:$port" --backend "127.0.0.1:$b1" --backend "127.0.0.1:$b2" \
        --max-connections 20000 --upstream-pool-size 512 "${glb_args[@]}" >"$work/glb.log" 2>&1 &
    pids+=($!)
    ppids=($!)
    units=("/proc/$!/stat")
    wait_port "$port"
}

# HAProxy reserves 2 descriptors per maxconn (+ some): the idle figure for HAProxy uses at
# most what its limit allows (reported on the IDLE line).
haproxy_maxconn=$((($(ulimit -n) - 400) / 2))

start_haproxy() {
    port=$(free_port)
    cat >"$work/haproxy.cfg" <<EOF
global
    nbthread $pool
    # HAProxy wants two descriptors per connection: as many as the descriptor limit allows.
    maxconn $haproxy_maxconn
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$port
    default_backend be
backend be
    balance roundrobin
    option forwardfor
    server s1 127.0.0.1:$b1 check inter 5s
    server s2 127.0.0.1:$b2 check inter 5s
EOF
    "$(bin_of haproxy)" -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
    pids+=($!)
    ppids=($!)
    wait_port "$port"
    units=("/proc/$!/task/"*/stat)
}

start_nginx() {
    port=$(free_port)
    mkdir -p "$work/nginx"
    cat >"$work/nginx/nginx.conf" <<EOF
worker_processes $pool;
daemon off;
pid $work/nginx/nginx.pid;
error_log stderr error;
worker_rlimit_nofile 30000;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream be {
        server 127.0.0.1:$b1;
        server 127.0.0.1:$b2;
        keepalive 512;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
    "$(bin_of nginx)" -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$work/nginx.log" 2>&1 &
    local master=$!
    pids+=($master)
    wait_port "$port"
    # The worker does the proxying; count master and workers.
    read -r -a ppids <<<"$master $(pgrep -P "$master" | tr '\n' ' ')"
    units=()
    for c in "${ppids[@]:1}"; do units+=("/proc/$c/stat"); done
}

cpu_ticks() {
    local t=0 p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        # utime + stime: fields 14 and 15 (after the parenthesised command name).
        t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
    done
    echo "$t"
}

# utime+stime of each unit (a /proc stat file), space-separated.
unit_ticks() {
    local f
    for f in "${units[@]}"; do
        awk '{sub(/^.*\) /, ""); printf "%d ", $12 + $13}' "$f" 2>/dev/null || printf '0 '
    done
    echo
}

rss_kib() {
    local t=0 p
    for p in "$@"; do
        [ -r "/proc/$p/status" ] || continue
        t=$((t + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
    done
    echo "$t"
}

to_ms() {
    # wrk prints 512.00us / 1.23ms / 1.01s
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else printf "%s", v }'
}

median() {
    sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

clk=$(getconf CLK_TCK)
failed=0

# One wrk run at `port` with `c` connections, the proxy's pids after; appends a line
# "rps p50 p99 cpu_us_per_req rss" to $work/samples.
measure() {
    local port=$1 c=$2
    shift 2
    local before after out requests rps p50 p99 errors cpu units_before
    before=$(cpu_ticks "$@")
    units_before=$(unit_ticks)
    local threads=2
    [ "$c" -lt 2 ] && threads=1
    out=$(wrk -t"$threads" -c"$c" -d"${duration}s" --latency "http://127.0.0.1:$port$path" 2>&1) || true
    after=$(cpu_ticks "$@")
    echo "$units_before|$(unit_ticks)" >>"$work/unit-samples"
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
    if [ -z "$requests" ] || [ "$requests" = 0 ] || [ -n "$errors" ]; then
        echo "bench.sh: run on port $port with $c connections failed:" >&2
        echo "$out" >&2
        failed=1
        return
    fi
    cpu=$(awk -v t=$((after - before)) -v hz="$clk" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    echo "$rps $p50 $p99 $cpu $(rss_kib "$@")" >>"$work/samples"
}

# Each unit's share of the CPU time in $work/unit-samples (lines "before|after"), in percent,
# comma-separated.
unit_shares() {
    awk -F'|' '{
        n = split($1, b, " "); split($2, a, " ")
        for (i = 1; i <= n; i++) d[i] += a[i] - b[i]
        if (n > units) units = n
    } END {
        for (i = 1; i <= units; i++) t += d[i]
        for (i = 1; i <= units; i++) printf "%s%.1f", (i > 1 ? "," : ""), (t > 0 ? 100 * d[i] / t : 0)
        print ""
    }' "$work/unit-samples"
}

# Opens `n` keep-alive connections to `port`, one request each, holds them while the
# proxy's RSS is read (3 s after the last answer: the figure is what an idle connection
# costs, not the burst of opening them), and prints "bytes-per-connection base-rss-kib".
idle_cost() {
    local port=$1 n=$2
    shift 2
    local base
    base=$(rss_kib "$@")
    python3 - "$port" "$n" "$work/idle.ready" "$work/idle.done" "$path" >/dev/null <<'EOF' &
import socket, sys, os, time, selectors
port, n, ready, done = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
req = b"GET " + sys.argv[5].encode() + b" HTTP/1.1\r\nHost: bench\r\n\r\n"
socks = []
sel = selectors.DefaultSelector()
# In waves so the accept queue never overflows.
for start in range(0, n, 500):
    wave = []
    for _ in range(min(500, n - start)):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        wave.append(s)
    for s in wave:
        s.settimeout(30)
        got = b""
        while b"\r\n\r\n" not in got:
            d = s.recv(4096)
            if not d:
                sys.exit("closed")
            got += d
    socks += wave
open(ready, "w").close()
while not os.path.exists(done):
    time.sleep(0.05)
EOF
    local client=$!
    for _ in $(seq 1 1200); do
        [ -e "$work/idle.ready" ] && break
        kill -0 "$client" 2>/dev/null || break
        sleep 0.1
    done
    if [ -e "$work/idle.ready" ]; then
        sleep 3
        local after
        after=$(rss_kib "$@")
        awk -v a="$after" -v b="$base" -v n="$n" 'BEGIN { printf "%d %d\n", (a - b) * 1024 / n, b }'
    else
        echo "- $base"
    fi
    touch "$work/idle.done"
    wait "$client" 2>/dev/null || true
    rm -f "$work/idle.ready" "$work/idle.done"
}

echo "backends: $backend_kind on 127.0.0.1:$b1 and :$b2"
echo "path: $path"
echo "wrk: ${duration}s per run, connections $conns_list, $reps repetitions (medians), $(nproc) cores"
printf '%-8s %6s %10s %9s %9s %12s %9s\n' proxy conns "req/s" "p50 ms" "p99 ms" "cpu us/req" "rss KiB"
results=()
idles=()
shares=()

# Appends the IDLE line of the current proxy, `when` = cold or warm.
idle_figure() {
    [ "$idle" -gt 0 ] || return 0
    local when=$1 n=$idle per base
    if [ "$proxy" = haproxy ] && [ "$n" -gt $((haproxy_maxconn - 100)) ]; then
        n=$((haproxy_maxconn - 100))
    fi
    read -r per base <<<"$(idle_cost "$port" "$n" "${ppids[@]}")"
    if [ "$per" = "-" ]; then failed=1; fi
    idles+=("IDLE proxy=$proxy conns=$n rss_per_conn_bytes=$per when=$when base_rss_kib=$base")
}
IFS=, read -r -a conns_arr <<<"$conns_list"
IFS=, read -r -a only_arr <<<"$only"
for proxy in "${only_arr[@]}"; do
    case "$proxy" in
    stack) [ "$full" = 1 ] || die "proxy 'stack' needs --full-stack"; start_stack ;;
    glb) start_glb ;;
    haproxy) has haproxy || { echo "haproxy: not installed, skipped"; continue; }; start_haproxy ;;
    nginx) has nginx || { echo "nginx: not installed, skipped"; continue; }; start_nginx ;;
    direct) port=$b1; ppids=(); units=() ;;
    *) die "unknown proxy $proxy" ;;
    esac
    if [ "$proxy" != direct ]; then idle_figure cold; fi
    # Warm-up: connections, pools, caches.
    wrk -t1 -c8 -d1s "http://127.0.0.1:$port$path" >/dev/null 2>&1 || true
    for c in "${conns_arr[@]}"; do
        rm -f "$work/samples" "$work/unit-samples"
        for _ in $(seq 1 "$reps"); do
            measure "$port" "$c" "${ppids[@]}"
        done
        [ -s "$work/samples" ] || continue
        rps=$(awk '{print $1}' "$work/samples" | median)
        p50=$(awk '{print $2}' "$work/samples" | median)
        p99=$(awk '{print $3}' "$work/samples" | median)
        if [ "$proxy" = direct ]; then cpu="-"; rss="-"; else
            cpu=$(awk '{print $4}' "$work/samples" | median)
            rss=$(awk '{print $5}' "$work/samples" | median)
        fi
        printf '%-8s %6s %10.0f %9s %9s %12s %9s\n' "$proxy" "$c" "$rps" "$p50" "$p99" "$cpu" "$rss"
        results+=("RESULT proxy=$proxy conns=$c rps=$rps p50_ms=$p50 p99_ms=$p99 cpu_us_per_req=$cpu rss_kib=$rss")
        if [ "$pool" -gt 1 ] && [ "$proxy" != direct ]; then
            shares+=("SHARE proxy=$proxy conns=$c shares=$(unit_shares)")
        fi
    done
    if [ "$proxy" != direct ]; then
        # Warm: the RSS settles first (spare buffers trimmed after a quiet second).
        sleep 3
        idle_figure warm
    fi
    if [ "$proxy" != direct ] && [ "$proxy" != stack ]; then
        for p in "${ppids[@]}"; do kill "$p" 2>/dev/null || true; done
        for p in "${ppids[@]}"; do wait "$p" 2>/dev/null || true; done
    fi
done
echo
for i in "${idles[@]}"; do
    set -- $i
    printf 'idle: %-8s %-4s %s -> %s B per connection (base %s KiB)\n' "${2#proxy=}" "${5#when=}" \
        "${3#conns=}" "${4#rss_per_conn_bytes=}" "${6#base_rss_kib=}"
done
for i in "${shares[@]}"; do
    set -- $i
    printf 'share: %-8s %5s connections: %s %% of its CPU time per process/thread\n' \
        "${2#proxy=}" "${3#conns=}" "${4#shares=}"
done
for r in "${results[@]}"; do echo "$r"; done
for i in "${idles[@]}"; do echo "$i"; done
for i in "${shares[@]}"; do echo "$i"; done
exit "$failed"
