//! iptables through `iptables-restore --noflush --wait` transactions on our own `brin-`
//! chains, with one jump from each built-in chain we need, and ipsets for the pool CIDRs and
//! the policy program's selectors. Nothing of anyone else's is flushed or reordered; a chain is
//! rewritten only when what the kernel holds of it differs from what we want, and a policy
//! set changes by the members that differ.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use brindle_datastore::resource::EndpointToHostAction;
use brindle_kernel::Kernel;
use ipnetwork::IpNetwork;

use crate::policy::{self, FamilyProgram, IpSet};

/// The tag on every rule of ours.
const TAG: &str = "brindle";

/// Which iptables binaries drive the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// iptables-legacy.
    Legacy,
    /// iptables-nft.
    Nft,
}

impl Backend {
    fn tool(self, v6: bool, tool: &str) -> String {
        let family = if v6 { "ip6tables" } else { "iptables" };
        let flavour = match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        };
        format!("{family}-{flavour}-{tool}")
    }

    /// The backend the host already uses: the one holding more rules (as kube-proxy decides);
    /// nf_tables when neither holds any.
    pub fn detect(kernel: &dyn Kernel) -> Backend {
        let rules = |backend: Backend| {
            kernel
                .run(&backend.tool(false, "save"), &[], None)
                .map(|o| o.stdout.lines().filter(|l| l.starts_with("-A")).count())
                .unwrap_or(0)
        };
        if rules(Backend::Legacy) > rules(Backend::Nft) { Backend::Legacy } else { Backend::Nft }
    }
}

/// What the rules need to know.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    /// Every pool CIDR of the family.
    pub pools: Vec<IpNetwork>,
    /// The natOutgoing pools of the family.
    pub nat_pools: Vec<IpNetwork>,
    /// Every node's address of the family: the only sources of VXLAN and IP-in-IP.
    pub nodes: Vec<IpAddr>,
    /// Nodes and external BGP peers of the family: no workload speaks BGP to them.
    pub control_hosts: Vec<IpAddr>,
    /// The VXLAN UDP port, when this node uses VXLAN (only then are its rules in place).
    pub vxlan_port: Option<u16>,
    /// Whether this node uses IP-in-IP (only then are its rules in place).
    pub ipip: bool,
    /// The WireGuard UDP ports of the devices this node has, of either family (a device
    /// listens on both; only then are their rules in place).
    pub wireguard_ports: Vec<u16>,
    /// The ports BGP speaks on.
    pub bgp_ports: Vec<u16>,
    /// What happens to workload-to-host traffic the workload's policy allowed.
    pub to_host: EndpointToHostAction,
    /// The family's policy chains and sets.
    pub policy: FamilyProgram,
}

fn set_name(kind: &str, v6: bool) -> String {
    format!("brin-{kind}-{}", if v6 { "v6" } else { "v4" })
}

/// Our sets: name suffix, ipset type, members.
fn sets(rules: &Rules) -> [(&'static str, &'static str, Vec<String>); 4] {
    let text = |items: &[IpNetwork]| items.iter().map(ToString::to_string).collect();
    let ips = |items: &[IpAddr]| items.iter().map(ToString::to_string).collect();
    [
        ("pools", "hash:net", text(&rules.pools)),
        ("nat", "hash:net", text(&rules.nat_pools)),
        ("nodes", "hash:ip", ips(&rules.nodes)),
        ("hosts", "hash:ip", ips(&rules.control_hosts)),
    ]
}

/// One table's part: the built-in chains that jump to ours, and our chains with their rules.
struct Table {
    name: &'static str,
    jumps: Vec<(&'static str, &'static str)>,
    chains: BTreeMap<String, Arc<Vec<String>>>,
}

/// A rule of ours: `-A <chain> <matches> -m comment --comment "brindle: <why>" -j <target>`,
/// written as `iptables-save` prints it, so what the kernel holds compares equal (`why` holds
/// no quote or backslash: `iptables-save` would print them escaped).
pub(crate) fn rule(chain: &str, matches: &str, why: &str, target: &str) -> String {
    let matches = if matches.is_empty() { String::new() } else { format!("{matches} ") };
    format!("-A {chain} {matches}-m comment --comment \"{TAG}: {why}\" -j {target}")
}

/// The same as [`rule`] with `-g` (go to `target`; its end returns to our caller's caller).
pub(crate) fn goto_rule(chain: &str, matches: &str, why: &str, target: &str) -> String {
    let matches = if matches.is_empty() { String::new() } else { format!("{matches} ") };
    format!("-A {chain} {matches}-m comment --comment \"{TAG}: {why}\" -g {target}")
}

