#!/usr/bin/env bash
# Put Prometheus (`prometheus` and `promtool`, >= 2.40) on PATH when it is not there, from the
# platform's package manager, without letting a packaged service start: we run our own
# instance on 127.0.0.1 (deploy/ops/prometheus.py).
#
#   apt-get  Debian, Ubuntu    prometheus                (the path CI and the tests use)
#   dnf      Fedora            golang-github-prometheus
#   apk      Alpine            prometheus
#   pacman   Arch              prometheus
#   brew     macOS             prometheus
#
# No PyPI package ships the Prometheus server, so pip is no fallback. Exit status:
#   0  prometheus and promtool are on PATH
#   1  an install was tried and failed (a real error: network, a broken package, ...)
#   3  Prometheus cannot be installed here by this script (no supported package manager,
#      no prometheus package in its sources, or not root and no sudo). Install it yourself
#      (a release tarball from prometheus.io; prometheus and promtool on PATH), or do
#      without it: `make cluster-up CLUSTER_ARGS=--no-prometheus`. Tests that need it skip.
# Only the apt-get path and exit 3 are exercised by the tests; the other managers are not.
set -euo pipefail

UNAVAILABLE=3
have() { command -v "$1" >/dev/null 2>&1; }
unavailable() {
    echo "install_prometheus: $*; install Prometheus >= 2.40 yourself (prometheus and" \
         "promtool on PATH, e.g. from a release tarball) or run without it" \
         "(make cluster-up CLUSTER_ARGS=--no-prometheus)" >&2
    exit "$UNAVAILABLE"
}

if have prometheus && have promtool; then
    exit 0
fi

SUDO=""
need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        have sudo || unavailable "installing with $1 needs root, and sudo is not available"
        SUDO="sudo"
    fi
}

install_apt() {
    need_root apt-get
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
        if ! apt-cache show prometheus >/dev/null 2>&1; then
            unavailable "apt has no 'prometheus' package in its sources"
        fi
        $SUDO apt-get install -y --no-install-recommends prometheus >&2
    fi
    # On a machine booted with systemd, make sure the packaged service stays off.
    if [ -d /run/systemd/system ] && have systemctl; then
        $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
}

install_dnf() {
    need_root dnf
    dnf info golang-github-prometheus >/dev/null 2>&1 \
        || unavailable "dnf has no 'golang-github-prometheus' package (Fedora has it; RHEL: EPEL)"
    echo "install_prometheus: dnf install golang-github-prometheus" >&2
    $SUDO dnf install -y golang-github-prometheus >&2
}

install_apk() {
    need_root apk
    echo "install_prometheus: apk add prometheus" >&2
    if ! $SUDO apk add --no-cache prometheus >&2; then
        apk search -x prometheus 2>/dev/null | grep -q . \
            || unavailable "apk has no 'prometheus' package (Alpine's community repository has it)"
        exit 1
    fi
}

install_pacman() {
    need_root pacman
    echo "install_prometheus: pacman -S prometheus" >&2
    $SUDO pacman -S --noconfirm --needed prometheus >&2
}

install_brew() {
    echo "install_prometheus: brew install prometheus" >&2
    brew install prometheus >&2
}

manager=""
if have apt-get; then manager=apt
elif have dnf; then manager=dnf
elif have apk; then manager=apk
elif have pacman; then manager=pacman
elif have brew; then manager=brew
fi
if [ -z "$manager" ]; then
    unavailable "prometheus is not on PATH and no supported package manager" \
                "(apt-get, dnf, apk, pacman, brew) is"
fi
# In a subshell, so that any failure of the install maps to exit 1 (3 stays "unavailable").
set +e
(set -e; "install_$manager")
rc=$?
set -e
if [ "$rc" -eq "$UNAVAILABLE" ]; then
    exit "$UNAVAILABLE"
elif [ "$rc" -ne 0 ]; then
    echo "install_prometheus: installing with $manager failed (exit $rc)" >&2
    exit 1
fi

if ! { have prometheus && have promtool; }; then
    echo "install_prometheus: the package installed, but prometheus and promtool are not" \
         "both on PATH (PATH=$PATH)" >&2
    exit 1
fi
