#!/usr/bin/env bash
# Saves a PNG screenshot of a running supervisor's dashboard; see usage below.
set -euo pipefail

admin=127.0.0.1:8404
size=1920x1080
out=dashboard.png

usage() {
    cat <<'USAGE'
usage: scripts/dashboard-shot.sh [--admin HOST:PORT|PORT] [--size WIDTHxHEIGHT] [--out FILE]

Saves a PNG screenshot of a running supervisor's dashboard (GET / on the admin port) with
headless Chromium, after the page has polled /status for a few seconds. Prints the PNG's path.

  --admin   the admin endpoint (default 127.0.0.1:8404; a bare port means 127.0.0.1)
  --size    the window (default 1920x1080; a phone: 390x1600)
  --out     the file (default dashboard.png)

Needs curl and Chromium ($CHROMIUM, else chromium, chromium-browser or google-chrome on PATH;
Debian: apt-get install chromium). Exit 1 when the page does not answer or no PNG was
written, 2 on bad usage.
USAGE
}

while [ $# -gt 0 ]; do
    case "$1" in
        --admin) admin=${2:?--admin needs a value}; shift 2 ;;
        --size) size=${2:?--size needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "dashboard-shot.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

case "$admin" in
    *:*) ;;
    *) admin=127.0.0.1:$admin ;;
esac
if ! [[ "$size" =~ ^[0-9]+x[0-9]+$ ]]; then
    echo "dashboard-shot.sh: --size must be WIDTHxHEIGHT, got $size" >&2
    exit 2
fi

browser=${CHROMIUM:-}
if [ -z "$browser" ]; then
    for b in chromium chromium-browser google-chrome; do
        if command -v "$b" >/dev/null 2>&1; then
            browser=$b
            break
        fi
    done
fi
if [ -z "$browser" ]; then
    echo "dashboard-shot.sh: no chromium found (apt-get install chromium, or set CHROMIUM)" >&2
    exit 1
fi

url="http://$admin/"
if ! curl -fsS -o /dev/null --max-time 5 "$url"; then
    echo "dashboard-shot.sh: $url does not answer" >&2
    exit 1
fi

# Its own profile directory, so it never touches (or waits on) a user's running browser.
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
out_abs=$(realpath -m "$out")
# Virtual time: the page's 1 s poll runs a few times before the shot.
timeout 90 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir="$profile" --window-size="${size/x/,}" \
    --virtual-time-budget=4000 --screenshot="$out_abs" "$url" >/dev/null 2>&1 || true
if [ ! -s "$out_abs" ]; then
    echo "dashboard-shot.sh: $browser wrote no screenshot" >&2
    exit 1
fi
echo "$out_abs"
