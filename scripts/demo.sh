#!/usr/bin/env bash
# brindle's furthest-built piece doing real work: the CNI plugins. Builds a node as a network
# namespace with an uplink, a private SQLite datastore and an IP pool, then wires 200 pods
# through brindle + brindle-ipam exactly as a container runtime calls them, beside the
# reference ptp + host-local plugins, one caller and then 8 at once, and prints ADD and DEL
# latencies with ratios. Everything it makes is removed at the end. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --locked -p brindle-cni -p brindle-bench
exec target/release/brindle-bench cni "$@"
