//! Routes: the kernel's main table made to match the desired routes. Only routes of our
//! protocol are ever touched; routes to pod veths are left to die with the veth (the CNI
//! plugin makes them, the agent only repairs them).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::route::{RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::calc::Target;
use brindle_cni::netlink::{ROUTE_PROTOCOL, route_address};

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
    pub async fn read(handle: &Handle, uplink: &str) -> anyhow::Result<Devices> {
        let links: Vec<_> = handle.link().get().execute().try_collect().await?;
        let by_name: HashMap<String, u32> = links
            .iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some((n.clone(), l.header.index)),
                    _ => None,
                })
            })
            .collect();
        let uplink = *by_name.get(uplink).ok_or_else(|| anyhow::anyhow!("the uplink {uplink} is gone"))?;
        Ok(Devices { by_name, uplink })
    }

    fn name_of(&self, index: u32) -> Option<&str> {
        self.by_name.iter().find(|(_, i)| **i == index).map(|(n, _)| n.as_str())
    }
}

/// A route as the kernel holds it, reduced to what we compare.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    blackhole: bool,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    onlink: bool,
}

fn shape_of(target: &Target, devices: &Devices) -> Option<Shape> {
    let dev = |name: &str| devices.by_name.get(name).copied();
    Some(match target {
        Target::Blackhole => Shape { blackhole: true, gateway: None, oif: None, onlink: false },
        Target::Direct { via } => {
            Shape { blackhole: false, gateway: Some(*via), oif: Some(devices.uplink), onlink: false }
        }
        Target::Vxlan { via } => Shape {
            blackhole: false,
            gateway: Some((*via).into()),
            oif: Some(dev(super::vxlan::DEVICE)?),
            onlink: true,
        },
        Target::Ipip { via } => {
            Shape { blackhole: false, gateway: Some((*via).into()), oif: Some(dev("tunl0")?), onlink: true }
        }
        Target::Workload { interface } => {
            Shape { blackhole: false, gateway: None, oif: Some(dev(interface)?), onlink: false }
        }
    })
}

fn read_shape(r: &RouteMessage) -> Option<(IpNetwork, Shape)> {
    let mut dst = None;
    let mut shape = Shape {
        blackhole: r.header.kind == RouteType::BlackHole,
        gateway: None,
        oif: None,
        onlink: r.header.flags.contains(RouteFlags::Onlink),
    };
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Destination(d) => dst = route_address(d),
            RouteAttribute::Gateway(g) => shape.gateway = route_address(g),
            RouteAttribute::Oif(i) => shape.oif = Some(*i),
            _ => {}
        }
    }
    let dst = dst.or_else(|| match r.header.address_family {
        rtnetlink::packet_route::AddressFamily::Inet6 => Some(IpAddr::from([0u16; 8])),
        _ => Some(IpAddr::from([0u8; 4])),
    })?;
    Some((IpNetwork::new(dst, r.header.destination_prefix_length).ok()?, shape))
}

fn message(dst: IpNetwork, shape: &Shape) -> anyhow::Result<RouteMessage> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.ip(), dst.prefix())?
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
    if shape.blackhole {
        builder = builder.kind(RouteType::BlackHole);
    } else {
        builder = builder.scope(if shape.gateway.is_some() { RouteScope::Universe } else { RouteScope::Link });
    }
    if let Some(oif) = shape.oif {
        builder = builder.output_interface(oif);
    }
    if let Some(gw) = shape.gateway {
        builder = builder.gateway(gw)?;
    }
    if shape.onlink {
        builder = builder.onlink();
    }
    Ok(builder.build())
}

/// Our routes in the kernel, both families, main table.
async fn ours(handle: &Handle) -> anyhow::Result<Vec<RouteMessage>> {
    let mut all = Vec::new();
    for filter in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let routes: Vec<RouteMessage> = handle.route().get(filter).execute().try_collect().await?;
        all.extend(routes.into_iter().filter(|r| r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)));
    }
    Ok(all)
}

/// How many route requests are in flight at once.
const IN_FLIGHT: usize = 256;

/// One change to make.
enum Change {
    Replace(RouteMessage),
    Remove(RouteMessage),
}

