#!/usr/bin/env bash
# Set up a development/CI machine for vpp: Debian packages (mosquitto, mosquitto-clients,
# redis-server, chromium and chromium-driver, prometheus for promtool, the packaging tools,
# and Python venv support if needed) and the project venv in .venv with
# `pip install -e '.[dev]'` (every tier, `.[demo]`, plus the test tools; see pyproject.toml).
#
# Idempotent and quick when already done: packages are installed only if missing, and
# the pip install is skipped while pyproject.toml (and the python) are unchanged - a
# stamp file in .venv holds their hash.
#
# Runs on a fresh Debian 12 as root (CI: CI=true, no stdin) or as a user with sudo.
# Does not touch /etc or the system services' configs: vpp's tests and demo start their
# own servers on free loopback ports (vpp/services.py), so it does not matter whether
# Debian's postinst started the system services on their default ports.
#
# Environment: PYTHON=/path/to/python3.x to force an interpreter; VPP_FORCE_INSTALL=1 to
# redo the pip install.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
STAMP="$VENV/.vpp-setup-stamp"
MIN_PY="3.11"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

# ---- privileges ------------------------------------------------------------------------
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        SUDO=(__no_root__)
    fi
fi

APT_UPDATED=0
apt_install() {
    # apt_install PKG... : install the given Debian packages, non-interactively.
    [ "$#" -gt 0 ] || return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        die "apt-get not found; install these packages by hand: $*"
    fi
    if [ "${SUDO[0]:-}" = "__no_root__" ]; then
        die "need root (or sudo) to install: $*  - run as root: apt-get install -y $*"
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null \
            || die "apt-get update failed"
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold "$@" </dev/null >/dev/null \
        || die "apt-get install $* failed"
}

have_binary() {
    # have_binary NAME : on PATH or in an sbin/bin dir (sbin is often not on PATH).
    command -v "$1" >/dev/null 2>&1 && return 0
    local d
    for d in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin /sbin; do
        [ -x "$d/$1" ] && return 0
    done
    return 1
}

# ---- servers -------------------------------------------------------------------------
# mosquitto-clients: `make bench` compares the ingest worker with mosquitto_sub
missing=()
have_binary mosquitto || missing+=(mosquitto)
have_binary mosquitto_sub || missing+=(mosquitto-clients)
have_binary redis-server || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
    for b in mosquitto mosquitto_sub redis-server; do
        have_binary "$b" || die "$b still not found after apt-get install"
    done
fi
say "servers: mosquitto, mosquitto_sub and redis-server present"

# ---- browser -------------------------------------------------------------------------
# The status page's tests drive Debian's headless Chromium through chromium-driver (Selenium,
# tests/edge/status_page/test_browser.py); the fixture fails, naming this script, without them.
missing=()
have_binary chromium || missing+=(chromium)
have_binary chromedriver || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
    for b in chromium chromedriver; do
        have_binary "$b" || die "$b still not found after apt-get install"
    done
fi
say "browser: chromium and chromedriver present"

# ---- alerting rules ----------------------------------------------------------------
# promtool (Debian's prometheus package; no server is used) checks and unit-tests
# packaging/prometheus/ (tests/packaging/test_prometheus_rules.py fails without it).
if ! have_binary promtool; then
    apt_install prometheus
    have_binary promtool || die "promtool still not found after apt-get install prometheus"
fi
say "alerting: promtool present"

# ---- packaging -----------------------------------------------------------------------
# `make deb` and tests/packaging: dpkg-dev and lintian build and check the gateway's
# package; systemd gives systemd-analyze (verify the units; nothing is booted); the package
# installs into Debian's own python3 with its venv module, adduser and init-system-helpers.
missing=()
have_binary dpkg-architecture || missing+=(dpkg-dev)
have_binary lintian || missing+=(lintian)
have_binary systemd-analyze || missing+=(systemd)
have_binary adduser || missing+=(adduser)
have_binary deb-systemd-helper || missing+=(init-system-helpers)
/usr/bin/python3 -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3 python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi
say "packaging: dpkg-dev, lintian, systemd-analyze and Debian's python3 venv present"

# ---- python ----------------------------------------------------------------------------
py_ok() {
    # py_ok CMD : CMD is python >= MIN_PY
    "$1" -c "import sys; sys.exit(0 if sys.version_info >= (${MIN_PY/./, }) else 1)" \
        >/dev/null 2>&1
}
py_can_venv() {
    # venv needs ensurepip (Debian splits it into python3-venv).
    "$1" -c "import venv, ensurepip" >/dev/null 2>&1
}
pick_python() {
    local c
    if [ -n "${PYTHON:-}" ]; then
        py_ok "$PYTHON" || die "PYTHON=$PYTHON is not a python >= $MIN_PY"
        echo "$PYTHON"
        return 0
    fi
    for c in python3 python3.11 python3.12 python3.13 python3.14; do
        if command -v "$c" >/dev/null 2>&1 && py_ok "$c"; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

venv_ok() {
    [ -x "$VENV/bin/python" ] && py_ok "$VENV/bin/python" \
        && "$VENV/bin/python" -c "import pip" >/dev/null 2>&1
}

if ! venv_ok; then
    PY="$(pick_python || true)"
    if [ -z "$PY" ]; then
        say "no python >= $MIN_PY found; installing Debian's python3"
        apt_install python3 python3-venv python3-pip
        PY="$(pick_python || true)"
        [ -n "$PY" ] || die "no python >= $MIN_PY even after installing python3"
    fi
    if ! py_can_venv "$PY"; then
        say "$PY cannot create a venv (no ensurepip); installing python3-venv"
        pyver="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        pkgs=(python3-venv python3-pip)
        if [ "$PY" != "/usr/bin/python3" ]; then
            pkgs+=("python${pyver}-venv")
        fi
        apt_install "${pkgs[@]}"
        py_can_venv "$PY" || die "$PY still cannot create a venv"
    fi
    say "creating .venv with $PY ($("$PY" --version 2>&1))"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi

# ---- project install -----------------------------------------------------------------
want="$(cat pyproject.toml <("$VENV/bin/python" -VV) | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "${VPP_FORCE_INSTALL:-0}" != "1" ] && [ "$want" = "$have" ] \
    && [ -x "$VENV/bin/pytest" ] && [ -x "$VENV/bin/vpp" ]; then
    say "venv up to date (pyproject.toml unchanged)"
else
    say "pip install -e '.[dev]' (takes a minute on a fresh machine)"
    "$VENV/bin/python" -m pip install -q -e '.[dev]' </dev/null \
        || die "pip install -e '.[dev]' failed"
    echo "$want" >"$STAMP"
    say "venv ready: $("$VENV/bin/python" --version 2>&1)"
fi
say "done"
