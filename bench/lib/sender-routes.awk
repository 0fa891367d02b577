# A BIRD 2 sender's static routes for the BGP benchmarks: n IPv4 prefixes (a mix of /24, /23,
# /22 and /20 from 16.0.0.0 on, one /24 slot each) in `sets` static protocols, each protocol
# one attribute set (a community, a MED and an AS path of its own), as a full table has.
#
#   awk -v n=1000000 -v sets=250 -v router_id=10.77.0.1 -f bench/lib/sender-routes.awk
#
# Pipe it through `awk '!/^  route/ || !seen[$0]++'` to drop the prefixes the shorter lengths
# repeat; the caller adds its BGP protocol.
BEGIN {
    print "router id " router_id ";\nprotocol device {}";
    per = int((n + sets - 1) / sets);
    i = 0;
    for (s = 0; s < sets && i < n; s++) {
        printf "protocol static s%d { ipv4 { import filter { bgp_community.add((64512, %d)); bgp_med = %d; bgp_path.prepend(%d); accept; }; };\n", s, s, s % 7, 65000 + s % 50;
        for (k = 0; k < per && i < n; k++) {
            base = 16 * 16777216 + i * 256;
            r = i % 10;
            len = (r < 6) ? 24 : (r < 8) ? 23 : (r < 9) ? 22 : 20;
            if (len < 24) { base = base - base % (2 ^ (32 - len)); }
            printf "  route %d.%d.%d.%d/%d blackhole;\n", int(base / 16777216), int(base / 65536) % 256, int(base / 256) % 256, 0, len;
            i++;
        }
        print "}";
    }
}
