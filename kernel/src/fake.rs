//! A kernel in memory for unit tests of the drivers: it keeps links, addresses, routes,
//! neighbour entries and sysctls as a kernel would, records every change it is asked for,
//! and fails the requests a test names. Programs (iptables, ipset) are answered by a
//! function the test gives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use ipnetwork::IpNetwork;

use crate::{Error, Kernel, Link, Neighbour, NewVxlan, Output, Result, Route, RouteChange, Rule, Table};

/// How the fake answers a program: (program, arguments, stdin) to what it printed.
pub type Programs = dyn Fn(&str, &[&str], Option<&str>) -> Output + Send + Sync;

/// What the fake holds.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Links by index.
    pub links: BTreeMap<u32, Link>,
    /// Addresses by link index.
    pub addresses: BTreeMap<u32, BTreeSet<IpNetwork>>,
    /// Routes by table and destination.
    pub routes: BTreeMap<(u32, IpNetwork), Route>,
    /// Policy-routing rules.
    pub rules: BTreeSet<Rule>,
    /// Neighbour entries.
    pub neighbours: BTreeSet<NeighbourKey>,
    /// Sysctls by path.
    pub sysctls: BTreeMap<String, String>,
    /// Whether asking for an IP-in-IP link loads an ipip module (and makes `tunl0`).
    pub ipip_module: bool,
}

/// A neighbour entry in a sortable form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NeighbourKey {
    /// 0 for ARP, 1 for FDB.
    pub table: u8,
    /// The device.
    pub index: u32,
    /// The address or VTEP.
    pub ip: std::net::IpAddr,
    /// The MAC.
    pub mac: [u8; 6],
    /// Permanent.
    pub permanent: bool,
}

impl From<&Neighbour> for NeighbourKey {
    fn from(n: &Neighbour) -> Self {
        NeighbourKey {
            table: u8::from(n.table == Table::Fdb),
            index: n.index,
            ip: n.ip,
            mac: n.mac,
            permanent: n.permanent,
        }
    }
}

impl From<&NeighbourKey> for Neighbour {
    fn from(k: &NeighbourKey) -> Self {
        let table = if k.table == 1 { Table::Fdb } else { Table::Arp };
        Neighbour { table, index: k.index, ip: k.ip, mac: k.mac, permanent: k.permanent }
    }
}

/// The fake kernel. Clones share their state.
#[derive(Clone)]
pub struct FakeKernel {
    state: Arc<Mutex<State>>,
    log: Arc<Mutex<Vec<String>>>,
    failing: Arc<Mutex<Vec<String>>>,
    programs: Arc<Programs>,
}

impl Default for FakeKernel {
    fn default() -> Self {
        FakeKernel::new()
    }
}

impl FakeKernel {
    /// An empty kernel whose programs all succeed silently.
    pub fn new() -> FakeKernel {
        FakeKernel {
            state: Arc::default(),
            log: Arc::default(),
            failing: Arc::default(),
            programs: Arc::new(|_, _, _| Output { success: true, ..Output::default() }),
        }
    }

    /// With programs answered by `programs`.
    pub fn with_programs(
        mut self,
        programs: impl Fn(&str, &[&str], Option<&str>) -> Output + Send + Sync + 'static,
    ) -> Self {
        self.programs = Arc::new(programs);
        self
    }

    /// Adds a link (as if someone else made it); returns its index.
    pub fn add_link(&self, name: &str, mtu: u32) -> u32 {
        let mut state = self.state();
        let index = state.links.keys().next_back().map_or(1, |i| i + 1);
        let link = Link { name: name.into(), index, up: true, mtu, mac: None, vxlan: None };
        state.links.insert(index, link);
        index
    }

    /// Adds a route (as if someone else made it).
    pub fn add_route(&self, route: Route) {
        self.state().routes.insert((route.table, route.dst), route);
    }

    /// What the kernel holds now.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every change made so far, one line each (`route replace 10.0.0.0/26 ...`), and forgets them.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Makes every request whose log line contains `what` fail, until [`FakeKernel::heal`].
    pub fn fail(&self, what: &str) {
        self.failing.lock().unwrap_or_else(|e| e.into_inner()).push(what.into());
    }

    /// Stops failing.
    pub fn heal(&self) {
        self.failing.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether the test said to refuse the request logged as `line`.
    fn refuses(&self, line: &str) -> bool {
        self.failing.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|f| line.contains(f.as_str()))
    }

    /// Records a change, or refuses it if the test said so.
    fn change(&self, line: String) -> Result<()> {
        if self.refuses(&line) {
            return Err(Error::Refused { what: line, message: "refused by the test".into() });
        }
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        Ok(())
    }

    fn link_named(&self, name: &str) -> Option<Link> {
        self.state().links.values().find(|l| l.name == name).cloned()
    }
}

#[async_trait]
impl Kernel for FakeKernel {
    async fn links(&self) -> Result<Vec<Link>> {
        Ok(self.state().links.values().cloned().collect())
    }

    async fn add_vxlan(&self, device: &NewVxlan) -> Result<()> {
        if self.link_named(&device.name).is_some() {
            return Err(Error::Refused { what: format!("creating {}", device.name), message: "File exists".into() });
        }
        self.change(format!("link add {} vni {}", device.name, device.vxlan.vni))?;
        let index = self.add_link(&device.name, device.mtu);
        let mut state = self.state();
        let link = state.links.get_mut(&index).expect("just added");
        link.up = false;
        link.mac = Some(device.mac);
        link.vxlan = Some(device.vxlan.clone());
        Ok(())
    }

