#!/usr/bin/env bash
# brindle's lab: a three-node cluster in network namespaces on this machine, each node running
# brindle-node with BGP, pods wired by the brindle CNI plugin, then a summary with the
# reachability matrix. The lab stays up to explore; the summary shows the commands for that
# and for `down`. Options are brindle-lab's (`--nodes 5 --mode vxlan-crosssubnet --peering rr
# --datastore etcd`, see --help). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --locked -p brindle-e2e -p brindle-agent -p brindle-cni -p brindle-controllers -p brindlectl
exec target/release/brindle-lab up "$@"
