# shellcheck shell=bash
# Sourced by the scripts that build a Debian root with debootstrap (systemd-e2e.sh,
# swarm-e2e.sh): the Debian mirror they take from this machine's apt sources, and debootstrap
# itself. Defines functions only; the caller's `set -euo pipefail` applies.
#
# No mirror is written here: a machine behind a proxy or a local mirror already names it in its
# apt sources, and a Debian mirror carries every release, so the host's serves bookworm too.

# Prints "URI SUITE" for each enabled `deb` source with the component main, from the one-line
# lists and the deb822 .sources files apt reads (apt-config gives their paths, so APT_CONFIG
# points this at other files).
apt_main_sources() {
    local list="/etc/apt/sources.list" parts="/etc/apt/sources.list.d/" f
    if command -v apt-config >/dev/null; then
        # Sets list= and parts= (shell-quoted by apt-config).
        eval "$(apt-config shell list Dir::Etc::sourcelist/f parts Dir::Etc::sourceparts/d 2>/dev/null)"
    fi
    for f in "$list" "$parts"*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI SUITE COMPONENT...
        awk '{ sub(/#.*/, "") }
            $1 != "deb" { next }
            {
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i, $(i + 1); next }
            }' "$f"
    done
    for f in "$parts"*.sources; do
        [ -f "$f" ] || continue
        # Paragraphs of "Field: value" lines; a line starting with blank continues the field.
        awk 'BEGIN { RS = ""; FS = "\n" }
            {
                split("", v); key = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^#/) continue
                    if ($i ~ /^[ \t]/) { if (key != "") v[key] = v[key] " " $i; continue }
                    p = index($i, ":"); if (!p) { key = ""; continue }
                    key = tolower(substr($i, 1, p - 1)); v[key] = substr($i, p + 1)
                }
                if (tolower(v["enabled"]) ~ /^[ \t]*no/) next
                if (" " v["types"] " " !~ /[ \t]deb[ \t]/) next
                if (" " v["components"] " " !~ /[ \t]main[ \t]/) next
                nu = split(v["uris"], u, /[ \t]+/); ns = split(v["suites"], s, /[ \t]+/)
                for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++)
                    if (u[a] != "" && s[b] != "") print u[a], s[b]
            }' "$f"
    done
}

# debian_mirror SUITE: prints the mirror for debootstrap: GLB_DEBIAN_MIRROR, else the URI of
# the host's source for SUITE, else of a source for another Debian release (a suite without "-" or "/", so not
# -security or -updates, that debootstrap knows as Debian's: its script is `sid`). 1 if none.
debian_mirror() {
    if [ -n "${GLB_DEBIAN_MIRROR:-}" ]; then
        echo "$GLB_DEBIAN_MIRROR"
        return 0
    fi
    local suite="$1" sources uri s
    sources="$(apt_main_sources)"
    while read -r uri s; do
        [ "$s" = "$suite" ] && { echo "$uri"; return 0; }
    done <<<"$sources"
    while read -r uri s; do
        case "$uri" in http://*|https://*|file:/*) ;; *) continue ;; esac
        case "$s" in ''|*-*|*/*) continue ;; esac
        [ "$(readlink -f "${DEBOOTSTRAP_DIR:-/usr/share/debootstrap}/scripts/$s" 2>/dev/null)" = \
            "$(readlink -f "${DEBOOTSTRAP_DIR:-/usr/share/debootstrap}/scripts/sid")" ] || continue
        echo "$uri"
        return 0
    done <<<"$sources"
    return 1
}

# no_mirror NAME SUITE: the error when debian_mirror finds nothing; exits 1.
no_mirror() {
    echo "$1: no Debian mirror in this machine's apt sources (no enabled \`deb\` source" \
        "with the component main for $2 or another Debian release); set GLB_DEBIAN_MIRROR=URI" >&2
    exit 1
}

# Installs debootstrap with apt-get when it is missing; 1 when it cannot.
ensure_debootstrap() {
    command -v debootstrap >/dev/null && return 0
    command -v apt-get >/dev/null || return 1
    echo "installing debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
}
