#!/usr/bin/env bash
# Counts what the proxy spends per proxied request -- user-space instructions (callgrind),
# syscalls (strace), malloc calls (callgrind call counts) -- and RSS per idle connection, for
# goloadbalancer, HAProxy and nginx in front of the same backends. Counts, not timings: they
# repeat on a noisy shared machine where req/s does not. See --help.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/profile.sh [options]

Starts two fast backends outside any tool (nginx returning a 6-byte body when nginx is
installed, else `goloadbalancer worker --avg-delay 0 --failure 0`), then for each proxy
(one process, one thread; active health checks off so only requests are counted):
  glb      goloadbalancer proxy (release build), round-robin, upstream pool 1024
  haproxy  HAProxy, nbthread 1, mode http, roundrobin, http-reuse always (when installed)
  nginx    nginx, master_process off, one worker, upstream keepalive 1024 (when installed)
measures:
  1. instructions per request: the proxy runs under valgrind --tool=callgrind twice, once
     with REQUESTS requests and once with a baseline of one request per connection; the
     difference divided by (REQUESTS - baseline) is the steady keep-alive cost per request
     (startup, connection setup, pool warm-up and shutdown cancel out).
  2. malloc calls per request: from the same two callgrind runs (calls to malloc, calloc,
     realloc, posix_memalign, aligned_alloc, memalign), same subtraction.
  3. syscalls per request, by syscall: strace -f -c attached after startup, same two runs.
  4. RSS per idle connection: IDLE connections opened to the proxy (no tool) -> RSS growth
     per connection when just connected, and again after one request on each.
and, for goloadbalancer, the functions costing most instructions per request (inclusive and
self, from the difference of the two callgrind runs).

The client (python3, in this script) sends exactly REQUESTS HTTP/1.1 GETs over CONNS
keep-alive connections, one request in flight per connection, and checks every answer
(status 200, exact body). wrk cannot send an exact count; ab speaks HTTP/1.0; h2load is not
packaged by default. The client sits outside the tools, so it costs the proxy nothing.

options:
  -n, --requests N      requests per measured run (default 20000)
  -c, --connections C   keep-alive connections (default 64); the baseline sends C requests
  -i, --idle N          idle connections for the RSS figure (default 10000)
      --only LIST       proxies, comma-separated (default glb,haproxy,nginx)
      --skip LIST       measurements to skip: callgrind,strace,idle
      --quick           short run: 2000 requests, 16 connections, 1000 idle connections
      --no-build        use the existing release binary
      --binary PATH     profile this goloadbalancer binary (implies --no-build)
      --keep            keep the work directory (callgrind and strace outputs)
      --glb-args ARGS   extra flags for `goloadbalancer proxy`, split on spaces (e.g.
                        "--access-log all --access-log-path /tmp/a.log" to price the access log)
  -h, --help            this text

The last lines are machine-readable:
  PROFILE proxy=.. requests=.. instr_per_req=.. mallocs_per_req=.. syscalls_per_req=..
  SYSCALL proxy=.. name=.. per_req=..
  IDLE proxy=.. conns=.. connected_bytes_per_conn=.. after_request_bytes_per_conn=..
exit status: 0 ok, 1 a tool run or a request failed, 2 usage or a missing tool.

tools: bash, python3, valgrind (callgrind), strace; haproxy and nginx for the comparisons.
Install on Debian/Ubuntu: apt-get install valgrind strace python3 haproxy nginx-light
(bench.sh, the timing counterpart, also needs wrk).
EOF
}

die() {
    echo "profile.sh: $*" >&2
    exit 2
}

requests=20000
conns=64
idle=10000
only="glb,haproxy,nginx"
skip=""
build=1
keep=0
glb_args=()
glb=""
while [ $# -gt 0 ]; do
    case "$1" in
    -n | --requests) requests="${2:?}"; shift 2 ;;
    -c | --connections) conns="${2:?}"; shift 2 ;;
    -i | --idle) idle="${2:?}"; shift 2 ;;
    --only) only="${2:?}"; shift 2 ;;
    --skip) skip="${2:?}"; shift 2 ;;
    --quick) requests=2000; conns=16; idle=1000; shift ;;
    --no-build) build=0; shift ;;
    --binary) glb="${2:?}"; build=0; shift 2 ;;
    --keep) keep=1; shift ;;
    --glb-args) [ $# -ge 2 ] || die "--glb-args needs a value"; read -r -a glb_args <<<"$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
[ "$requests" -gt "$conns" ] || die "--requests must exceed --connections (the baseline)"

has() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
bin_of() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }
skipped() { [[ ",$skip," == *",$1,"* ]]; }
need() { has "$1" || die "$1 not found (apt-get install $2)"; }

