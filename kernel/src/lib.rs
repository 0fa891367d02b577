//! brindle-kernel: every kernel effect brindle has, in one place.
//!
//! The [`Kernel`] trait is what the agent's drivers and `brindlectl` see: links, addresses,
//! routes (thousands of requests in flight, many to a datagram), ARP and FDB entries, sysctls, and the programs that
//! drive iptables and ipset. [`netlink::Netlink`] does it over rtnetlink in the calling
//! thread's network namespace; [`fake::FakeKernel`] keeps the same state in memory, records
//! every change and fails on demand, so a driver's diff, apply and retry are unit-tested
//! without a kernel. The node's naming constants ([`names`]) live here once.
//!
//! The CNI plugin, which works in two namespaces at once (a veth pair between the node and a
//! pod), uses the rtnetlink helpers of [`netlink`] directly.

mod batch;
pub mod fake;
pub mod names;
pub mod netlink;

use std::net::IpAddr;

use async_trait::async_trait;
use ipnetwork::IpNetwork;

/// What went wrong, naming the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The kernel refused a request.
    #[error("{what}: {message}")]
    Refused {
        /// The object and the change, e.g. `adding route 10.0.0.0/26 via 10.0.0.1`.
        what: String,
        /// The kernel's answer.
        message: String,
    },
    /// The object is not there.
    #[error("{0} does not exist")]
    Missing(String),
    /// A file or a program could not be used.
    #[error("{0}")]
    Io(String),
    /// A program ran and failed.
    #[error("{program} failed: {message}")]
    Program {
        /// The program and its arguments.
        program: String,
        /// What it said.
        message: String,
    },
}

/// The result of a kernel operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A VXLAN device's identity: what makes a device that exists right or wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// The local underlay address (its family is the family the device carries over).
    pub local: IpAddr,
}

/// A network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Administratively up.
    pub up: bool,
    /// Its MTU.
    pub mtu: u32,
    /// Its MAC address.
    pub mac: Option<[u8; 6]>,
    /// Its VXLAN identity, for a VXLAN device.
    pub vxlan: Option<Vxlan>,
}

/// A VXLAN device to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVxlan {
    /// Its name.
    pub name: String,
    /// Its identity.
    pub vxlan: Vxlan,
    /// The underlay device's index.
    pub uplink: u32,
    /// Its MTU.
    pub mtu: u32,
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// What a route does with what it covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// Sends it on, through a next hop or out of a device.
    #[default]
    Unicast,
    /// Drops it.
    Blackhole,
    /// Ends the lookup in this table: the next policy rule's table decides.
    Throw,
}

/// A route, reduced to what brindle sets and compares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// What it covers.
    pub dst: IpNetwork,
    /// What it does.
    pub kind: RouteKind,
    /// Its routing table ([`names::MAIN_TABLE`] unless policy routing uses another).
    pub table: u32,
    /// Its next hop.
    pub gateway: Option<IpAddr>,
    /// Its device's index.
    pub oif: Option<u32>,
    /// The next hop is on the device whatever its address (tunnels).
    pub onlink: bool,
    /// Its routing protocol number ([`names::ROUTE_PROTOCOL`] for brindle's).
    pub protocol: u8,
    /// Further next hops beside `gateway`, out of the same device: an equal-cost multipath
    /// route (RTA_MULTIPATH), the kernel spreading flows over all of them.
    pub multipath: Vec<IpAddr>,
}

impl Route {
    /// A route of brindle's protocol.
    pub fn ours(dst: IpNetwork, gateway: Option<IpAddr>, oif: Option<u32>, onlink: bool) -> Route {
        Route {
            dst,
            kind: RouteKind::Unicast,
            table: names::MAIN_TABLE,
            gateway,
            oif,
            onlink,
            protocol: names::ROUTE_PROTOCOL,
            multipath: Vec::new(),
        }
    }

