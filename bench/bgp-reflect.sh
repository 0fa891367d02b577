#!/usr/bin/env bash
# Route reflection at scale: a BIRD 2 sender announces N IPv4 prefixes (default 1,000,000; a
# mix of lengths in 250 attribute sets) to a route reflector, which reflects them to CLIENTS
# BIRD 2 clients (default 8); every speaker in its own namespace on one bridge. The reflectors
# are brindle-bgp and BIRD 2, one after the other in the same run, each with fresh clients. For
# each: seconds from the sender's Established until every client holds every prefix, the
# reflector's CPU seconds and peak RSS; then the ratios to BIRD, and the CPU seconds the sender
# and the clients spent meanwhile (about the same for either reflector: on a machine with few
# cores, the time is at least all the CPU seconds over the cores).
#
#   bench/bgp-reflect.sh [N] [CLIENTS]     (as root; builds brindle-bgp in release mode)
#
# REFLECTORS="brindle bird" picks the reflectors (and their order; repeat one to run it twice).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib/process.sh
. bench/lib/process.sh
# shellcheck source=bench/lib/sender.sh
. bench/lib/sender.sh
N=${1:-1000000}
CLIENTS=${2:-8}
SETS=250
scripts/install-deps.sh
cargo build --release --locked -p brindle-bgp >&2
BRINDLE=$PWD/target/release/brindle-bgp

tag=bf$$
work=$(mktemp -d /tmp/brindle-bench-reflect.XXXXXX)
pids=()
namespaces=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# One bridge in a namespace of its own; speaker <name> gets 10.78.0.<host>/24 on its eth0.
ip netns add "$tag-sw"
namespaces+=("$tag-sw")
ip -n "$tag-sw" link add br0 type bridge
ip -n "$tag-sw" link set br0 up
attach() {
    local ns="$tag-$1" host=$2
    ip netns add "$ns"
    namespaces+=("$ns")
    ip link add "$tag$host" netns "$tag-sw" type veth peer name eth0 netns "$ns"
    ip -n "$tag-sw" link set "$tag$host" master br0 up
    ip -n "$ns" addr add "10.78.0.$host/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
}
attach sender 1
attach reflector 2
for c in $(seq 1 "$CLIENTS"); do attach "c$c" $((10 + c)); done

routes=$(sender_conf "$N" "$SETS" 10.78.0.1 10.78.0.2 "$work/sender.conf")

cat > "$work/brindle.toml" <<EOF
asn = 64512
router_id = "10.78.0.2"
listen = "10.78.0.2:179"
control_socket = "$work/brindle.sock"
graceful_restart = 0
[[peers]]
address = "10.78.0.1"
asn = 64512
passive = true
hold_time = 240
EOF
cat > "$work/bird-reflector.conf" <<EOF
router id 10.78.0.2;
protocol device {}
protocol bgp feed { local 10.78.0.2 as 64512; neighbor 10.78.0.1 as 64512; direct; passive on; hold time 240;
  ipv4 { import all; export none; }; }
EOF
for c in $(seq 1 "$CLIENTS"); do
    client=10.78.0.$((10 + c))
    printf '[[peers]]\naddress = "%s"\nasn = 64512\nroute_reflector_client = true\nhold_time = 240\n' "$client" >> "$work/brindle.toml"
    printf 'protocol bgp c%s { local 10.78.0.2 as 64512; neighbor %s as 64512; direct; rr client; hold time 240;\n  ipv4 { import none; export all; }; }\n' \
        "$c" "$client" >> "$work/bird-reflector.conf"
    printf 'router id %s;\nprotocol device {}\nprotocol bgp upstream { local %s as 64512; neighbor 10.78.0.2 as 64512; direct; hold time 240; connect delay time 1;\n  ipv4 { import all; export none; }; }\n' \
        "$client" "$client" > "$work/client$c.conf"
done

routes_of() { birdc -s "$1" show protocols all "$2" 2>/dev/null | awk '/Routes:/ { print $2; exit }'; }