need python3 python3
if ! skipped callgrind; then
    need valgrind valgrind
    need callgrind_annotate valgrind
fi
skipped strace || need strace strace

cd "$(dirname "$0")/.."
root=$(pwd)
if [ "$build" = 1 ]; then
    command -v cargo >/dev/null || die "cargo not found (https://rustup.rs, or --binary PATH)"
    cargo build --release --quiet
fi
[ -n "$glb" ] || glb="$root/target/x86_64-unknown-linux-gnu/release/goloadbalancer"
if [[ ",$only," == *",glb,"* ]] || ! has nginx; then
    [ -x "$glb" ] || die "no goloadbalancer binary at $glb (run without --no-build)"
fi

work=$(mktemp -d /tmp/glb-profile.XXXXXX)
pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "$keep" = 1 ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# 10,000 idle connections need as many descriptors in the proxy (soft limit up to hard).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- helpers (python) ----------------------------------------------------------------------
# Exact-count keep-alive HTTP/1.1 client: N requests over C connections, every answer checked.
cat >"$work/client.py" <<'EOF'
import selectors, socket, sys, time
port, total, nconn = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + float(sys.argv[4])
REQ = b"GET / HTTP/1.1\r\nHost: profile\r\n\r\n"
BODY = b"hello\n"
sel = selectors.DefaultSelector()
started = done = 0

def start(conn):
    global started
    if started >= total:
        sel.unregister(conn["s"]); conn["s"].close()
        return
    started += 1
    conn["buf"] = b""
    conn["s"].sendall(REQ)

