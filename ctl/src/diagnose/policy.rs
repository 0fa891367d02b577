//! diagnose's policy section: for each direction between the two pods, every policy that
//! applies in evaluation order, the verdict and the rule that decides it; on one of their
//! nodes, whether the kernel holds the endpoint's chains, each policy's chain, and the peer's
//! address in the sets the deciding rule matches it by.

use std::net::IpAddr;

use brindle_datastore::policy::{
    Decision, Direction, EndpointView, Judgement, NamespaceLabels, Packet, Policies, Selectors,
};
use brindle_datastore::resource::Action;
use brindle_kernel::names::{FROM_WORKLOADS, TO_WORKLOADS, policy_chain};

use super::{Findings, Pod};
use crate::filter::Filter;

/// What is sent: a protocol and port (`tcp/80`, `udp:53`), or a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The IP protocol number (ICMP for a ping).
    pub protocol: u8,
    /// The destination port (none for a ping).
    pub port: Option<u16>,
}

impl std::str::FromStr for Probe {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (protocol, port) = s.split_once(['/', ':']).ok_or_else(|| format!("\"{s}\": write tcp/80 or udp/53"))?;
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "tcp" => 6,
            "udp" => 17,
            "sctp" => 132,
            other => return Err(format!("\"{other}\": the protocol is tcp, udp or sctp")),
        };
        let port = port.parse().map_err(|_| format!("\"{port}\" is not a port number"))?;
        Ok(Probe { protocol, port: Some(port) })
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.protocol, self.port) {
            (17, Some(p)) => write!(f, "udp/{p}"),
            (132, Some(p)) => write!(f, "sctp/{p}"),
            (_, Some(p)) => write!(f, "tcp/{p}"),
            _ => f.write_str("ping"),
        }
    }
}

impl Probe {
    /// An ICMP (or ICMPv6) echo request toward `to`.
    pub fn ping(to: IpAddr) -> Probe {
        Probe { protocol: if to.is_ipv6() { 58 } else { 1 }, port: None }
    }
}

fn describe(judgement: &Judgement, endpoint: &str, direction: &str) -> String {
    let verdict = if judgement.allowed { "allowed" } else { "denied" };
    match &judgement.decision {
        Decision::NotIsolated => format!("{verdict}: no policy selects {endpoint} for {direction}"),
        Decision::Rule { tier, policy, index, action } => {
            let action = if *action == Action::Allow { "Allow" } else { "Deny" };
            format!("{verdict} by {policy}, {direction} rule {index} ({action}), tier {tier}")
        }
        Decision::EndOfTier(tier) => {
            format!("{verdict}: no rule of tier {tier} allowed it (the end of a tier denies)")
        }
        Decision::AllPassed => format!("{verdict}: every tier passed it on"),
    }
}

/// The policy section for `from` → `to` and back, and, on `local_node`, the kernel's part.
pub fn checks(
    f: &mut Findings,
    policies: &Policies,
    namespaces: &NamespaceLabels,
    pods: [&Pod; 2],
    probe: Option<Probe>,
    kernel: Option<(&Filter, &str)>,
) {
    let mut selectors = Selectors::default();
    for (from, to) in [(pods[0], pods[1]), (pods[1], pods[0])] {
        let probe = probe.unwrap_or_else(|| Probe::ping(to.ip));
        f.section(&format!("policy: {} → {} ({probe})", from.label(), to.label()));
        let packet = Packet {
            source: from.ip,
            source_endpoint: Some(EndpointView::of(&from.endpoint)),
            destination: to.ip,
            destination_endpoint: Some(EndpointView::of(&to.endpoint)),
            protocol: probe.protocol,
            source_port: probe.port.map(|_| 40000),
            destination_port: probe.port,
            icmp: probe.port.is_none().then_some((if to.ip.is_ipv6() { 128 } else { 8 }, 0)),
        };
        let sides = [(from, Direction::Egress, "egress"), (to, Direction::Ingress, "ingress")];
        let mut allowed = true;
        for (pod, direction, name) in sides {
            let view = EndpointView::of(&pod.endpoint);
            let judgement = policies.judge(view, direction, &packet, namespaces, &mut selectors);
            for line in &judgement.consulted {
                f.note(format!("{name} of {}: {line}", pod.label()));
            }
            let line = format!("{name} of {}: {}", pod.label(), describe(&judgement, &pod.label(), name));
            if judgement.allowed {
                f.ok(line)
            } else {
                f.note(line)
            }
            allowed &= judgement.allowed;
            if let Some((filter, node)) = kernel.filter(|(_, node)| *node == pod.node_name()) {
                let peer = if direction == Direction::Egress { to.ip } else { from.ip };
                kernel_checks(f, filter, node, pod, direction, &judgement, peer);
            }
        }
        let verdict = if allowed { "reaches" } else { "does not reach" };
        f.note(format!("{} {verdict} {} on {probe} by policy", from.label(), to.label()));
    }
}

