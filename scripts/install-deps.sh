#!/usr/bin/env bash
# Installs what brindle needs to build and test on Debian 12, as root. Safe to run again:
# it only installs what is missing.
set -euo pipefail

packages=(
    build-essential pkg-config ca-certificates
    protobuf-compiler            # etcd-client compiles etcd's protobuf API
    etcd-server etcd-client      # the distributed datastore the tests start on loopback
    sqlite3                      # to inspect the embedded datastore by hand
    iproute2 procps              # namespaces, links and routes; process tools
    bird2 gobgpd                 # reference BGP speakers for interop tests and benchmarks
    iptables ipset iputils-ping  # the dataplane's firewall and pool sets; reachability checks in tests
    containernetworking-plugins  # reference CNI plugins (ptp, host-local, portmap, bandwidth)
    python3 python3-pip          # kubernetes-validate checks the manifest against Kubernetes' schema
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "install-deps: missing Debian packages: ${missing[*]}; run as root to install them" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The manifest's schema check: kubernetes-validate from PyPI (Debian does not package it).
if ! command -v kubernetes-validate >/dev/null; then
    echo "install-deps: installing kubernetes-validate" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore kubernetes-validate 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kubernetes-validate
fi

# The Rust toolchain (1.89 or newer) comes from rustup; Debian 12's cargo is too old.
if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found: install Rust 1.89 or newer with rustup (https://rustup.rs)" >&2
    exit 1
fi
