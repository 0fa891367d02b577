#!/usr/bin/env bash
# Receiving a full table: a BIRD 2 sender announces N IPv4 prefixes (default 1,000,000; a mix
# of lengths, 250 attribute sets) over iBGP to a receiver in another network namespace. The
# receivers are brindle-bgp, BIRD 2 and GoBGP 3, one after the other in the same run. For
# each: seconds from the first route to every prefix held, the receiver's CPU seconds for that,
# and its peak RSS; then the ratios to BIRD.
#
# Two more receivers put the table into the kernel, and are counted there: "node" is
# brindle-node (its embedded speaker, a BGPPeer for the sender with a BGPFilter that lets
# everything in, an SQLite datastore), "birdkernel" is BIRD 2 exporting to the kernel with its
# kernel protocol; their ratios are to birdkernel:
#
#   RECEIVERS="node birdkernel" bench/bgp-receive.sh 100000
#
#   bench/bgp-receive.sh [N]        (as root; builds brindle-bgp in release mode)
#
# RECEIVERS="brindle bird" picks receivers; PROFILE=FILE records brindle-bgp (or brindle-node) with perf into FILE;
# BASELINE=PATH adds receiver "baseline": another brindle-bgp build, to compare two versions in
# one run (e.g. RECEIVERS="baseline brindle bird baseline brindle").
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib/process.sh
. bench/lib/process.sh
# shellcheck source=bench/lib/sender.sh
. bench/lib/sender.sh
N=${1:-1000000}
SETS=250
scripts/install-deps.sh
cargo build --release --locked -p brindle-bgp -p brindle-agent -p brindlectl >&2
BRINDLE=$PWD/target/release/brindle-bgp
NODE=$PWD/target/release/brindle-node
CTL=$PWD/target/release/brindlectl

tag=bb$$
work=$(mktemp -d /tmp/brindle-bench-bgp.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$tag-s" 2>/dev/null || true
    ip netns del "$tag-r" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$tag-s"
ip netns add "$tag-r"
ip link add "$tag-a" netns "$tag-s" type veth peer name "$tag-b" netns "$tag-r"
ip -n "$tag-s" addr add 10.77.0.1/24 dev "$tag-a"
ip -n "$tag-r" addr add 10.77.0.2/24 dev "$tag-b"
for ns in s r; do ip -n "$tag-$ns" link set lo up; done
ip -n "$tag-s" link set "$tag-a" up
ip -n "$tag-r" link set "$tag-b" up

routes=$(sender_conf "$N" "$SETS" 10.77.0.1 10.77.0.2 "$work/sender.conf")

cat > "$work/brindle.toml" <<EOF
asn = 64512
router_id = "10.77.0.2"
listen = "10.77.0.2:179"
control_socket = "$work/brindle.sock"
graceful_restart = 0
[[peers]]
address = "10.77.0.1"
asn = 64512
passive = true
hold_time = 240
EOF
cat > "$work/bird-receiver.conf" <<EOF
router id 10.77.0.2;
protocol device {}
protocol bgp upstream { local 10.77.0.2 as 64512; neighbor 10.77.0.1 as 64512; direct; passive on; hold time 240;
  ipv4 { import all; export none; gateway direct; }; }
EOF
cat > "$work/bird-kernel.conf" <<EOF
router id 10.77.0.2;
protocol device {}
protocol kernel { ipv4 { export all; }; merge paths off; }
protocol bgp upstream { local 10.77.0.2 as 64512; neighbor 10.77.0.1 as 64512; direct; passive on; hold time 240;
  ipv4 { import all; export none; gateway direct; }; }
EOF
cat > "$work/node-resources.yaml" <<EOF
apiVersion: brindle.io/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 64512, nodeToNodeMeshEnabled: false}
---
apiVersion: brindle.io/v1
kind: BGPFilter
metadata: {name: everything}
spec:
  importV4: [{action: Accept}]
---
apiVersion: brindle.io/v1
kind: BGPPeer
metadata: {name: feed}
spec: {peerIP: 10.77.0.1, asNumber: 64512, filters: [everything]}
EOF
cat > "$work/gobgp.toml" <<EOF
[global.config]
  as = 64512
  router-id = "10.77.0.2"
  local-address-list = ["10.77.0.2"]
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.77.0.1"
    peer-as = 64512
  [neighbors.transport.config]
    passive-mode = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
EOF

# held <receiver>: how many prefixes the receiver holds now.
held() {
    case $1 in
        brindle|baseline) "$(binary "$1")" status --json --socket "$work/brindle.sock" 2>/dev/null | awk -F: '/prefixes_accepted/ { gsub(/[ ,]/, "", $2); print $2; exit }' ;;
        bird) birdc -s "$work/receiver.ctl" show protocols all upstream 2>/dev/null | awk '/Routes:/ { print $2; exit }' ;;
        gobgp) ip netns exec "$tag-r" gobgp neighbor 10.77.0.1 2>/dev/null | awk '/Accepted:/ { print $2; exit }' ;;
        node) ip -n "$tag-r" route show proto 98 | wc -l ;;
        birdkernel) ip -n "$tag-r" route show proto bird | wc -l ;;
    esac
}

binary() { if [ "$1" = baseline ]; then echo "${BASELINE:?BASELINE=PATH names the baseline brindle-bgp}"; else echo "$BRINDLE"; fi; }