    /// A blackhole of brindle's protocol.
    pub fn blackhole(dst: IpNetwork) -> Route {
        Route { kind: RouteKind::Blackhole, ..Route::ours(dst, None, None, false) }
    }

    /// A throw route of brindle's protocol.
    pub fn throw(dst: IpNetwork) -> Route {
        Route { kind: RouteKind::Throw, ..Route::ours(dst, None, None, false) }
    }

    /// The same route in routing table `table`.
    pub fn in_table(self, table: u32) -> Route {
        Route { table, ..self }
    }
}

impl Route {
    /// The route as `ip route` prints it, its device named `device` when given (else by index).
    pub fn describe(&self, device: Option<&str>) -> String {
        let mut text = match self.kind {
            RouteKind::Unicast => String::new(),
            RouteKind::Blackhole => "blackhole ".to_owned(),
            RouteKind::Throw => "throw ".to_owned(),
        };
        text += &self.dst.to_string();
        if let Some(gw) = self.gateway {
            text += &format!(" via {gw}");
        }
        for gw in &self.multipath {
            text += &format!(" via {gw}");
        }
        match (device, self.oif) {
            (Some(name), _) => text += &format!(" dev {name}"),
            (None, Some(oif)) => text += &format!(" oif {oif}"),
            (None, None) => {}
        }
        if self.onlink {
            text += " onlink";
        }
        if self.table != names::MAIN_TABLE {
            text += &format!(" table {}", self.table);
        }
        text + &format!(" proto {}", self.protocol)
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe(None))
    }
}

/// A policy-routing rule of brindle's (`ip rule`, its protocol [`names::ROUTE_PROTOCOL`]):
/// packets whose mark, masked, is (or with `invert`, is not) `mark` look up `table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    /// For IPv6 (else IPv4).
    pub ipv6: bool,
    /// Its priority: rules are tried from the lowest.
    pub priority: u32,
    /// The firewall mark it matches.
    pub mark: u32,
    /// The bits of the mark it compares.
    pub mask: u32,
    /// It matches the packets whose mark does not match.
    pub invert: bool,
    /// The routing table such packets look up.
    pub table: u32,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let not = if self.invert { "not " } else { "" };
        write!(f, "{}: {not}from all fwmark {:#x}/{:#x} lookup {}", self.priority, self.mark, self.mask, self.table)?;
        if self.ipv6 { f.write_str(" (IPv6)") } else { Ok(()) }
    }
}

/// One change to the routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// Add the route, or replace the one to the same destination.
    Replace(Route),
    /// Remove the route; one already gone is not an error.
    Remove(Route),
}

/// Which neighbour table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// ARP (IPv4) and NDP (IPv6): an address's MAC.
    Arp,
    /// The bridge FDB: a MAC's remote VTEP (VXLAN).
    Fdb,
}

/// A static neighbour entry: on ARP, `ip` has `mac`; on the FDB, `mac` is behind the VTEP
/// `ip`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Neighbour {
    /// The table.
    pub table: Table,
    /// The device's index.
    pub index: u32,
    /// The address (ARP) or the remote VTEP (FDB).
    pub ip: IpAddr,
    /// The MAC.
    pub mac: [u8; 6],
    /// Permanent (set by someone, not learned).
    pub permanent: bool,
}

/// What a program printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Whether it exited with 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// The kernel, as brindle changes it.
#[async_trait]
pub trait Kernel: Send + Sync {
    /// Every link.
    async fn links(&self) -> Result<Vec<Link>>;

    /// Creates a VXLAN device (down, learning off).
    async fn add_vxlan(&self, device: &NewVxlan) -> Result<()>;

    /// Creates a WireGuard device (down, with no key and no peer: `wg` configures it).
    async fn add_wireguard(&self, name: &str) -> Result<()>;

    /// Makes sure `tunl0` exists: where the ipip module is not loaded yet, asking for an
    /// IP-in-IP link named `tunl0` loads it (and the module makes `tunl0` in every namespace).
    /// Returns whether `tunl0` exists after; a kernel without the module is not an error.
    async fn load_ipip(&self) -> Result<bool>;

