//! The drivers that make the kernel match the desired state. Each reads what the kernel
//! holds, diffs, and changes only what differs, so a full resync repairs drift and an
//! unchanged state changes nothing.

pub mod ipip;
pub mod iptables;
pub mod routes;
pub mod sysctl;
pub mod vxlan;
pub mod wireguard;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use brindle_kernel::Kernel;
use brindle_kernel::names::MAIN_TABLE;
use ipnetwork::IpNetwork;

use crate::calc::{Desired, Target};

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

impl Applied {
    /// Records that `driver` failed (the next resync retries it).
    fn failed(&mut self, driver: &'static str, e: anyhow::Error) {
        tracing::warn!(driver, error = %e, "dataplane driver failed; the next resync retries");
        self.failures.push((driver, format!("{e:#}")));
    }
}

/// The kernel, through the kernel layer: the only writer.
pub struct Dataplane {
    kernel: Arc<dyn Kernel>,
    /// The uplink's name.
    uplink: String,
    backend: iptables::Backend,
    /// The iptables rules last applied, IPv4 and IPv6, with what that left in the kernel:
    /// between full resyncs iptables is touched only when they change, and then only where.
    applied_rules: Mutex<[Option<(iptables::Rules, iptables::Programmed)>; 2]>,
    /// What the last route sync left: between full resyncs the routes driver diffs against
    /// it instead of listing the kernel's table.
    programmed: Mutex<Option<Programmed>>,
    /// What WireGuard's driver last applied per family: between full resyncs `wg` runs only
    /// when a device's configuration changes.
    wireguard_applied: Mutex<[Option<wireguard::Applied>; 2]>,
    /// WireGuard's table as the last sync left it.
    wireguard_table: Mutex<Option<Programmed>>,
}

/// Our routes as a sync left them, with the devices it saw. It stands for the kernel's table
/// until a device comes, goes or changes (which takes routes with it) or a sync fails.
struct Programmed {
    table: u32,
    devices: HashMap<String, u32>,
    routes: routes::Programmed,
}

impl Dataplane {
    /// Drives `kernel` for a node whose uplink is `uplink`, with the iptables backend given
    /// or the one the host uses.
    pub fn new(kernel: Arc<dyn Kernel>, uplink: String, backend: Option<iptables::Backend>) -> Dataplane {
        let backend = backend.unwrap_or_else(|| iptables::Backend::detect(&*kernel));
        tracing::info!(?backend, %uplink, "dataplane ready");
        Dataplane {
            kernel,
            uplink,
            backend,
            applied_rules: Mutex::default(),
            programmed: Mutex::default(),
            wireguard_applied: Mutex::default(),
            wireguard_table: Mutex::default(),
        }
    }

    /// A WireGuard device `want` as the kernel has it (see [`wireguard::report`]).
    pub fn wireguard_report(&self, want: &crate::calc::WireguardDevice) -> serde_json::Value {
        wireguard::report(&*self.kernel, want)
    }

    /// WireGuard: each family's device configured as `desired` says, or removed when it says
    /// none (what a full pass finds of an earlier run too); then the table of both families'
    /// routes.
    async fn apply_wireguard(&self, desired: &Desired, full: bool, applied: &mut Applied) {
        let kernel = &*self.kernel;
        let mut last = std::mem::take(&mut *self.wireguard_applied.lock().unwrap_or_else(|e| e.into_inner()));
        for v6 in [false, true] {
            let family = usize::from(v6);
            let result = match (&desired.wireguard[family], last[family].take()) {
                (Some(device), last) => {
                    wireguard::ensure(kernel, device, last.filter(|_| !full)).await.map(|(now, changes)| {
                        self.wireguard_applied.lock().unwrap_or_else(|e| e.into_inner())[family] = Some(now);
                        changes
                    })
                }
                (None, Some(last)) => wireguard::remove(kernel, &last.interface, v6).await,
                (None, None) if full => wireguard::remove(kernel, &desired.wireguard_interfaces[family], v6).await,
                (None, None) => Ok(0),
            };
            match result {
                Ok(changes) => applied.changes += changes,
                Err(e) => applied.failed("wireguard", e),
            }
        }
        let devices: Vec<&crate::calc::WireguardDevice> = desired.wireguard.iter().flatten().collect();
        let Some(table) = devices.first().map(|d| d.settings.table) else {
            self.wireguard_table.lock().unwrap_or_else(|e| e.into_inner()).take();
            return;
        };
        let want: BTreeMap<IpNetwork, Target> = devices.iter().flat_map(|d| d.routes.clone()).collect();
        match self.sync_table(&self.wireguard_table, table, &want, None, full).await {
            Ok(changes) => applied.changes += changes,
            Err(e) => applied.failed("wireguard", e),
        }
    }

