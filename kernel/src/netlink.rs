//! The kernel over rtnetlink, in the calling thread's network namespace: [`Netlink`], and the
//! message-level helpers the CNI plugin uses to wire a pod.

use std::net::IpAddr;

use async_trait::async_trait;
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHop, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkIpIp, LinkUnspec, LinkVxlan, LinkWireguard, RouteMessageBuilder};

use crate::names::{IPIP_DEVICE, ROUTE_PROTOCOL};
use crate::{
    Error, Kernel, Link, Neighbour, NewVxlan, Output, Result, Route, RouteChange, RouteKind, Rule, Table, Vxlan,
};

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;

/// Opens a netlink connection in the calling thread's namespace (needs a tokio runtime).
pub fn connect() -> Result<Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| Error::Io(format!("opening a netlink socket: {e}")))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The kernel's errno in a netlink error, if that is what it is.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// True when the error says the object does not exist.
pub fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENODEV | ENOENT | ESRCH))
}

/// True when the error says the object exists already.
pub fn is_existing(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(EEXIST)
}

fn refused(what: impl Into<String>, e: rtnetlink::Error) -> Error {
    Error::Refused { what: what.into(), message: e.to_string() }
}

/// Finds a link by name.
pub async fn link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match handle.link().get().match_name(name).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(refused(format!("looking up link {name}"), e)),
    }
}

/// A link's MAC address as `aa:bb:...`.
pub fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(crate::format_mac(mac)),
            _ => None,
        })
        .unwrap_or_default()
}

/// Deletes a link by name; a link that is not there is not an error. Returns whether it
/// existed.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool> {
    let Some(link) = link(handle, name).await? else { return Ok(false) };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(refused(format!("deleting link {name}"), e)),
    }
}

fn invalid_route(route: &Route, e: impl std::fmt::Display) -> Error {
    Error::Refused { what: format!("route {route}"), message: e.to_string() }
}

/// The route message for `route`.
pub fn route_message(route: &Route) -> Result<RouteMessage> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dst.ip(), route.dst.prefix())
        .map_err(|e| invalid_route(route, e))?
        .protocol(RouteProtocol::from(route.protocol))
        .table_id(route.table);
    builder = match route.kind {
        RouteKind::Blackhole => builder.kind(RouteType::BlackHole),
        RouteKind::Throw => builder.kind(RouteType::Throw),
        RouteKind::Unicast => {
            builder.scope(if route.gateway.is_some() { RouteScope::Universe } else { RouteScope::Link })
        }
    };
    if let Some(oif) = route.oif {
        builder = builder.output_interface(oif);
    }
    if route.multipath.is_empty()
        && let Some(gw) = route.gateway
    {
        builder = builder.gateway(gw).map_err(|e| invalid_route(route, e))?;
    }
    if route.onlink {
        builder = builder.onlink();
    }
    let mut message = builder.build();
    if !route.multipath.is_empty() {
        let hops = route.gateway.iter().chain(&route.multipath).map(|gw| {
            let mut hop = RouteNextHop::default();
            hop.interface_index = route.oif.unwrap_or(0);
            hop.attributes.push(RouteAttribute::Gateway(match gw {
                IpAddr::V4(a) => RouteAddress::Inet(*a),
                IpAddr::V6(a) => RouteAddress::Inet6(*a),
            }));
            hop
        });
        message.attributes.retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        message.attributes.push(RouteAttribute::MultiPath(hops.collect()));
    }
    Ok(message)
}

