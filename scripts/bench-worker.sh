#!/usr/bin/env bash
# Benchmarks one `goloadbalancer worker` with wrk:
#   1. held:       N concurrent connections (default 10,000), each always with a delayed hello
#                  in flight, at avg-delay 1000 ms: the worker holds N timers at once. Reports
#                  the worker's peak RSS, req/s (about N / 1 s) and the latency percentiles.
#   2. throughput: avg-delay 0, failure 0, stats recording on: req/s and p50/p99 latency, then
#                  the worker's /worker/stats count next to wrk's.
# Every run starts its own worker on a free loopback port with a fresh database and stops it
# with SIGTERM (exit code and drain time reported).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/bench-worker.sh [--quick] [--bin PATH] [--conns N] [--duration SECONDS]
                               [--threads N] [--throughput-conns N]

  --quick              short CI run: 1000 held connections, 3 s per phase, the debug binary
                       when there is one
  --bin PATH           the goloadbalancer binary (default: target/.../release/goloadbalancer,
                       built with `cargo build --release` if missing)
  --conns N            held connections in phase 1 (default 10000)
  --duration SECONDS   length of each phase (default 15)
  --threads N          wrk threads (default 2)
  --throughput-conns N wrk connections in phase 2 (default 64)
  -h, --help           this text

Needs: wrk, curl, awk (apt-get install wrk curl).
EOF
}

root="$(cd "$(dirname "$0")/.." && pwd)"
triple=x86_64-unknown-linux-gnu
bin=""
quick=0
conns=10000
duration=15
threads=2
tconns=64
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help) usage; exit 0 ;;
    --quick) quick=1; shift ;;
    --bin) bin="${2:?--bin needs a path}"; shift 2 ;;
    --conns) conns="${2:?--conns needs a number}"; shift 2 ;;
    --duration) duration="${2:?--duration needs seconds}"; shift 2 ;;
    --threads) threads="${2:?--threads needs a number}"; shift 2 ;;
    --throughput-conns) tconns="${2:?--throughput-conns needs a number}"; shift 2 ;;
    *) echo "bench-worker: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [ "$quick" = 1 ]; then
    conns=1000
    duration=3
fi
for n in "$conns" "$duration" "$threads" "$tconns"; do
    case "$n" in '' | *[!0-9]*) echo "bench-worker: not a number: $n" >&2; exit 2 ;; esac
done

missing=()
for tool in wrk curl awk; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench-worker: missing tools: ${missing[*]} (apt-get install wrk curl)" >&2
    exit 3
fi

if [ -z "$bin" ]; then
    if [ "$quick" = 1 ] && [ -x "$root/target/$triple/debug/goloadbalancer" ]; then
        bin="$root/target/$triple/debug/goloadbalancer"
    else
        bin="$root/target/$triple/release/goloadbalancer"
        if [ ! -x "$bin" ]; then
            echo "== building the release binary"
            (cd "$root" && cargo build --release)
        fi
    fi
fi
[ -x "$bin" ] || { echo "bench-worker: no binary at $bin" >&2; exit 2; }

# wrk and the worker each need a descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((conns + 100)) ]; then
    if [ "$quick" = 1 ] && [ "$(ulimit -n)" -gt 200 ]; then
        conns=$(($(ulimit -n) - 100))
        echo "bench-worker: open files limit $(ulimit -n): --quick holds $conns connections"
    else
        echo "bench-worker: open files limit $(ulimit -n) is below $((conns + 100)); lower --conns" >&2
        exit 2
    fi
fi

