//! `tunl0`, the kernel's IP-in-IP device (it exists in every namespace once the ipip module
//! is loaded): up, with this node's tunnel address and the uplink MTU minus 20, while a pool
//! uses IP-in-IP; down (decapsulating nothing) otherwise.

use std::net::IpAddr;

use brindle_kernel::Kernel;
use brindle_kernel::names::IPIP_DEVICE;
use ipnetwork::IpNetwork;

use crate::calc::IpipDevice;

/// Brings `tunl0` up with its address and MTU. Returns whether anything changed.
pub async fn ensure(kernel: &dyn Kernel, want: &IpipDevice) -> anyhow::Result<bool> {
    let (address, mtu) = (want.address, want.mtu);
    let link = kernel
        .links()
        .await?
        .into_iter()
        .find(|l| l.name == IPIP_DEVICE)
        .ok_or_else(|| anyhow::anyhow!("{IPIP_DEVICE} does not exist: this kernel has no ipip module"))?;
    let present = kernel.addresses(link.index).await?.iter().any(|a| a.ip() == IpAddr::V4(address));
    if !present {
        kernel.add_address(link.index, IpNetwork::new(address.into(), 32)?).await?;
    }
    let changed = !present || !link.up || link.mtu != mtu;
    kernel.set_up(link.index, mtu).await?;
    Ok(changed)
}

/// Brings `tunl0` down where no pool uses IP-in-IP any more (the firewall's IP-in-IP rules
/// go with the pools, so an up `tunl0` would take tunnelled packets from anyone). Returns
/// whether anything changed.
pub async fn stand_down(kernel: &dyn Kernel) -> anyhow::Result<bool> {
    match kernel.links().await?.into_iter().find(|l| l.name == IPIP_DEVICE && l.up) {
        Some(link) => {
            kernel.set_down(link.index).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_kernel::fake::FakeKernel;

    #[test]
    fn tunl0_gets_the_address_once_and_a_kernel_without_it_is_named() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let kernel = FakeKernel::new();
        let want = IpipDevice { address: "10.244.3.0".parse().unwrap(), mtu: 1480 };
        let error = runtime.block_on(ensure(&kernel, &want)).unwrap_err().to_string();
        assert!(error.contains("no ipip module"), "{error}");
        kernel.add_link(IPIP_DEVICE, 1480);
        assert!(runtime.block_on(ensure(&kernel, &want)).unwrap());
        assert!(!runtime.block_on(ensure(&kernel, &want)).unwrap());
        assert_eq!(kernel.take_log(), ["address add 10.244.3.0/32 dev 1"]);
        // The last IP-in-IP pool gone: down once, then nothing to do.
        assert!(runtime.block_on(stand_down(&kernel)).unwrap());
        assert!(!runtime.block_on(stand_down(&kernel)).unwrap());
        assert_eq!(kernel.take_log(), ["link set tunl0 down"]);
    }
}
