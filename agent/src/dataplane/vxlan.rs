//! The VXLAN device `vxlan.brindle` and its static neighbours: an ARP entry (tunnel address ->
//! MAC) and an FDB entry (MAC -> node address) for every remote VTEP. Learning is off: the
//! datastore is the only source of VTEPs.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourMessage, NeighbourState};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan};

use brindle_cni::netlink::{neighbour_ip, neighbour_lladdr};

use crate::calc::Vtep;

/// The device's name.
pub const DEVICE: &str = "vxlan.brindle";

/// How the device should look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// This node's underlay address.
    pub local: Ipv4Addr,
    /// The uplink's index.
    pub uplink: u32,
    /// The device's MAC (the one published in the Node resource).
    pub mac: [u8; 6],
    /// This node's tunnel address.
    pub tunnel_ip: Ipv4Addr,
    /// The device MTU.
    pub mtu: u32,
}

fn vxlan_info(link: &LinkMessage) -> Vec<InfoVxlan> {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(v)) => Some(v.clone()),
                _ => None,
            }),
            _ => None,
        })
        .unwrap_or_default()
}

fn matches(link: &LinkMessage, want: &Device) -> bool {
    let info = vxlan_info(link);
    let mac = brindle_cni::netlink::mac_of(link);
    info.contains(&InfoVxlan::Id(want.vni))
        && info.contains(&InfoVxlan::Port(want.port))
        && info.contains(&InfoVxlan::Local(want.local))
        && mac == brindle_cni::netlink::format_mac(&want.mac)
}

/// Makes the device exist as `want` says, with its address, up. Returns its index and
/// whether anything changed.
pub async fn ensure(handle: &Handle, want: &Device) -> anyhow::Result<(u32, bool)> {
    let mut changed = false;
    let existing = brindle_cni::netlink::link(handle, DEVICE).await?;
    let index = match existing {
        Some(link) if matches(&link, want) => link.header.index,
        other => {
            if other.is_some() {
                tracing::info!("recreating {DEVICE}: its VNI, port, local address or MAC changed");
                brindle_cni::netlink::delete_link(handle, DEVICE).await?;
            }
            let message = LinkVxlan::new(DEVICE, want.vni)
                .port(want.port)
                .local(want.local)
                .dev(want.uplink)
                .learning(false)
                .mtu(want.mtu)
                .address(want.mac.to_vec())
                .build();
            handle.link().add(message).execute().await.map_err(|e| anyhow::anyhow!("creating {DEVICE}: {e}"))?;
            changed = true;
            disable_tx_checksum_where_broken();
            brindle_cni::netlink::link(handle, DEVICE)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{DEVICE} vanished right after it was made"))?
                .header
                .index
        }
    };
    let addresses: Vec<_> = handle.address().get().set_link_index_filter(index).execute().try_collect().await?;
    let has_address = addresses.iter().any(|m| {
        m.attributes.iter().any(|a| matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(ip) if *ip == IpAddr::V4(want.tunnel_ip)))
    });
    if !has_address {
        handle
            .address()
            .add(index, want.tunnel_ip.into(), 32)
            .execute()
            .await
            .map_err(|e| anyhow::anyhow!("adding {} to {DEVICE}: {e}", want.tunnel_ip))?;
        changed = true;
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(want.mtu).up().build())
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("setting {DEVICE} up: {e}"))?;
    Ok((index, changed))
}

/// Kernels before 5.7 compute wrong checksums when offloading them for VXLAN packets that
/// carry pod traffic (Calico's "ChecksumOffloadBroken"); there, offload is turned off on the
/// device with ethtool. Newer kernels keep it.
fn disable_tx_checksum_where_broken() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= (5, 7) {
        return;
    }
    let outcome = std::process::Command::new("ethtool").args(["-K", DEVICE, "tx-checksum-ip-generic", "off"]).status();
    match outcome {
        Ok(status) if status.success() => {
            tracing::info!(kernel = %release.trim(), "VXLAN tx checksum offload turned off")
        }
        other => tracing::warn!(
            kernel = %release.trim(),
            ?other,
            "this kernel miscomputes offloaded VXLAN checksums and ethtool could not turn offload off; \
             cross-node pod traffic may be dropped"
        ),
    }
}

/// Removes the device when no pool needs it. Returns whether it existed.
pub async fn remove(handle: &Handle) -> anyhow::Result<bool> {
    Ok(brindle_cni::netlink::delete_link(handle, DEVICE).await?)
}

async fn neighbours(handle: &Handle, family: AddressFamily, index: u32) -> anyhow::Result<Vec<NeighbourMessage>> {
    let all: Vec<NeighbourMessage> =
        handle.neighbours().get().set_address_family(family).execute().try_collect().await?;
    Ok(all.into_iter().filter(|m| m.header.ifindex == index).collect())
}

/// Makes the ARP and FDB entries on the device match the VTEPs. Returns how many changed.
pub async fn sync_vteps(handle: &Handle, index: u32, vteps: &[Vtep]) -> anyhow::Result<usize> {
    let mut changes = 0;
    let arp = neighbours(handle, AddressFamily::Inet, index).await?;
    for vtep in vteps {
        let present = arp.iter().any(|m| {
            neighbour_ip(m) == Some(IpAddr::V4(vtep.tunnel_ip))
                && neighbour_lladdr(m).as_deref() == Some(&vtep.mac[..])
                && m.header.state == NeighbourState::Permanent
        });
        if !present {
            tracing::debug!(ip = %vtep.tunnel_ip, "ARP entry added");
            handle
                .neighbours()
                .add(index, vtep.tunnel_ip.into())
                .link_layer_address(&vtep.mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| anyhow::anyhow!("ARP entry for {}: {e}", vtep.tunnel_ip))?;
            changes += 1;
        }
    }
    for m in arp.iter().filter(|m| m.header.state == NeighbourState::Permanent) {
        if !vteps.iter().any(|v| neighbour_ip(m) == Some(IpAddr::V4(v.tunnel_ip))) {
            tracing::debug!(ip = ?neighbour_ip(m), "ARP entry removed");
            handle.neighbours().del(m.clone()).execute().await?;
            changes += 1;
        }
    }
    let fdb = neighbours(handle, AddressFamily::Bridge, index).await?;
    for vtep in vteps {
        let present = fdb.iter().any(|m| {
            neighbour_lladdr(m).as_deref() == Some(&vtep.mac[..]) && neighbour_ip(m) == Some(IpAddr::V4(vtep.node_ip))
        });
        if !present {
            tracing::debug!(node = %vtep.node_ip, "FDB entry added");
            handle
                .neighbours()
                .add_bridge(index, &vtep.mac)
                .destination(vtep.node_ip.into())
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| anyhow::anyhow!("FDB entry for {}: {e}", vtep.node_ip))?;
            changes += 1;
        }
    }
    for m in fdb.iter().filter(|m| neighbour_ip(m).is_some()) {
        let wanted = vteps.iter().any(|v| {
            neighbour_lladdr(m).as_deref() == Some(&v.mac[..]) && neighbour_ip(m) == Some(IpAddr::V4(v.node_ip))
        });
        if !wanted {
            tracing::debug!(node = ?neighbour_ip(m), "FDB entry removed");
            handle.neighbours().del(m.clone()).execute().await?;
            changes += 1;
        }
    }
    Ok(changes)
}
