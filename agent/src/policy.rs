//! Network policy compiled for this node: per family, the chains (in `iptables-save` form) and
//! the ipsets they match. Pure: the iptables driver makes the kernel hold them.
//!
//! - `brin-from-wl` / `brin-to-wl` dispatch on the host veth (`-i` / `-o`) to the endpoint's
//!   `brin-fw-<iface>` (its egress) / `brin-tw-<iface>` (its ingress); an interface with no
//!   endpoint is dropped, so a pod sends nothing before its policy is in place.
//! - An endpoint chain runs the policies that apply, tier by tier: each policy's chain
//!   (`brin-pi-<id>` / `brin-pe-<id>`, shared by every endpoint it applies to) marks an
//!   allowed packet ([`ALLOW_MARK`]: return, the packet goes on) or a passed one ([`PASS_MARK`]:
//!   the rest of the tier is skipped), or drops it; a tier with no verdict drops. A chain
//!   that falls off its end allows.
//! - Selectors, nets and named ports are ipsets named after what they hold, so a pod joining
//!   a selector is one set member, not a rule rewrite.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use brindle_datastore::policy::{
    Direction, EndpointView, NamespaceLabels, NamespaceScope, NormalRule, Policies, PolicyId, Selection, Selectors,
    Side,
};
use brindle_datastore::resource::{Action, PortMatch, Resource, WorkloadEndpoint};
use brindle_kernel::names::digest;
use ipnetwork::IpNetwork;

use crate::dataplane::iptables::{goto_rule, rule};

/// The mark bit of a packet a policy allowed.
pub const ALLOW_MARK: u32 = 0x10000;
/// The mark bit of a packet a policy passed to the next tier.
pub const PASS_MARK: u32 = 0x20000;

pub use brindle_kernel::names::{FROM_WORKLOADS, TO_WORKLOADS};

/// The prefix of every policy ipset's name (then `4-` or `6-` and a digest).
pub const SET_PREFIX: &str = "brin-p";

/// An ipset the rules match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpSet {
    /// `hash:net` (addresses and networks) or `hash:ip,port` (named ports).
    pub kind: &'static str,
    /// Members as `ipset save` lists them.
    pub members: BTreeSet<String>,
}

/// One family's policy program.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FamilyProgram {
    /// Our policy chains (dispatch, endpoints, policies) by name, each its rules in
    /// `iptables-save` form.
    pub chains: BTreeMap<String, Vec<String>>,
    /// The sets the rules match, by name.
    pub sets: BTreeMap<String, IpSet>,
}

/// The policy program of both families: `[IPv4, IPv6]`.
pub type Program = [FamilyProgram; 2];

fn family_digit(v6: bool) -> char {
    if v6 { '6' } else { '4' }
}

/// The chain of one policy's rules for one direction.
pub fn policy_chain(id: &PolicyId, direction: Direction) -> String {
    brindle_kernel::names::policy_chain(&id.to_string(), direction == Direction::Ingress)
}

/// The chain of one endpoint's policy for one direction (`fw`: from it, its egress).
pub fn endpoint_chain(interface: &str, direction: Direction) -> String {
    brindle_kernel::names::endpoint_chain(interface, direction == Direction::Ingress)
}

/// The dispatch branch of an interface: its first five characters (the prefix and one digest
/// digit), when they can start a chain's name.
fn dispatch_group(interface: &str) -> Option<String> {
    interface.get(..5).filter(|g| g.chars().all(|c| c.is_ascii_alphanumeric())).map(str::to_owned)
}

/// The dispatch chain of a direction: its root, or the branch of `group`.
fn dispatch_chain(direction: Direction, group: Option<&str>) -> String {
    let root = if direction == Direction::Egress { FROM_WORKLOADS } else { TO_WORKLOADS };
    match group.and_then(|g| g.chars().last()) {
        Some(digit) => format!("{root}-{digit}"),
        None => root.to_owned(),
    }
}

