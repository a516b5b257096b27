#!/usr/bin/env bash
# Install Debian's `prometheus` package (prometheus + promtool) if it is not on PATH, without
# letting its system service start: we run our own instance on 127.0.0.1 (deploy/prometheus.py).
# Exits non-zero with a message when it cannot install.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_prometheus: prometheus is not on PATH and apt-get is not available;" \
         "install Prometheus >= 2.40 yourself" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# policy-rc.d exiting 101 forbids maintainer scripts to start services (invoke-rc.d and
# deb-systemd-invoke honour it). Only add one for the duration of the install if none exists.
created_policy=""
cleanup() {
    if [ -n "$created_policy" ]; then
        $SUDO rm -f /usr/sbin/policy-rc.d
    fi
}
trap cleanup EXIT
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install_prometheus: apt-get install prometheus" >&2
if ! $SUDO apt-get install -y --no-install-recommends prometheus >&2; then
    # A clean machine has no package lists yet.
    $SUDO apt-get update >&2
    $SUDO apt-get install -y --no-install-recommends prometheus >&2
fi

# On a machine booted with systemd, make sure the packaged service stays off.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
command -v prometheus >/dev/null && command -v promtool >/dev/null
