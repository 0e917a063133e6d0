#!/usr/bin/env bash
# Drives HTTP load at the LB ports and reports req/s, latency percentiles, status counts and
# how the requests spread over the workers (/worker/stats before and after).
# Plain bash around wrk (when installed) or curl. See --help.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/load.sh [options] [URL ...]

Drives load at one or more URLs (default http://127.0.0.1:5050/api/v1/hello) and prints
requests/s, latency percentiles, status counts, connection errors, and the per-worker
distribution: the change of /worker/stats (TotalRequests, FailedRequests per worker id)
between the start and the end of the run.

options:
  -c, --concurrency N    concurrent connections in total, spread over the URLs (default 16)
  -d, --duration SECS    how long to drive load (default 10; fractions allowed with curl)
      --quick            2 seconds at concurrency 4 (a smoke run; later flags still win)
      --ports LIST       shorthand for URLs: comma-separated LB ports, e.g. 5050,5051
      --host HOST        host for --ports (default 127.0.0.1)
      --path PATH        path for --ports (default /api/v1/hello)
      --tool NAME        wrk | curl | auto (default auto: wrk when installed, else curl).
                         curl (with --parallel, one line per request) counts refused
                         connections (curl exit 7) apart from other failures; wrk is
                         faster and holds the concurrency exactly.
      --timeout SECS     per-request timeout (default 10)
      --stats-url URL    where to read the worker stats (default: first URL's origin +
                         /worker/stats); --no-stats skips the distribution
      --no-stats
      --expect-no-errors exit 1 if any request failed: non-2xx/3xx status, refused
                         connection, timeout or broken connection
      --expect-min-rps N exit 1 below N requests/s
      --expect-workers N exit 1 unless at least N workers served requests (from the stats)
      --raw FILE         (curl) keep the per-request lines "status seconds curl-exit" in FILE
      --stop-file FILE   (curl) stop early once FILE exists (for scripts driving steps)
  -q, --quiet            only the SUMMARY line
  -h, --help             this text

The last line is always machine-readable:
  SUMMARY tool=.. requests=.. rps=.. p50_ms=.. p90_ms=.. p99_ms=.. p999_ms=.. max_ms=..
          ok=.. non2xx=.. refused=.. failed=.. workers=..
  (ok = 2xx/3xx; failed = every request that did not get a 2xx/3xx, refused included)

exit status: 0 ok, 1 an --expect-* did not hold, 2 usage or a missing tool.

tools: bash, curl, awk, sort (always); wrk (optional, faster); jq (for the per-worker
distribution). Install on Debian/Ubuntu: apt-get install curl wrk jq
EOF
}

die() {
    echo "load.sh: $*" >&2
    exit 2
}

concurrency=16
duration=10
urls=()
ports=""
host=127.0.0.1
path=/api/v1/hello
tool=auto
timeout=10
stats_url=""
stats=1
expect_no_errors=0
expect_min_rps=""
expect_workers=""
raw=""
stop_file=""
quiet=0

while [ $# -gt 0 ]; do
    case "$1" in
    -c | --concurrency) concurrency=${2:?--concurrency needs a value}; shift 2 ;;
    -d | --duration) duration=${2:?--duration needs a value}; shift 2 ;;
    --quick) duration=2; concurrency=4; shift ;;
    --ports) ports=${2:?--ports needs a value}; shift 2 ;;
    --host) host=${2:?--host needs a value}; shift 2 ;;
    --path) path=${2:?--path needs a value}; shift 2 ;;
    --tool) tool=${2:?--tool needs a value}; shift 2 ;;
    --timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
    --stats-url) stats_url=${2:?--stats-url needs a value}; shift 2 ;;
    --no-stats) stats=0; shift ;;
    --expect-no-errors) expect_no_errors=1; shift ;;
    --expect-min-rps) expect_min_rps=${2:?--expect-min-rps needs a value}; shift 2 ;;
    --expect-workers) expect_workers=${2:?--expect-workers needs a value}; shift 2 ;;
    --raw) raw=${2:?--raw needs a value}; shift 2 ;;
    --stop-file) stop_file=${2:?--stop-file needs a value}; shift 2 ;;
    -q | --quiet) quiet=1; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) urls+=("$1"); shift ;;
    esac
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
if ! is_uint "$concurrency" || [ "$concurrency" -lt 1 ]; then die "--concurrency must be a whole number >= 1"; fi
is_num "$duration" || die "--duration must be a number of seconds"
is_num "$timeout" || die "--timeout must be a number of seconds"
[ -z "$expect_min_rps" ] || is_num "$expect_min_rps" || die "--expect-min-rps must be a number"
[ -z "$expect_workers" ] || is_uint "$expect_workers" || die "--expect-workers must be a whole number"