    async fn add_wireguard(&self, name: &str) -> Result<()> {
        if self.link_named(name).is_some() {
            return Err(Error::Refused { what: format!("creating {name}"), message: "File exists".into() });
        }
        self.change(format!("link add {name} type wireguard"))?;
        let index = self.add_link(name, 1420);
        self.state().links.get_mut(&index).expect("just added").up = false;
        Ok(())
    }

    async fn load_ipip(&self) -> Result<bool> {
        if self.link_named(crate::names::IPIP_DEVICE).is_none() && self.state().ipip_module {
            self.change(format!("link add {} type ipip", crate::names::IPIP_DEVICE))?;
            self.add_link(crate::names::IPIP_DEVICE, 1480);
        }
        Ok(self.link_named(crate::names::IPIP_DEVICE).is_some())
    }

    async fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link_named(name) else { return Ok(false) };
        self.change(format!("link del {name}"))?;
        let mut state = self.state();
        state.links.remove(&link.index);
        state.addresses.remove(&link.index);
        state.routes.retain(|_, r| r.oif != Some(link.index));
        state.neighbours.retain(|n| n.index != link.index);
        Ok(true)
    }

    async fn set_up(&self, index: u32, mtu: u32) -> Result<()> {
        let current = self.state().links.get(&index).cloned().ok_or_else(|| Error::Missing(format!("link {index}")))?;
        if current.up && current.mtu == mtu {
            return Ok(()); // the kernel sends nothing for a no-op; neither do we log one
        }
        self.change(format!("link set {} up mtu {mtu}", current.name))?;
        let mut state = self.state();
        let link = state.links.get_mut(&index).expect("checked");
        link.up = true;
        link.mtu = mtu;
        Ok(())
    }

    async fn set_down(&self, index: u32) -> Result<()> {
        let current = self.state().links.get(&index).cloned().ok_or_else(|| Error::Missing(format!("link {index}")))?;
        if current.up {
            self.change(format!("link set {} down", current.name))?;
            self.state().links.get_mut(&index).expect("checked").up = false;
        }
        Ok(())
    }

    async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        Ok(self.state().addresses.get(&index).map(|a| a.iter().copied().collect()).unwrap_or_default())
    }

    async fn add_address(&self, index: u32, address: IpNetwork) -> Result<()> {
        self.change(format!("address add {address} dev {index}"))?;
        self.state().addresses.entry(index).or_default().insert(address);
        Ok(())
    }

    async fn routes(&self, table: u32, protocol: Option<u8>) -> Result<Vec<Route>> {
        Ok(self
            .state()
            .routes
            .values()
            .filter(|r| r.table == table && protocol.is_none_or(|p| r.protocol == p))
            .cloned()
            .collect())
    }

    async fn rules(&self) -> Result<Vec<Rule>> {
        Ok(self.state().rules.iter().copied().collect())
    }

    async fn add_rule(&self, rule: &Rule) -> Result<()> {
        self.change(format!("rule add {rule}"))?;
        self.state().rules.insert(*rule);
        Ok(())
    }

    async fn delete_rule(&self, rule: &Rule) -> Result<()> {
        self.change(format!("rule del {rule}"))?;
        self.state().rules.remove(rule);
        Ok(())
    }

    async fn change_routes(&self, changes: Vec<RouteChange>) -> Vec<Error> {
        let mut failures = Vec::new();
        for change in changes {
            let outcome = match change {
                RouteChange::Replace(route) => self.change(format!("route replace {route}")).map(|()| {
                    self.state().routes.insert((route.table, route.dst), route);
                }),
                RouteChange::Remove(route) => self.change(format!("route del {route}")).map(|()| {
                    self.state().routes.remove(&(route.table, route.dst));
                }),
            };
            failures.extend(outcome.err());
        }
        failures
    }

    async fn neighbours(&self, table: Table, index: Option<u32>) -> Result<Vec<Neighbour>> {
        Ok(self
            .state()
            .neighbours
            .iter()
            .map(Neighbour::from)
            .filter(|n| n.table == table && index.is_none_or(|i| n.index == i))
            .collect())
    }

    async fn set_neighbour(&self, entry: &Neighbour) -> Result<()> {
        self.change(format!("neighbour replace {:?} {} {}", entry.table, entry.ip, crate::format_mac(&entry.mac)))?;
        let mut state = self.state();
        let same_key = |n: &NeighbourKey| {
            n.table == u8::from(entry.table == Table::Fdb)
                && n.index == entry.index
                && match entry.table {
                    Table::Arp => n.ip == entry.ip,
                    Table::Fdb => n.mac == entry.mac && n.ip == entry.ip,
                }
        };
        state.neighbours.retain(|n| !same_key(n));
        state.neighbours.insert(NeighbourKey::from(&Neighbour { permanent: true, ..entry.clone() }));
        Ok(())
    }

    async fn delete_neighbour(&self, entry: &Neighbour) -> Result<()> {
        self.change(format!("neighbour del {:?} {} {}", entry.table, entry.ip, crate::format_mac(&entry.mac)))?;
        self.state().neighbours.remove(&NeighbourKey::from(entry));
        Ok(())
    }

    fn sysctl(&self, path: &str) -> Result<String> {
        self.state().sysctls.get(path).cloned().ok_or_else(|| Error::Missing(format!("/proc/sys/{path}")))
    }

    fn set_sysctl(&self, path: &str, value: &str) -> Result<()> {
        self.change(format!("sysctl {path}={value}"))?;
        self.state().sysctls.insert(path.into(), value.into());
        Ok(())
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let line = format!("run {program} {}", args.join(" "));
        if self.refuses(&line) {
            return Ok(Output { success: false, stdout: String::new(), stderr: "refused by the test".into() });
        }
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        Ok((self.programs)(program, args, stdin))
    }
}
