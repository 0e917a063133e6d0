#!/usr/bin/env bash
# Installs goloadbalancer as a systemd service: the binary, the unit, the default config, the
# service user. Idempotent: running it again upgrades the binary and the unit and never touches
# an edited /etc/goloadbalancer/config.yaml. `--uninstall` reverses it.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/install.sh [options]

Installs (as root):
  PREFIX/bin/goloadbalancer                          the binary (PREFIX: /usr/local)
  /etc/systemd/system/goloadbalancer.service         the unit
  /etc/systemd/system/goloadbalancer.socket          its listening sockets (socket activation):
                                                     ListenStream= lines for the LB ports and
                                                     the admin port of the installed config,
                                                     rewritten on every install
  /etc/systemd/system/goloadbalancer.service.d/10-docker.conf
                                                     SupplementaryGroups=docker, only where
                                                     the docker group exists
  /etc/goloadbalancer/config.yaml                    the default config, only if absent
  /etc/goloadbalancer/config.yaml.default            the shipped default, always refreshed
  PREFIX/lib/sysusers.d/goloadbalancer.conf          the system user `goloadbalancer`
  PREFIX/share/doc/goloadbalancer/README.md
then creates the user and runs `systemctl daemon-reload` (when systemd runs). The stats
database lives in /var/lib/goloadbalancer (StateDirectory=, created by systemd).

options:
  --binary PATH   install this binary instead of building one (cargo build --release)
  --prefix DIR    where the binary goes (default /usr/local; the unit's ExecStart follows);
                  letters, digits, spaces and ._+-/ only
  --root DIR      staged install under DIR: nothing outside DIR is touched, no user is
                  created, systemctl is not called (for packaging and tests)
  --uninstall     stop and disable the service, remove what the install put in place; keeps
                  an edited config.yaml, the stats database and the user
  --purge         with --uninstall: also remove /etc/goloadbalancer and /var/lib/goloadbalancer
  -h, --help      this text

After installing:
  systemctl enable --now goloadbalancer     start now and at boot (sockets too)
  systemctl reload goloadbalancer           re-read config.yaml, no request fails
  systemctl restart goloadbalancer          new process; the sockets stay open, nothing refused
  journalctl -u goloadbalancer -p warning   warnings and errors only
EOF
}

repo="$(cd "$(dirname "$0")/.." && pwd)"
binary=""
prefix="/usr/local"
root=""
uninstall=0
purge=0
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --root) root="${2:?--root needs a directory}"; shift 2 ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be absolute: $prefix" >&2; exit 2 ;; esac
# The prefix goes into the unit's ExecStart= and Documentation=, where %, $, quotes and
# backslashes have meanings of their own: letters, digits, spaces and ._+-/ only.
case "$prefix" in *[!A-Za-z0-9\ ._+/-]*)
    echo "install.sh: --prefix may hold only letters, digits, spaces and ._+-/: $prefix" >&2; exit 2 ;;
esac
if [ -n "$root" ]; then
    mkdir -p "$root"
    root="$(cd "$root" && pwd)"
    [ "$root" = / ] && root=""
fi
if [ $purge = 1 ] && [ $uninstall = 0 ]; then
    echo "install.sh: --purge only goes with --uninstall" >&2
    exit 2
fi

staged=0
[ -n "$root" ] && staged=1
if [ $staged = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (or use --root DIR for a staged install)" >&2
    exit 1
fi

bin_path="$prefix/bin/goloadbalancer"
unit_dir="/etc/systemd/system"
unit="$unit_dir/goloadbalancer.service"
socket_unit="$unit_dir/goloadbalancer.socket"
dropin_dir="$unit_dir/goloadbalancer.service.d"
docker_dropin="$dropin_dir/10-docker.conf"
conf_dir="/etc/goloadbalancer"
conf="$conf_dir/config.yaml"
conf_default="$conf_dir/config.yaml.default"
state_dir="/var/lib/goloadbalancer"
doc_dir="$prefix/share/doc/goloadbalancer"
# systemd-sysusers reads /usr/local/lib/sysusers.d and /usr/lib/sysusers.d; any other prefix
# is not on its path, so the file goes to /etc/sysusers.d instead.
case "$prefix" in
    /usr/local|/usr) sysusers="$prefix/lib/sysusers.d/goloadbalancer.conf" ;;
    *) sysusers="/etc/sysusers.d/goloadbalancer.conf" ;;
esac