if [ -n "$ports" ]; then
    IFS=, read -r -a port_list <<<"$ports"
    for p in "${port_list[@]}"; do
        is_uint "$p" || die "--ports: '$p' is not a port"
        urls+=("http://$host:$p$path")
    done
fi
[ ${#urls[@]} -gt 0 ] || urls=("http://127.0.0.1:5050/api/v1/hello")
for u in "${urls[@]}"; do
    [[ $u =~ ^http://[^/]+ ]] || die "'$u' is not an http:// URL"
done

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is not installed (Debian/Ubuntu: apt-get install $2)"
}
need curl curl
need awk mawk
need sort coreutils
case "$tool" in
auto) if command -v wrk >/dev/null 2>&1; then tool=wrk; else tool=curl; fi ;;
wrk) need wrk wrk ;;
curl) ;;
*) die "--tool must be wrk, curl or auto" ;;
esac
if [ "$tool" = wrk ] && [ -n "$stop_file" ]; then
    die "--stop-file needs --tool curl"
fi
if [ "$tool" = wrk ] && ! is_uint "$duration"; then
    die "wrk takes whole seconds: --duration $duration"
fi
if [ "$stats" = 1 ] && ! command -v jq >/dev/null 2>&1; then
    echo "load.sh: jq is not installed, skipping the per-worker distribution (apt-get install jq)" >&2
    stats=0
fi
if [ -n "$expect_workers" ] && [ "$stats" = 0 ]; then
    die "--expect-workers needs the worker stats (jq, and no --no-stats)"
fi
[ -n "$stats_url" ] || stats_url="$(sed -E 's|^(http://[^/]+).*|\1|' <<<"${urls[0]}")/worker/stats"

work=$(mktemp -d "${TMPDIR:-/tmp}/glb-load.XXXXXX")
bg_pids=()
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { [ "$quiet" = 1 ] || echo "$@"; }

