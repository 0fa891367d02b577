//! Routes: a kernel routing table (the main one, or WireGuard's) made to match the desired
//! routes. Only routes of our protocol are ever touched; routes to pod veths are left to die with the veth (the CNI
//! plugin makes them, the agent only repairs them).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use brindle_kernel::names::{self, ROUTE_PROTOCOL};
use brindle_kernel::{Kernel, Route, RouteChange};
use ipnetwork::IpNetwork;

use crate::calc::Target;

/// The devices routes leave through.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    /// Interface index by name.
    pub by_name: HashMap<String, u32>,
    /// The uplink's index.
    pub uplink: u32,
}

impl Devices {
    /// Reads every link.
    pub async fn read(kernel: &dyn Kernel, uplink: &str) -> anyhow::Result<Devices> {
        let by_name: HashMap<String, u32> = kernel.links().await?.into_iter().map(|l| (l.name, l.index)).collect();
        let uplink = *by_name.get(uplink).ok_or_else(|| anyhow::anyhow!("the uplink {uplink} is gone"))?;
        Ok(Devices { by_name, uplink })
    }

    fn name_of(&self, index: u32) -> Option<&str> {
        self.by_name.iter().find(|(_, i)| **i == index).map(|(n, _)| n.as_str())
    }
}

/// The kernel route for `target`; `None` when its device is not there (a pod's veth already
/// gone, the tunnel not made yet).
fn route_for(dst: IpNetwork, target: &Target, devices: &Devices) -> Option<Route> {
    let dev = |name: &str| devices.by_name.get(name).copied();
    Some(match target {
        Target::Blackhole => Route::blackhole(dst),
        Target::Throw => Route::throw(dst),
        Target::Direct { via } => Route::ours(dst, Some(*via), Some(devices.uplink), false),
        Target::Multipath { via } => Route {
            multipath: via[1..].to_vec(),
            ..Route::ours(dst, via.first().copied(), Some(devices.uplink), false)
        },
        Target::Vxlan { via } => Route::ours(dst, Some(*via), Some(dev(names::vxlan_device(via.is_ipv6()))?), true),
        Target::Ipip { via } => Route::ours(dst, Some((*via).into()), Some(dev(names::IPIP_DEVICE)?), true),
        Target::Workload { interface } | Target::Wireguard { interface } => {
            Route::ours(dst, None, Some(dev(interface)?), false)
        }
    })
}

/// Our routes in the kernel, by destination.
pub type Programmed = BTreeMap<IpNetwork, Route>;

/// The change that makes `have` (our route to `dst` in `table`, if any) what `want` says.
fn change_for(
    table: u32,
    dst: IpNetwork,
    want: Option<&Target>,
    have: Option<&Route>,
    devices: &Devices,
) -> Option<RouteChange> {
    match want {
        Some(target) => {
            let want = route_for(dst, target, devices)?.in_table(table);
            if have == Some(&want) {
                return None;
            }
            tracing::debug!(%dst, want = %want, have = ?have.map(ToString::to_string), "route replaced");
            Some(RouteChange::Replace(want))
        }
        None => {
            let have = have?;
            // A pod's route goes with its veth; one to a veth that is not in the datastore
            // yet was just made by the CNI plugin.
            if have.oif.and_then(|i| devices.name_of(i)).is_some_and(names::is_workload) {
                return None;
            }
            tracing::debug!(%dst, "route removed");
            Some(RouteChange::Remove(have.clone()))
        }
    }
}

/// Makes the kernel's routes of `prefixes` in `table` (ours, judged against `known`) match
/// `desired`, and `known` match the kernel after. Returns how many changed.
async fn change(
    kernel: &dyn Kernel,
    table: u32,
    desired: &BTreeMap<IpNetwork, Target>,
    devices: &Devices,
    known: &mut Programmed,
    prefixes: impl Iterator<Item = IpNetwork>,
) -> anyhow::Result<usize> {
    let changes: Vec<RouteChange> =
        prefixes.filter_map(|dst| change_for(table, dst, desired.get(&dst), known.get(&dst), devices)).collect();
    let count = changes.len();
    for change in &changes {
        match change {
            RouteChange::Replace(route) => drop(known.insert(route.dst, route.clone())),
            RouteChange::Remove(route) => drop(known.remove(&route.dst)),
        }
    }
    let failures = kernel.change_routes(changes).await;
    if !failures.is_empty() {
        let failures: Vec<String> = failures.iter().map(ToString::to_string).collect();
        anyhow::bail!("{} route(s) could not be programmed: {}", failures.len(), failures.join("; "));
    }
    Ok(count)
}

