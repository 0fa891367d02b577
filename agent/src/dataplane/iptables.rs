//! iptables through `iptables-restore --noflush --wait` transactions on our own `brin-`
//! chains, with one jump from each built-in chain we need, and ipsets for the pool CIDRs.
//! Nothing of anyone else's is flushed or reordered; a transaction runs only when what the
//! kernel holds differs from what we want.

use std::net::IpAddr;

use brindle_kernel::Kernel;
use ipnetwork::IpNetwork;

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
    /// The ports BGP speaks on.
    pub bgp_ports: Vec<u16>,
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

/// One table's part: its name, the built-in chains that jump to our chain, our rules (grouped
/// by chain, chains in name order, as `iptables-save` lists them).
struct Table {
    name: &'static str,
    jumps: Vec<(&'static str, &'static str)>,
    rules: Vec<String>,
}

/// A rule of ours: `-A <chain> <matches> -m comment --comment "brindle: <why>" -j <target>`,
/// written as `iptables-save` prints it, so what the kernel holds compares equal.
fn rule(chain: &str, matches: &str, why: &str, target: &str) -> String {
    let matches = if matches.is_empty() { String::new() } else { format!("{matches} ") };
    format!("-A {chain} {matches}-m comment --comment \"{TAG}: {why}\" -j {target}")
}