# Worker stats as "id total failed" lines (the "total" entry left out). Empty on failure.
read_stats() {
    local out=$1 body
    body=$(curl -s --max-time 5 "$stats_url" 2>/dev/null) || { : >"$out"; return; }
    jq -r '
        def m(k): [(.[k] // [])[] | to_entries[] | select(.key != "total")] | from_entries;
        m("TotalRequests") as $t | m("FailedRequests") as $f
        | $t | keys[] | "\(.) \($t[.]) \($f[.] // 0)"' <<<"$body" >"$out" 2>/dev/null || : >"$out"
}

if [ "$stats" = 1 ]; then read_stats "$work/stats.before"; fi

nurls=${#urls[@]}
# Connections per URL: spread the concurrency, at least one each.
per_url() { # index
    local base=$((concurrency / nurls)) extra=$((concurrency % nurls))
    local n=$((base + ($1 < extra ? 1 : 0)))
    [ "$n" -ge 1 ] || n=1
    echo "$n"
}

started=$(date +%s%N)

if [ "$tool" = wrk ]; then
    # The Lua script counts statuses per thread and prints, at the end, the counters and the
    # latency at every 0.1 % step (so several wrk runs can be merged into one distribution).
    cat >"$work/report.lua" <<'EOF'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
    local agg = {}
    for _, t in ipairs(threads) do
        for k, v in pairs(t:get("statuses")) do agg[k] = (agg[k] or 0) + v end
    end
    io.write(string.format("requests %d\n", summary.requests))
    io.write(string.format("duration_us %d\n", summary.duration))
    local e = summary.errors
    io.write(string.format("errors %d %d %d %d %d\n", e.connect, e.read, e.write, e.status, e.timeout))
    for k, v in pairs(agg) do io.write(string.format("status %d %d\n", k, v)) end
    if summary.requests > 0 then
        for i = 1, 1000 do
            io.write(string.format("q %d %d\n", i, latency:percentile(i / 10)))
        end
        io.write(string.format("max %d\n", latency.max))
    end
end
EOF
    for i in "${!urls[@]}"; do
        c=$(per_url "$i")
        t=$((c < 2 ? c : 2))
        wrk -t "$t" -c "$c" -d "${duration}s" --timeout "${timeout}s" -s "$work/report.lua" \
            "${urls[$i]}" >"$work/wrk.$i.out" 2>"$work/wrk.$i.err" &
        bg_pids+=($!)
    done
    for p in "${bg_pids[@]}"; do wait "$p" || die "wrk failed: $(cat "$work"/wrk.*.err)"; done
    bg_pids=()
    # Merge: each run's 1000 quantile points each stand for requests/1000 of its requests.
    cat "$work"/wrk.*.out | awk '
        /^requests /   { n = $2; total += n; if (n > 0) runs[++nr] = n }
        /^duration_us/ { if ($2 > dur) dur = $2 }
        /^errors /     { conn += $2; rd += $3; wr += $4; st += $5; to += $6 }
        /^status /     { status[$2] += $3 }
        /^q /          { printf "Q %s %.9f\n", $3, runs[nr] / 1000.0 }
        /^max /        { if ($2 > mx) mx = $2 }
        END {
            printf "T requests %d\nT duration_us %.0f\nT refused %d\n", total, dur, conn
            printf "T broken %d\nT timeout %d\nT max_us %.0f\n", rd + wr, to, mx
            for (s in status) printf "S %s %d\n", s, status[s]
        }' >"$work/merged"
    { grep '^Q ' "$work/merged" || true; } | sort -k2,2n | awk -v total="$(awk '$2=="requests"{print $3}' "$work/merged")" '
        BEGIN { split("50 90 99 99.9", want, " "); k = 1 }
        { cum += $3
          while (k <= 4 && cum >= total * want[k] / 100 - 1e-6) { printf "P %s %s\n", want[k], $2; k++ } }
        END { while (k <= 4) { printf "P %s %s\n", want[k], $2; k++ } }' >"$work/pct"
    cat "$work/pct" >>"$work/merged"
else
    # curl: a few loops, each running one curl with --parallel over a batch of URLs (up to
    # `par` transfers at once, connections reused), so process starts stay rare even on a
    # busy machine. One line per request: "<http status> <seconds> <curl exit code>"
    # (status 000 = no response). Concurrency dips briefly at each batch's tail (batches
    # last about a second; two loops or more are staggered).
    deadline_ns=$((started + $(awk -v d="$duration" 'BEGIN { printf "%.0f", d * 1e9 }')))
    curl_loop() { # loop index, parallel transfers
        local i=$1 par=$2 batch=$2 k args t0 t1 per left next=$1
        local out="$work/curl.$i"
        while [ "$(date +%s%N)" -lt "$deadline_ns" ]; do
            if [ -n "$stop_file" ] && [ -e "$stop_file" ]; then break; fi
            args=()
            for ((k = 0; k < batch; k++)); do
                args+=(-o /dev/null "${urls[$(((next + k) % nurls))]}")
            done
            next=$((next + batch))
            t0=$(date +%s%N)
            curl -s --no-progress-meter --retry 0 --max-time "$timeout" \
                --parallel --parallel-max "$par" --parallel-immediate \
                -w '%{http_code} %{time_total} %{exitcode}\n' "${args[@]}" >>"$out" 2>/dev/null || true
            t1=$(date +%s%N)
            # Next batch: about one second of requests at the rate just seen, not past the
            # deadline by more than one round.
            per=$(((t1 - t0) / batch + 1))
            batch=$((1000000000 / per))
            left=$((deadline_ns - t1))
            if [ "$left" -gt 0 ] && [ $((left / per)) -lt "$batch" ]; then batch=$((left / per)); fi
            [ "$batch" -ge "$par" ] || batch=$par
            [ "$batch" -le 5000 ] || batch=5000
        done
    }
    # Up to 16 transfers per curl; two loops at least (staggered batch tails) from 2 on.
    loops=$(((concurrency + 15) / 16))
    if [ "$loops" -lt 2 ] && [ "$concurrency" -ge 2 ]; then loops=2; fi
    for ((i = 0; i < loops; i++)); do
        par=$((concurrency / loops + (i < concurrency % loops ? 1 : 0)))
        curl_loop "$i" "$par" &
        bg_pids+=($!)
        # Stagger the loops so their batch tails do not line up.
        [ "$loops" -eq 1 ] || sleep 0.05
    done
    for p in "${bg_pids[@]}"; do wait "$p" || true; done
    bg_pids=()
    ended=$(date +%s%N)
    cat "$work"/curl.* 2>/dev/null >"$work/all" || : >"$work/all"
    [ -z "$raw" ] || cp "$work/all" "$raw"
    awk -v dur_us=$(((ended - started) / 1000)) '
        { n++
          # A non-zero curl exit is a failure even after a status line (e.g. a cut body).
          if ($3 == 7) refused++
          else if ($3 == 28) timeout++
          else if ($3 != 0 || $1 == "000") broken++
          else { status[$1]++; ms = $2 * 1000; if (ms > mx) mx = ms; print "L " ms }
        }
        END {
            printf "T requests %d\nT duration_us %.0f\nT refused %d\n", n, dur_us, refused
            printf "T broken %d\nT timeout %d\nT max_us %.0f\n", broken, timeout, mx * 1000
            for (s in status) printf "S %s %d\n", s, status[s]
        }' "$work/all" >"$work/merged0"
    { grep -v '^L ' "$work/merged0" || true; } >"$work/merged"
    { grep '^L ' "$work/merged0" || true; } | sort -k2,2g | awk '
        { v[++n] = $2 }
        END {
            split("50 90 99 99.9", want, " ")
            for (k = 1; k <= 4; k++) {
                if (n == 0) { printf "P %s 0\n", want[k]; continue }
                i = int(n * want[k] / 100 + 0.999999); if (i < 1) i = 1; if (i > n) i = n
                printf "P %s %d\n", want[k], v[i] * 1000
            }
        }' >>"$work/merged"
fi

if [ "$stats" = 1 ]; then
    # Workers commit their stats in small groups: give the last ones a moment to land.
    sleep 0.5
    read_stats "$work/stats.after"
fi

val() { awk -v k="$1" '$1 == "T" && $2 == k { print $3 }' "$work/merged"; }
pct() { awk -v k="$1" '$1 == "P" && $2 == k { printf "%.2f", $3 / 1000 }' "$work/merged"; }
requests=$(val requests)
duration_us=$(val duration_us)
refused=$(val refused)
broken=$(val broken)
timeouts=$(val timeout)
max_ms=$(awk '$1 == "T" && $2 == "max_us" { printf "%.2f", $3 / 1000 }' "$work/merged")
ok=$(awk '$1 == "S" && $2 >= 200 && $2 < 400 { s += $3 } END { print s + 0 }' "$work/merged")
non2xx=$(awk '$1 == "S" && ($2 < 200 || $2 >= 400) { s += $3 } END { print s + 0 }' "$work/merged")
# wrk's requests count completed responses only; failed connects/reads add to the failures.
failed=$((requests - ok))
if [ "$tool" = wrk ]; then failed=$((non2xx + refused + broken + timeouts)); fi
rps=$(awk -v n="$requests" -v us="$duration_us" 'BEGIN { printf "%.1f", (us > 0 ? n * 1e6 / us : 0) }')
p50=$(pct 50)
p90=$(pct 90)
p99=$(pct 99)
p999=$(pct 99.9)

say "load: $tool, concurrency $concurrency, ${duration}s, ${#urls[@]} target(s): ${urls[*]}"
say "$(printf '  requests   %d in %.2fs = %s req/s' "$requests" "$(awk -v us="$duration_us" 'BEGIN{print us/1e6}')" "$rps")"
say "  latency ms p50 $p50  p90 $p90  p99 $p99  p99.9 $p999  max $max_ms"
say "  statuses   $(awk '$1 == "S" { printf "%s: %d  ", $2, $3 }' "$work/merged" | sed 's/  $//')"
say "  errors     refused $refused  broken/reset $broken  timeout $timeouts  (failed in total: $failed)"

workers=0
if [ "$stats" = 1 ]; then
    if [ ! -s "$work/stats.after" ]; then
        say "  per worker: could not read $stats_url"
    else
        # Join before/after by worker id; the delta is what this run (and anyone else) added.
        awk 'NR == FNR { tb[$1] = $2; fb[$1] = $3; next }
             { d = $2 - tb[$1]; f = $3 - fb[$1]; if (d < 0) d = $2; if (f < 0) f = $3
               print $1, d, f }' "$work/stats.before" "$work/stats.after" >"$work/delta"
        sum=$(awk '{ s += $2 } END { print s + 0 }' "$work/delta")
        workers=$(awk '$2 > 0 { n++ } END { print n + 0 }' "$work/delta")
        say "  per worker (change of /worker/stats during the run; $workers served, $sum requests):"
        if [ "$quiet" = 0 ]; then
            sort -k2,2nr "$work/delta" | awk -v sum="$sum" '
                { printf "    %-16s %8d  %5.1f%%  failed %d\n", $1, $2, (sum > 0 ? 100 * $2 / sum : 0), $3 }'
        fi
    fi
fi

echo "SUMMARY tool=$tool requests=$requests rps=$rps p50_ms=$p50 p90_ms=$p90 p99_ms=$p99" \
    "p999_ms=$p999 max_ms=$max_ms ok=$ok non2xx=$non2xx refused=$refused failed=$failed workers=$workers"

status=0
if [ "$expect_no_errors" = 1 ] && [ "$failed" -ne 0 ]; then
    echo "load.sh: expected no errors, got $failed failed request(s) ($refused refused)" >&2
    status=1
fi
if [ "$requests" -eq 0 ]; then
    echo "load.sh: no request completed" >&2
    status=1
fi
if [ -n "$expect_min_rps" ] && awk -v a="$rps" -v b="$expect_min_rps" 'BEGIN { exit !(a < b) }'; then
    echo "load.sh: expected at least $expect_min_rps req/s, got $rps" >&2
    status=1
fi
if [ -n "$expect_workers" ] && [ "$workers" -lt "$expect_workers" ]; then
    echo "load.sh: expected at least $expect_workers workers to serve requests, got $workers" >&2
    status=1
fi
exit "$status"
