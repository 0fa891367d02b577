//! The VXLAN device `vxlan.brindle` and its static neighbours: an ARP entry (tunnel address ->
//! MAC) and an FDB entry (MAC -> node address) for every remote VTEP. Learning is off: the
//! datastore is the only source of VTEPs.

use std::collections::BTreeSet;
use std::net::IpAddr;

use brindle_kernel::names::VXLAN_DEVICE;
use brindle_kernel::{Kernel, Neighbour, NewVxlan, Table, Vxlan};
use ipnetwork::IpNetwork;

use crate::calc::{Vtep, VxlanDevice};

/// Makes the device exist as `want` says, on the uplink `uplink` (an index), with its
/// address, up. Returns its index and whether anything changed.
pub async fn ensure(kernel: &dyn Kernel, want: &VxlanDevice, uplink: u32) -> anyhow::Result<(u32, bool)> {
    let identity = Vxlan { vni: want.vni, port: want.port, local: want.local };
    let existing = kernel.links().await?.into_iter().find(|l| l.name == VXLAN_DEVICE);
    let mut changed = false;
    let index = match existing {
        Some(link) if link.vxlan.as_ref() == Some(&identity) && link.mac == Some(want.mac) => link.index,
        other => {
            if other.is_some() {
                tracing::info!("recreating {VXLAN_DEVICE}: its VNI, port, local address or MAC changed");
                kernel.delete_link(VXLAN_DEVICE).await?;
            }
            let device = NewVxlan { name: VXLAN_DEVICE.into(), vxlan: identity, uplink, mtu: want.mtu, mac: want.mac };
            kernel.add_vxlan(&device).await?;
            changed = true;
            disable_tx_checksum_where_broken(kernel);
            kernel
                .links()
                .await?
                .into_iter()
                .find(|l| l.name == VXLAN_DEVICE)
                .ok_or_else(|| anyhow::anyhow!("{VXLAN_DEVICE} vanished right after it was made"))?
                .index
        }
    };
    if !kernel.addresses(index).await?.iter().any(|a| a.ip() == IpAddr::V4(want.address)) {
        kernel.add_address(index, IpNetwork::new(want.address.into(), 32)?).await?;
        changed = true;
    }
    kernel.set_up(index, want.mtu).await?;
    Ok((index, changed))
}

/// Kernels before 5.7 compute wrong checksums when offloading them for VXLAN packets that
/// carry pod traffic (Calico's "ChecksumOffloadBroken"); there, offload is turned off on the
/// device with ethtool. Newer kernels keep it.
fn disable_tx_checksum_where_broken(kernel: &dyn Kernel) {
    let release = kernel.sysctl("kernel/osrelease").unwrap_or_default();
    let mut parts = release.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= (5, 7) {
        return;
    }
    match kernel.run("ethtool", &["-K", VXLAN_DEVICE, "tx-checksum-ip-generic", "off"], None) {
        Ok(out) if out.success => tracing::info!(kernel = %release, "VXLAN tx checksum offload turned off"),
        other => tracing::warn!(
            kernel = %release,
            ?other,
            "this kernel miscomputes offloaded VXLAN checksums and ethtool could not turn offload off; \
             cross-node pod traffic may be dropped"
        ),
    }
}

/// Removes the device when no pool needs it. Returns whether it existed.
pub async fn remove(kernel: &dyn Kernel) -> anyhow::Result<bool> {
    Ok(kernel.delete_link(VXLAN_DEVICE).await?)
}

/// The entries the VTEPs need: (on the FDB, address, MAC).
fn wanted(vteps: &[Vtep]) -> BTreeSet<(bool, IpAddr, [u8; 6])> {
    vteps.iter().flat_map(|v| [(false, IpAddr::V4(v.tunnel_ip), v.mac), (true, IpAddr::V4(v.node_ip), v.mac)]).collect()
}

