//! The drivers that make the kernel match the desired state. Each reads what the kernel
//! holds, diffs, and changes only what differs, so a full resync repairs drift and an
//! unchanged state changes nothing.

pub mod ipip;
pub mod iptables;
pub mod routes;
pub mod sysctl;
pub mod vxlan;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use brindle_kernel::Kernel;

use crate::calc::Desired;

/// What the dataplane knows about this node beyond the desired state.
#[derive(Debug, Clone)]
pub struct Host {
    /// The uplink interface.
    pub uplink: String,
    /// The node's IPv4 address on it.
    pub ipv4: Option<Ipv4Addr>,
    /// The uplink's MTU.
    pub uplink_mtu: u32,
    /// VXLAN VNI.
    pub vxlan_vni: u32,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// This node's VXLAN MAC.
    pub vxlan_mac: [u8; 6],
}

/// The outcome of one pass.
#[derive(Debug, Default)]
pub struct Applied {
    /// Kernel objects changed.
    pub changes: usize,
    /// Whether iptables-restore ran.
    pub iptables_restored: bool,
    /// What failed, per driver (the others still ran).
    pub failures: Vec<(&'static str, String)>,
}

/// The kernel, through the kernel layer: the only writer.
pub struct Dataplane {
    kernel: Arc<dyn Kernel>,
    host: Host,
    backend: iptables::Backend,
    /// The iptables rules last applied, IPv4 and IPv6: between full resyncs iptables is
    /// touched only when they change.
    applied_rules: Mutex<[Option<iptables::Rules>; 2]>,
}

impl Dataplane {
    /// Drives `kernel`, with the iptables backend given or the one the host uses.
    pub fn new(kernel: Arc<dyn Kernel>, host: Host, backend: Option<iptables::Backend>) -> Dataplane {
        let backend = backend.unwrap_or_else(|| iptables::Backend::detect(&*kernel));
        tracing::info!(?backend, uplink = %host.uplink, "dataplane ready");
        Dataplane { kernel, host, backend, applied_rules: Mutex::default() }
    }

    /// One pass over every driver. `tunnel_ip` is this node's tunnel address (on the VXLAN
    /// device and on `tunl0`), if it has one. A `full` pass checks everything against the
    /// kernel; another leaves iptables alone when its rules have not changed.
    pub async fn apply(&self, desired: &Desired, tunnel_ip: Option<Ipv4Addr>, full: bool) -> Applied {
        let kernel = &*self.kernel;
        let mut applied = Applied::default();
        let mut fail = |driver, e: anyhow::Error| {
            tracing::warn!(driver, error = %e, "dataplane driver failed; the next resync retries");
            applied.failures.push((driver, format!("{e:#}")));
        };
        if let Err(e) = sysctl::ensure(kernel, desired) {
            fail("sysctl", e);
        }
        match (desired.vxlan, self.host.ipv4, tunnel_ip) {
            (true, Some(local), Some(tunnel_ip)) => {
                let result = async {
                    let devices = routes::Devices::read(kernel, &self.host.uplink).await?;
                    let device = vxlan::Device {
                        vni: self.host.vxlan_vni,
                        port: self.host.vxlan_port,
                        local,
                        uplink: devices.uplink,
                        mac: self.host.vxlan_mac,
                        tunnel_ip,
                        mtu: self.host.uplink_mtu.saturating_sub(50),
                    };
                    let (index, changed) = vxlan::ensure(kernel, &device).await?;
                    sysctl::vxlan_device(kernel)?;
                    let changes = vxlan::sync_vteps(kernel, index, &desired.vteps).await?;
                    anyhow::Ok(changes + usize::from(changed))
                }
                .await;
                match result {
                    Ok(n) => applied.changes += n,
                    Err(e) => fail("vxlan", e),
                }
            }
            (true, _, _) => fail("vxlan", anyhow::anyhow!("a pool uses VXLAN but this node has no tunnel address yet")),
            (false, _, _) => match vxlan::remove(kernel).await {
                Ok(removed) => applied.changes += usize::from(removed),
                Err(e) => fail("vxlan", e),
            },
        }
        if desired.ipip {
            match tunnel_ip {
                Some(ip) => match ipip::ensure(kernel, ip, self.host.uplink_mtu.saturating_sub(20)).await {
                    Ok(changed) => applied.changes += usize::from(changed),
                    Err(e) => fail("ipip", e),
                },
                None => fail("ipip", anyhow::anyhow!("a pool uses IP-in-IP but this node has no tunnel address yet")),
            }
        }
        let routed = async {
            let devices = routes::Devices::read(kernel, &self.host.uplink).await?;
            routes::sync(kernel, &desired.routes, &devices).await
        }
        .await;
        match routed {
            Ok(n) => applied.changes += n,
            Err(e) => fail("routes", e),
        }
        for v6 in [false, true] {
            let rules = iptables::Rules {
                pools: desired.pools.iter().filter(|p| p.is_ipv6() == v6).copied().collect(),
                nat_pools: desired.nat_pools.iter().filter(|p| p.is_ipv6() == v6).copied().collect(),
                nodes: desired.node_addresses.iter().filter(|a| a.is_ipv6() == v6).copied().collect(),
                control_hosts: desired.control_hosts.iter().filter(|a| a.is_ipv6() == v6).copied().collect(),
                vxlan_port: desired.vxlan.then_some(self.host.vxlan_port),
                ipip: desired.ipip,
                bgp_ports: desired.bgp_ports.clone(),
            };
            let family = usize::from(v6);
            let last = self.applied_rules.lock().unwrap_or_else(|e| e.into_inner())[family].clone();
            if !full && last.as_ref() == Some(&rules) {
                continue;
            }
            // The iptables programs run off the async threads: the BGP speaker shares them.
            let (kernel, backend, wanted) = (Arc::clone(&self.kernel), self.backend, rules.clone());
            let outcome = tokio::task::spawn_blocking(move || iptables::sync(&*kernel, backend, v6, &wanted))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("the iptables task failed: {e}")));
            let mut last = self.applied_rules.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok(ran) => {
                    applied.iptables_restored |= ran;
                    last[family] = Some(rules);
                }
                Err(e) => {
                    last[family] = None;
                    drop(last);
                    fail("iptables", e);
                }
            }
        }
        applied
    }
}