measure() {
    local name=$1 pid
    case $name in
        brindle|baseline)
            if [ -n "${PROFILE:-}" ] && [ "$name" = brindle ]; then
                ip netns exec "$tag-r" perf record -F 999 -g -o "$PROFILE" -- "$BRINDLE" run --config "$work/brindle.toml" &
            else
                ip netns exec "$tag-r" "$(binary "$name")" run --config "$work/brindle.toml" &
            fi ;;
        bird) ip netns exec "$tag-r" bird -f -c "$work/bird-receiver.conf" -s "$work/receiver.ctl" -P "$work/receiver.pid" & ;;
        gobgp) ip netns exec "$tag-r" gobgpd -f "$work/gobgp.toml" -p --pprof-disable -l warn >/dev/null & ;;
        node)
            rm -rf "$work/node" && mkdir -p "$work/node"
            "$CTL" --datastore "sqlite://$work/node/brindle.db" apply -f "$work/node-resources.yaml" >/dev/null
            ip netns exec "$tag-r" ${PROFILE:+perf record -F 499 --call-graph dwarf,16384 -o "$PROFILE" --} "$NODE" --datastore "sqlite://$work/node/brindle.db" --nodename receiver \
                --bgp embedded --metrics-listen off --state-dir "$work/node" --status-socket "$work/node/node.sock" \
                2>"$work/node/agent.log" & ;;
        birdkernel) ip netns exec "$tag-r" bird -f -c "$work/bird-kernel.conf" -s "$work/receiver.ctl" -P "$work/receiver.pid" & ;;
    esac
    local wrapper=$!
    pids+=("$wrapper")
    sleep 1
    # ip netns exec replaces itself with the program: the wrapper PID is the receiver.
    pid=$wrapper
    local cpu0
    cpu0=$(cpu_seconds "$pid")
    ip netns exec "$tag-s" bird -f -c "$work/sender.conf" -s "$work/sender.ctl" -P "$work/sender.pid" &
    local sender=$!
    pids+=("$sender")
    local start now count=0 last=-1 stable=0 polls=0 first=
    start=$(date +%s.%N)
    while :; do
        birdc -s "$work/sender.ctl" show status >/dev/null 2>&1 || true   # releases BIRD's last routes
        count=$(held "$name"); count=${count:-0}
        now=$(date +%s.%N)
        # The clock starts with the first route: the sender's own start-up is not counted.
        if [ "$count" -gt 0 ] && [ -z "${first:-}" ]; then first=$now; fi
        if [ "$count" -ge "$routes" ]; then break; fi
        if [ "$count" = "$last" ]; then stable=$((stable + 1)); else stable=0; fi
        last=$count
        if [ "$stable" -gt 600 ]; then echo "$name stalled at $count of $routes" >&2; break; fi
        polls=$((polls + 1))
        if [ $((polls % 20)) = 0 ]; then echo "  $name: $count of $routes" >&2; fi
        # Asking GoBGP walks its whole table (seconds at a million routes): ask it rarely; the
        # kernel's table is listed whole too.
        case $name in gobgp) sleep 5 ;; node | birdkernel) sleep 0.2 ;; *) sleep 0.05 ;; esac
    done
    local secs cpu rss
    secs=$(echo "$now - ${first:-$start}" | bc)
    cpu=$(echo "$(cpu_seconds "$pid") - $cpu0" | bc)
    rss=$(peak_rss_kib "$pid")
    kill "$sender" "$pid" 2>/dev/null || true
    wait "$sender" "$pid" 2>/dev/null || true
    # The kernel's copy goes before the next receiver's turn.
    ip -n "$tag-r" route flush proto 98 2>/dev/null || true
    ip -n "$tag-r" route flush proto bird 2>/dev/null || true
    printf '%s %s %s %s %s\n' "$name" "$count" "$secs" "$cpu" "$rss"
}

echo "receiving $routes prefixes from a BIRD sender" >&2
results=()
for r in ${RECEIVERS:-brindle bird gobgp}; do
    results+=("$(measure "$r")")
    echo "  ${results[-1]}" >&2
done

# median <receiver> <column>: the receiver's median of a column over its runs.
median() {
    printf '%s\n' "${results[@]}" | awk -v r="$1" -v c="$2" '$1 == r { print $c }' | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

# Ratios are to BIRD's median over its runs; with several runs of a receiver (this machine
# varies by 20% run to run), its medians follow.
# The kernel receivers are compared with BIRD's kernel protocol when BIRD itself did not run.
reference=bird
if [ -z "$(median bird 4)" ]; then reference=birdkernel; fi
bird_cpu=$(median "$reference" 4)
bird_rss=$(median "$reference" 5)
row() {
    awk -v bc="$bird_cpu" -v br="$bird_rss" '{
        printf "%-8s %10d %10.2f %10.2f %12.1f %10.0f %10.2f %10.2f\n", $1, $2, $3, $4, $5 / 1024, $5 * 1024 / ($2 > 0 ? $2 : 1), (bc > 0 ? $4 / bc : 0), (br > 0 ? $5 / br : 0) }'
}
header() { printf '\n%-8s %10s %10s %10s %12s %10s %10s %10s\n' "$1" prefixes seconds cpu_s peak_MiB B/route cpu/BIRD rss/BIRD; }
header receiver
for line in "${results[@]}"; do echo "$line" | row; done
receivers=$(printf '%s\n' "${results[@]}" | awk '!seen[$1]++ { print $1 }')
if [ "$(printf '%s\n' "${results[@]}" | wc -l)" -gt "$(echo "$receivers" | wc -l)" ]; then
    header median
    for r in $receivers; do
        echo "$r $(median "$r" 2) $(median "$r" 3) $(median "$r" 4) $(median "$r" 5)" | row
    done
fi