say() { printf 'install.sh: %s\n' "$*"; }
systemd_running() { [ $staged = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# Copies $1 to $root$2 with mode $3 through a temp file and a rename, so a running binary is
# never half-written; says whether anything changed.
put() {
    local src="$1" dst="$root$2" mode="$3"
    mkdir -p "$(dirname "$dst")"
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        chmod "$mode" "$dst"
        say "unchanged $2"
        return
    fi
    install -m "$mode" "$src" "$dst.tmp.$$"
    mv -f "$dst.tmp.$$" "$dst"
    say "installed $2"
}

remove() {
    local dst="$root$1"
    if [ -e "$dst" ] || [ -L "$dst" ]; then
        rm -f -- "$dst"
        say "removed $1"
    fi
}

# Removes the directory $root$1 and everything in it (--purge). Only ever one of ours: the
# argument is one of the fixed paths above, never empty, whatever $root is (empty on a real
# install).
purge_dir() {
    local dst="$root$1"
    case "$1" in
        /*/goloadbalancer) ;;
        *) echo "install.sh: refusing to purge $1" >&2; exit 1 ;;
    esac
    if [ -e "$dst" ] || [ -L "$dst" ]; then
        rm -rf -- "$dst"
        say "purged $1"
    fi
}

has_docker_group() {
    if [ $staged = 1 ]; then
        grep -q '^docker:' "$root/etc/group" 2>/dev/null
    else
        getent group docker >/dev/null 2>&1
    fi
}

do_uninstall() {
    if systemd_running; then
        systemctl disable --now goloadbalancer.service goloadbalancer.socket 2>/dev/null || true
    fi
    remove "$unit"
    remove "$socket_unit"
    remove "$docker_dropin"
    rmdir "$root$dropin_dir" 2>/dev/null || true
    remove "$bin_path"
    remove "$sysusers"
    rmdir "$root$(dirname "$sysusers")" 2>/dev/null || true
    remove "$doc_dir/README.md"
    rmdir "$root$doc_dir" 2>/dev/null || true
    if [ $purge = 1 ]; then
        purge_dir "$conf_dir"
        purge_dir "$state_dir"
        # Where systemd keeps a StateDirectory= of a unit that ran with DynamicUser=.
        purge_dir "/var/lib/private/goloadbalancer"
    else
        # An unedited config goes with the rest; an edited one is the operator's.
        if [ -f "$root$conf" ] && [ -f "$root$conf_default" ] && cmp -s "$root$conf" "$root$conf_default"; then
            remove "$conf"
        elif [ -f "$root$conf" ]; then
            say "kept $conf (edited; --purge removes it)"
        fi
        remove "$conf_default"
        rmdir "$root$conf_dir" 2>/dev/null || true
        [ -d "$root$state_dir" ] && say "kept $state_dir (the stats database; --purge removes it)"
    fi
    if systemd_running; then
        systemctl daemon-reload
        systemctl reset-failed goloadbalancer.service goloadbalancer.socket 2>/dev/null || true
    fi
    say "uninstalled (the user goloadbalancer is kept: files may still belong to it)"
}

# Writes the socket unit: the shipped one with its ListenStream= lines replaced by the
# addresses the installed config listens on (the binary computes them, so pool, shared-port
# and the admin address count exactly as the supervisor counts them). With a config that does
# not load, the shipped lines stay (the warning above says why). Sets socket_changed.
socket_changed=0
write_socket_unit() {
    local addrs=""
    if addrs="$("$binary" check-config --listen-addresses "$root$conf" 2>/dev/null)" && [ -n "$addrs" ]; then
        # Plain bash (no awk: /usr/bin/awk is an /etc/alternatives link on Debian).
        local line done=0 list
        mapfile -t list <<<"$addrs"
        while IFS= read -r line; do
            case "$line" in
                ListenStream=*)
                    [ $done = 1 ] || printf 'ListenStream=%s\n' "${list[@]}"
                    done=1 ;;
                *) printf '%s\n' "$line" ;;
            esac
        done <"$repo/systemd/goloadbalancer.socket" >"$tmp/socket"
    else
        say "WARNING: the socket unit keeps the shipped addresses ($conf does not load)"
        cp "$repo/systemd/goloadbalancer.socket" "$tmp/socket"
    fi
    sed -i -e "s#file:///usr/local/share/doc/goloadbalancer#file://${doc_dir// /%%20}#g" "$tmp/socket"
    if ! [ -f "$root$socket_unit" ] || ! cmp -s "$tmp/socket" "$root$socket_unit"; then
        socket_changed=1
    fi
    put "$tmp/socket" "$socket_unit" 0644
    say "sockets: $(grep '^ListenStream=' "$tmp/socket" | cut -d= -f2 | paste -sd' ')"
}

find_binary() {
    if [ -n "$binary" ]; then
        if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then echo "install.sh: --binary $binary: not an executable file" >&2; exit 1; fi
        return
    fi
    command -v cargo >/dev/null || { echo "install.sh: cargo not found: install Rust (rustup) or pass --binary PATH" >&2; exit 1; }
    say "building the release binary (cargo build --release)"
    (cd "$repo" && cargo build --release --locked)
    binary="$repo/target/x86_64-unknown-linux-gnu/release/goloadbalancer"
    [ -x "$binary" ] || { echo "install.sh: cargo built no $binary" >&2; exit 1; }
}

do_install() {
    for f in systemd/goloadbalancer.service systemd/goloadbalancer.socket config.yaml README.md; do
        [ -f "$repo/$f" ] || { echo "install.sh: $repo/$f is missing (run from a checkout)" >&2; exit 1; }
    done
    find_binary
    # A binary that cannot run here (wrong architecture, truncated) fails now, not at start.
    "$binary" help >/dev/null || { echo "install.sh: $binary does not run" >&2; exit 1; }

    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT

    put "$binary" "$bin_path" 0755
    # A path with a space: quoted in ExecStart= (systemd splits the command line on blanks),
    # percent-encoded in the Documentation= URI (a list separated by blanks; "%%" because
    # systemd expands % specifiers there).
    local exec_path="$bin_path"
    case "$bin_path" in *" "*) exec_path="\"$bin_path\"" ;; esac
    sed -e "s#^ExecStart=/usr/local/bin/goloadbalancer #ExecStart=$exec_path #" \
        -e "s#file:///usr/local/share/doc/goloadbalancer#file://${doc_dir// /%%20}#g" \
        "$repo/systemd/goloadbalancer.service" >"$tmp/unit"
    grep -qF "ExecStart=$exec_path " "$tmp/unit" ||
        { echo "install.sh: the unit's ExecStart= does not start /usr/local/bin/goloadbalancer" >&2; exit 1; }
    put "$tmp/unit" "$unit" 0644
    # A missing group makes the unit fail (216/GROUP): the drop-in exists only with the group.
    if has_docker_group; then
        printf '# Written by install.sh because the docker group exists: lets the supervisor use the\n# docker CLI (runtime docker or auto). Removed by install.sh when the group is gone.\n[Service]\nSupplementaryGroups=docker\n' >"$tmp/docker"
        put "$tmp/docker" "$docker_dropin" 0644
    else
        remove "$docker_dropin"
        rmdir "$root$dropin_dir" 2>/dev/null || true
        say "no docker group: workers will run as local processes (runtime auto)"
    fi
    printf '# The user goloadbalancer runs as (installed by scripts/install.sh).\nu goloadbalancer - "goloadbalancer load balancer" %s\n' "$state_dir" >"$tmp/sysusers"
    put "$tmp/sysusers" "$sysusers" 0644
    put "$repo/README.md" "$doc_dir/README.md" 0644

    put "$repo/config.yaml" "$conf_default" 0644
    if [ -e "$root$conf" ]; then
        if cmp -s "$root$conf" "$repo/config.yaml"; then
            say "unchanged $conf"
        else
            say "kept your edited $conf (the shipped default is $conf_default)"
        fi
    else
        put "$repo/config.yaml" "$conf" 0644
    fi
    if ! "$binary" check-config "$root$conf" >"$tmp/check" 2>&1; then
        say "WARNING: $conf does not pass check-config with the new binary:"
        sed 's/^/    /' "$tmp/check" >&2
    fi
    write_socket_unit


    if [ $staged = 1 ]; then
        say "staged under $root: no user created, systemctl not called"
        return
    fi
    if ! getent passwd goloadbalancer >/dev/null; then
        if command -v systemd-sysusers >/dev/null; then
            systemd-sysusers "$sysusers"
        else
            useradd --system --user-group --home-dir "$state_dir" --no-create-home \
                --shell /usr/sbin/nologin goloadbalancer
        fi
        say "created the system user goloadbalancer"
    fi
    if systemd_running; then
        systemctl daemon-reload
        say "systemctl daemon-reload done"
        if [ "$socket_changed" = 1 ] && systemctl is-active --quiet goloadbalancer.socket; then
            say "the listen addresses changed: systemctl stop goloadbalancer.service goloadbalancer.socket && systemctl start goloadbalancer.socket goloadbalancer.service"
        elif systemctl is-active --quiet goloadbalancer.service; then
            say "goloadbalancer is running the old binary: systemctl restart goloadbalancer"
        else
            say "start it with: systemctl enable --now goloadbalancer"
        fi
    else
        say "systemd is not running here: the unit is in place for the next boot"
    fi
}

if [ $uninstall = 1 ]; then
    do_uninstall
else
    do_install
fi
