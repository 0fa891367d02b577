//! The node agent (binary brindle-node): syncs the datastore, computes the desired dataplane, and programs routes, tunnels and iptables.
//!
//! Not implemented yet: DESIGN.md describes what will live here.
