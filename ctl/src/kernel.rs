//! A snapshot of this node's kernel networking state, read through the kernel layer in the
//! calling thread's namespace: links, brindle's policy-routing rules, routes of the main table
//! and of the tables those rules name, ARP and FDB entries, and WireGuard devices' peers.
//! `diagnose` compares it with what the datastore says should be there.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_kernel::names::MAIN_TABLE;
use brindle_kernel::{Kernel as _, Link, RouteKind, Rule, Table, format_mac};

/// A route, with its device's name.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route.
    pub route: brindle_kernel::Route,
    /// Its device's name.
    pub device: Option<String>,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.route.describe(self.device.as_deref()))
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
    /// brindle's policy-routing rules (WireGuard's), both families.
    pub rules: Vec<Rule>,
    /// Routes of the main table and of the tables the rules name, both families.
    pub routes: Vec<Route>,
    /// ARP entries.
    pub arp: Vec<Neighbour>,
    /// Bridge FDB entries with a remote address (VXLAN).
    pub fdb: Vec<Neighbour>,
    /// The peers' public keys of every WireGuard device (`wg show`); none read where `wg` is
    /// not installed.
    pub wireguard_peers: Option<BTreeMap<String, Vec<String>>>,
}

impl Kernel {
    /// Reads the snapshot.
    pub async fn read() -> anyhow::Result<Kernel> {
        let kernel = brindle_kernel::netlink::Netlink::connect()?;
        let mut snapshot = Kernel { links: kernel.links().await?, rules: kernel.rules().await?, ..Kernel::default() };
        snapshot.rules.sort_by_key(|r| r.priority);
        let mut tables: Vec<u32> = snapshot.rules.iter().map(|r| r.table).chain([MAIN_TABLE]).collect();
        tables.dedup();
        for table in tables {
            for route in kernel.routes(table, None).await? {
                let device = route.oif.and_then(|i| snapshot.name_of(i).map(str::to_owned));
                snapshot.routes.push(Route { route, device });
            }
        }
        for (table, into) in [(Table::Arp, &mut snapshot.arp), (Table::Fdb, &mut snapshot.fdb)] {
            for n in kernel.neighbours(table, None).await? {
                into.push(Neighbour { ip: n.ip, mac: format_mac(&n.mac), index: n.index });
            }
        }
        let wg = |args: &[&str]| kernel.run("wg", args, None).ok().filter(|out| out.success).map(|out| out.stdout);
        snapshot.wireguard_peers = wg(&["show", "interfaces"]).map(|devices| {
            let peers = |device: &str| wg(&["show", device, "peers"]).unwrap_or_default();
            devices
                .split_whitespace()
                .map(|d| (d.to_owned(), peers(d).split_whitespace().map(str::to_owned).collect()))
                .collect()
        });
        Ok(snapshot)
    }

    /// A link by name.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    fn name_of(&self, index: u32) -> Option<&str> {
        self.links.iter().find(|l| l.index == index).map(|l| l.name.as_str())
    }

    /// The route the kernel uses for an unmarked packet to `ip`: the longest prefix that
    /// covers it in the table of the first of brindle's rules that matches and has one (a
    /// throw route goes on to the next rule), else in the main table.
    pub fn route_to(&self, ip: IpAddr) -> Option<&Route> {
        let longest = |table: u32| {
            self.routes
                .iter()
                .filter(|r| r.route.table == table && r.route.dst.contains(ip))
                .max_by_key(|r| r.route.dst.prefix())
        };
        let unmarked = |rule: &Rule| rule.ipv6 == ip.is_ipv6() && (rule.mark & rule.mask == 0) != rule.invert;
        self.rules
            .iter()
            .filter(|rule| unmarked(rule))
            .filter_map(|rule| longest(rule.table))
            .find(|r| r.route.kind != RouteKind::Throw)
            .or_else(|| longest(MAIN_TABLE))
    }
}
