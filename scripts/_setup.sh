# Sourced by scripts/run and scripts/test: make .venv with the project installed.
# Installs what is missing, system packages included (apt, as root or with sudo).

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to install system packages: $*" >&2; return 1; fi
}

apt_updated=""
apt_install() {
    command -v apt-get >/dev/null || { echo "please install: $*" >&2; return 1; }
    if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# apt_install for a package the tests run as a program of their own (nginx): its
# service is neither started by the install nor enabled at boot, so it holds no port.
# Debian's invoke-rc.d and deb-systemd-invoke ask /usr/sbin/policy-rc.d first; one
# answering 101 ("forbidden") is put in place for the install when there is none.
apt_install_no_service() {
    # $1: the service's name; the rest: packages
    local service=$1 policy=/usr/sbin/policy-rc.d placed="" status=0
    shift
    if [ ! -e "$policy" ]; then
        # taken away again whatever happens (an interrupt exits, and so runs EXIT)
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy" && placed=1
    fi
    apt_install "$@" || status=$?
    if [ -n "$placed" ]; then
        as_root rm -f "$policy"
        trap - EXIT INT TERM
    fi
    if [ -d /run/systemd/system ]; then
        # stopped if a policy of the machine's own let it start, and off at boot
        as_root systemctl disable --now -q "$service" 2>/dev/null || true
    else
        command -v systemctl >/dev/null && { as_root systemctl disable -q "$service" 2>/dev/null || true; }
        command -v update-rc.d >/dev/null && { as_root update-rc.d "$service" disable >/dev/null 2>&1 || true; }
        if [ -x "/etc/init.d/$service" ] && as_root "/etc/init.d/$service" status >/dev/null 2>&1; then
            as_root "/etc/init.d/$service" stop >/dev/null 2>&1 || true
        fi
    fi
    return "$status"
}

pick_python() {
    for py in python3.13 python3.12 python3.11 python3; do
        if command -v "$py" >/dev/null &&
            "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    return 1
}

ensure_venv() {
    # $1: pip extras, e.g. "" or "[test]"
    local extras="${1:-}" py stamp
    py=$(pick_python) || { apt_install python3 python3-venv && py=$(pick_python); } || {
        echo "chatroom needs Python 3.11 or newer" >&2; exit 1; }
    if [ ! -x .venv/bin/python ]; then
        "$py" -m venv .venv 2>/dev/null || { apt_install python3-venv && rm -rf .venv && "$py" -m venv .venv; }
    fi
    # Reinstall only when pyproject.toml changed since the last install.
    stamp=".venv/.installed${extras}"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}" 2>&1 \
            | grep -v -i "location.*is ignored" || true
        .venv/bin/python -c "import chatroom" && touch "$stamp"
    fi
}