/// Makes the kernel's routes of our protocol match `desired`. Returns how many changed.
pub async fn sync(handle: &Handle, desired: &BTreeMap<IpNetwork, Target>, devices: &Devices) -> anyhow::Result<usize> {
    let actual: BTreeMap<IpNetwork, (Shape, RouteMessage)> =
        ours(handle).await?.into_iter().filter_map(|r| read_shape(&r).map(|(dst, s)| (dst, (s, r)))).collect();
    // Requests go out many at a time on the one socket: at 100,000 routes the round trips,
    // not the kernel, are what takes time.
    let mut requests = Vec::new();
    for (dst, target) in desired {
        let Some(want) = shape_of(target, devices) else {
            // The device is not there (a pod's veth already gone, the tunnel not made yet).
            continue;
        };
        if actual.get(dst).is_some_and(|(have, _)| *have == want) {
            continue;
        }
        tracing::debug!(%dst, ?want, have = ?actual.get(dst).map(|(s, _)| s), "route replaced");
        requests.push((format!("{dst}"), Change::Replace(message(*dst, &want)?)));
    }
    for (dst, (shape, route)) in &actual {
        if desired.contains_key(dst) {
            continue;
        }
        // A pod's route goes with its veth; one to a veth that is not in the datastore yet
        // was just made by the CNI plugin.
        if shape.oif.and_then(|i| devices.name_of(i)).is_some_and(|n| n.starts_with("brin")) {
            continue;
        }
        tracing::debug!(%dst, "route removed");
        requests.push((format!("removing {dst}"), Change::Remove(route.clone())));
    }
    let changes = requests.len();
    let failures: Vec<String> = futures::stream::iter(requests)
        .map(|(what, change)| async move {
            let outcome = match change {
                Change::Replace(m) => handle.route().add(m).replace().execute().await,
                Change::Remove(m) => match handle.route().del(m).execute().await {
                    Err(e) if brindle_cni::netlink::is_missing(&e) => Ok(()),
                    other => other,
                },
            };
            outcome.err().map(|e| format!("{what}: {e}"))
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|failure| async move { failure })
        .collect()
        .await;
    if !failures.is_empty() {
        anyhow::bail!("{} route(s) could not be programmed: {}", failures.len(), failures.join("; "));
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices() -> Devices {
        let by_name = [("eth0", 2), ("tunl0", 7), (crate::dataplane::vxlan::DEVICE, 9)]
            .into_iter()
            .map(|(n, i)| (n.to_owned(), i))
            .collect();
        Devices { by_name, uplink: 2 }
    }

    fn attributes(m: &RouteMessage) -> (Option<IpAddr>, Option<u32>) {
        let gateway =
            m.attributes.iter().find_map(|a| if let RouteAttribute::Gateway(g) = a { route_address(g) } else { None });
        let oif = m.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None });
        (gateway, oif)
    }

    #[test]
    fn ip_in_ip_routes_go_onlink_through_tunl0_to_the_node() {
        let target = Target::Ipip { via: "10.0.1.3".parse().unwrap() };
        let shape = shape_of(&target, &devices()).unwrap();
        let m = message("10.244.2.0/26".parse().unwrap(), &shape).unwrap();
        assert_eq!(attributes(&m), (Some("10.0.1.3".parse().unwrap()), Some(7)));
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        assert_eq!(m.header.protocol, RouteProtocol::Other(ROUTE_PROTOCOL));
        assert_eq!(m.header.destination_prefix_length, 26);
        // Without tunl0 (no ipip module) there is nothing to program.
        let mut without = devices();
        without.by_name.remove("tunl0");
        assert!(shape_of(&target, &without).is_none());
    }

    #[test]
    fn blackholes_and_vxlan_routes_have_the_right_shape() {
        let m = message("10.244.0.0/26".parse().unwrap(), &shape_of(&Target::Blackhole, &devices()).unwrap()).unwrap();
        assert_eq!(m.header.kind, RouteType::BlackHole);
        assert_eq!(attributes(&m), (None, None));
        let vxlan = shape_of(&Target::Vxlan { via: "10.244.1.1".parse().unwrap() }, &devices()).unwrap();
        let m = message("10.244.1.0/26".parse().unwrap(), &vxlan).unwrap();
        assert_eq!(attributes(&m), (Some("10.244.1.1".parse().unwrap()), Some(9)));
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        // What the kernel reports back compares equal, so a resync changes nothing.
        assert_eq!(read_shape(&m).map(|(_, s)| s), Some(vxlan));
    }
}
