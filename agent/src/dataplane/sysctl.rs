//! The kernel settings the dataplane needs, set and reported.

use brindle_kernel::Kernel;
use brindle_kernel::names::VXLAN_DEVICE;

use crate::calc::Desired;

fn set(kernel: &dyn Kernel, path: &str, value: &str) -> anyhow::Result<()> {
    let current = kernel.sysctl(path).unwrap_or_default();
    if current != value {
        kernel.set_sysctl(path, value)?;
        tracing::info!(sysctl = %path, value, was = %current, "sysctl set");
    }
    Ok(())
}

/// Forwarding for every family the pools use.
pub fn ensure(kernel: &dyn Kernel, desired: &Desired) -> anyhow::Result<()> {
    set(kernel, "net/ipv4/ip_forward", "1")?;
    if desired.pools.iter().any(|p| p.is_ipv6()) {
        set(kernel, "net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// On the IPv4 VXLAN device (IPv6 has no reverse-path filter to loosen): loose reverse-path filtering (decapsulated packets come from pod
/// addresses that are routed through the device, but asymmetric paths are normal here).
pub fn vxlan_device(kernel: &dyn Kernel) -> anyhow::Result<()> {
    set(kernel, &format!("net/ipv4/conf/{VXLAN_DEVICE}/rp_filter"), "2")
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_kernel::fake::FakeKernel;

    #[test]
    fn forwarding_is_set_for_the_families_in_use_and_only_when_it_differs() {
        let kernel = FakeKernel::new();
        kernel.state().sysctls.insert("net/ipv4/ip_forward".into(), "0".into());
        let mut desired = Desired::default();
        ensure(&kernel, &desired).unwrap();
        ensure(&kernel, &desired).unwrap();
        assert_eq!(kernel.take_log(), ["sysctl net/ipv4/ip_forward=1"]);
        desired.pools.push("fd00:10:244::/64".parse().unwrap());
        ensure(&kernel, &desired).unwrap();
        assert_eq!(kernel.take_log(), ["sysctl net/ipv6/conf/all/forwarding=1"]);
    }
}
