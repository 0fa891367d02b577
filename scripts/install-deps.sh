#!/usr/bin/env bash
# Installs what brindle needs to build, test and run its lab on Debian 12, as root: exactly the
# list in scripts/packages.txt (Debian packages, Python tools, cargo tools), and kube-apiserver
# with kubectl built from the Go module proxy (scripts/kube-build.sh), and Debian's cloud kernel
# unpacked for the VM tests (scripts/vm-kernel.sh). Safe to run again:
# it only installs what is missing, so a second run takes a second.
set -euo pipefail
cd "$(dirname "$0")"

# Entries of one source from packages.txt: the second column of lines whose first is $1.
entries() { awk -v source="$1" '$1 == source { print $2 }' packages.txt; }

mapfile -t debian < <(entries debian)
missing=()
for p in "${debian[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "install-deps: missing Debian packages: ${missing[*]}; run as root to install them" >&2
        exit 1
    fi
    echo "install-deps: installing Debian packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python tools that Debian does not package, at the versions the list pins.
for spec in $(entries pypi); do
    name=${spec%%==*}
    if [ "$(python3 -m pip show "$name" 2>/dev/null | awk '/^Version:/ { print $2 }')" != "${spec#*==}" ]; then
        echo "install-deps: installing $spec from PyPI" >&2
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$spec" 2>/dev/null \
            || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$spec"
    fi
done

# The Rust toolchain (1.89 or newer) comes from rustup; Debian 12's cargo is too old.
if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found: install Rust 1.89 or newer with rustup (https://rustup.rs)" >&2
    exit 1
fi

# Cargo tools, built from crates.io once per machine (cargo-nextest takes a few minutes).
for tool in $(entries cargo); do
    if ! cargo "${tool#cargo-}" --version >/dev/null 2>&1; then
        echo "install-deps: building $tool from crates.io (once per machine, a few minutes)" >&2
        cargo install --locked --quiet "$tool"
    fi
done

# kube-apiserver and kubectl for the Kubernetes datastore's tests, the lab and the benchmarks:
# built from the Go module proxy once per machine (scripts/kube-build.sh).
./kube-build.sh >/dev/null

# Debian's cloud kernel, unpacked for the tests that boot it under qemu (scripts/vm-kernel.sh).
./vm-kernel.sh >/dev/null
