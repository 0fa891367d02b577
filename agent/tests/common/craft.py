"""What a hostile pod sends, built byte by byte, for the hardening tests.

  craft.py listen PORT SECONDS          print "<source> <payload>" per UDP datagram received
  craft.py vxlan NODE PORT VNI MAC SRC DST DPORT
                                        a VXLAN frame over a plain UDP socket: inner Ethernet
                                        to MAC, inner IPv4 UDP from SRC to DST:DPORT
  craft.py spoof SRC DST DPORT          one UDP datagram with a forged IPv4 source (raw socket)
  craft.py ra IFNAME PREFIX             a router advertisement: default router, PREFIX/64
                                        autonomous
  craft.py connect HOST PORT SECONDS    exit 0 if a TCP connection opens in time
"""

import socket
import struct
import sys
import time


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp(src, dst, dport, payload):
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp


def main(command, *args):
    if command == "listen":
        port, seconds = int(args[0]), float(args[1])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        s.settimeout(0.1)
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                data, (source, _) = s.recvfrom(2048)
            except socket.timeout:
                continue
            print(source, data.decode(errors="replace"), flush=True)
    elif command == "vxlan":
        node, port, vni, mac, src, dst, dport = args
        inner = bytes.fromhex(mac.replace(":", "")) + bytes.fromhex("02000000beef") + b"\x08\x00"
        inner += ipv4_udp(src, dst, int(dport), b"injected")
        frame = struct.pack("!II", 0x08000000, int(vni) << 8) + inner
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(5):
            s.sendto(frame, (node, int(port)))
            time.sleep(0.05)
    elif command == "spoof":
        src, dst, dport = args
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        for _ in range(5):
            s.sendto(ipv4_udp(src, dst, int(dport), f"from {src}".encode()), (dst, 0))
            time.sleep(0.05)
    elif command == "ra":
        ifname, prefix = args
        index = socket.if_nametoindex(ifname)
        # Type 134, code 0, checksum (the kernel fills it in), hop limit, flags, router
        # lifetime 1800 s, reachable and retransmit times; then a prefix information option.
        ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
        ra += struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + socket.inet_pton(socket.AF_INET6, prefix)
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        for _ in range(3):
            s.sendto(ra, ("ff02::1", 0, 0, index))
            time.sleep(0.1)
    elif command == "connect":
        host, port, seconds = args
        try:
            socket.create_connection((host, int(port)), timeout=float(seconds)).close()
        except OSError:
            sys.exit(1)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(*sys.argv[1:])