fn protocol_name(number: u8) -> String {
    match number {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

fn protocol_label(number: u8) -> &'static str {
    match number {
        17 => "udp",
        132 => "sctp",
        136 => "udplite",
        _ => "tcp",
    }
}

/// Compiles policy for the endpoints of `node`, each family on its own.
pub struct Compiler<'a> {
    policies: &'a Policies,
    endpoints: &'a [Resource<WorkloadEndpoint>],
    namespaces: &'a NamespaceLabels,
    selectors: Selectors,
    /// Endpoints (indices) by namespace: a selection looks only in its namespaces.
    by_namespace: BTreeMap<&'a str, Vec<usize>>,
    /// Members of each selection, computed once per compilation.
    members: HashMap<Selection, Vec<usize>>,
}

impl<'a> Compiler<'a> {
    /// A compiler over every endpoint of the cluster (sets hold remote ones too).
    pub fn new(
        policies: &'a Policies,
        endpoints: &'a [Resource<WorkloadEndpoint>],
        namespaces: &'a NamespaceLabels,
    ) -> Self {
        let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, e) in endpoints.iter().enumerate() {
            by_namespace.entry(e.metadata.namespace.as_deref().unwrap_or_default()).or_default().push(i);
        }
        Compiler {
            policies,
            endpoints,
            namespaces,
            selectors: Selectors::default(),
            by_namespace,
            members: HashMap::new(),
        }
    }

    fn members_of(&mut self, selection: &Selection) -> Vec<usize> {
        if let Some(found) = self.members.get(selection) {
            return found.clone();
        }
        let candidates: Vec<usize> = match &selection.namespaces {
            NamespaceScope::Named(ns) => self.by_namespace.get(ns.as_str()).cloned().unwrap_or_default(),
            _ => {
                let mut all: Vec<usize> = self.by_namespace.values().flatten().copied().collect();
                all.sort_unstable();
                all
            }
        };
        let found: Vec<usize> = candidates
            .into_iter()
            .filter(|&i| {
                let view = EndpointView::of(&self.endpoints[i]);
                selection.contains(view, self.namespaces, &mut self.selectors)
            })
            .collect();
        self.members.insert(selection.clone(), found.clone());
        found
    }

    /// The program for the endpoints on `node`.
    pub fn compile(mut self, node: &str) -> Program {
        let mut local: Vec<&Resource<WorkloadEndpoint>> =
            self.endpoints.iter().filter(|e| e.spec.node == node).collect();
        local.sort_by(|a, b| a.spec.interface_name.cmp(&b.spec.interface_name));
        // Endpoint and dispatch chains are the same in both families.
        let mut shared: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut used: BTreeSet<(PolicyId, Direction)> = BTreeSet::new();
        let mut groups: BTreeMap<(Direction, Option<String>), Vec<String>> = BTreeMap::new();
        for endpoint in &local {
            let interface = &endpoint.spec.interface_name;
            let name = format!(
                "endpoint {}/{}",
                endpoint.metadata.namespace.as_deref().unwrap_or_default(),
                endpoint.metadata.name
            );
            for direction in [Direction::Egress, Direction::Ingress] {
                let chain = endpoint_chain(interface, direction);
                let group = dispatch_group(interface);
                let dispatch = dispatch_chain(direction, group.as_deref());
                let side = if direction == Direction::Egress { "-i" } else { "-o" };
                groups.entry((direction, group)).or_default().push(goto_rule(
                    &dispatch,
                    &format!("{side} {interface}"),
                    &name,
                    &chain,
                ));
                let body = self.endpoint_rules(endpoint, direction, &chain, &mut used);
                shared.insert(chain, body);
            }
        }
        // Dispatch is a tree on the character after the prefix (a hex digit of the veth's
        // digest): a pod coming or going rewrites one branch, not a chain of every pod.
        let mut roots: BTreeMap<Direction, Vec<String>> = BTreeMap::new();
        for ((direction, group), mut rules) in groups {
            let root = dispatch_chain(direction, None);
            let side = if direction == Direction::Egress { "-i" } else { "-o" };
            let Some(group) = group else {
                roots.entry(direction).or_default().extend(rules);
                continue;
            };
            let branch = dispatch_chain(direction, Some(&group));
            rules.push(rule(&branch, "", "traffic of an interface with no endpoint", "DROP"));
            shared.insert(branch.clone(), rules);
            roots.entry(direction).or_default().push(goto_rule(
                &root,
                &format!("{side} {group}+"),
                &format!("interfaces {group}*"),
                &branch,
            ));
        }
        for direction in [Direction::Egress, Direction::Ingress] {
            let root = dispatch_chain(direction, None);
            let mut rules = roots.remove(&direction).unwrap_or_default();
            rules.push(rule(&root, "", "traffic of an interface with no endpoint", "DROP"));
            shared.insert(root, rules);
        }
        let mut program = Program::default();
        for (family, out) in program.iter_mut().enumerate() {
            let v6 = family == 1;
            out.chains.clone_from(&shared);
            let policies = self.policies;
            for tier in &policies.tiers {
                for policy in &tier.policies {
                    for direction in [Direction::Ingress, Direction::Egress] {
                        if !used.contains(&(policy.id.clone(), direction)) {
                            continue;
                        }
                        let chain = policy_chain(&policy.id, direction);
                        let rules = policy.rules(direction).unwrap_or_default();
                        let body = self.policy_rules(&policy.id, direction, rules, &chain, v6, &mut out.sets);
                        out.chains.insert(chain, body);
                    }
                }
            }
        }
        program
    }

    fn endpoint_rules(
        &mut self,
        endpoint: &Resource<WorkloadEndpoint>,
        direction: Direction,
        chain: &str,
        used: &mut BTreeSet<(PolicyId, Direction)>,
    ) -> Vec<String> {
        let view = EndpointView::of(endpoint);
        let applying = self.policies.applying(view, self.namespaces, direction, &mut self.selectors);
        if applying.is_empty() {
            return Vec::new();
        }
        let clear = format!("MARK --set-xmark 0x0/{:#x}", ALLOW_MARK | PASS_MARK);
        let not_passed = format!("-m mark --mark 0x0/{PASS_MARK:#x}");
        let allowed = format!("-m mark --mark {ALLOW_MARK:#x}/{ALLOW_MARK:#x}");
        let mut rules = vec![rule(chain, "", "policy marks cleared", &clear)];
        for (tier, policies) in applying {
            for policy in policies {
                used.insert((policy.id.clone(), direction));
                let target = policy_chain(&policy.id, direction);
                rules.push(rule(chain, &not_passed, &format!("tier {} {}", tier.name, policy.id), &target));
                rules.push(rule(chain, &allowed, &format!("allowed by {}", policy.id), "RETURN"));
            }
            rules.push(rule(chain, &not_passed, &format!("end of tier {}: no policy allowed it", tier.name), "DROP"));
            rules.push(rule(chain, "", &format!("passed on from tier {}", tier.name), &clear));
        }
        rules
    }

    fn policy_rules(
        &mut self,
        id: &PolicyId,
        direction: Direction,
        rules: &[NormalRule],
        chain: &str,
        v6: bool,
        sets: &mut BTreeMap<String, IpSet>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let dir = if direction == Direction::Ingress { "ingress" } else { "egress" };
        for (i, normal) in rules.iter().enumerate() {
            let why = format!("{id} {dir}[{i}]");
            let Some(variants) = self.rule_matches(normal, v6, sets) else { continue };
            let (target, then_return) = match normal.action {
                Action::Allow => (format!("MARK --set-xmark {ALLOW_MARK:#x}/{ALLOW_MARK:#x}"), Some(ALLOW_MARK)),
                Action::Pass => (format!("MARK --set-xmark {PASS_MARK:#x}/{PASS_MARK:#x}"), Some(PASS_MARK)),
                Action::Deny => ("DROP".into(), None),
                Action::Log => (format!("LOG --log-prefix \"{}\"", log_prefix(id)), None),
            };
            for matches in &variants {
                out.push(rule(chain, matches, &why, &target));
            }
            if let Some(mark) = then_return {
                out.push(rule(chain, &format!("-m mark --mark {mark:#x}/{mark:#x}"), &why, "RETURN"));
            }
        }
        out
    }

    /// The match strings of one rule in one family (several when its ports need several
    /// rules), or `None` when the rule cannot match in this family.
    fn rule_matches(&mut self, rule: &NormalRule, v6: bool, sets: &mut BTreeMap<String, IpSet>) -> Option<Vec<String>> {
        if rule.ip_version.is_some_and(|v| (v == 6) != v6) {
            return None;
        }
        let wrong_icmp = if v6 { 1 } else { 58 };
        if rule.protocol == Some(wrong_icmp) {
            return None;
        }
        let mut common = String::new();
        match (rule.protocol, rule.not_protocol) {
            (Some(p), _) => common += &format!(" -p {}", protocol_name(p)),
            (None, Some(p)) => common += &format!(" ! -p {}", protocol_name(p)),
            _ => {}
        }
        if let (Some(p), Some(not)) = (rule.protocol, rule.not_protocol)
            && p == not
        {
            return None;
        }
        let (icmp_module, icmp_option) = if v6 { ("icmp6", "--icmpv6-type") } else { ("icmp", "--icmp-type") };
        for (icmp, negate) in [(rule.icmp, ""), (rule.not_icmp, "! ")] {
            if let Some(icmp) = icmp {
                let value = match icmp.code {
                    Some(code) => format!("{}/{code}", icmp.kind),
                    None => icmp.kind.to_string(),
                };
                common += &format!(" -m {icmp_module} {negate}{icmp_option} {value}");
            }
        }
        let mut port_variants = vec![String::new()];
        for (side, direction) in [(&rule.source, "src"), (&rule.destination, "dst")] {
            common += &self.side_matches(side, direction, v6, sets)?;
            let variants = self.port_matches(side, direction, rule.protocol, v6, sets);
            if let Some(variants) = variants {
                port_variants =
                    port_variants.iter().flat_map(|a| variants.iter().map(move |b| format!("{a}{b}"))).collect();
            }
        }
        Some(port_variants.into_iter().map(|ports| format!("{common}{ports}").trim_start().to_owned()).collect())
    }

    /// Nets and endpoint sets of one side; `None` when its nets leave nothing in this family.
    fn side_matches(
        &mut self,
        side: &Side,
        direction: &str,
        v6: bool,
        sets: &mut BTreeMap<String, IpSet>,
    ) -> Option<String> {
        let mut out = String::new();
        let family_nets =
            |nets: &[IpNetwork]| -> Vec<IpNetwork> { nets.iter().filter(|n| n.is_ipv6() == v6).copied().collect() };
        let nets = family_nets(&side.nets);
        if !side.nets.is_empty() && nets.is_empty() {
            return None;
        }
        for (nets, negate) in [(nets, ""), (family_nets(&side.not_nets), "! ")] {
            if !nets.is_empty() {
                let members = nets.iter().map(set_member).collect();
                let name = add_set(sets, v6, "hash:net", &format!("nets {members:?}"), members);
                out += &format!(" -m set {negate}--match-set {name} {direction}");
            }
        }
        for (selection, negate) in [(&side.endpoints, ""), (&side.not_endpoints, "! ")] {
            if let Some(selection) = selection {
                let members = self
                    .members_of(selection)
                    .into_iter()
                    .flat_map(|i| {
                        self.endpoints[i].spec.ip_networks.iter().filter(|n| n.is_ipv6() == v6).map(set_member)
                    })
                    .collect();
                let name = add_set(sets, v6, "hash:net", &format!("endpoints {selection}"), members);
                out += &format!(" -m set {negate}--match-set {name} {direction}");
            }
        }
        Some(out)
    }

    /// The port matches of one side, one per rule the ports need (numbers by fifteen, one per
    /// named port); `None` when the side names no ports.
    fn port_matches(
        &mut self,
        side: &Side,
        direction: &str,
        protocol: Option<u8>,
        v6: bool,
        sets: &mut BTreeMap<String, IpSet>,
    ) -> Option<Vec<String>> {
        let option = if direction == "src" { "--sports" } else { "--dports" };
        let mut negated = String::new();
        for chunk in multiport_chunks(&side.not_ports) {
            negated += &format!(" -m multiport ! {option} {chunk}");
        }
        if side.ports.is_empty() {
            return (!negated.is_empty()).then(|| vec![negated]);
        }
        let mut variants: Vec<String> =
            multiport_chunks(&side.ports).into_iter().map(|c| format!(" -m multiport {option} {c}{negated}")).collect();
        let label = protocol_label(protocol.unwrap_or(6));
        let owners = match &side.endpoints {
            Some(selection) => self.members_of(selection),
            None => (0..self.endpoints.len()).collect(),
        };
        for port in &side.ports {
            let PortMatch::Named(name) = port else { continue };
            let members = owners
                .iter()
                .flat_map(|&i| {
                    let spec = &self.endpoints[i].spec;
                    let numbers: Vec<u16> = spec
                        .ports
                        .iter()
                        .filter(|p| p.name == *name && p.protocol.eq_ignore_ascii_case(label))
                        .map(|p| p.port)
                        .collect();
                    spec.ip_networks
                        .iter()
                        .filter(|n| n.is_ipv6() == v6)
                        .flat_map(move |n| numbers.clone().into_iter().map(move |p| format!("{},{label}:{p}", n.ip())))
                })
                .collect();
            let identity = format!("port {name}/{label} of {:?}", side.endpoints.as_ref().map(ToString::to_string));
            let set = add_set(sets, v6, "hash:ip,port", &identity, members);
            variants.push(format!(" -m set --match-set {set} {direction},{direction}{negated}"));
        }
        Some(variants)
    }
}