/// Whether this node's kernel holds what `judgement` relies on for `pod`.
fn kernel_checks(
    f: &mut Findings,
    filter: &Filter,
    node: &str,
    pod: &Pod,
    direction: Direction,
    judgement: &Judgement,
    peer: IpAddr,
) {
    let family = &filter.families[usize::from(pod.ip.is_ipv6())];
    let ingress = direction == Direction::Ingress;
    let dispatch = if ingress { TO_WORKLOADS } else { FROM_WORKLOADS };
    // The dispatch sends the pod's address on its veth to its profile chain, by a set that
    // holds both.
    let member = format!("{},{}", pod.ip, pod.endpoint.spec.interface_name);
    let chain = family.chains.get(dispatch).into_iter().flatten().find_map(|r| {
        let set = r.rule.split("--match-set ").nth(1)?.split(' ').next()?;
        family.sets.get(set).filter(|members| members.contains(&member))?;
        r.rule.rsplit_once(" -g ").map(|(_, target)| target.to_owned())
    });
    let Some((chain, rules)) = chain.and_then(|c| family.chains.get(&c).map(|rules| (c, rules))) else {
        f.problem(format!(
            "{node} does not dispatch {member} to a policy chain in {dispatch} ({} iptables): {}'s traffic is dropped until the agent programs it",
            filter.backend,
            pod.label()
        ));
        return;
    };
    f.ok(format!("{node}: {chain} is in place ({} iptables)", filter.backend));
    let Decision::Rule { policy, index, .. } = &judgement.decision else { return };
    let policy_chain = policy_chain(&policy.to_string(), ingress);
    if !rules.iter().any(|r| r.target() == policy_chain) {
        f.problem(format!("{node}: {chain} does not jump to {policy}'s chain {policy_chain}"));
        return;
    }
    let why = format!("{policy} {}[{index}]", if ingress { "ingress" } else { "egress" });
    let decided: Vec<&str> = family
        .chains
        .get(&policy_chain)
        .into_iter()
        .flatten()
        .filter(|r| r.why() == Some(why.as_str()) && r.target() != "RETURN")
        .map(|r| r.rule.as_str())
        .collect();
    if decided.is_empty() {
        f.problem(format!("{node}: {policy_chain} has no rule for {why}"));
        return;
    }
    // The peer's side of the rule: sets it must be in (not those it must be out of).
    let side = if ingress { " src" } else { " dst" };
    let member = peer.to_string();
    let missing: Vec<String> = decided
        .iter()
        .filter_map(|rule| {
            let sets: Vec<&str> = rule
                .split("-m set --match-set ")
                .skip(1)
                .filter(|rest| rest.split(' ').nth(1).is_some_and(|dir| format!(" {dir}") == side))
                .filter_map(|rest| rest.split(' ').next())
                .collect();
            let absent: Vec<&str> =
                sets.into_iter().filter(|set| family.sets.get(*set).is_none_or(|m| !m.contains(&member))).collect();
            (!absent.is_empty()).then(|| absent.join(", "))
        })
        .collect();
    if missing.len() == decided.len() && !missing.is_empty() {
        f.problem(format!("{node}: {member} is missing from set {} that {why} matches it by", missing[0]));
    } else {
        f.ok(format!("{node}: {why} is in {policy_chain} and its sets hold {member}"));
    }
}