/// BFD's single-hop and multihop control ports (RFC 5881, RFC 5883): a forged BFD Down
/// would end a node's BGP sessions.
const BFD: &str = "-p udp -m multiport --dports 3784,4784";

/// Our chains per table, in `iptables-save` form. A workload is untrusted: it sends only from
/// its own addresses, never tunnels (VXLAN, IP-in-IP) and never speaks BGP to a node or a BGP
/// peer; tunnels are taken only from nodes; what it sends and receives passes its policy
/// (replies of allowed flows pass, INVALID is dropped). Nor does it speak BFD, whose forged
/// Down would end the node's BGP sessions. Tunnel rules are in place only while
/// this node uses the tunnel, so other users of the port or protocol are left alone otherwise.
fn tables(v6: bool, rules: &Rules) -> Vec<Table> {
    let nodes = set_name("nodes", v6);
    let hosts = set_name("hosts", v6);
    let ports: Vec<String> = rules.bgp_ports.iter().map(u16::to_string).collect();
    let ports = ports.join(",");
    let mut input = Vec::new();
    let mut forward = Vec::new();
    let tunnels = rules.vxlan_port.map(|p| (p, "VXLAN")).into_iter();
    for (port, tunnel) in tunnels.chain(rules.wireguard_ports.iter().map(|p| (*p, "WireGuard"))) {
        let udp = format!("-p udp -m udp --dport {port}");
        input.push(rule(
            "brin-INPUT",
            &format!("{udp} -m set ! --match-set {nodes} src"),
            &format!("{tunnel} only from nodes"),
            "DROP",
        ));
        forward.push(rule(
            "brin-FORWARD",
            &format!("-i brin+ {udp}"),
            &format!("workloads never send {tunnel}"),
            "DROP",
        ));
    }
    if rules.ipip {
        let ipip = "-p ipencap";
        input.push(rule(
            "brin-INPUT",
            &format!("{ipip} -m set ! --match-set {nodes} src"),
            "IP-in-IP only from nodes",
            "DROP",
        ));
        forward.push(rule("brin-FORWARD", &format!("-i brin+ {ipip}"), "workloads never send IP-in-IP", "DROP"));
    }
    input.push(rule(
        "brin-INPUT",
        &format!("-i brin+ -p tcp -m multiport --dports {ports}"),
        "workloads never speak BGP to this node",
        "DROP",
    ));
    input.push(rule("brin-INPUT", &format!("-i brin+ {BFD}"), "workloads never speak BFD to this node", "DROP"));
    if v6 {
        input.push(rule(
            "brin-INPUT",
            "-i brin+ -p ipv6-icmp -m icmp6 --icmpv6-type 134",
            "workloads never advertise routes",
            "DROP",
        ));
    }
    let established = "-m conntrack --ctstate RELATED,ESTABLISHED";
    let invalid = "-m conntrack --ctstate INVALID";
    if v6 {
        // Neighbour discovery with its host is how a pod reaches anything at all; it is not
        // tracked by conntrack, so no egress policy may stop it.
        for (kind, what) in
            [(133, "router solicitations"), (135, "neighbour solicitations"), (136, "neighbour adverts")]
        {
            input.push(rule(
                "brin-INPUT",
                &format!("-i brin+ -p ipv6-icmp -m icmp6 --icmpv6-type {kind}"),
                &format!("{what} to the host"),
                "ACCEPT",
            ));
        }
    }
    input.extend([
        rule("brin-INPUT", &format!("-i brin+ {established}"), "replies to the host", "ACCEPT"),
        rule("brin-INPUT", &format!("-i brin+ {invalid}"), "invalid from workloads", "DROP"),
        rule("brin-INPUT", "-i brin+", "policy of the sending workload", policy::FROM_WORKLOADS),
    ]);
    match rules.to_host {
        EndpointToHostAction::Accept => input.push(rule("brin-INPUT", "-i brin+", "workload to host", "ACCEPT")),
        EndpointToHostAction::Drop => input.push(rule("brin-INPUT", "-i brin+", "workload to host", "DROP")),
        EndpointToHostAction::Return => {}
    }
    forward.extend([
        rule(
            "brin-FORWARD",
            &format!("-i brin+ -p tcp -m multiport --dports {ports} -m set --match-set {hosts} dst"),
            "workloads never speak BGP to nodes and peers",
            "DROP",
        ),
        rule(
            "brin-FORWARD",
            &format!("-i brin+ {BFD} -m set --match-set {hosts} dst"),
            "workloads never speak BFD to nodes and peers",
            "DROP",
        ),
        rule("brin-FORWARD", &format!("-i brin+ {established}"), "replies of allowed flows", "ACCEPT"),
        rule("brin-FORWARD", &format!("-o brin+ {established}"), "replies of allowed flows", "ACCEPT"),
        rule("brin-FORWARD", &format!("-i brin+ {invalid}"), "invalid from workloads", "DROP"),
        rule("brin-FORWARD", &format!("-o brin+ {invalid}"), "invalid to workloads", "DROP"),
        rule("brin-FORWARD", "-i brin+", "policy of the sending workload", policy::FROM_WORKLOADS),
        rule("brin-FORWARD", "-o brin+", "policy of the receiving workload", policy::TO_WORKLOADS),
        rule("brin-FORWARD", "-i brin+", "from workloads", "ACCEPT"),
        rule("brin-FORWARD", "-o brin+", "to workloads", "ACCEPT"),
    ]);
    let nat_rule = rule(
        "brin-POSTROUTING",
        &format!("-m set --match-set {} src -m set ! --match-set {} dst", set_name("nat", v6), set_name("pools", v6)),
        "natOutgoing",
        "MASQUERADE",
    );
    let mut filter = rules.policy.chains.clone();
    filter.insert("brin-FORWARD".into(), Arc::new(forward));
    filter.insert("brin-INPUT".into(), Arc::new(input));
    vec![
        Table {
            name: "raw",
            jumps: vec![("PREROUTING", "brin-PREROUTING")],
            chains: [(
                "brin-PREROUTING".to_owned(),
                Arc::new(vec![rule(
                    "brin-PREROUTING",
                    "-i brin+ -m rpfilter --invert",
                    "workloads send only from their own addresses",
                    "DROP",
                )]),
            )]
            .into(),
        },
        Table { name: "filter", jumps: vec![("INPUT", "brin-INPUT"), ("FORWARD", "brin-FORWARD")], chains: filter },
        Table {
            name: "nat",
            jumps: vec![("POSTROUTING", "brin-POSTROUTING")],
            chains: [("brin-POSTROUTING".to_owned(), Arc::new(vec![nat_rule]))].into(),
        },
    ]
}