/// A member of a `hash:net` set as `ipset save` lists it (a host without its length).
fn set_member(net: &IpNetwork) -> String {
    let host = if net.is_ipv4() { 32 } else { 128 };
    if net.prefix() == host { net.ip().to_string() } else { net.to_string() }
}

fn add_set(
    sets: &mut BTreeMap<String, IpSet>,
    v6: bool,
    kind: &'static str,
    identity: &str,
    members: BTreeSet<String>,
) -> String {
    let name = format!("{SET_PREFIX}{}-{}", family_digit(v6), digest(identity));
    sets.insert(name.clone(), IpSet { kind, members });
    name
}

/// Numeric ports and ranges as `multiport` lists of at most fifteen slots (a range takes
/// two); named ports are left to sets.
fn multiport_chunks(ports: &[PortMatch]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut slots = 0;
    for port in ports {
        let (text, size) = match port {
            PortMatch::Range(a, b) if a == b => (a.to_string(), 1),
            PortMatch::Range(a, b) => (format!("{a}:{b}"), 2),
            PortMatch::Named(_) => continue,
        };
        if slots + size > 15 {
            chunks.push(current.join(","));
            current.clear();
            slots = 0;
        }
        current.push(text);
        slots += size;
    }
    if !current.is_empty() {
        chunks.push(current.join(","));
    }
    chunks
}

/// The LOG prefix naming a policy (the kernel keeps 29 characters).
fn log_prefix(id: &PolicyId) -> String {
    let name = match &id.namespace {
        Some(ns) => format!("{ns}/{}", id.name),
        None => id.name.clone(),
    };
    let mut prefix = format!("brindle {name}");
    prefix.truncate(27);
    prefix + ": "
}

#[cfg(test)]
mod tests;
