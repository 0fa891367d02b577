//! The CNI plugins brindle (proxy-ARP veth per pod) and brindle-ipam (block IPAM).
//!
//! Not implemented yet: DESIGN.md describes what will live here.