/// Makes the ARP and FDB entries on the device match the VTEPs. Returns how many changed.
pub async fn sync_vteps(kernel: &dyn Kernel, index: u32, vteps: &[Vtep]) -> anyhow::Result<usize> {
    let want = wanted(vteps);
    let entry = |fdb: bool, ip: IpAddr, mac: [u8; 6]| Neighbour {
        table: if fdb { Table::Fdb } else { Table::Arp },
        index,
        ip,
        mac,
        permanent: true,
    };
    let mut have = BTreeSet::new();
    let mut stale = Vec::new();
    for table in [Table::Arp, Table::Fdb] {
        for n in kernel.neighbours(table, Some(index)).await? {
            let key = (table == Table::Fdb, n.ip, n.mac);
            // Entries the kernel learned are not ours to judge (learning is off, but an ARP
            // reply still makes one); only permanent ones are.
            if want.contains(&key) && (n.permanent || table == Table::Fdb) {
                have.insert(key);
            } else if n.permanent {
                stale.push(n);
            }
        }
    }
    let mut changes = 0;
    for &(fdb, ip, mac) in want.difference(&have) {
        tracing::debug!(%ip, fdb, "VTEP entry added");
        kernel.set_neighbour(&entry(fdb, ip, mac)).await?;
        changes += 1;
    }
    for n in stale {
        tracing::debug!(ip = %n.ip, table = ?n.table, "VTEP entry removed");
        kernel.delete_neighbour(&n).await?;
        changes += 1;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use brindle_kernel::fake::FakeKernel;

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
    }

    fn device() -> VxlanDevice {
        VxlanDevice {
            vni: 4096,
            port: 4789,
            local: "10.0.0.2".parse().unwrap(),
            mac: [0x66, 0, 0, 0, 0, 2],
            address: "10.244.0.0".parse().unwrap(),
            mtu: 1450,
        }
    }

    #[test]
    fn the_device_is_made_once_and_remade_only_when_its_identity_changes() {
        let kernel = FakeKernel::new();
        kernel.state().sysctls.insert("kernel/osrelease".into(), "6.1.0-13-amd64".into());
        let uplink = kernel.add_link("eth0", 1500);
        let (index, changed) = block_on(ensure(&kernel, &device(), uplink)).unwrap();
        assert!(changed);
        assert_eq!(
            kernel.take_log(),
            [
                "link add vxlan.brindle vni 4096",
                &format!("address add 10.244.0.0/32 dev {index}"),
                "link set vxlan.brindle up mtu 1450"
            ]
        );
        assert_eq!(block_on(ensure(&kernel, &device(), uplink)).unwrap(), (index, false));
        assert!(kernel.take_log().is_empty(), "nothing to change");
        let moved = VxlanDevice { vni: 4097, ..device() };
        let (_, changed) = block_on(ensure(&kernel, &moved, uplink)).unwrap();
        assert!(changed);
        assert_eq!(kernel.take_log()[..2], ["link del vxlan.brindle", "link add vxlan.brindle vni 4097"]);
    }

    #[test]
    fn old_kernels_get_checksum_offload_turned_off() {
        let kernel = FakeKernel::new();
        kernel.state().sysctls.insert("kernel/osrelease".into(), "5.4.0-150-generic".into());
        let uplink = kernel.add_link("eth0", 1500);
        block_on(ensure(&kernel, &device(), uplink)).unwrap();
        assert!(kernel.take_log().contains(&"run ethtool -K vxlan.brindle tx-checksum-ip-generic off".to_owned()));
    }

    #[test]
    fn vteps_are_added_and_removed_and_a_failure_is_retried() {
        let kernel = FakeKernel::new();
        let index = kernel.add_link(VXLAN_DEVICE, 1450);
        let vtep = |n: u8| Vtep {
            tunnel_ip: Ipv4Addr::new(10, 244, n, 0),
            mac: [0x66, 0, 0, 0, 0, n],
            node_ip: Ipv4Addr::new(10, 0, 0, n),
        };
        assert_eq!(block_on(sync_vteps(&kernel, index, &[vtep(1), vtep(2)])).unwrap(), 4);
        assert_eq!(block_on(sync_vteps(&kernel, index, &[vtep(1), vtep(2)])).unwrap(), 0);
        kernel.take_log();
        // Node 2 leaves, node 3 joins; the kernel refuses node 3's FDB entry once.
        kernel.fail("Fdb 10.0.0.3");
        assert!(block_on(sync_vteps(&kernel, index, &[vtep(1), vtep(3)])).is_err());
        kernel.heal();
        let changed = block_on(sync_vteps(&kernel, index, &[vtep(1), vtep(3)])).unwrap();
        assert!(changed >= 1);
        let left: Vec<IpAddr> = kernel.state().neighbours.iter().map(|n| n.ip).collect();
        assert_eq!(left.len(), 4);
        assert!(!left.contains(&IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))), "{left:?}");
        assert!(left.contains(&IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3))), "{left:?}");
    }
}
