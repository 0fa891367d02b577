//! The names brindle gives what it makes in the kernel, so every component recognises them.

/// The routing protocol number on every route brindle makes, so the agent can tell its own
/// routes from everyone else's (`ip route show proto 98`).
pub const ROUTE_PROTOCOL: u8 = 98;

/// Every host-side pod veth's name starts with this (`brin` + a digest of the endpoint).
pub const WORKLOAD_PREFIX: &str = "brin";

/// The VXLAN device.
pub const VXLAN_DEVICE: &str = "vxlan.brindle";

/// The kernel's IP-in-IP device (it exists in every namespace once the ipip module is
/// loaded).
pub const IPIP_DEVICE: &str = "tunl0";

/// Whether `name` is a pod's host-side veth.
pub fn is_workload(name: &str) -> bool {
    name.starts_with(WORKLOAD_PREFIX)
}
