# shellcheck shell=bash
# Sourced by the scripts that boot a Debian root as a container (systemd-e2e.sh, swarm-e2e.sh):
# the Debian mirror they take from this machine's apt sources, debootstrap itself, and the root
# built once and cached as a docker image. Defines functions only; the caller's
# `set -euo pipefail` applies.
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

# root_image NAME IMAGE REBUILD PREPARE [docker import options...]: makes the docker image IMAGE
# (repo:tag) from a Debian root unless it exists and REBUILD is 0: the caller's `PREPARE DIR
# MIRROR` debootstraps and shapes the root (with the caller's $suite), then `docker import` with
# the options; older tags of the same repository are removed (dead weight). While it builds, the
# root is in $root_dir, for the caller's EXIT trap to give to remove_root. 1 on a failure (the
# reason on stderr); no mirror exits 1 (no_mirror).
root_image() {
    local name="$1" image="$2" rebuild="$3" prepare="$4" mirror replaced old
    shift 4
    if [ "$rebuild" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
        echo "$name: cached, no debootstrap"
        return 0
    fi
    ensure_debootstrap || { echo "$name: debootstrap not found and not installable (apt-get install debootstrap)" >&2; return 1; }
    mirror="$(debian_mirror "$suite")" || no_mirror "$name" "$suite"
    replaced="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
    root_dir="$(mktemp -d "${TMPDIR:-/var/tmp}/$name-root.XXXXXX")" || return 1
    echo "$name: debootstrap $suite from $mirror"
    "$prepare" "$root_dir" "$mirror" || return 1
    tar -C "$root_dir" -c . | docker import "$@" - "$image" >/dev/null ||
        { echo "$name: docker import failed" >&2; return 1; }
    remove_root
    # --rebuild-root leaves the old image untagged; other tags are older recipes.
    if [ -n "$replaced" ] && [ "$replaced" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
        docker rmi "$replaced" >/dev/null 2>&1 || true
    fi
    for old in $(docker images "${image%%:*}" --format '{{.Repository}}:{{.Tag}}'); do
        [ "$old" = "$image" ] || docker rmi "$old" >/dev/null 2>&1 || true
    done
}

# Removes $root_dir (if set) and its debootstrap log, first unmounting what an interrupted
# debootstrap left mounted in it (/proc, /sys).
remove_root() {
    [ -n "${root_dir:-}" ] || return 0
    awk -v d="$root_dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
    rm -rf "$root_dir" "$root_dir.log"
    root_dir=""
}