fn jump(builtin: &str, chain: &str) -> String {
    format!("-A {builtin} -m comment --comment \"{TAG}: jump\" -j {chain}")
}

/// The `ipset restore` script that makes every set hold exactly its members, swapped in
/// atomically.
fn ipset_script(rules: &Rules, v6: bool) -> String {
    let family = if v6 { "inet6" } else { "inet" };
    let mut script = String::new();
    for (kind, kind_type, members) in sets(rules) {
        let name = set_name(kind, v6);
        let tmp = format!("{name}-tmp");
        script += &format!("create {name} {kind_type} family {family} -exist\n");
        script += &format!("create {tmp} {kind_type} family {family} -exist\nflush {tmp}\n");
        for member in members {
            script += &format!("add {tmp} {member}\n");
        }
        script += &format!("swap {tmp} {name}\ndestroy {tmp}\n");
    }
    script
}

fn run_with_input(kernel: &dyn Kernel, program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    let out = kernel.run(program, args, Some(input))?;
    if !out.success {
        anyhow::bail!("{program} failed: {}", out.stderr.trim());
    }
    Ok(())
}
fn current_sets(kernel: &dyn Kernel, rules: &Rules, v6: bool) -> String {
    let mut listing = String::new();
    for (kind, kind_type, _) in sets(rules) {
        match kernel.run("ipset", &["list", &set_name(kind, v6)], None) {
            Ok(out) if out.success => {
                let text = out.stdout;
                let mut members: Vec<&str> =
                    text.lines().skip_while(|l| !l.starts_with("Members:")).skip(1).filter(|l| !l.is_empty()).collect();
                members.sort();
                let typed = text.lines().any(|l| l == format!("Type: {kind_type}"));
                listing += &format!("{kind}{}:{}\n", if typed { "" } else { " of another type" }, members.join(","));
            }
            // A set that does not exist never matches what is wanted, even an empty one.
            _ => listing += &format!("{kind} missing\n"),
        }
    }
    listing
}

fn wanted_sets(rules: &Rules) -> String {
    let mut listing = String::new();
    for (kind, _, mut members) in sets(rules) {
        members.sort();
        listing += &format!("{kind}:{}\n", members.join(","));
    }
    listing
}

