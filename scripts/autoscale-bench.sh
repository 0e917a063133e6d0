#!/usr/bin/env bash
# Drives a `goloadbalancer run` with autoscaling (min 0) through load steps and reports how
# fast the worker count follows: reaction time, time to capacity, failed and refused
# requests per step, and cold starts (a request held at zero: sent to answered). See --help.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/autoscale-bench.sh [options]

Starts `goloadbalancer run` (autoscale min 0, its own temp dir and ports) and drives load
with scripts/load.sh (wrk) through these steps:
  cycles x (high: --high connections for --secs; zero: no load until 0 workers)
  burst:   base (--base connections), then 10 x base at once, then zero
then (reloaded to avg-delay 0) measures --cold cold starts: with 0 workers (none listed), one
request (no retry: the LB holds it in its queue while the demand signal starts a worker),
from its sending to its answer, by one python3 client; an answer other than 200 (or none)
counts in failed=.

Per step it prints:
  reaction_ms    step start (load.sh started: its and wrk's start-up are included) to the
                 first change of the desired worker count
  capacity_ms    step start to the active count reaching the step's highest desired count
                 (for a zero step: to 0 workers)
  workers        desired count at the start -> at the end of the step; peak: highest
  ok / failed / refused   from load.sh (failed includes non-2xx; refused: connect errors)
The /status poller reads every 50 ms, so times are +-50 ms.

options:
  --runtime NAME        process (default) or docker
  --cycles N            0 -> high -> 0 cycles (default 3)
  --high N              connections in a high step (default 32)
  --base N              connections before the 10x burst (default 4)
  --secs N              seconds per loaded step (default 8)
  --avg-delay MS        worker delay per request (default 100)
  --target N            autoscale.target-inflight (default 4)
  --max N               autoscale.max (default 8)
  --idle-ms MS          autoscale.idle-ms (default 2000)
  --breach-ms MS        autoscale.breach-ms and cooldown-ms (default 2000)
  --cold N              cold starts to measure (default 10)
  --bin PATH            goloadbalancer binary (default: release build, built if missing)
  --keep                keep the temp dir (config, supervisor log, status samples)
  -h, --help            this text

The last lines are machine-readable:
  STEP name=.. conns=.. reaction_ms=.. capacity_ms=.. workers=A->B peak=.. ok=.. failed=..
       refused=..
  STARTS n=.. launch_to_healthy_p50_ms=.. max_ms=..  (every worker start, from the log)
  COLD runtime=.. n=.. failed=.. p50_ms=.. max_ms=.. values=..  (answered 200 only)
exit status: 0 done, 1 a step could not run, 2 usage or a missing tool.

tools: bash, curl, python3, wrk (via scripts/load.sh). docker for --runtime docker.
EOF
}

die() {
    echo "autoscale-bench.sh: $*" >&2
    exit 2
}

runtime=process
cycles=3
high=32
base=4
secs=8
avg_delay=100
target=4
max=8
idle_ms=2000
breach_ms=2000
cold=10
bin=""
keep=0

while [ $# -gt 0 ]; do
    case "$1" in
    --runtime) runtime=${2:?--runtime needs a value}; shift 2 ;;
    --cycles) cycles=${2:?--cycles needs a value}; shift 2 ;;
    --high) high=${2:?--high needs a value}; shift 2 ;;
    --base) base=${2:?--base needs a value}; shift 2 ;;
    --secs) secs=${2:?--secs needs a value}; shift 2 ;;
    --avg-delay) avg_delay=${2:?--avg-delay needs a value}; shift 2 ;;
    --target) target=${2:?--target needs a value}; shift 2 ;;
    --max) max=${2:?--max needs a value}; shift 2 ;;
    --idle-ms) idle_ms=${2:?--idle-ms needs a value}; shift 2 ;;
    --breach-ms) breach_ms=${2:?--breach-ms needs a value}; shift 2 ;;
    --cold) cold=${2:?--cold needs a value}; shift 2 ;;
    --bin) bin=${2:?--bin needs a value}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
for v in cycles high base secs avg_delay target max idle_ms breach_ms cold; do
    is_uint "${!v}" || die "--${v//_/-} must be a whole number, got '${!v}'"
done
if [ "$high" -lt 1 ] || [ "$base" -lt 1 ] || [ "$secs" -lt 1 ] || [ "$max" -lt 1 ]; then
    die "--high, --base, --secs and --max must be at least 1"