/// Makes the kernel's routes of our protocol in `table` match `desired`, judged against
/// `known` (what an earlier sync left, when nothing may have changed since) or against the
/// kernel's own table. Returns how many changed and our routes as they now are, for the next
/// sync (after a failure the caller must read the kernel again: what the kernel refused is
/// unknown).
pub async fn sync(
    kernel: &dyn Kernel,
    table: u32,
    desired: &BTreeMap<IpNetwork, Target>,
    devices: &Devices,
    known: Option<Programmed>,
) -> anyhow::Result<(usize, Programmed)> {
    let mut known = match known {
        Some(known) => known,
        None => kernel.routes(table, Some(ROUTE_PROTOCOL)).await?.into_iter().map(|r| (r.dst, r)).collect(),
    };
    let stale: Vec<IpNetwork> = known.keys().filter(|dst| !desired.contains_key(dst)).copied().collect();
    let prefixes = desired.keys().copied().chain(stale);
    let count = change(kernel, table, desired, devices, &mut known, prefixes).await?;
    Ok((count, known))
}

/// Like [`sync`] of the main table for the `prefixes` alone (those a BGP change touched),
/// judged against `known`, which it brings up to date.
pub async fn sync_prefixes(
    kernel: &dyn Kernel,
    desired: &BTreeMap<IpNetwork, Target>,
    devices: &Devices,
    known: &mut Programmed,
    prefixes: &BTreeSet<IpNetwork>,
) -> anyhow::Result<usize> {
    change(kernel, names::MAIN_TABLE, desired, devices, known, prefixes.iter().copied()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_kernel::fake::FakeKernel;
    use brindle_kernel::names::MAIN_TABLE as MAIN;

    fn kernel() -> (FakeKernel, Devices) {
        let kernel = FakeKernel::new();
        let mut by_name = HashMap::new();
        for name in ["eth0", names::IPIP_DEVICE, names::VXLAN_DEVICE, "brin0123456789a"] {
            by_name.insert(name.to_owned(), kernel.add_link(name, 1500));
        }
        let uplink = by_name["eth0"];
        (kernel, Devices { by_name, uplink })
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn run<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
    }

    #[test]
    fn tunnel_routes_go_onlink_through_their_device_and_wait_for_it() {
        let (_, devices) = kernel();
        let ipip = route_for(net("10.244.2.0/26"), &Target::Ipip { via: "10.0.1.3".parse().unwrap() }, &devices);
        let ipip = ipip.unwrap();
        assert_eq!((ipip.oif, ipip.onlink, ipip.protocol), (Some(devices.by_name["tunl0"]), true, ROUTE_PROTOCOL));
        let vxlan = route_for(net("10.244.1.0/26"), &Target::Vxlan { via: "10.244.1.1".parse().unwrap() }, &devices);
        assert_eq!(vxlan.unwrap().oif, Some(devices.by_name[names::VXLAN_DEVICE]));
        // Without tunl0 (no ipip module) there is nothing to program.
        let mut without = devices.clone();
        without.by_name.remove("tunl0");
        assert!(
            route_for(net("10.244.2.0/26"), &Target::Ipip { via: "10.0.1.3".parse().unwrap() }, &without).is_none()
        );
    }

    #[test]
    fn a_sync_changes_only_what_differs_and_a_second_changes_nothing() {
        let (kernel, devices) = kernel();
        let via = "10.0.0.7".parse().unwrap();
        // Someone else's route, ours that is wrong, ours that is stale, a pod's that is new.
        kernel.add_route(Route {
            protocol: 2,
            ..Route::ours(net("10.9.0.0/16"), Some(via), Some(devices.uplink), false)
        });
        kernel.add_route(Route::ours(
            net("10.244.1.0/26"),
            Some("10.0.0.8".parse().unwrap()),
            Some(devices.uplink),
            false,
        ));
        kernel.add_route(Route::ours(net("10.244.9.0/26"), Some(via), Some(devices.uplink), false));
        kernel.add_route(Route::ours(net("10.244.0.5/32"), None, Some(devices.by_name["brin0123456789a"]), false));
        let desired: BTreeMap<IpNetwork, Target> = [
            (net("10.244.1.0/26"), Target::Direct { via }),
            (net("10.244.0.0/26"), Target::Blackhole),
            (net("10.244.0.9/32"), Target::Workload { interface: "brin-gone".into() }),
        ]
        .into();
        assert_eq!(run(sync(&kernel, MAIN, &desired, &devices, None)).map(|(n, _)| n).unwrap(), 3);
        assert_eq!(
            kernel.take_log(),
            [
                "route replace blackhole 10.244.0.0/26 proto 98",
                &format!("route replace 10.244.1.0/26 via 10.0.0.7 oif {} proto 98", devices.uplink),
                &format!("route del 10.244.9.0/26 via 10.0.0.7 oif {} proto 98", devices.uplink),
            ]
        );
        let kept = kernel.state().routes.keys().map(|(_, dst)| dst.to_string()).collect::<Vec<_>>();
        assert!(kept.contains(&"10.9.0.0/16".to_owned()) && kept.contains(&"10.244.0.5/32".to_owned()), "{kept:?}");
        assert_eq!(run(sync(&kernel, MAIN, &desired, &devices, None)).map(|(n, _)| n).unwrap(), 0);
        assert!(kernel.take_log().is_empty());
    }

    #[test]
    fn a_sync_judged_against_what_it_programmed_matches_one_judged_against_the_kernel() {
        let (kernel, devices) = kernel();
        let via = "10.0.0.7".parse().unwrap();
        let first: BTreeMap<IpNetwork, Target> =
            [(net("10.244.1.0/26"), Target::Direct { via }), (net("10.244.2.0/26"), Target::Blackhole)].into();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (_, known) = runtime.block_on(sync(&kernel, MAIN, &first, &devices, None)).unwrap();
        let second: BTreeMap<IpNetwork, Target> =
            [(net("10.244.2.0/26"), Target::Blackhole), (net("10.244.3.0/26"), Target::Direct { via })].into();
        kernel.take_log();
        let (changed, known) = runtime.block_on(sync(&kernel, MAIN, &second, &devices, Some(known))).unwrap();
        assert_eq!(changed, 2, "{:?}", kernel.take_log());
        let held: Programmed = kernel.state().routes.values().map(|r| (r.dst, r.clone())).collect();
        assert_eq!(known, held, "what the sync says it left is what the kernel holds");
    }

    #[test]
    fn a_sync_of_some_prefixes_touches_only_them_and_keeps_what_it_knows_true() {
        let (kernel, devices) = kernel();
        let via = "10.0.0.7".parse().unwrap();
        let mut desired: BTreeMap<IpNetwork, Target> =
            [(net("10.244.1.0/26"), Target::Direct { via }), (net("10.244.2.0/26"), Target::Direct { via })].into();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (_, mut known) = runtime.block_on(sync(&kernel, MAIN, &desired, &devices, None)).unwrap();
        kernel.take_log();
        // BGP withdrew one prefix, taught a new one and moved one; only two are said to change.
        desired.remove(&net("10.244.1.0/26"));
        desired.insert(net("10.244.3.0/26"), Target::Direct { via });
        desired.insert(net("10.244.2.0/26"), Target::Direct { via: "10.0.0.8".parse().unwrap() });
        let told = [net("10.244.1.0/26"), net("10.244.3.0/26")].into();
        let changed = runtime.block_on(sync_prefixes(&kernel, &desired, &devices, &mut known, &told)).unwrap();
        assert_eq!(changed, 2);
        assert_eq!(
            kernel.take_log(),
            [
                format!("route del 10.244.1.0/26 via 10.0.0.7 oif {} proto 98", devices.uplink),
                format!("route replace 10.244.3.0/26 via 10.0.0.7 oif {} proto 98", devices.uplink),
            ]
        );
        let held: Programmed = kernel.state().routes.values().map(|r| (r.dst, r.clone())).collect();
        assert_eq!(known, held);
    }

    #[test]
    fn a_refused_route_is_reported_and_the_next_sync_retries_only_it() {
        let (kernel, devices) = kernel();
        let via = "10.0.0.7".parse().unwrap();
        let desired: BTreeMap<IpNetwork, Target> =
            [(net("10.244.1.0/26"), Target::Direct { via }), (net("10.244.2.0/26"), Target::Direct { via })].into();
        kernel.fail("10.244.2.0/26");
        let error = run(sync(&kernel, MAIN, &desired, &devices, None)).map(|(n, _)| n).unwrap_err().to_string();
        assert!(error.starts_with("1 route(s) could not be programmed") && error.contains("10.244.2.0/26"), "{error}");
        kernel.take_log();
        kernel.heal();
        assert_eq!(run(sync(&kernel, MAIN, &desired, &devices, None)).map(|(n, _)| n).unwrap(), 1);
        assert_eq!(kernel.take_log().len(), 1);
    }
}