/// The policy sets of one family the kernel holds (`ipset save`), by name.
fn current_policy_sets(kernel: &dyn Kernel, v6: bool) -> anyhow::Result<BTreeMap<String, Arc<IpSet>>> {
    let out = kernel.run("ipset", &["save"], None)?;
    if !out.success {
        anyhow::bail!("ipset save failed: {}", out.stderr.trim());
    }
    let prefix = format!("{}{}-", policy::SET_PREFIX, if v6 { '6' } else { '4' });
    let mut sets: BTreeMap<String, IpSet> = BTreeMap::new();
    for line in out.stdout.lines() {
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("create"), Some(name), Some(kind)) if name.starts_with(&prefix) => {
                let kind = if kind == "hash:ip,port" { "hash:ip,port" } else { "hash:net" };
                sets.insert(name.to_owned(), IpSet { kind, members: BTreeSet::new() });
            }
            (Some("add"), Some(name), Some(member)) => {
                if let Some(set) = sets.get_mut(name) {
                    set.members.insert(member.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(sets.into_iter().map(|(name, set)| (name, Arc::new(set))).collect())
}

/// The `ipset restore` script that brings the policy sets from `current` to `wanted` member by
/// member.
fn policy_set_script(
    current: &BTreeMap<String, Arc<IpSet>>,
    wanted: &BTreeMap<String, Arc<IpSet>>,
    v6: bool,
) -> String {
    let family = if v6 { "inet6" } else { "inet" };
    let empty = BTreeSet::new();
    let mut script = String::new();
    for (name, set) in wanted {
        let held = match current.get(name) {
            // The very set the last sync wrote: nothing to compare.
            Some(held) if Arc::ptr_eq(held, set) => continue,
            Some(held) => &held.members,
            None => {
                script += &format!("create {name} {} family {family} maxelem 1048576\n", set.kind);
                &empty
            }
        };
        for member in set.members.difference(held) {
            script += &format!("add {name} {member}\n");
        }
        for member in held.difference(&set.members) {
            script += &format!("del {name} {member}\n");
        }
    }
    script
}

/// Our chains in a table as `iptables-save` lists them: every `brin-` chain with its rules.
fn saved_chains(saved: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in saved.lines() {
        if let Some(declared) = line.strip_prefix(':').filter(|l| l.starts_with("brin-")) {
            chains.entry(declared.split(' ').next().unwrap_or_default().to_owned()).or_default();
        } else if let Some(rest) = line.strip_prefix("-A brin-") {
            let chain = format!("brin-{}", rest.split(' ').next().unwrap_or_default());
            chains.entry(chain).or_default().push(line.to_owned());
        }
    }
    chains
}

/// One table's part of an `iptables-save` of every table (empty when the kernel has no such
/// table yet).
fn saved_table<'s>(saved: &'s str, table: &str) -> &'s str {
    let header = format!("*{table}\n");
    let Some(start) = saved.find(&header).filter(|&i| i == 0 || saved[..i].ends_with('\n')) else { return "" };
    let body = &saved[start..];
    body.find("\nCOMMIT\n").map_or(body, |end| &body[..end + 1])
}

/// What a table holds of ours: our chains, and whether each of its built-in jumps is there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct HeldTable {
    chains: BTreeMap<String, Arc<Vec<String>>>,
    jumps: Vec<bool>,
}

impl HeldTable {
    fn from_save(table: &Table, saved: &str) -> HeldTable {
        let jumps =
            table.jumps.iter().map(|(builtin, chain)| saved.lines().any(|l| l == jump(builtin, chain))).collect();
        HeldTable {
            chains: saved_chains(saved).into_iter().map(|(name, body)| (name, Arc::new(body))).collect(),
            jumps,
        }
    }
}

