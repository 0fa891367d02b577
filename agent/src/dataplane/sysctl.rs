//! The kernel settings the dataplane needs, set and reported.

use crate::calc::Desired;

fn set(path: &str, value: &str) -> anyhow::Result<()> {
    let file = format!("/proc/sys/{path}");
    let current = std::fs::read_to_string(&file).unwrap_or_default();
    if current.trim() != value {
        std::fs::write(&file, value).map_err(|e| anyhow::anyhow!("setting {file} to {value}: {e}"))?;
        tracing::info!(sysctl = %path, value, was = current.trim(), "sysctl set");
    }
    Ok(())
}

/// Forwarding for every family the pools use.
pub fn ensure(desired: &Desired) -> anyhow::Result<()> {
    set("net/ipv4/ip_forward", "1")?;
    if desired.pools.iter().any(|p| p.is_ipv6()) {
        set("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// On the VXLAN device: loose reverse-path filtering (decapsulated packets come from pod
/// addresses that are routed through the device, but asymmetric paths are normal here).
pub fn vxlan_device() -> anyhow::Result<()> {
    set(&format!("net/ipv4/conf/{}/rp_filter", super::vxlan::DEVICE), "2")
}