/// What brindle compares of a route the kernel reports.
pub fn route_of(m: &RouteMessage) -> Option<Route> {
    let mut dst = None;
    let mut route = Route {
        dst: IpNetwork::new(IpAddr::from([0u8; 4]), 0).expect("the default route"),
        kind: match m.header.kind {
            RouteType::BlackHole => RouteKind::Blackhole,
            RouteType::Throw => RouteKind::Throw,
            _ => RouteKind::Unicast,
        },
        table: u32::from(m.header.table),
        gateway: None,
        oif: None,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(m.header.protocol),
        multipath: Vec::new(),
    };
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(d) => dst = route_address(d),
            RouteAttribute::Gateway(g) => route.gateway = route_address(g),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::MultiPath(hops) => {
                let mut gateways = hops.iter().flat_map(|h| {
                    h.attributes.iter().filter_map(|a| match a {
                        RouteAttribute::Gateway(g) => route_address(g),
                        _ => None,
                    })
                });
                route.gateway = gateways.next();
                route.multipath = gateways.collect();
                route.oif = hops.first().map(|h| h.interface_index);
            }
            _ => {}
        }
    }
    let dst = dst.unwrap_or(match m.header.address_family {
        AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
        _ => IpAddr::from([0u8; 4]),
    });
    route.dst = IpNetwork::new(dst, m.header.destination_prefix_length).ok()?;
    Some(route)
}

/// The rule message for `rule`, of brindle's protocol.
fn rule_message(rule: &Rule) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header.family = if rule.ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    message.header.action = RuleAction::ToTable;
    if rule.invert {
        message.header.flags.insert(RuleFlags::Invert);
    }
    message.attributes = vec![
        RuleAttribute::Priority(rule.priority),
        RuleAttribute::FwMark(rule.mark),
        RuleAttribute::FwMask(rule.mask),
        RuleAttribute::Table(rule.table),
        RuleAttribute::Protocol(RouteProtocol::from(ROUTE_PROTOCOL)),
    ];
    message
}

/// A rule the kernel reports, when it is one of brindle's.
fn rule_of(m: &RuleMessage) -> Option<Rule> {
    let mut rule = Rule {
        ipv6: m.header.family == AddressFamily::Inet6,
        priority: 0,
        mark: 0,
        mask: 0,
        invert: m.header.flags.contains(RuleFlags::Invert),
        table: u32::from(m.header.table),
    };
    let mut ours = false;
    for attr in &m.attributes {
        match attr {
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::FwMark(v) => rule.mark = *v,
            RuleAttribute::FwMask(v) => rule.mask = *v,
            RuleAttribute::Table(t) => rule.table = *t,
            RuleAttribute::Protocol(p) => ours = u8::from(*p) == ROUTE_PROTOCOL,
            _ => {}
        }
    }
    ours.then_some(rule)
}

/// Adds (or replaces) a route of brindle's protocol: `dst` through `gateway`, or straight out
/// of the device `index`.
pub async fn replace_route(handle: &Handle, dst: IpNetwork, gateway: Option<IpAddr>, index: u32) -> Result<()> {
    let route = Route::ours(dst, gateway, Some(index), false);
    handle
        .route()
        .add(route_message(&route)?)
        .replace()
        .execute()
        .await
        .map_err(|e| refused(format!("adding route {route}"), e))
}

/// Every route message of a family, of every table.
pub async fn routes(handle: &Handle, ipv6: bool) -> Result<Vec<RouteMessage>> {
    let filter = if ipv6 {
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
    };
    handle.route().get(filter).execute().try_collect().await.map_err(|e| refused("listing routes", e))
}

/// A route attribute's address.
pub fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

/// A neighbour entry's link-layer address.
pub fn neighbour_lladdr(m: &NeighbourMessage) -> Option<Vec<u8>> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => Some(l.clone()),
        _ => None,
    })
}