/// The `iptables-restore --noflush` script for one table: the chains that differ declared
/// (which empties them) and written, chains no longer wanted emptied and deleted, missing jumps
/// inserted; empty when the kernel already holds it all.
fn table_script(table: &Table, held: &HeldTable) -> String {
    let changed: Vec<(&String, &Arc<Vec<String>>)> =
        table.chains.iter().filter(|(name, body)| held.chains.get(*name) != Some(*body)).collect();
    let stale: Vec<&String> = held.chains.keys().filter(|name| !table.chains.contains_key(*name)).collect();
    let missing_jumps: Vec<String> = table
        .jumps
        .iter()
        .zip(held.jumps.iter().chain(std::iter::repeat(&false)))
        .filter(|(_, present)| !**present)
        .map(|((builtin, chain), _)| format!("-I {builtin} 1 -m comment --comment \"{TAG}: jump\" -j {chain}"))
        .collect();
    if changed.is_empty() && stale.is_empty() && missing_jumps.is_empty() {
        return String::new();
    }
    let mut script = format!("*{}\n", table.name);
    for (name, _) in &changed {
        script += &format!(":{name} - [0:0]\n");
    }
    for name in &stale {
        script += &format!("-F {name}\n");
    }
    for (_, body) in &changed {
        for rule in body.iter() {
            script += rule;
            script += "\n";
        }
    }
    for rule in &missing_jumps {
        script += rule;
        script += "\n";
    }
    for name in &stale {
        script += &format!("-X {name}\n");
    }
    script += "COMMIT\n";
    script
}

/// What one family's sync left in the kernel. Between full resyncs it stands for the kernel,
/// so a change is diffed against it without listing tables and sets (which, with thousands of
/// endpoints, costs more than the change).
#[derive(Debug, Clone, Default)]
pub struct Programmed {
    base_sets: String,
    policy_sets: BTreeMap<String, Arc<IpSet>>,
    tables: BTreeMap<&'static str, HeldTable>,
}

