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