fi
case "$runtime" in process | docker) ;; *) die "--runtime must be process or docker" ;; esac
for t in curl python3 wrk; do
    command -v "$t" >/dev/null 2>&1 || die "$t is not installed (apt-get install curl python3 wrk)"
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "$bin" ]; then
    bin="$root/target/x86_64-unknown-linux-gnu/release/goloadbalancer"
    if [ ! -x "$bin" ]; then
        (cd "$root" && cargo build --release --quiet) || die "cargo build --release failed"
    fi
fi
[ -x "$bin" ] || die "no executable at $bin"

work=$(mktemp -d "${TMPDIR:-/tmp}/glb-autoscale.XXXXXX")
sup_pid=""
poller_pid=""
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    [ -z "$poller_pid" ] || kill "$poller_pid" 2>/dev/null || true
    if [ -n "$sup_pid" ] && kill -0 "$sup_pid" 2>/dev/null; then
        kill -TERM "$sup_pid" 2>/dev/null || true
        for _ in $(seq 1 600); do kill -0 "$sup_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$sup_pid" 2>/dev/null || true
    fi
    if [ "$keep" = 1 ]; then echo "kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free ports: asked of the kernel, in a range the load's ephemeral ports do not use.
read -r lb_port admin_port worker_port < <(python3 - "$max" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(1000):
    lb, admin, w = (random.randrange(11000, 30000) for _ in range(3))
    ports = [lb, admin] + list(range(w, w + n + 2))
    if len(set(ports)) == len(ports) and all(free(p) for p in ports):
        print(lb, admin, w); break
PY
)
[ -n "${worker_port:-}" ] || die "no free ports found"

mkdir -p "$work/db"
cat >"$work/config.yaml" <<EOF
worker: 1
pool: 1
stats-dir: $work/db/stats.db
avg-delay: $avg_delay
failure: 0
load-balancer-port: $lb_port
worker-port: $worker_port
admin-port: $admin_port
instance: autoscale-bench-$$
runtime: $runtime
listen-address: 127.0.0.1
worker-address: 127.0.0.1
worker-start-timeout-ms: 60000
drain-timeout-ms: 10000
autoscale:
  enabled: true
  min: 0
  max: $max
  target-inflight: $target
  breach-ms: $breach_ms
  cooldown-ms: $breach_ms
  idle-ms: $idle_ms
EOF

"$bin" run --config "$work/config.yaml" >"$work/supervisor.log" 2>&1 &
sup_pid=$!
lb="http://127.0.0.1:$lb_port/api/v1/hello"
admin="http://127.0.0.1:$admin_port"

# /status every 50 ms once running: "epoch_ms desired active listed" lines (listed: workers in
# any state).
python3 - "$admin/status" "$work/samples" <<'PY' &
import json, sys, time, urllib.request
url, out = sys.argv[1], sys.argv[2]
with open(out, "a", buffering=1) as f:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                v = json.load(r)
            # While starting, its zero workers are not the autoscaler's.
            if v.get("state") == "running":
                f.write(f"{int(time.time() * 1000)} {v['autoscale']['desired']} "
                        f"{v.get('workers_actual', 0)} {len(v.get('workers', []))}\n")
        except Exception:
            pass
        time.sleep(0.05)
PY
poller_pid=$!

now_ms() { date +%s%3N; }

# The latest sample's "desired active listed".
latest() { tail -n 1 "$work/samples" 2>/dev/null | awk '{print $2, $3, $4}'; }

# Waits until the latest sample shows 0 workers (want=zero), or for any sample (want=any).
wait_for() { # description seconds want
    local what=$1 limit=$2 want=$3 end d a n
    end=$(($(date +%s) + limit))
    while [ "$(date +%s)" -lt "$end" ]; do
        if ! kill -0 "$sup_pid" 2>/dev/null; then
            tail -n 20 "$work/supervisor.log" >&2
            echo "autoscale-bench.sh: the supervisor exited" >&2
            exit 1
        fi
        read -r d a n < <(latest) || true
        if [ -n "${d:-}" ]; then
            # Zero: none wanted, none active, none still stopping.
            if [ "$want" = zero ] && [ "$d" = 0 ] && [ "$a" = 0 ] && [ "$n" = 0 ]; then
                return 0
            fi
            if [ "$want" = any ]; then return 0; fi
        fi
        sleep 0.05
    done
    echo "autoscale-bench.sh: timed out after ${limit}s waiting for $what" >&2
    return 1
}