/// Makes the sets and chains of one family match: against `known` (what the last sync left)
/// when given, else against what the kernel lists. Returns whether iptables-restore ran, and
/// what the kernel now holds.
pub fn sync(
    kernel: &dyn Kernel,
    backend: Backend,
    v6: bool,
    rules: &Rules,
    known: Option<Programmed>,
) -> anyhow::Result<(bool, Programmed)> {
    let base_sets = wanted_sets(rules);
    let held_base = match &known {
        Some(known) => known.base_sets.clone(),
        None => current_sets(kernel, rules, v6),
    };
    // Sets are filled before the rules that match them, and destroyed after; both kinds in
    // one `ipset restore`.
    let mut set_script = if held_base != base_sets { ipset_script(rules, v6) } else { String::new() };
    let held_sets = match &known {
        Some(known) => known.policy_sets.clone(),
        None => current_policy_sets(kernel, v6)?,
    };
    set_script += &policy_set_script(&held_sets, &rules.policy.sets, v6);
    if !set_script.is_empty() {
        run_with_input(kernel, "ipset", &["restore", "-exist"], &set_script)?;
    }
    let mut script = String::new();
    let mut tables_now = BTreeMap::new();
    let wanted = tables(v6, rules);
    // Tables not known are read with one save of every table: with nf_tables, a save of one
    // table lists the whole ruleset anyway.
    let unknown = wanted.iter().any(|t| known.as_ref().is_none_or(|k| !k.tables.contains_key(t.name)));
    let saved = if unknown {
        let saved = kernel.run(&backend.tool(v6, "save"), &[], None)?;
        if !saved.success {
            anyhow::bail!("{} failed: {}", backend.tool(v6, "save"), saved.stderr.trim());
        }
        saved.stdout
    } else {
        String::new()
    };
    for table in wanted {
        let held = match known.as_ref().and_then(|k| k.tables.get(table.name)) {
            Some(held) => held.clone(),
            None => HeldTable::from_save(&table, saved_table(&saved, table.name)),
        };
        script += &table_script(&table, &held);
        tables_now.insert(table.name, HeldTable { jumps: vec![true; table.jumps.len()], chains: table.chains });
    }
    let ran = !script.is_empty();
    if ran {
        tracing::debug!(bytes = script.len(), "iptables-restore");
        tracing::trace!(%script, "iptables-restore");
        run_with_input(kernel, &backend.tool(v6, "restore"), &["--noflush", "--wait"], &script)?;
    }
    let stale: String = held_sets
        .keys()
        .filter(|name| !rules.policy.sets.contains_key(*name))
        .map(|name| format!("destroy {name}\n"))
        .collect();
    if !stale.is_empty()
        && let Err(e) = run_with_input(kernel, "ipset", &["restore", "-exist"], &stale)
    {
        // Left out of what is known to be held, so the next sync tries again.
        tracing::warn!(error = %e, "stale policy sets stay until the next sync");
    }
    let programmed = Programmed { base_sets, policy_sets: rules.policy.sets.clone(), tables: tables_now };
    Ok((ran, programmed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_kernel::Output;
    use brindle_kernel::fake::FakeKernel;
    use std::sync::{Arc, Mutex};

    /// A fake whose iptables-save prints what the last iptables-restore loaded (as if the
    /// kernel held it) and whose ipset lists what the last restore made.
    fn kernel_with_iptables() -> FakeKernel {
        let saved: Arc<Mutex<String>> = Arc::default();
        let sets: Arc<Mutex<String>> = Arc::default();
        FakeKernel::new().with_programs(move |program, args, stdin| {
            let ok = |stdout: String| Output { success: true, stdout, stderr: String::new() };
            match program {
                "iptables-nft-restore" => {
                    *saved.lock().unwrap() += stdin.unwrap_or_default();
                    ok(String::new())
                }
                "iptables-nft-save" => {
                    assert!(args.is_empty(), "one save of every table: {args:?}");
                    let text = saved.lock().unwrap().clone();
                    // Every restore's lines, table by table; a jump inserted with
                    // `-I CHAIN 1` is listed as `-A CHAIN`.
                    let mut by_table: Vec<(String, String)> = Vec::new();
                    for section in text.split("COMMIT\n").filter(|t| !t.is_empty()) {
                        let (header, lines) = section.split_once('\n').unwrap_or((section, ""));
                        let lines: String = lines
                            .lines()
                            .map(|l| l.replacen(" 1 -m comment", " -m comment", 1).replacen("-I ", "-A ", 1) + "\n")
                            .collect();
                        match by_table.iter_mut().find(|(h, _)| h == header) {
                            Some((_, body)) => body.push_str(&lines),
                            None => by_table.push((header.to_owned(), lines)),
                        }
                    }
                    ok(by_table.into_iter().map(|(header, body)| format!("{header}\n{body}COMMIT\n")).collect())
                }
                "ipset" if args[0] == "restore" => {
                    *sets.lock().unwrap() = stdin.unwrap_or_default().to_owned();
                    ok(String::new())
                }
                "ipset" if args[0] == "save" => ok(String::new()),
                "ipset" => {
                    let script = sets.lock().unwrap().clone();
                    let name = args[1];
                    if !script.contains(&format!("create {name} ")) {
                        return Output { success: false, stdout: String::new(), stderr: "does not exist".into() };
                    }
                    let kind = script.lines().find(|l| l.starts_with(&format!("create {name} "))).unwrap();
                    let members: Vec<&str> =
                        script.lines().filter_map(|l| l.strip_prefix(&format!("add {name}-tmp "))).collect();
                    ok(format!(
                        "Name: {name}\nType: {}\nMembers:\n{}\n",
                        kind.split(' ').nth(2).unwrap(),
                        members.join("\n")
                    ))
                }
                _ => ok(String::new()),
            }
        })
    }

    #[test]
    fn a_resync_with_nothing_to_change_runs_no_restore() {
        let kernel = kernel_with_iptables();
        let (ran, programmed) = sync(&kernel, Backend::Nft, false, &rules(), None).unwrap();
        assert!(ran, "the first sync loads the rules");
        let first = kernel.take_log();
        assert!(first.iter().any(|l| l.starts_with("run ipset restore")), "{first:?}");
        assert!(!sync(&kernel, Backend::Nft, false, &rules(), None).unwrap().0, "nothing differs");
        let again = kernel.take_log();
        assert!(again.iter().all(|l| l.contains("save") || l.starts_with("run ipset list")), "{again:?}");
        // Against what the last sync left, nothing is even read.
        assert!(!sync(&kernel, Backend::Nft, false, &rules(), Some(programmed.clone())).unwrap().0);
        assert_eq!(kernel.take_log(), Vec::<String>::new());
        // A change is written without reading: only the chain that differs.
        let changed = Rules { bgp_ports: vec![179], ..rules() };
        let (ran, _) = sync(&kernel, Backend::Nft, false, &changed, Some(programmed)).unwrap();
        let log = kernel.take_log();
        assert!(ran && log.len() == 1 && log[0].starts_with("run iptables-nft-restore"), "{log:?}");
        // A failing save is an error naming the program, not an empty table.
        kernel.fail("iptables-nft-save");
        let error = sync(&kernel, Backend::Nft, false, &rules(), None).unwrap_err().to_string();
        assert!(error.contains("iptables-nft-save failed"), "{error}");
    }

    #[test]
    fn a_save_of_every_table_is_cut_into_tables() {
        let saved = "# Generated by iptables-nft-save v1.8.9 on Thu Dec  3 12:00:00 2026\n*raw\n:PREROUTING ACCEPT [0:0]\n\
                     COMMIT\n# Completed on Thu Dec  3 12:00:00 2026\n*filter\n:INPUT ACCEPT [0:0]\n:brin-INPUT - [0:0]\n\
                     -A INPUT -j brin-INPUT\n-A brin-INPUT -j ACCEPT\nCOMMIT\n";
        assert_eq!(saved_table(saved, "raw"), "*raw\n:PREROUTING ACCEPT [0:0]\n");
        assert_eq!(
            saved_table(saved, "filter"),
            "*filter\n:INPUT ACCEPT [0:0]\n:brin-INPUT - [0:0]\n-A INPUT -j brin-INPUT\n-A brin-INPUT -j ACCEPT\n"
        );
        assert_eq!(saved_table(saved, "nat"), "", "a table the kernel does not have yet holds nothing");
    }

    fn rules() -> Rules {
        Rules {
            pools: vec!["10.244.0.0/16".parse().unwrap()],
            nat_pools: vec![],
            nodes: vec!["10.0.0.1".parse().unwrap()],
            control_hosts: vec!["10.0.0.1".parse().unwrap(), "10.0.0.254".parse().unwrap()],
            vxlan_port: Some(4789),
            ipip: true,
            wireguard_ports: vec![51820],
            bgp_ports: vec![179, 1179],
            ..Rules::default()
        }
    }

    #[test]
    fn ipsets_are_swapped_in_whole() {
        let script = ipset_script(&rules(), false);
        assert!(
            script.contains("add brin-pools-v4-tmp 10.244.0.0/16\nswap brin-pools-v4-tmp brin-pools-v4\n"),
            "{script}"
        );
        assert!(script.contains("create brin-nat-v4 hash:net family inet -exist"), "{script}");
        assert!(script.contains("create brin-nodes-v4 hash:ip family inet -exist"), "{script}");
        assert!(script.contains("add brin-hosts-v4-tmp 10.0.0.254\n"), "{script}");
    }

    #[test]
    fn every_rule_is_tagged_and_in_its_chain() {
        for v6 in [false, true] {
            for table in tables(v6, &rules()) {
                for (chain, body) in &table.chains {
                    for rule in body.iter() {
                        assert!(rule.starts_with(&format!("-A {chain} ")), "{rule}");
                        assert!(rule.contains("--comment \"brindle"), "{rule}");
                        let comment = rule.split("--comment \"").nth(1).unwrap().split('"').next().unwrap();
                        assert!(!comment.contains(['\'', '\\']), "iptables-save escapes these: {rule}");
                    }
                }
            }
        }
    }

    fn filter_chain(rules: &Rules, chain: &str) -> Vec<String> {
        let mut tables = tables(false, rules);
        let filter = tables.iter_mut().find(|t| t.name == "filter").unwrap();
        filter.chains.remove(chain).map(|body| body.to_vec()).unwrap()
    }

    #[test]
    fn workloads_are_kept_off_the_control_plane_and_pass_their_policy() {
        let input = filter_chain(&rules(), "brin-INPUT");
        let forward = filter_chain(&rules(), "brin-FORWARD");
        let text = input.join("\n");
        assert!(
            text.contains("-A brin-INPUT -p udp -m udp --dport 4789 -m set ! --match-set brin-nodes-v4 src"),
            "{text}"
        );
        assert!(text.contains("-A brin-INPUT -i brin+ -p tcp -m multiport --dports 179,1179"), "{text}");
        assert!(text.contains("-A brin-INPUT -i brin+ -p udp -m multiport --dports 3784,4784"), "{text}");
        assert!(forward.iter().any(|r| r.contains("--dports 3784,4784 -m set --match-set brin-hosts-v4 dst")));
        // Control-plane drops come before anything accepts; policy before the final accepts.
        for chain in [&input, &forward] {
            let first_accept = chain.iter().position(|r| r.ends_with("-j ACCEPT")).unwrap();
            assert!(chain[..first_accept].iter().all(|r| r.ends_with("-j DROP")), "{chain:#?}");
            let dispatch = chain.iter().position(|r| r.ends_with("-j brin-from-wl")).unwrap();
            assert!(chain[dispatch..].iter().filter(|r| r.ends_with("-j ACCEPT")).all(|r| !r.contains("ctstate")));
        }
        let v6: Vec<String> =
            tables(true, &rules()).into_iter().flat_map(|t| t.chains.into_values().flat_map(|c| c.to_vec())).collect();
        assert!(v6.iter().any(|r| r.contains("--icmpv6-type 134")), "router advertisements from workloads");
        // No tunnel in use: its port and protocol are left to whoever else uses them.
        let all = |rules: &Rules| -> Vec<String> {
            tables(false, rules).into_iter().flat_map(|t| t.chains.into_values().flat_map(|c| c.to_vec())).collect()
        };
        let tunnelled = all(&rules());
        assert!(tunnelled.iter().any(|r| r.contains("--dport 51820 -m set ! --match-set brin-nodes-v4 src")));
        assert!(tunnelled.iter().any(|r| r.contains("-i brin+ -p udp -m udp --dport 51820")), "{tunnelled:?}");
        let untunnelled = all(&Rules { vxlan_port: None, ipip: false, wireguard_ports: Vec::new(), ..rules() });
        assert!(!untunnelled.iter().any(|r| r.contains("4789") || r.contains("ipencap") || r.contains("51820")));
        // Workload to host follows the configured action once policy allowed it.
        let to_host = |action| filter_chain(&Rules { to_host: action, ..rules() }, "brin-INPUT").pop().unwrap();
        assert!(to_host(EndpointToHostAction::Accept).ends_with("workload to host\" -j ACCEPT"));
        assert!(to_host(EndpointToHostAction::Drop).ends_with("workload to host\" -j DROP"));
        assert!(to_host(EndpointToHostAction::Return).ends_with("-j brin-from-wl"));
    }

    #[test]
    fn only_chains_that_differ_are_rewritten_and_stale_ones_removed() {
        let table = Table {
            name: "filter",
            jumps: vec![("FORWARD", "brin-FORWARD")],
            chains: [
                ("brin-FORWARD".to_owned(), Arc::new(vec![rule("brin-FORWARD", "", "a", "brin-tw-x")])),
                ("brin-tw-x".to_owned(), Arc::new(vec![rule("brin-tw-x", "", "b", "DROP")])),
                ("brin-tw-y".to_owned(), Arc::new(vec![])),
            ]
            .into(),
        };
        let saved = format!(
            ":FORWARD ACCEPT [0:0]\n:brin-FORWARD - [0:0]\n:brin-tw-x - [0:0]\n:brin-tw-old - [0:0]\n{}\n{}\n{}\n{}\n",
            jump("FORWARD", "brin-FORWARD"),
            rule("brin-FORWARD", "", "a", "brin-tw-x"),
            rule("brin-tw-x", "", "old", "DROP"),
            rule("brin-tw-old", "", "c", "ACCEPT"),
        );
        let script = table_script(&table, &HeldTable::from_save(&table, &saved));
        assert_eq!(
            script,
            format!(
                "*filter\n:brin-tw-x - [0:0]\n:brin-tw-y - [0:0]\n-F brin-tw-old\n{}\n-X brin-tw-old\nCOMMIT\n",
                rule("brin-tw-x", "", "b", "DROP")
            )
        );
        let now = format!(
            ":brin-FORWARD - [0:0]\n:brin-tw-x - [0:0]\n:brin-tw-y - [0:0]\n{}\n{}\n{}\n",
            jump("FORWARD", "brin-FORWARD"),
            rule("brin-FORWARD", "", "a", "brin-tw-x"),
            rule("brin-tw-x", "", "b", "DROP"),
        );
        assert_eq!(table_script(&table, &HeldTable::from_save(&table, &now)), "", "nothing differs");
    }

    #[test]
    fn policy_sets_change_by_their_members() {
        let set = |kind, members: &[&str]| {
            Arc::new(IpSet { kind, members: members.iter().map(|m| (*m).to_owned()).collect() })
        };
        let held: BTreeMap<String, Arc<IpSet>> =
            [("brin-p4-a".to_owned(), set("hash:net", &["10.0.0.1", "10.0.0.2"]))].into();
        let wanted: BTreeMap<String, Arc<IpSet>> = [
            ("brin-p4-a".to_owned(), set("hash:net", &["10.0.0.2", "10.0.0.3"])),
            ("brin-p4-b".to_owned(), set("hash:ip,port", &["10.0.0.3,tcp:80"])),
        ]
        .into();
        assert_eq!(
            policy_set_script(&held, &wanted, false),
            "add brin-p4-a 10.0.0.3\ndel brin-p4-a 10.0.0.1\n\
             create brin-p4-b hash:ip,port family inet maxelem 1048576\nadd brin-p4-b 10.0.0.3,tcp:80\n"
        );
        assert_eq!(policy_set_script(&wanted, &wanted, false), "");
    }
}
