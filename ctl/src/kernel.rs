//! A snapshot of this node's kernel networking state, read over rtnetlink in the calling
//! thread's namespace: links, IPv4 routes of the main table, and the VXLAN device's ARP and
//! FDB entries. `diagnose` compares it with what the datastore says should be there.

use std::net::IpAddr;

use brindle_cni::netlink::{self, format_mac, neighbour_ip, neighbour_lladdr, route_address};
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{RouteAttribute, RouteType};

/// A network device.
#[derive(Debug, Clone)]
pub struct Link {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Administratively up.
    pub up: bool,
    /// Its MTU.
    pub mtu: u32,
}

/// A route.
#[derive(Debug, Clone)]
pub struct Route {
    /// What it covers.
    pub dst: IpNetwork,
    /// Its next hop.
    pub gateway: Option<IpAddr>,
    /// Its device's name.
    pub device: Option<String>,
    /// A blackhole (drops what it covers).
    pub blackhole: bool,
    /// Its routing protocol number (98 for brindle's).
    pub protocol: u8,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.blackhole {
            write!(f, "blackhole ")?;
        }
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = &self.device {
            write!(f, " dev {dev}")?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

/// A static neighbour: an IP (ARP) or a remote VTEP (FDB) with a MAC, on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The IP, or the VTEP's address for FDB entries.
    pub ip: IpAddr,
    /// The MAC.
    pub mac: String,
    /// The device's index.
    pub index: u32,
}

/// What the kernel has.
#[derive(Debug, Clone, Default)]
pub struct Kernel {
    /// Every link.
    pub links: Vec<Link>,
    /// IPv4 routes.
    pub routes: Vec<Route>,
    /// ARP entries.
    pub arp: Vec<Neighbour>,
    /// Bridge FDB entries with a remote address (VXLAN).
    pub fdb: Vec<Neighbour>,
}

impl Kernel {
    /// Reads the snapshot.
    pub async fn read() -> anyhow::Result<Kernel> {
        let handle = netlink::connect()?;
        let mut kernel = Kernel::default();
        let links: Vec<_> = handle.link().get().execute().try_collect().await?;
        for m in links {
            let mut link =
                Link { name: String::new(), index: m.header.index, up: m.header.flags.contains(LinkFlags::Up), mtu: 0 };
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => link.name = n.clone(),
                    LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                    _ => {}
                }
            }
            kernel.links.push(link);
        }
        for m in netlink::routes(&handle, false).await? {
            let (mut dst, mut gateway, mut oif) = (None, None, None);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = route_address(d),
                    RouteAttribute::Gateway(g) => gateway = route_address(g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let dst = match dst {
                Some(ip) => IpNetwork::new(ip, m.header.destination_prefix_length)?,
                None => "0.0.0.0/0".parse()?,
            };
            kernel.routes.push(Route {
                dst,
                gateway,
                device: oif.and_then(|i| kernel.name_of(i).map(str::to_owned)),
                blackhole: m.header.kind == RouteType::BlackHole,
                protocol: u8::from(m.header.protocol),
            });
        }
        for (family, into) in [(AddressFamily::Inet, &mut kernel.arp), (AddressFamily::Bridge, &mut kernel.fdb)] {
            let entries: Vec<_> = handle.neighbours().get().set_address_family(family).execute().try_collect().await?;
            for m in entries {
                if let (Some(ip), Some(mac)) = (neighbour_ip(&m), neighbour_lladdr(&m)) {
                    into.push(Neighbour { ip, mac: format_mac(&mac), index: m.header.ifindex });
                }
            }
        }
        Ok(kernel)
    }

    /// A link by name.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    fn name_of(&self, index: u32) -> Option<&str> {
        self.links.iter().find(|l| l.index == index).map(|l| l.name.as_str())
    }

    /// The route the kernel uses for `ip`: the longest prefix that covers it.
    pub fn route_to(&self, ip: IpAddr) -> Option<&Route> {
        self.routes.iter().filter(|r| r.dst.contains(ip)).max_by_key(|r| r.dst.prefix())
    }
}