/// Our chains per table, in `iptables-save` form. A workload is untrusted: it sends only from
/// its own addresses, never tunnels (VXLAN, IP-in-IP) and never speaks BGP to a node or a BGP
/// peer; tunnels are taken only from nodes. Tunnel rules are in place only while this node
/// uses the tunnel, so other users of the port or protocol are left alone otherwise.
fn chains(v6: bool, rules: &Rules) -> Vec<Table> {
    let nodes = set_name("nodes", v6);
    let hosts = set_name("hosts", v6);
    let ports: Vec<String> = rules.bgp_ports.iter().map(u16::to_string).collect();
    let ports = ports.join(",");
    let mut input = Vec::new();
    let mut forward = Vec::new();
    if let Some(vxlan) = rules.vxlan_port {
        let udp = format!("-p udp -m udp --dport {vxlan}");
        input.push(rule(
            "brin-INPUT",
            &format!("{udp} -m set ! --match-set {nodes} src"),
            "VXLAN only from nodes",
            "DROP",
        ));
        forward.push(rule("brin-FORWARD", &format!("-i brin+ {udp}"), "workloads never send VXLAN", "DROP"));
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
    if v6 {
        input.push(rule(
            "brin-INPUT",
            "-i brin+ -p ipv6-icmp -m icmp6 --icmpv6-type 134",
            "workloads never advertise routes",
            "DROP",
        ));
    }
    forward.extend([
        rule(
            "brin-FORWARD",
            &format!("-i brin+ -p tcp -m multiport --dports {ports} -m set --match-set {hosts} dst"),
            "workloads never speak BGP to nodes and peers",
            "DROP",
        ),
        rule("brin-FORWARD", "-i brin+", "from workloads", "ACCEPT"),
        rule("brin-FORWARD", "-o brin+", "to workloads", "ACCEPT"),
    ]);
    let nat_rule = rule(
        "brin-POSTROUTING",
        &format!("-m set --match-set {} src -m set ! --match-set {} dst", set_name("nat", v6), set_name("pools", v6)),
        "natOutgoing",
        "MASQUERADE",
    );
    vec![
        Table {
            name: "raw",
            jumps: vec![("PREROUTING", "brin-PREROUTING")],
            rules: vec![rule(
                "brin-PREROUTING",
                "-i brin+ -m rpfilter --invert",
                "workloads send only from their own addresses",
                "DROP",
            )],
        },
        Table {
            name: "filter",
            jumps: vec![("INPUT", "brin-INPUT"), ("FORWARD", "brin-FORWARD")],
            rules: forward.into_iter().chain(input).collect(),
        },
        Table { name: "nat", jumps: vec![("POSTROUTING", "brin-POSTROUTING")], rules: vec![nat_rule] },
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

/// Makes the sets and chains of one family match. Returns whether iptables-restore ran.
pub fn sync(kernel: &dyn Kernel, backend: Backend, v6: bool, rules: &Rules) -> anyhow::Result<bool> {
    if current_sets(kernel, rules, v6) != wanted_sets(rules) {
        run_with_input(kernel, "ipset", &["restore", "-exist"], &ipset_script(rules, v6))?;
    }
    let mut script = String::new();
    for Table { name: table, jumps, rules: body } in chains(v6, rules) {
        let saved = kernel.run(&backend.tool(v6, "save"), &["-t", table], None)?;
        if !saved.success {
            anyhow::bail!("{} -t {table} failed: {}", backend.tool(v6, "save"), saved.stderr.trim());
        }
        let saved = saved.stdout;
        let ours: Vec<&str> = saved.lines().filter(|l| l.starts_with("-A brin-")).collect();
        let missing_jumps: Vec<String> = jumps
            .iter()
            .filter(|(builtin, chain)| !saved.lines().any(|l| l == jump(builtin, chain)))
            .map(|(builtin, chain)| format!("-I {builtin} 1 -m comment --comment \"{TAG}: jump\" -j {chain}"))
            .collect();
        let chain_missing = jumps.iter().any(|(_, chain)| !saved.lines().any(|l| l.starts_with(&format!(":{chain} "))));
        if ours == body.iter().map(String::as_str).collect::<Vec<_>>() && missing_jumps.is_empty() && !chain_missing {
            continue;
        }
        script += &format!("*{table}\n");
        for (_, chain) in &jumps {
            script += &format!(":{chain} - [0:0]\n");
        }
        for rule in &body {
            script += rule;
            script += "\n";
        }
        for rule in &missing_jumps {
            script += rule;
            script += "\n";
        }
        script += "COMMIT\n";
    }
    if script.is_empty() {
        return Ok(false);
    }
    tracing::debug!(%script, "iptables-restore");
    run_with_input(kernel, &backend.tool(v6, "restore"), &["--noflush", "--wait"], &script)?;
    Ok(true)
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
                    let table = format!("*{}", args[1]);
                    let text = saved.lock().unwrap().clone();
                    // A jump inserted with `-I CHAIN 1` is listed as `-A CHAIN`.
                    let body: Vec<String> = text
                        .split("COMMIT\n")
                        .filter(|t| t.starts_with(&table))
                        .flat_map(|t| t.lines())
                        .map(|l| l.replacen(" 1 -m comment", " -m comment", 1).replacen("-I ", "-A ", 1))
                        .collect();
                    ok(body.join("\n"))
                }
                "ipset" if args[0] == "restore" => {
                    *sets.lock().unwrap() = stdin.unwrap_or_default().to_owned();
                    ok(String::new())
                }
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
        assert!(sync(&kernel, Backend::Nft, false, &rules()).unwrap(), "the first sync loads the rules");
        let first = kernel.take_log();
        assert!(first.iter().any(|l| l.starts_with("run ipset restore")), "{first:?}");
        assert!(!sync(&kernel, Backend::Nft, false, &rules()).unwrap(), "nothing differs");
        let again = kernel.take_log();
        assert!(again.iter().all(|l| l.contains("save") || l.starts_with("run ipset list")), "{again:?}");
        // A failing save is an error naming the program, not an empty table.
        kernel.fail("iptables-nft-save");
        let error = sync(&kernel, Backend::Nft, false, &rules()).unwrap_err().to_string();
        assert!(error.contains("iptables-nft-save -t"), "{error}");
    }

    fn rules() -> Rules {
        Rules {
            pools: vec!["10.244.0.0/16".parse().unwrap()],
            nat_pools: vec![],
            nodes: vec!["10.0.0.1".parse().unwrap()],
            control_hosts: vec!["10.0.0.1".parse().unwrap(), "10.0.0.254".parse().unwrap()],
            vxlan_port: Some(4789),
            ipip: true,
            bgp_ports: vec![179, 1179],
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
    fn every_rule_is_tagged_in_our_chains_and_in_save_order() {
        for v6 in [false, true] {
            for table in chains(v6, &rules()) {
                for rule in &table.rules {
                    assert!(rule.starts_with("-A brin-") && rule.contains("--comment \"brindle"), "{rule}");
                }
                let chains: Vec<&str> = table.rules.iter().map(|r| r.split(' ').nth(1).unwrap()).collect();
                assert!(chains.is_sorted(), "iptables-save lists chains by name: {chains:?}");
            }
        }
    }

    #[test]
    fn workloads_are_kept_off_the_control_plane() {
        let filter: Vec<String> = chains(false, &rules()).into_iter().find(|t| t.name == "filter").unwrap().rules;
        let text = filter.join("\n");
        assert!(
            text.contains("-A brin-INPUT -p udp -m udp --dport 4789 -m set ! --match-set brin-nodes-v4 src"),
            "{text}"
        );
        assert!(text.contains("-A brin-INPUT -i brin+ -p tcp -m multiport --dports 179,1179"), "{text}");
        let drops_before_accept = filter.iter().position(|r| r.contains("from workloads")).unwrap();
        assert!(filter[..drops_before_accept].iter().all(|r| r.ends_with("-j DROP")), "{text}");
        let v6: Vec<String> = chains(true, &rules()).into_iter().flat_map(|t| t.rules).collect();
        assert!(v6.iter().any(|r| r.contains("--icmpv6-type 134")), "router advertisements from workloads");
        // No tunnel in use: its port and protocol are left to whoever else uses them.
        let untunnelled = Rules { vxlan_port: None, ipip: false, ..rules() };
        let all: Vec<String> = chains(false, &untunnelled).into_iter().flat_map(|t| t.rules).collect();
        assert!(!all.iter().any(|r| r.contains("4789") || r.contains("ipencap")), "{all:?}");
    }
}
