//! `tunl0`, the kernel's IP-in-IP device (it exists in every namespace once the ipip module
//! is loaded): up, with this node's tunnel address and the uplink MTU minus 20.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec};

/// The device's name.
pub const DEVICE: &str = "tunl0";

/// Brings `tunl0` up with `address`. Returns whether anything changed.
pub async fn ensure(handle: &Handle, address: Ipv4Addr, mtu: u32) -> anyhow::Result<bool> {
    let link = brindle_cni::netlink::link(handle, DEVICE)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{DEVICE} does not exist: this kernel has no ipip module"))?;
    let index = link.header.index;
    let addresses: Vec<_> = handle.address().get().set_link_index_filter(index).execute().try_collect().await?;
    let present = addresses.iter().any(|m| {
        m.attributes.iter().any(|a| matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(ip) if *ip == IpAddr::V4(address)))
    });
    if !present {
        handle
            .address()
            .add(index, address.into(), 32)
            .execute()
            .await
            .map_err(|e| anyhow::anyhow!("adding {address} to {DEVICE}: {e}"))?;
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("setting {DEVICE} up: {e}"))?;
    Ok(!present)
}
