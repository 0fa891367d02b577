//! The VXLAN devices, `vxlan.brindle` (IPv4 over IPv4) and `vxlan6.brindle` (IPv6 over
//! IPv6), and their static neighbours: a neighbour entry (tunnel address -> MAC) and an FDB
//! entry (MAC -> node address) for every remote VTEP of the device's family. Learning is off:
//! the datastore is the only source of VTEPs.

use std::collections::BTreeSet;
use std::net::IpAddr;

use brindle_kernel::{Kernel, Neighbour, NewVxlan, Table, Vxlan};
use ipnetwork::IpNetwork;

use crate::calc::{Vtep, VxlanDevice};

/// Makes the device exist as `want` says, on the uplink `uplink` (an index), with its
/// address, up. Returns its index and whether anything changed.
pub async fn ensure(kernel: &dyn Kernel, want: &VxlanDevice, uplink: u32) -> anyhow::Result<(u32, bool)> {
    let identity = Vxlan { vni: want.vni, port: want.port, local: want.local };
    let name = want.name();
    let existing = kernel.links().await?.into_iter().find(|l| l.name == name);
    let mut changed = false;
    let index = match existing {
        Some(link) if link.vxlan.as_ref() == Some(&identity) && link.mac == Some(want.mac) => link.index,
        other => {
            if other.is_some() {
                tracing::info!("recreating {name}: its VNI, port, local address or MAC changed");
                kernel.delete_link(name).await?;
            }
            let device = NewVxlan { name: name.into(), vxlan: identity, uplink, mtu: want.mtu, mac: want.mac };
            kernel.add_vxlan(&device).await?;
            changed = true;
            disable_tx_checksum_where_broken(kernel, name);
            kernel
                .links()
                .await?
                .into_iter()
                .find(|l| l.name == name)
                .ok_or_else(|| anyhow::anyhow!("{name} vanished right after it was made"))?
                .index
        }
    };
    if !kernel.addresses(index).await?.iter().any(|a| a.ip() == want.address) {
        let host = if want.address.is_ipv6() { 128 } else { 32 };
        kernel.add_address(index, IpNetwork::new(want.address, host)?).await?;
        changed = true;
    }
    kernel.set_up(index, want.mtu).await?;
    Ok((index, changed))
}

/// Kernels before 5.7 compute wrong checksums when offloading them for VXLAN packets that
/// carry pod traffic (Calico's "ChecksumOffloadBroken"); there, offload is turned off on the
/// device with ethtool. Newer kernels keep it.
fn disable_tx_checksum_where_broken(kernel: &dyn Kernel, name: &str) {
    let release = kernel.sysctl("kernel/osrelease").unwrap_or_default();
    let mut parts = release.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= (5, 7) {
        return;
    }
    match kernel.run("ethtool", &["-K", name, "tx-checksum-ip-generic", "off"], None) {
        Ok(out) if out.success => tracing::info!(kernel = %release, "VXLAN tx checksum offload turned off"),
        other => tracing::warn!(
            kernel = %release,
            ?other,
            "this kernel miscomputes offloaded VXLAN checksums and ethtool could not turn offload off; \
             cross-node pod traffic may be dropped"
        ),
    }
}

/// Removes the device `name` when no pool of its family needs it. Returns whether it existed.
pub async fn remove(kernel: &dyn Kernel, name: &str) -> anyhow::Result<bool> {
    Ok(kernel.delete_link(name).await?)
}

/// The entries the VTEPs of a family need: (on the FDB, address, MAC).
fn wanted(vteps: &[Vtep], ipv6: bool) -> BTreeSet<(bool, IpAddr, [u8; 6])> {
    vteps
        .iter()
        .filter(|v| v.tunnel_ip.is_ipv6() == ipv6)
        .flat_map(|v| [(false, v.tunnel_ip, v.mac), (true, v.node_ip, v.mac)])
        .collect()
}

/// Makes the neighbour and FDB entries on the device `index` of a family match that family's
/// VTEPs among `vteps`. Returns how many changed.
pub async fn sync_vteps(kernel: &dyn Kernel, index: u32, ipv6: bool, vteps: &[Vtep]) -> anyhow::Result<usize> {
    let want = wanted(vteps, ipv6);
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
    fn the_ipv6_device_is_its_own_with_a_128_bit_tunnel_address() {
        let kernel = FakeKernel::new();
        let uplink = kernel.add_link("eth0", 1500);
        let v6 = VxlanDevice {
            local: "fd00::2".parse().unwrap(),
            address: "fd00:244::".parse().unwrap(),
            mtu: 1430,
            ..device()
        };
        block_on(ensure(&kernel, &device(), uplink)).unwrap();
        let (index, _) = block_on(ensure(&kernel, &v6, uplink)).unwrap();
        let log = kernel.take_log();
        assert!(log.contains(&"link add vxlan6.brindle vni 4096".to_owned()), "{log:?}");
        assert!(log.contains(&format!("address add fd00:244::/128 dev {index}")), "{log:?}");
        assert!(log.contains(&"link set vxlan6.brindle up mtu 1430".to_owned()), "{log:?}");
        assert!(block_on(remove(&kernel, "vxlan6.brindle")).unwrap());
        assert!(kernel.state().links.values().any(|l| l.name == "vxlan.brindle"), "the IPv4 device stays");
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
        let index = kernel.add_link(brindle_kernel::names::VXLAN_DEVICE, 1450);
        let vtep = |n: u8| Vtep {
            tunnel_ip: Ipv4Addr::new(10, 244, n, 0).into(),
            mac: [0x66, 0, 0, 0, 0, n],
            node_ip: Ipv4Addr::new(10, 0, 0, n).into(),
        };
        // An IPv6 VTEP is for the other device.
        let v6 = Vtep {
            tunnel_ip: "fd00:244::1".parse().unwrap(),
            mac: [0x66, 0, 0, 0, 6, 1],
            node_ip: "fd00::1".parse().unwrap(),
        };
        assert_eq!(block_on(sync_vteps(&kernel, index, false, &[vtep(1), vtep(2), v6])).unwrap(), 4);
        assert_eq!(block_on(sync_vteps(&kernel, index, false, &[vtep(1), vtep(2)])).unwrap(), 0);
        kernel.take_log();
        // Node 2 leaves, node 3 joins; the kernel refuses node 3's FDB entry once.
        kernel.fail("Fdb 10.0.0.3");
        assert!(block_on(sync_vteps(&kernel, index, false, &[vtep(1), vtep(3)])).is_err());
        kernel.heal();
        let changed = block_on(sync_vteps(&kernel, index, false, &[vtep(1), vtep(3)])).unwrap();
        assert!(changed >= 1);
        let left: Vec<IpAddr> = kernel.state().neighbours.iter().map(|n| n.ip).collect();
        assert_eq!(left.len(), 4);
        assert!(!left.contains(&IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))), "{left:?}");
        assert!(left.contains(&IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3))), "{left:?}");
    }
}
