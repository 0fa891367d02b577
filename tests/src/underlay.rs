//! A cluster's underlay on one machine: a switch (a bridge in its own namespace) that every
//! node plugs into, and a router namespace on the same switch with the first address of each
//! subnet, so nodes in different subnets reach each other through it and every node has a
//! default route, as real nodes do. The router also owns an address outside every subnet,
//! the "internet" that natOutgoing tests reach. A dual-stack underlay gives every subnet an
//! IPv6 twin, routed the same way.

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::netns::{Netns, run, unique, veth};

/// An address outside the cluster, held by the router.
pub const OUTSIDE: &str = "192.0.2.1";

/// The switch and the router.
#[derive(Debug)]
pub struct Underlay {
    /// Holds the bridge `br0`.
    pub switch: Netns,
    /// Routes between the subnets; default gateway of every node.
    pub router: Netns,
    subnets: Vec<Ipv4Network>,
    subnets_v6: Vec<Ipv6Network>,
}

impl Underlay {
    /// An underlay with these subnets (e.g. `10.250.0.0/24`); the router gets `.1` in each.
    pub fn new(prefix: &str, subnets: &[&str]) -> anyhow::Result<Underlay> {
        Underlay::build(Netns::new(prefix, "sw")?, Netns::new(prefix, "rt")?, subnets)
    }

    /// An underlay in the namespaces given for the switch and the router.
    pub fn build(switch: Netns, router: Netns, subnets: &[&str]) -> anyhow::Result<Underlay> {
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let subnets: Vec<Ipv4Network> = subnets.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
        let underlay = Underlay { switch, router, subnets, subnets_v6: Vec::new() };
        let port = underlay.plug(&underlay.router)?;
        for subnet in &underlay.subnets {
            let gateway = Self::host(subnet, 1)?;
            underlay.router.ip(&["addr", "add", &format!("{gateway}/{}", subnet.prefix()), "dev", &port])?;
        }
        underlay.router.ip(&["addr", "add", &format!("{OUTSIDE}/32"), "dev", "lo"])?;
        run(underlay.router.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
        Ok(underlay)
    }

    /// Makes the underlay dual-stack: `subnets` (one per IPv4 subnet, e.g. `fd00:250::/64`)
    /// give the router `::1` in each, and every node attached later an address in its twin.
    pub fn with_ipv6(mut self, subnets: &[&str]) -> anyhow::Result<Underlay> {
        anyhow::ensure!(subnets.len() == self.subnets.len(), "one IPv6 subnet per IPv4 subnet");
        self.subnets_v6 = subnets.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
        for subnet in &self.subnets_v6 {
            let gateway = Self::host_v6(subnet, 1);
            self.router.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{gateway}/{}", subnet.prefix()),
                "dev",
                "eth0",
                "nodad",
            ])?;
        }
        run(self.router.command("sysctl").args(["-qw", "net.ipv6.conf.all.forwarding=1"]))?;
        Ok(self)
    }

    fn host_v6(subnet: &Ipv6Network, n: u32) -> std::net::Ipv6Addr {
        (u128::from(subnet.network()) + u128::from(n)).into()
    }

    fn host(subnet: &Ipv4Network, n: u32) -> anyhow::Result<std::net::Ipv4Addr> {
        subnet.nth(n).ok_or_else(|| anyhow::anyhow!("{subnet} has no host {n}"))
    }

    /// The router's address in subnet `subnet` (`.1`).
    pub fn gateway(&self, subnet: usize) -> anyhow::Result<std::net::Ipv4Addr> {
        Self::host(self.subnets.get(subnet).ok_or_else(|| anyhow::anyhow!("no subnet {subnet}"))?, 1)
    }

    /// Disarms the guards of both namespaces; returns the switch's and the router's names.
    pub fn keep(self) -> (String, String) {
        (self.switch.keep(), self.router.keep())
    }

    /// Plugs a namespace into the switch with an interface `eth0` (up, no address).
    fn plug(&self, netns: &Netns) -> anyhow::Result<String> {
        let port = format!("p{}", unique());
        veth(netns, "eth0", &self.switch, &port)?;
        self.switch.ip(&["link", "set", &port, "master", "br0", "up"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        Ok("eth0".into())
    }

    /// Plugs a node into subnet `subnet` as host `n` (`.n`, and `::n` in its IPv6 twin when
    /// the underlay is dual-stack), with default routes through the router. Returns the node's
    /// IPv4 address.
    pub fn attach(&self, node: &Netns, subnet: usize, n: u32) -> anyhow::Result<std::net::Ipv4Addr> {
        let net = self.subnets.get(subnet).ok_or_else(|| anyhow::anyhow!("no subnet {subnet}"))?;
        let address = Self::host(net, n)?;
        let dev = self.plug(node)?;
        node.ip(&["addr", "add", &format!("{address}/{}", net.prefix()), "dev", &dev])?;
        node.ip(&["route", "add", "default", "via", &Self::host(net, 1)?.to_string()])?;
        if let Some(net) = self.subnets_v6.get(subnet) {
            let address = Self::host_v6(net, n);
            node.ip(&["-6", "addr", "add", &format!("{address}/{}", net.prefix()), "dev", &dev, "nodad"])?;
            node.ip(&["-6", "route", "add", "default", "via", &Self::host_v6(net, 1).to_string()])?;
        }
        Ok(address)
    }
}