/// A neighbour entry's IP: the neighbour's address (ARP, NDP), or the remote VTEP (FDB,
/// where the bridge family leaves the address undecoded).
pub fn neighbour_ip(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => match bytes.len() {
            4 => <[u8; 4]>::try_from(&bytes[..]).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(&bytes[..]).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

/// Writes a sysctl through /proc (in the calling thread's network namespace).
pub fn sysctl(path: &str, value: &str) -> Result<()> {
    let file = format!("/proc/sys/{path}");
    std::fs::write(&file, value).map_err(|e| Error::Io(format!("setting {file} to {value}: {e}")))
}

fn link_of(m: &LinkMessage) -> Link {
    let mut link = Link {
        name: String::new(),
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        mtu: 0,
        mac: None,
        vxlan: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(&mac[..]).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(v)) = info {
                        let mut vxlan = Vxlan { vni: 0, port: 0, local: std::net::Ipv4Addr::UNSPECIFIED.into() };
                        for item in v {
                            match item {
                                InfoVxlan::Id(id) => vxlan.vni = *id,
                                InfoVxlan::Port(port) => vxlan.port = *port,
                                InfoVxlan::Local(local) => vxlan.local = (*local).into(),
                                InfoVxlan::Local6(local) => vxlan.local = (*local).into(),
                                _ => {}
                            }
                        }
                        link.vxlan = Some(vxlan);
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn neighbour_of(table: Table, m: &NeighbourMessage) -> Option<Neighbour> {
    let mac = <[u8; 6]>::try_from(&neighbour_lladdr(m)?[..]).ok()?;
    Some(Neighbour {
        table,
        index: m.header.ifindex,
        ip: neighbour_ip(m)?,
        mac,
        permanent: m.header.state == NeighbourState::Permanent,
    })
}

/// The kernel of the calling thread's network namespace, over one rtnetlink socket.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket (needs a tokio runtime).
    pub fn connect() -> Result<Netlink> {
        Ok(Netlink { handle: connect()? })
    }

    /// Every entry of a neighbour table, as the kernel sends them.
    async fn neighbour_messages(&self, table: Table) -> Result<Vec<NeighbourMessage>> {
        let families: &[AddressFamily] = match table {
            Table::Arp => &[AddressFamily::Inet, AddressFamily::Inet6],
            Table::Fdb => &[AddressFamily::Bridge],
        };
        let mut messages = Vec::new();
        for family in families {
            let dump: Vec<NeighbourMessage> = self
                .handle
                .neighbours()
                .get()
                .set_address_family(*family)
                .execute()
                .try_collect()
                .await
                .map_err(|e| refused(format!("listing {table:?} entries"), e))?;
            messages.extend(dump);
        }
        Ok(messages)
    }
}

#[async_trait]
impl Kernel for Netlink {
    async fn links(&self) -> Result<Vec<Link>> {
        let links: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.map_err(|e| refused("listing links", e))?;
        Ok(links.iter().map(link_of).collect())
    }

    async fn add_vxlan(&self, device: &NewVxlan) -> Result<()> {
        let vxlan = LinkVxlan::new(&device.name, device.vxlan.vni).port(device.vxlan.port);
        let vxlan = match device.vxlan.local {
            IpAddr::V4(local) => vxlan.local(local),
            IpAddr::V6(local) => vxlan.local6(local),
        };
        let message = vxlan.dev(device.uplink).learning(false).mtu(device.mtu).address(device.mac.to_vec()).build();
        self.handle.link().add(message).execute().await.map_err(|e| refused(format!("creating {}", device.name), e))
    }

    async fn add_wireguard(&self, name: &str) -> Result<()> {
        self.handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
            .map_err(|e| refused(format!("creating {name} (is there a wireguard module?)"), e))
    }

    async fn load_ipip(&self) -> Result<bool> {
        let has_tunl0 = |links: Vec<Link>| links.iter().any(|l| l.name == IPIP_DEVICE);
        if has_tunl0(self.links().await?) {
            return Ok(true);
        }
        // Loading the module makes tunl0 before this request is served, which then finds it
        // taken (EEXIST); without the module the request fails (EOPNOTSUPP). Either way the
        // links say what is there.
        let _ = self.handle.link().add(LinkIpIp::new(IPIP_DEVICE).build()).execute().await;
        Ok(has_tunl0(self.links().await?))
    }

    async fn delete_link(&self, name: &str) -> Result<bool> {
        delete_link(&self.handle, name).await
    }

    async fn set_up(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(|e| refused(format!("setting link {index} up with MTU {mtu}"), e))
    }

    async fn set_down(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
            .map_err(|e| refused(format!("setting link {index} down"), e))
    }

    async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| refused(format!("listing the addresses of link {index}"), e))?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNetwork::new(*ip, m.header.prefix_len).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    async fn add_address(&self, index: u32, address: IpNetwork) -> Result<()> {
        self.handle
            .address()
            .add(index, address.ip(), address.prefix())
            .execute()
            .await
            .map_err(|e| refused(format!("adding {address} to link {index}"), e))
    }

    async fn routes(&self, table: u32, protocol: Option<u8>) -> Result<Vec<Route>> {
        let mut all = Vec::new();
        for v6 in [false, true] {
            all.extend(routes(&self.handle, v6).await?.iter().filter_map(route_of));
        }
        Ok(all.into_iter().filter(|r| r.table == table && protocol.is_none_or(|p| r.protocol == p)).collect())
    }

    async fn rules(&self) -> Result<Vec<Rule>> {
        let mut ours = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let messages: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
                .map_err(|e| refused("listing rules", e))?;
            ours.extend(messages.iter().filter_map(rule_of));
        }
        Ok(ours)
    }

    async fn add_rule(&self, rule: &Rule) -> Result<()> {
        let mut request = self.handle.rule().add();
        *request.message_mut() = rule_message(rule);
        request.execute().await.map_err(|e| refused(format!("adding rule {rule}"), e))
    }

    async fn delete_rule(&self, rule: &Rule) -> Result<()> {
        match self.handle.rule().del(rule_message(rule)).execute().await {
            Err(e) if is_missing(&e) => Ok(()),
            other => other.map_err(|e| refused(format!("deleting rule {rule}"), e)),
        }
    }

    async fn change_routes(&self, changes: Vec<RouteChange>) -> Vec<Error> {
        // The socket belongs to this thread's namespace; the work runs off the async threads.
        let socket = match crate::batch::socket() {
            Ok(socket) => socket,
            Err(e) => return vec![e],
        };
        tokio::task::spawn_blocking(move || crate::batch::change_routes(&socket, changes))
            .await
            .unwrap_or_else(|e| vec![Error::Io(format!("the route task failed: {e}"))])
    }

    async fn neighbours(&self, table: Table, index: Option<u32>) -> Result<Vec<Neighbour>> {
        Ok(self
            .neighbour_messages(table)
            .await?
            .iter()
            .filter(|m| index.is_none_or(|i| m.header.ifindex == i))
            .filter_map(|m| neighbour_of(table, m))
            .collect())
    }

    async fn set_neighbour(&self, entry: &Neighbour) -> Result<()> {
        let request = match entry.table {
            Table::Arp => self.handle.neighbours().add(entry.index, entry.ip).link_layer_address(&entry.mac),
            Table::Fdb => self
                .handle
                .neighbours()
                .add_bridge(entry.index, &entry.mac)
                .destination(entry.ip)
                .flags(NeighbourFlags::Own),
        };
        request
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| refused(format!("{:?} entry {} {}", entry.table, entry.ip, crate::format_mac(&entry.mac)), e))
    }

    async fn delete_neighbour(&self, entry: &Neighbour) -> Result<()> {
        let all = self.neighbour_messages(entry.table).await?;
        let Some(message) = all.into_iter().find(|m| neighbour_of(entry.table, m).as_ref() == Some(entry)) else {
            return Ok(());
        };
        match self.handle.neighbours().del(message).execute().await {
            Err(e) if !is_missing(&e) => Err(refused(format!("removing {:?} entry {}", entry.table, entry.ip), e)),
            _ => Ok(()),
        }
    }

    fn sysctl(&self, path: &str) -> Result<String> {
        let file = format!("/proc/sys/{path}");
        std::fs::read_to_string(&file)
            .map(|v| v.trim().to_owned())
            .map_err(|e| Error::Io(format!("reading {file}: {e}")))
    }

    fn set_sysctl(&self, path: &str, value: &str) -> Result<()> {
        sysctl(path, value)
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let started = |e: std::io::Error| Error::Io(format!("running {program}: {e}"));
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(started)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).map_err(started)?;
        }
        let out = child.wait_with_output().map_err(started)?;
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