    /// One pass over every driver. A `full` pass checks everything against the kernel;
    /// another leaves iptables alone when its rules have not changed.
    pub async fn apply(&self, desired: &Desired, full: bool) -> Applied {
        let kernel = &*self.kernel;
        let mut applied = Applied::default();
        if let Err(e) = sysctl::ensure(kernel, desired) {
            applied.failed("sysctl", e);
        }
        for v6 in [false, true] {
            let family = usize::from(v6);
            let name = brindle_kernel::names::vxlan_device(v6);
            match (desired.vxlan[family], &desired.vxlan_devices[family]) {
                (true, Some(device)) => {
                    let result = async {
                        let devices = routes::Devices::read(kernel, &self.uplink).await?;
                        let (index, changed) = vxlan::ensure(kernel, device, devices.uplink).await?;
                        if !v6 {
                            sysctl::vxlan_device(kernel)?;
                        }
                        let changes = vxlan::sync_vteps(kernel, index, v6, &desired.vteps).await?;
                        anyhow::Ok(changes + usize::from(changed))
                    }
                    .await;
                    match result {
                        Ok(n) => applied.changes += n,
                        Err(e) => applied.failed("vxlan", e),
                    }
                }
                (true, None) => applied.failed(
                    "vxlan",
                    anyhow::anyhow!("a pool uses VXLAN but this node has no {name} tunnel address yet"),
                ),
                (false, _) => match vxlan::remove(kernel, name).await {
                    Ok(removed) => applied.changes += usize::from(removed),
                    Err(e) => applied.failed("vxlan", e),
                },
            }
        }
        if desired.ipip {
            match &desired.ipip_device {
                Some(device) => match ipip::ensure(kernel, device).await {
                    Ok(changed) => applied.changes += usize::from(changed),
                    Err(e) => applied.failed("ipip", e),
                },
                None => applied
                    .failed("ipip", anyhow::anyhow!("a pool uses IP-in-IP but this node has no tunnel address yet")),
            }
        } else {
            match ipip::stand_down(kernel).await {
                Ok(changed) => applied.changes += usize::from(changed),
                Err(e) => applied.failed("ipip", e),
            }
        }
        self.apply_wireguard(desired, full, &mut applied).await;
        match self.sync_table(&self.programmed, MAIN_TABLE, &desired.routes, None, full).await {
            Ok(n) => applied.changes += n,
            Err(e) => applied.failed("routes", e),
        }
        for v6 in [false, true] {
            let rules = iptables::Rules {
                pools: desired.pools.iter().filter(|p| p.is_ipv6() == v6).copied().collect(),
                nat_pools: desired.nat_pools.iter().filter(|p| p.is_ipv6() == v6).copied().collect(),
                nodes: desired.node_addresses.iter().filter(|a| a.is_ipv6() == v6).copied().collect(),
                control_hosts: desired.control_hosts.iter().filter(|a| a.is_ipv6() == v6).copied().collect(),
                vxlan_port: desired.vxlan_devices[usize::from(v6)].as_ref().map(|d| d.port),
                ipip: desired.ipip,
                wireguard_ports: desired.wireguard.iter().flatten().map(|w| w.settings.port).collect(),
                bgp_ports: desired.bgp_ports.clone(),
                to_host: desired.to_host,
                policy: desired.policy[usize::from(v6)].clone(),
            };
            let family = usize::from(v6);
            let last = self.applied_rules.lock().unwrap_or_else(|e| e.into_inner())[family].take();
            let known = match last {
                Some((last_rules, programmed)) if !full => {
                    if last_rules == rules {
                        self.applied_rules.lock().unwrap_or_else(|e| e.into_inner())[family] =
                            Some((last_rules, programmed));
                        continue;
                    }
                    Some(programmed)
                }
                _ => None,
            };
            // The iptables programs run off the async threads: the BGP speaker shares them.
            let (kernel, backend, wanted) = (Arc::clone(&self.kernel), self.backend, rules.clone());
            let outcome = tokio::task::spawn_blocking(move || iptables::sync(&*kernel, backend, v6, &wanted, known))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("the iptables task failed: {e}")));
            match outcome {
                Ok((ran, programmed)) => {
                    applied.iptables_restored |= ran;
                    self.applied_rules.lock().unwrap_or_else(|e| e.into_inner())[family] = Some((rules, programmed));
                }
                Err(e) => applied.failed("iptables", e),
            }
        }
        applied
    }

    /// After BGP changed the routes of `prefixes` alone (nothing else in `desired` changed):
    /// programs those, judged against what the last sync left, and touches nothing else.
    pub async fn apply_routes(&self, desired: &Desired, prefixes: &BTreeSet<IpNetwork>) -> Applied {
        let mut applied = Applied::default();
        match self.sync_table(&self.programmed, MAIN_TABLE, &desired.routes, Some(prefixes), false).await {
            Ok(n) => applied.changes = n,
            Err(e) => applied.failed("routes", e),
        }
        applied
    }

    /// The routes driver for routing table `table`, whose last sync `slot` keeps: `prefixes`
    /// alone (main table only) when given and what the last sync left still stands for the
    /// kernel (same table, no device came, went or changed, not `full`), else every route.
    async fn sync_table(
        &self,
        slot: &Mutex<Option<Programmed>>,
        table: u32,
        want: &BTreeMap<IpNetwork, Target>,
        prefixes: Option<&BTreeSet<IpNetwork>>,
        full: bool,
    ) -> anyhow::Result<usize> {
        let kernel = &*self.kernel;
        let devices = routes::Devices::read(kernel, &self.uplink).await?;
        // Taken out while the sync runs: after a failure the kernel's table is read again.
        let known = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        let known = known.filter(|p| !full && p.table == table && p.devices == devices.by_name).map(|p| p.routes);
        let (changes, routes) = match (prefixes, known) {
            (Some(prefixes), Some(mut known)) if table == MAIN_TABLE => {
                let changes = routes::sync_prefixes(kernel, want, &devices, &mut known, prefixes).await?;
                (changes, known)
            }
            (_, known) => routes::sync(kernel, table, want, &devices, known).await?,
        };
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Programmed { table, devices: devices.by_name, routes });
        Ok(changes)
    }
}
