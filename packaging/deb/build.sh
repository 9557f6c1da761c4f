#!/usr/bin/env bash
# Build the gateway's Debian package, vpp-edge_VERSION_amd64.deb, into OUT (default build/).
#
# A staged tree and plain `dpkg-deb --build --root-owner-group`: no debhelper, so it builds
# on any Debian 12 with dpkg-dev. The package ships the wheels of `vpp[edge]` (built here
# with pip) in /opt/vpp/wheels; its postinst builds /opt/vpp/venv from them (see
# packaging/README.md for why). The version is the project's one: the built vpp wheel's.
#
# Wheels are cached in build/deb-cache/wheels: a rebuild with nothing new is offline and
# quick; the first build (or a new dependency) downloads from the package index.
#
# Environment: PYTHON (default .venv/bin/python, else python3): a CPython 3.11 with pip,
# the same minor version as the target's python3 (Debian 12: 3.11), as the wheels are
# binary. SOURCE_DATE_EPOCH: the changelog date and file times (default: the last commit).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/packaging/deb"
OUT="$(mkdir -p "${1:-$ROOT/build}" && cd "${1:-$ROOT/build}" && pwd)"
CACHE="$ROOT/build/deb-cache/wheels"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

say() { printf 'deb: %s\n' "$*"; }
die() { printf 'deb: ERROR: %s\n' "$*" >&2; exit 1; }

command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg-dev)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON is not CPython 3.11, the python3 of Debian 12 that the wheels must fit"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)"
fi
export SOURCE_DATE_EPOCH

STAGE="$(mktemp -d "$OUT/.stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
PKG="$STAGE/pkg"
WHEELS="$PKG/opt/vpp/wheels"
mkdir -p "$WHEELS" "$CACHE"

# ---- wheels: vpp and everything vpp[edge] needs, offline from the cache when it can -------
wheels() {  # wheels PIP-ARGS...: vpp[edge] and its dependencies into $WHEELS
    (cd "$ROOT" && "$PYTHON" -m pip wheel --quiet --find-links "$CACHE" -w "$WHEELS" \
        "$@" '.[edge]')
}
if ! wheels --no-index 2>/dev/null; then
    say "filling the wheel cache (needs the package index)"
    rm -f "$WHEELS"/*.whl
    # hatchling too: vpp's build backend, so later builds work offline
    (cd "$ROOT" && "$PYTHON" -m pip wheel --quiet -w "$CACHE" '.[edge]' 'hatchling>=1.25') \
        || die "pip wheel failed"
    rm -f "$CACHE"/vpp-*.whl  # the project's own wheel is always built fresh
    wheels --no-index || die "pip wheel from the cache failed"
fi
vpp_wheel="$(ls "$WHEELS"/vpp-*.whl)"
[ "$(echo "$vpp_wheel" | wc -l)" -eq 1 ] || die "expected one vpp wheel, found: $vpp_wheel"
VERSION="$(basename "$vpp_wheel" | cut -d- -f2)"
say "vpp $VERSION, $(ls "$WHEELS" | wc -l) wheels"

# ---- the tree ---------------------------------------------------------------------------
install -D -m 0644 "$ROOT/edge/config.example.toml" "$PKG/etc/vpp/edge.toml"
install -D -m 0644 "$ROOT/packaging/systemd/vpp-edge.service" \
    "$PKG/lib/systemd/system/vpp-edge.service"
# the unit's boot guard (ExecStartPre): standard library only, outside every release
install -D -m 0644 "$ROOT/protocols/releases.py" "$PKG/usr/lib/vpp-edge/releases.py"
DOC="$PKG/usr/share/doc/vpp-edge"
install -D -m 0644 "$HERE/copyright" "$DOC/copyright"
install -D -m 0644 "$ROOT/packaging/README.md" "$DOC/README.md"
install -D -m 0644 "$ROOT/edge/config.example.toml" "$DOC/examples/edge.toml"
DATE="$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
sed -e "s/@VERSION@/$VERSION/g" -e "s/@DATE@/$DATE/" "$HERE/changelog.in" \
    | gzip -9n >"$DOC/changelog.gz"
install -D -m 0644 "$HERE/lintian-overrides" "$PKG/usr/share/lintian/overrides/vpp-edge"
chmod 0644 "$WHEELS"/*.whl

mkdir -p "$PKG/DEBIAN"
for script in postinst prerm postrm; do
    sed "s/@VERSION@/$VERSION/g" "$HERE/$script" >"$PKG/DEBIAN/$script"
    chmod 0755 "$PKG/DEBIAN/$script"
done
install -m 0644 "$HERE/conffiles" "$PKG/DEBIAN/conffiles"
SIZE="$(du -k -s --apparent-size --exclude=DEBIAN "$PKG" | cut -f1)"
sed -e "s/@VERSION@/$VERSION/g" -e "s/@INSTALLED_SIZE@/$SIZE/" "$HERE/control.in" \
    >"$PKG/DEBIAN/control"
(cd "$PKG" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum) >"$PKG/DEBIAN/md5sums"
chmod 0644 "$PKG/DEBIAN/md5sums" "$PKG/DEBIAN/control"
find "$PKG" -type d -exec chmod 0755 {} +
find "$PKG" -exec touch --no-dereference -d "@$SOURCE_DATE_EPOCH" {} +

DEB="$OUT/vpp-edge_${VERSION}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$DEB" >/dev/null
say "built $DEB ($(du -h "$DEB" | cut -f1))"