    /// Deletes a link; returns whether it existed.
    async fn delete_link(&self, name: &str) -> Result<bool>;

    /// Sets a link's MTU and brings it up.
    async fn set_up(&self, index: u32, mtu: u32) -> Result<()>;

    /// Brings a link down.
    async fn set_down(&self, index: u32) -> Result<()>;

    /// The addresses on a link.
    async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>>;

    /// Adds an address to a link.
    async fn add_address(&self, index: u32, address: IpNetwork) -> Result<()>;

    /// The routes of routing table `table`, both families; of one protocol only when given.
    async fn routes(&self, table: u32, protocol: Option<u8>) -> Result<Vec<Route>>;

    /// Makes the changes, many in flight at once; returns what failed, each naming its route.
    async fn change_routes(&self, changes: Vec<RouteChange>) -> Vec<Error>;

    /// brindle's policy-routing rules (of its protocol), both families.
    async fn rules(&self) -> Result<Vec<Rule>>;

    /// Adds a policy-routing rule of brindle's protocol.
    async fn add_rule(&self, rule: &Rule) -> Result<()>;

    /// Deletes a policy-routing rule; one already gone is not an error.
    async fn delete_rule(&self, rule: &Rule) -> Result<()>;

    /// The entries of a neighbour table, on one device when given.
    async fn neighbours(&self, table: Table, index: Option<u32>) -> Result<Vec<Neighbour>>;

    /// Adds or replaces a permanent neighbour entry.
    async fn set_neighbour(&self, entry: &Neighbour) -> Result<()>;

    /// Deletes a neighbour entry; one already gone is not an error.
    async fn delete_neighbour(&self, entry: &Neighbour) -> Result<()>;

    /// A sysctl's value (`net/ipv4/ip_forward`), trimmed.
    fn sysctl(&self, path: &str) -> Result<String>;

    /// Sets a sysctl.
    fn set_sysctl(&self, path: &str, value: &str) -> Result<()>;

    /// Runs one of the programs that drive the kernel (iptables-save and -restore, ipset,
    /// ethtool) with `stdin`, and returns what it printed. Only failing to start it is an
    /// error; its exit status is in the output.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output>;
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Reads `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_read_back_what_they_print() {
        let mac = [0xee, 0xee, 0x0a, 0x01, 0x02, 0xff];
        assert_eq!(format_mac(&mac), "ee:ee:0a:01:02:ff");
        assert_eq!(parse_mac("ee:ee:0a:01:02:ff"), Some(mac));
        assert_eq!(parse_mac("ee:ee:0a:01:02"), None);
        assert_eq!(parse_mac("zz:ee:0a:01:02:ff"), None);
        assert_eq!(parse_mac("ee:ee:0a:01:02:ff:00"), None);
    }

    #[test]
    fn routes_print_like_ip_route() {
        let r = Route::ours("10.244.1.0/26".parse().unwrap(), Some("10.0.0.2".parse().unwrap()), Some(3), true);
        assert_eq!(r.to_string(), "10.244.1.0/26 via 10.0.0.2 oif 3 onlink proto 98");
        assert_eq!(Route::blackhole("10.244.0.0/26".parse().unwrap()).to_string(), "blackhole 10.244.0.0/26 proto 98");
        assert_eq!(r.describe(Some("eth0")), "10.244.1.0/26 via 10.0.0.2 dev eth0 onlink proto 98");
        assert_eq!(
            Route::throw("10.244.1.5/32".parse().unwrap()).in_table(1).to_string(),
            "throw 10.244.1.5/32 table 1 proto 98"
        );
        let rule = Rule { ipv6: false, priority: 99, mark: 0x100000, mask: 0x100000, invert: true, table: 1 };
        assert_eq!(rule.to_string(), "99: not from all fwmark 0x100000/0x100000 lookup 1");
    }
}
