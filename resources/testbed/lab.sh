# Shared helpers for the nested lab. Sourced by build-lab and the scenario runner's shell steps.
# shellcheck shell=bash

LAB_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_DIR=${MICROVMM_LAB_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/microvmm-lab}
LAB_CHROOT=$LAB_DIR/chroot
LAB_MIRROR=${MICROVMM_LAB_MIRROR:-}

log() { printf '[lab %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[lab] error: %s\n' "$*" >&2; exit 1; }

# The Debian mirror the host's apt already uses, so the lab needs no network the host lacks.
lab_mirror() {
    if [ -n "$LAB_MIRROR" ]; then echo "$LAB_MIRROR"; return; fi
    local uri
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '{print $2}' | grep -E '/debian/?$' | head -n1)
    [ -n "$uri" ] || uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '{print $2}' | grep -E '/debian/?$' | head -n1)
    echo "${uri:-http://deb.debian.org/debian}"
}

# Content key of files and strings: changes whenever any input changes.
lab_key() {
    local item
    for item in "$@"; do
        if [ -f "$item" ]; then
            printf 'file %s\n' "$(basename "$item")"
            cat "$item"
        else
            printf 'str %s\n' "$item"
        fi
    done | sha256sum | cut -c1-16
}

# Run a command inside the sid chroot, in a private mount namespace: the bind mounts vanish with the
# namespace, so nothing of the host's /dev or /sys is ever reachable through the chroot directory.
# Extra host directories can be bound with LAB_BINDS="hostdir:chrootdir ...".
in_chroot() {
    LAB_BINDS="${LAB_BINDS:-}" unshare --mount --propagation private -- bash -euc '
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount --rbind /dev "$root/dev"
        for b in $LAB_BINDS; do
            mkdir -p "$root/${b#*:}"
            mount --bind "${b%%:*}" "$root/${b#*:}"
        done
        exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
            LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
    ' in_chroot "$LAB_CHROOT" "$@"
}