def complete(buf):
    """Length of the first complete response in buf, or 0; exits on a bad answer."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = buf[:end].decode("latin-1").split("\r\n")
    if not head[0].startswith("HTTP/1.1 200 "):
        sys.exit("bad status: %r" % head[0])
    fields = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        fields[k.strip().lower()] = v.strip().lower()
    if fields.get("connection") == "close":
        sys.exit("proxy closed a keep-alive connection")
    if "content-length" in fields:
        n = end + 4 + int(fields["content-length"])
        if len(buf) < n:
            return 0
        if buf[end + 4:n] != BODY:
            sys.exit("bad body: %r" % buf[end + 4:n])
        return n
    if fields.get("transfer-encoding") == "chunked":
        tail = buf.find(b"\r\n0\r\n\r\n", end)
        return tail + 7 if tail >= 0 else 0
    sys.exit("response without framing")

conns = []
for _ in range(min(nconn, total)):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    c = {"s": s, "buf": b""}
    conns.append(c)
    sel.register(s, selectors.EVENT_READ, c)
for c in conns:
    start(c)
while done < total:
    if time.monotonic() > deadline:
        sys.exit("timeout: %d of %d answered" % (done, total))
    for key, _ in sel.select(1.0):
        c = key.data
        try:
            d = c["s"].recv(65536)
        except BlockingIOError:
            continue
        if not d:
            sys.exit("connection closed after %d answers" % done)
        c["buf"] += d
        n = complete(c["buf"])
        if n:
            if len(c["buf"]) != n:
                sys.exit("unexpected bytes after a response")
            done += 1
            start(c)
print(done)
EOF

# Opens N connections, writes `connected`, waits for `go`, sends one request on each, reads
# the answers, writes `answered`, holds them until `done` exists.
cat >"$work/idle.py" <<'EOF'
import os, socket, sys, time
port, n, d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def wait_for(name):
    while not os.path.exists(os.path.join(d, name)):
        time.sleep(0.05)
socks = []
for i in range(n):
    socks.append(socket.create_connection(("127.0.0.1", port), timeout=30))
    if i % 500 == 499:
        time.sleep(0.05)  # let the proxy drain its accept queue
open(os.path.join(d, "connected"), "w").close()
wait_for("go")
req = b"GET / HTTP/1.1\r\nHost: profile\r\n\r\n"
for start in range(0, n, 500):
    wave = socks[start:start + 500]
    for s in wave:
        s.sendall(req)
    for s in wave:
        got = b""
        while not (b"\r\n\r\n" in got and got.endswith(b"hello\n")):
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("closed")
            got += chunk
open(os.path.join(d, "answered"), "w").close()
wait_for("done")
EOF

# Callgrind output -> totals, per-function self and inclusive Ir, and call counts by callee.
# With two files (measured, baseline) and a request difference: per-request figures.
cat >"$work/cgparse.py" <<'EOF'
import collections, json, re, sys
ALLOC = {"malloc", "__libc_malloc", "__malloc", "calloc", "__libc_calloc", "__calloc",
         "realloc", "__libc_realloc", "__realloc", "posix_memalign", "__posix_memalign",
         "aligned_alloc", "memalign", "__libc_memalign", "valloc"}
def parse(path):
    names = {}
    selfc = collections.Counter(); incl_calls = collections.Counter(); calls = collections.Counter()
    edges = collections.Counter()
    total = 0
    fn = cfn = None
    pending_call = None
    def name_of(v):
        m = re.match(r"\((\d+)\)(?: (.*))?$", v)
        if not m:
            return v
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names[m.group(1)]
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if pending_call is not None:
                    if cfn != fn:
                        incl_calls[fn] += cost
                    pending_call = None
                else:
                    selfc[fn] += cost
                continue
            key, _, val = line.partition("=")
            if key == "fn":
                fn = name_of(val)
            elif key == "cfn":
                cfn = name_of(val)
            elif key == "calls":
                pending_call = int(val.split()[0])
                calls[cfn] += pending_call
                edges[(fn, cfn)] += pending_call
            elif line.startswith("totals:") or line.startswith("summary:"):
                total = int(line.split()[1])
    incl = collections.Counter()
    for k in set(selfc) | set(incl_calls):
        incl[k] = selfc[k] + incl_calls[k]
    return {"total": total, "self": selfc, "incl": incl, "calls": calls, "edges": edges}

# glibc's own calls between its entry points (posix_memalign -> _mid_memalign -> malloc) are
# one allocation, not two.
def internal(caller):
    return caller in ALLOC or caller.startswith("_mid_memalign")

# Generic allocation wrappers: an allocation is attributed to the first caller outside them.
WRAPPER = re.compile(r"^(alloc::|<?alloc::|__rust_|__rdl_|std::sys::alloc|<std::alloc::System|"
                     r"core::ptr::drop_in_place<alloc::|<alloc::)")
def alloc_sites(p, targets):
    callers = collections.defaultdict(collections.Counter)
    for (a, b), c in p["edges"].items():
        if not (b in targets and internal(a)):
            callers[b][a] += c
    sites = collections.Counter()
    def up(f, amount, depth):
        cs = callers.get(f)
        if depth > 8 or not cs or (depth > 0 and not WRAPPER.match(f)):
            sites[f] += amount
            return
        tot = sum(cs.values())
        for caller, c in cs.items():
            if caller != f:
                up(caller, amount * c / tot, depth + 1)
    for t in targets:
        if t in callers:
            up(t, 1.0 * sum(callers[t].values()), 0)
    return sites

mode = sys.argv[1]
if mode == "summary":
    # summary MEASURED BASELINE REQUESTS -> "instr_per_req mallocs_per_req"
    a, b, n = parse(sys.argv[2]), parse(sys.argv[3]), float(sys.argv[4])
    allocs = lambda p: sum(v for (caller, k), v in p["edges"].items()
                           if k in ALLOC and not internal(caller))
    print("%.0f %.2f" % ((a["total"] - b["total"]) / n, (allocs(a) - allocs(b)) / n))
elif mode == "top":
    # top MEASURED BASELINE REQUESTS COUNT -> tables of per-request inclusive, self, calls
    a, b, n, k = parse(sys.argv[2]), parse(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    per = (a["total"] - b["total"]) / n
    for what, title in (("incl", "inclusive"), ("self", "self")):
        print("  %s instructions per request (top %d; %% of %.0f):" % (title, k, per))
        diff = collections.Counter({f: (a[what][f] - b[what].get(f, 0)) / n for f in a[what]})
        if what == "incl":
            # The frames from main down to the event loop hold everything: not informative.
            diff = collections.Counter({f: v for f, v in diff.items() if v < 0.99 * per})
        for f, v in diff.most_common(k):
            print("    %9.0f %5.1f%%  %s" % (v, 100 * v / per, f[:110]))
    for title, targets in (("malloc-family", ALLOC), ("free", {"free", "__libc_free", "cfree"})):
        print("  %s calls per request, by first caller outside the allocator wrappers:" % title)
        sa, sb = alloc_sites(a, targets), alloc_sites(b, targets)
        diff = collections.Counter({f: (sa[f] - sb.get(f, 0)) / n for f in sa})
        for f, v in diff.most_common(8):
            if v >= 0.01:
                print("    %9.2f  %s" % (v, f[:110]))
    print("  calls per request (top %d):" % k)
    diff = collections.Counter({f: (a["calls"][f] - b["calls"].get(f, 0)) / n for f in a["calls"]})
    for f, v in diff.most_common(k):
        print("    %9.2f  %s" % (v, f[:110]))
EOF

# strace -c output (measured, baseline, requests) -> total and per-syscall calls per request.
cat >"$work/stparse.py" <<'EOF'
import sys
def parse(path):
    out = {}
    for line in open(path):
        p = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(p) >= 5 and p[0][0].isdigit() and p[-1] != "total":
            out[p[-1]] = out.get(p[-1], 0) + int(p[3])
    return out
a, b, n = parse(sys.argv[1]), parse(sys.argv[2]), float(sys.argv[3])
diff = {k: (a[k] - b.get(k, 0)) / n for k in a}
print("total %.2f" % sum(diff.values()))
for k, v in sorted(diff.items(), key=lambda kv: -kv[1]):
    if abs(v) >= 0.005:
        print("%s %.2f" % (k, v))
EOF

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (bounded) until something accepts on the port; valgrind start-up takes seconds.
wait_port() {
    for _ in $(seq 1 1200); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "profile.sh: nothing listens on port $1" >&2
    return 1
}

rss_kib() {
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# --- backends (outside every tool) ---------------------------------------------------------
b1=$(free_port)
b2=$(free_port)
if has nginx; then
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
wait_port "$b1" || exit 1
wait_port "$b2" || exit 1

# --- proxy command lines -------------------------------------------------------------------
# haproxy wants ~2 descriptors per connection: its maxconn is what the limit allows.
haproxy_maxconn=$((($(ulimit -n) - 400) / 2))

# Writes the proxy's config for `port` and prints nothing; sets `cmd` (array) and `stop_sig`.
proxy_cmd() {
    local proxy=$1 port=$2
    case "$proxy" in
    glb)
        # Health checks every hour: only requests are counted (HAProxy and nginx check nothing).
        cmd=("$glb" proxy --listen "127.0.0.1:$port" --backend "127.0.0.1:$b1"
            --backend "127.0.0.1:$b2" --max-connections 20000 --upstream-pool-size 1024 --health-path /
            --health-interval-ms 3600000 "${glb_args[@]}")
        stop_sig=TERM
        ;;
    haproxy)
        cat >"$work/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $haproxy_maxconn
defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$port
    default_backend be
backend be
    balance roundrobin
    option forwardfor
    server s1 127.0.0.1:$b1
    server s2 127.0.0.1:$b2
EOF
        cmd=("$(bin_of haproxy)" -f "$work/haproxy.cfg" -db)
        stop_sig=USR1 # soft stop: finish, then exit 0
        ;;
    nginx)
        mkdir -p "$work/nginx"
        cat >"$work/nginx/nginx.conf" <<EOF
master_process off;
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log stderr error;
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream be {
        server 127.0.0.1:$b1;
        server 127.0.0.1:$b2;
        # Enough idle upstream connections for every client connection: with fewer, nginx
        # closes and reopens upstream connections under the 64-connection load.
        keepalive 1024;
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
        cmd=("$(bin_of nginx)" -p "$work/nginx" -c "$work/nginx/nginx.conf")
        stop_sig=QUIT # graceful stop
        ;;
    esac
}

failed=0

# Stops `pid` with `stop_sig`, waits (bounded), and fails on a non-zero exit.
stop_and_wait() {
    local pid=$1 what=$2 rc=0
    kill -s "$stop_sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "profile.sh: $what did not stop within 60 s" >&2
        kill -9 "$pid" 2>/dev/null || true
        failed=1
    fi
    wait "$pid" || rc=$?
    if [ "$rc" != 0 ]; then
        echo "profile.sh: $what exited $rc" >&2
        failed=1
    fi
    return "$rc"
}

drive() {
    local port=$1 n=$2 out
    if ! out=$(timeout 900 python3 "$work/client.py" "$port" "$n" "$conns" 880 2>&1); then
        echo "profile.sh: client ($n requests to port $port) failed: $out" >&2
        failed=1
        return 1
    fi
    [ "$out" = "$n" ]
}

# One proxy under callgrind with `n` requests; output in $work/cg.PROXY.N.
callgrind_run() {
    local proxy=$1 n=$2 port pid
    port=$(free_port)
    proxy_cmd "$proxy" "$port"
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.$proxy.$n" \
        "${cmd[@]}" >"$work/cg.$proxy.$n.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_port "$port" || { failed=1; return 1; }
    drive "$port" "$n" || true
    stop_and_wait "$pid" "$proxy under callgrind ($n requests)" || {
        tail -5 "$work/cg.$proxy.$n.log" >&2
        return 1
    }
    [ -s "$work/cg.$proxy.$n" ] || { echo "profile.sh: no callgrind output for $proxy" >&2; failed=1; return 1; }
}

# One proxy started normally, strace attached after start-up, `n` requests, strace detached.
strace_run() {
    local proxy=$1 n=$2 port pid spid
    port=$(free_port)
    proxy_cmd "$proxy" "$port"
    "${cmd[@]}" >"$work/st.$proxy.$n.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_port "$port" || { failed=1; return 1; }
    strace -f -c -p "$pid" -o "$work/st.$proxy.$n" 2>"$work/st.$proxy.$n.err" &
    spid=$!
    pids+=("$spid")
    for _ in $(seq 1 100); do
        grep -q attached "$work/st.$proxy.$n.err" 2>/dev/null && break
        sleep 0.1
    done
    sleep 0.2
    drive "$port" "$n" || true
    kill -INT "$spid" 2>/dev/null || true
    # strace detaches on SIGINT, writes its summary and exits 130.
    local rc=0
    wait "$spid" || rc=$?
    if [ "$rc" != 0 ] && [ "$rc" != 130 ]; then
        echo "profile.sh: strace on $proxy exited $rc: $(cat "$work/st.$proxy.$n.err")" >&2
        failed=1
    fi
    stop_and_wait "$pid" "$proxy ($n requests, strace)" || true
    [ -s "$work/st.$proxy.$n" ] || { echo "profile.sh: no strace output for $proxy" >&2; failed=1; return 1; }
}

# RSS growth per connection: N connected, then N after one request each.
idle_run() {
    local proxy=$1 n=$2 port pid base connected answered client
    port=$(free_port)
    proxy_cmd "$proxy" "$port"
    "${cmd[@]}" >"$work/idle.$proxy.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_port "$port" || { failed=1; return 1; }
    drive "$port" "$conns" >/dev/null || true # warm-up: upstream pool, first buffers
    # The baseline after the warm-up's spares are trimmed (glb: within 250 ms of a burst's
    # end), so it is not taken halfway through a trim; the figures below settle 1 s likewise.
    sleep 1.5
    base=$(rss_kib "$pid")
    rm -f "$work/connected" "$work/go" "$work/answered" "$work/done"
    python3 "$work/idle.py" "$port" "$n" "$work" &
    client=$!
    pids+=("$client")
    local stage
    for stage in connected answered; do
        [ "$stage" = answered ] && touch "$work/go"
        for _ in $(seq 1 1200); do
            [ -e "$work/$stage" ] && break
            kill -0 "$client" 2>/dev/null || break
            sleep 0.1
        done
        if [ ! -e "$work/$stage" ]; then
            echo "profile.sh: idle client on $proxy failed before '$stage'" >&2
            failed=1
            echo "- -"
            touch "$work/done"
            wait "$client" 2>/dev/null || true
            stop_and_wait "$pid" "$proxy (idle)" || true
            return 1
        fi
        sleep 1
        if [ "$stage" = connected ]; then connected=$(rss_kib "$pid"); else answered=$(rss_kib "$pid"); fi
    done
    touch "$work/done"
    wait "$client" || true
    stop_and_wait "$pid" "$proxy (idle)" || true
    awk -v b="$base" -v c="$connected" -v a="$answered" -v n="$n" \
        'BEGIN { printf "%.0f %.0f\n", (c - b) * 1024 / n, (a - b) * 1024 / n }'
}

echo "backends: $backend_kind on 127.0.0.1:$b1 and :$b2"
echo "client: $requests requests over $conns keep-alive connections (baseline: $conns requests)"
echo "$(date -u '+%F %T UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
delta=$((requests - conns))
lines=()
IFS=, read -r -a only_arr <<<"$only"
for proxy in "${only_arr[@]}"; do
    case "$proxy" in
    glb) ;;
    haproxy | nginx) has "$proxy" || { echo "$proxy: not installed, skipped"; continue; } ;;
    *) die "unknown proxy $proxy" ;;
    esac
    instr="-" mallocs="-" sys="-"
    if ! skipped callgrind; then
        echo "$proxy: callgrind, $conns then $requests requests ..." >&2
        if callgrind_run "$proxy" "$conns" && callgrind_run "$proxy" "$requests"; then
            read -r instr mallocs < <(python3 "$work/cgparse.py" summary \
                "$work/cg.$proxy.$requests" "$work/cg.$proxy.$conns" "$delta")
            if [ "$proxy" = glb ]; then
                python3 "$work/cgparse.py" top "$work/cg.$proxy.$requests" \
                    "$work/cg.$proxy.$conns" "$delta" 25 >"$work/glb.top"
            fi
        fi
    fi
    if ! skipped strace; then
        echo "$proxy: strace, $conns then $requests requests ..." >&2
        if strace_run "$proxy" "$conns" && strace_run "$proxy" "$requests"; then
            python3 "$work/stparse.py" "$work/st.$proxy.$requests" "$work/st.$proxy.$conns" \
                "$delta" >"$work/sys.$proxy"
            sys=$(awk '$1 == "total" {print $2}' "$work/sys.$proxy")
            while read -r name per; do
                [ "$name" = total ] || lines+=("SYSCALL proxy=$proxy name=$name per_req=$per")
            done <"$work/sys.$proxy"
        fi
    fi
    lines+=("PROFILE proxy=$proxy requests=$requests instr_per_req=$instr mallocs_per_req=$mallocs syscalls_per_req=$sys")
    if ! skipped idle; then
        n=$idle
        if [ "$proxy" = haproxy ] && [ "$n" -gt $((haproxy_maxconn - 100)) ]; then
            n=$((haproxy_maxconn - 100))
        fi
        echo "$proxy: $n idle connections ..." >&2
        read -r con ans < <(idle_run "$proxy" "$n")
        lines+=("IDLE proxy=$proxy conns=$n connected_bytes_per_conn=$con after_request_bytes_per_conn=$ans")
    fi
done

echo
printf '%-8s %14s %15s %16s\n' proxy "instr/req" "mallocs/req" "syscalls/req"
for l in "${lines[@]}"; do
    [[ "$l" == PROFILE* ]] || continue
    read -r -a f <<<"$l"
    set -- "${f[@]}"
    printf '%-8s %14s %15s %16s\n' "${2#proxy=}" "${4#instr_per_req=}" "${5#mallocs_per_req=}" "${6#syscalls_per_req=}"
done
for proxy in "${only_arr[@]}"; do
    [ -s "$work/sys.$proxy" ] || continue
    echo "syscalls per request, $proxy: $(grep -v '^total' "$work/sys.$proxy" | tr '\n' ' ' | sed 's/ \([0-9.-]*\) / \1, /g')"
done
for l in "${lines[@]}"; do
    [[ "$l" == IDLE* ]] || continue
    read -r -a f <<<"$l"
    set -- "${f[@]}"
    echo "idle: ${2#proxy=} ${3#conns=} connections -> ${4#connected_bytes_per_conn=} bytes each connected, ${5#after_request_bytes_per_conn=} after one request"
done
if [ -s "$work/glb.top" ]; then
    echo
    echo "goloadbalancer hot spots (per request, measured minus baseline):"
    cat "$work/glb.top"
fi
echo
for l in "${lines[@]}"; do echo "$l"; done
exit "$failed"
