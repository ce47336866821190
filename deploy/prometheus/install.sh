#!/usr/bin/env bash
# Makes Prometheus's `prometheus` and `promtool` available to the tests, on a fresh Debian
# machine too: does nothing when both are on PATH or already unpacked; otherwise fetches
# Debian's `prometheus` package (2.42 on Debian 12) and unpacks its two binaries into
# ~/.cache/streamer/prometheus/bin (or $STREAMER_PROMETHEUS_DIR/bin).
#
# Unpacked, not installed: `apt-get install prometheus` would also create a system user and
# try to start a systemd service, and neither is wanted (nor possible without systemd) here.
# The binaries need only libc. Prints the directory that holds them.
set -euo pipefail

dest="${STREAMER_PROMETHEUS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/streamer/prometheus}"

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    dirname "$(command -v promtool)"
    exit 0
fi
if [ -x "$dest/bin/prometheus" ] && [ -x "$dest/bin/promtool" ]; then
    echo "$dest/bin"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "error: prometheus and promtool are not on PATH, and without apt-get and dpkg-deb" \
         "(Debian) they cannot be fetched: install Prometheus 2.x yourself" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# APT::Sandbox::User=root: as root, apt would download as _apt, which cannot write here.
download() { apt-get -q -o APT::Sandbox::User=root download prometheus >/dev/null; }
if ! download 2>/dev/null; then
    # A fresh machine has no package lists yet (updating them needs root).
    DEBIAN_FRONTEND=noninteractive apt-get -q update >/dev/null
    download
fi
dpkg-deb -x prometheus_*.deb root
mkdir -p "$dest"
rm -rf "$dest/bin.partial"
mkdir "$dest/bin.partial"
install -m 0755 root/usr/bin/prometheus root/usr/bin/promtool "$dest/bin.partial/"
"$dest/bin.partial/promtool" --version >/dev/null
rm -rf "$dest/bin"
mv "$dest/bin.partial" "$dest/bin"
echo "$dest/bin"