measure() {
    local name=$1 c clients=() pid sender
    for c in $(seq 1 "$CLIENTS"); do
        ip netns exec "$tag-c$c" bird -f -c "$work/client$c.conf" -s "$work/client$c.ctl" -P "$work/client$c.pid" &
        clients+=($!)
        pids+=($!)
    done
    case $name in
        brindle) ip netns exec "$tag-reflector" "$BRINDLE" run --config "$work/brindle.toml" & ;;
        bird) ip netns exec "$tag-reflector" bird -f -c "$work/bird-reflector.conf" -s "$work/reflector.ctl" -P "$work/reflector.pid" & ;;
    esac
    # ip netns exec replaces itself with the program: the wrapper PID is the reflector.
    pid=$!
    pids+=("$pid")
    sleep 2
    local cpu0
    cpu0=$(cpu_seconds "$pid")
    ip netns exec "$tag-sender" bird -f -c "$work/sender.conf" -s "$work/sender.ctl" -P "$work/sender.pid" &
    sender=$!
    pids+=("$sender")
    # The sender's and the clients' CPU seconds so far.
    peers_cpu() {
        local total p
        total=$(cpu_seconds "$sender")
        for p in "${clients[@]}"; do total=$(echo "$total + $(cpu_seconds "$p")" | bc); done
        echo "$total"
    }
    local start= now least last=-1 stable=0 polls=0 peers_cpu0=0
    while :; do
        now=$(date +%s.%N)
        if [ -z "$start" ]; then
            if birdc -s "$work/sender.ctl" show protocols feed 2>/dev/null | grep -q Established; then
                start=$now
                peers_cpu0=$(peers_cpu)
            fi
            sleep 0.05
            continue
        fi
        birdc -s "$work/sender.ctl" show status >/dev/null 2>&1 || true   # releases BIRD's last routes
        least=$routes
        for c in $(seq 1 "$CLIENTS"); do
            local held
            held=$(routes_of "$work/client$c.ctl" upstream)
            held=${held:-0}
            if [ "$held" -lt "$least" ]; then least=$held; fi
        done
        if [ "$least" -ge "$routes" ]; then break; fi
        if [ "$least" = "$last" ]; then stable=$((stable + 1)); else stable=0; fi
        last=$least
        if [ "$stable" -gt 300 ]; then echo "$name stalled: a client holds $least of $routes" >&2; break; fi
        polls=$((polls + 1))
        if [ $((polls % 10)) = 0 ]; then echo "  $name: every client holds at least $least of $routes" >&2; fi
        sleep 0.2
    done
    local secs cpu rss peers
    secs=$(echo "$now - $start" | bc)
    cpu=$(echo "$(cpu_seconds "$pid") - $cpu0" | bc)
    rss=$(peak_rss_kib "$pid")
    peers=$(echo "$(peers_cpu) - $peers_cpu0" | bc)
    kill "$sender" "$pid" "${clients[@]}" 2>/dev/null || true
    wait "$sender" "$pid" "${clients[@]}" 2>/dev/null || true
    printf '%s %s %s %s %s %s\n' "$name" "$least" "$secs" "$cpu" "$rss" "$peers"
}

echo "reflecting $routes prefixes from a BIRD sender to $CLIENTS BIRD clients" >&2
results=()
for r in ${REFLECTORS:-brindle bird}; do
    results+=("$(measure "$r")")
    echo "  ${results[-1]}" >&2
done

bird_cpu=$(printf '%s\n' "${results[@]}" | awk '$1 == "bird" { print $4; exit }')
bird_secs=$(printf '%s\n' "${results[@]}" | awk '$1 == "bird" { print $3; exit }')
bird_rss=$(printf '%s\n' "${results[@]}" | awk '$1 == "bird" { print $5; exit }')
printf '\n%-10s %10s %10s %10s %10s %10s %10s %10s %12s\n' reflector prefixes seconds cpu_s peak_MiB time/BIRD cpu/BIRD rss/BIRD peers_cpu_s
for line in "${results[@]}"; do
    echo "$line" | awk -v bs="${bird_secs:-0}" -v bc="${bird_cpu:-0}" -v br="${bird_rss:-0}" '{
        printf "%-10s %10d %10.2f %10.2f %10.1f %10.2f %10.2f %10.2f %12.2f\n", $1, $2, $3, $4, $5 / 1024,
            (bs > 0 ? $3 / bs : 0), (bc > 0 ? $4 / bc : 0), (br > 0 ? $5 / br : 0), $6 }'
done