work="$(mktemp -d /tmp/bench-worker.XXXXXX)"
worker_pid=""
cleanup() {
    if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
        kill -KILL "$worker_pid" 2>/dev/null || true
        wait "$worker_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# start_worker NAME AVG_DELAY FAILURE: sets worker_pid and url.
start_worker() {
    local name="$1" avg="$2" failure="$3" port=""
    # Port 0: the kernel picks a free port; the worker logs the address it got.
    "$bin" worker --listen 127.0.0.1 --port 0 --id "bench-$name" \
        --db "$work/$name.db" --avg-delay "$avg" --failure "$failure" \
        --idle-timeout-ms 120000 2>"$work/$name.log" &
    worker_pid=$!
    for _ in $(seq 1 200); do
        port=$(sed -n 's/.*event=worker_started.* listen=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/$name.log")
        if [ -n "$port" ]; then
            url="http://127.0.0.1:$port"
            curl -fsS -o /dev/null "$url/healthz"
            return
        fi
        kill -0 "$worker_pid" 2>/dev/null || { cat "$work/$name.log" >&2; exit 1; }
        sleep 0.05
    done
    echo "bench-worker: worker did not come up" >&2
    exit 1
}

# stop_worker: SIGTERM, wait, report exit code and drain time.
stop_worker() {
    local t0 t1 code=0
    t0=$(date +%s%N)
    kill -TERM "$worker_pid"
    wait "$worker_pid" || code=$?
    t1=$(date +%s%N)
    echo "   worker stop: exit $code after $(((t1 - t0) / 1000000)) ms (SIGTERM, drain, stats flush)"
    worker_pid=""
    [ "$code" = 0 ] || { echo "bench-worker: worker exited $code" >&2; exit 1; }
}

# cpu_ticks: user + system CPU time of the worker so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$worker_pid/stat"; }
tck=$(getconf CLK_TCK 2>/dev/null || echo 100)

# cpu_per_request TICKS_BEFORE WRK_OUTPUT: worker CPU microseconds per answered request.
cpu_per_request() {
    local after n
    after=$(cpu_ticks)
    n=$(awk '/requests in/ { print $1 }' "$2")
    awk -v d=$((after - $1)) -v n="${n:-0}" -v t="$tck" 'BEGIN {
        if (n > 0) printf "   worker CPU: %.1f s user+system, %.1f us per request\n", d / t, d / t * 1e6 / n }'
}

kib() { awk -v k="$1" '/^'"$1"':/ { print $2 }' "/proc/$worker_pid/status"; }

# report WRK_OUTPUT: the figures out of wrk --latency output.
report() {
    awk '
        /Requests\/sec:/ { rps = $2 }
        /requests in/ { n = $1 }
        /^ +50%/ { p50 = $2 } /^ +90%/ { p90 = $2 } /^ +99%/ { p99 = $2 }
        /Socket errors/ { errs = $0 }
        /Non-2xx/ { non2xx = $NF }
        END {
            printf "   requests %s, %s req/s, latency p50 %s p90 %s p99 %s\n", n, rps, p50, p90, p99
            if (errs != "") printf "   %s\n", errs
            if (non2xx != "") printf "   non-2xx responses: %s\n", non2xx
        }' "$1"
}

echo "== goloadbalancer worker benchmark ($(nproc) cores, binary $bin)"

echo "== 1. held: $conns connections, avg-delay 1000 ms (uniform 0..2000), ${duration}s"
start_worker held 1000 0
rss0=$(kib VmRSS)
cpu0=$(cpu_ticks)
wrk -t"$threads" -c"$conns" -d"${duration}s" --timeout 10s --latency "$url/api/v1/hello" \
    >"$work/held.txt" 2>&1 &
wrk_pid=$!
peak_conns=0
while kill -0 "$wrk_pid" 2>/dev/null; do
    n=$(ls "/proc/$worker_pid/fd" 2>/dev/null | wc -l)
    [ "$n" -gt "$peak_conns" ] && peak_conns=$n
    sleep 0.5
done
wait "$wrk_pid" || true
report "$work/held.txt"
cpu_per_request "$cpu0" "$work/held.txt"
echo "   worker RSS: idle ${rss0} KiB, peak (VmHWM) $(kib VmHWM) KiB; peak open descriptors $peak_conns"
stop_worker

echo "== 2. throughput: avg-delay 0, failure 0, $tconns connections, ${duration}s, stats recorded"
start_worker tput 0 0
cpu0=$(cpu_ticks)
wrk -t"$threads" -c"$tconns" -d"${duration}s" --latency "$url/api/v1/hello" >"$work/tput.txt" 2>&1 || true
report "$work/tput.txt"
cpu_per_request "$cpu0" "$work/tput.txt"
stats=$(curl -fsS "$url/worker/stats")
counted=$(printf '%s' "$stats" | sed -n 's/.*"TotalRequests":\[{"total":\([0-9]*\)}.*/\1/p')
echo "   /worker/stats TotalRequests total: $counted (wrk counts only answers it read before stopping)"
echo "   worker RSS peak (VmHWM) $(kib VmHWM) KiB"
stop_worker
echo "== done"
