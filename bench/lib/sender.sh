# The BGP benchmarks' sender (sourced, not run): BIRD 2 announcing a generated table.

# sender_conf N SETS SENDER RECEIVER FILE: writes to FILE the configuration of a BIRD at
# SENDER announcing N generated IPv4 routes (duplicates dropped) in SETS attribute sets over
# iBGP to RECEIVER, and prints how many routes it holds.
sender_conf() {
    local n=$1 sets=$2 sender=$3 receiver=$4 file=$5
    echo "generating $n routes in $sets attribute sets" >&2
    awk -v n="$n" -v sets="$sets" -v router_id="$sender" -f bench/lib/sender-routes.awk |
        awk '!/^  route/ || !seen[$0]++' > "$file"
    cat >> "$file" <<CONF
protocol bgp feed { local $sender as 64512; neighbor $receiver as 64512; direct; hold time 240; connect delay time 1;
  ipv4 { export all; import none; next hop self; }; }
CONF
    grep -c "^  route" "$file"
}
