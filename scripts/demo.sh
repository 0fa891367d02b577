#!/usr/bin/env bash
# brindle's furthest-built piece doing real work: block IPAM under load. Starts a private etcd
# on loopback and a private SQLite file, then has 1 and 8 OS processes allocate and release pod
# addresses concurrently, beside raw compare-and-swap writes to the same store, and prints the
# rates and ratios. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --locked -p brindle-bench
exec target/release/brindle-bench ipam "$@"