# Step figures from the samples between two instants.
analyse() { # name conns start_ms end_ms summary-line
    python3 - "$work/samples" "$@" <<'PY'
import sys
path, name, conns, start, end, summary = sys.argv[1:7]
start, end = int(start), int(end)
rows = [tuple(map(int, l.split()[:3])) for l in open(path) if len(l.split()) == 4]
before = [r for r in rows if r[0] < start]
during = [r for r in rows if start <= r[0] <= end]
d0 = before[-1][1] if before else (during[0][1] if during else 0)
reaction = next((r[0] - start for r in during if r[1] != d0), None)
peak = max((r[1] for r in during), default=d0)
goal = 0 if name.startswith("zero") else peak
cap = next((r[0] - start for r in during if r[2] == goal and (goal > 0 or r[1] == 0)), None)
kv = dict(p.split("=", 1) for p in summary.split()[1:] if "=" in p)
fmt = lambda v: "-" if v is None else str(v)
print(f"STEP name={name} conns={conns} reaction_ms={fmt(reaction)} capacity_ms={fmt(cap)} "
      f"workers={d0}->{during[-1][1] if during else d0} peak={peak} ok={kv.get('ok', '-')} failed={kv.get('failed', '-')} "
      f"refused={kv.get('refused', '-')}")
PY
}

load_step() { # name conns
    local name=$1 conns=$2 start end summary
    start=$(now_ms)
    summary=$(bash "$root/scripts/load.sh" --tool wrk --no-stats -q -c "$conns" -d "$secs" \
        --timeout 30 "$lb" | grep '^SUMMARY' || echo "SUMMARY")
    end=$(now_ms)
    analyse "$name" "$conns" "$start" "$end" "$summary" | tee -a "$work/steps"
}

zero_step() { # name
    local name=$1 start end limit
    start=$(now_ms)
    limit=$((idle_ms / 1000 + breach_ms / 1000 + 60))
    wait_for "0 workers" "$limit" zero || exit 1
    end=$(now_ms)
    analyse "$name" 0 "$start" "$end" "SUMMARY" | tee -a "$work/steps"
}

echo "autoscale-bench: runtime=$runtime max=$max target-inflight=$target breach-ms=$breach_ms idle-ms=$idle_ms avg-delay=$avg_delay load=$(cut -d' ' -f1-3 /proc/loadavg)"
wait_for "the admin endpoint" 300 any || exit 1
wait_for "0 workers at start" $((idle_ms / 1000 + 60)) zero || exit 1

for c in $(seq 1 "$cycles"); do
    load_step "high$c" "$high"
    zero_step "zero$c"
done
load_step base "$base"
load_step burst $((base * 10))
zero_step zero-burst

# Cold starts: at 0 workers, one request sent to its answer (held by the LB while a worker
# starts), at avg-delay 0 (the request's own delay is not start-up time): reloaded (SIGHUP)
# before.
sed -i -E 's/^avg-delay: .*/avg-delay: 0/' "$work/config.yaml"
kill -HUP "$sup_pid"
sleep 1
coldv=()
cold_failed=0
for i in $(seq 1 "$cold"); do
    wait_for "0 workers before cold start $i" $((idle_ms / 1000 + 60)) zero || exit 1
    # "status ms": one request, no retry; status 0 when no answer came.
    read -r code ms < <(python3 - "$lb_port" <<'PY'
import http.client, sys, time
port = int(sys.argv[1])
t0 = time.monotonic()
status = 0
try:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/api/v1/hello")
    r = c.getresponse()
    r.read()
    status = r.status
    c.close()
except OSError:
    pass
print(status, int((time.monotonic() - t0) * 1000))
PY
)
    if [ "$code" = 200 ]; then
        coldv+=("$ms")
    else
        cold_failed=$((cold_failed + 1))
    fi
    # The poller's latest sample may predate this start: let it catch up before the next wait.
    sleep 0.5
    echo "cold start $i: status $code after $ms ms"
done
printf '%s\n' "${coldv[@]}" | sort -n | awk -v rt="$runtime" -v failed="$cold_failed" '
    NF { v[++n] = $1; all = all (n > 1 ? "," : "") $1 }
    END { printf "COLD runtime=%s n=%d failed=%d p50_ms=%s max_ms=%s values=%s\n", rt, n, failed,
          n ? v[int((n + 1) / 2)] : "-", n ? v[n] : "-", all }'
# Launch to healthy of every worker start (the supervisor's own figure).
grep -o 'event=worker_healthy .*after_ms=[0-9]*' "$work/supervisor.log" |
    sed -E 's/.*after_ms=//' | sort -n |
    awk '{ a[NR] = $1 } END { if (NR) printf "STARTS n=%d launch_to_healthy_p50_ms=%d max_ms=%d\n", NR, a[int((NR + 1) / 2)], a[NR] }' || true
