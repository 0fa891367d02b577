//! iptables through `iptables-restore --noflush --wait` transactions on our own `brin-`
//! chains, with one jump from each built-in chain we need, and ipsets for the pool CIDRs.
//! Nothing of anyone else's is flushed or reordered; a transaction runs only when what the
//! kernel holds differs from what we want.

use std::io::Write;
use std::process::{Command, Stdio};

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
    pub fn detect() -> Backend {
        let rules = |backend: Backend| {
            Command::new(backend.tool(false, "save"))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("-A")).count())
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
}

fn set_name(kind: &str, v6: bool) -> String {
    format!("brin-{kind}-{}", if v6 { "v6" } else { "v4" })
}

/// One table's part: its name, the built-in chains that jump to our chain, our rules.
struct Table {
    name: &'static str,
    jumps: Vec<(&'static str, &'static str)>,
    rules: Vec<String>,
}

/// Our chains per table, in `iptables-save` form.
fn chains(v6: bool) -> Vec<Table> {
    let nat_rule = format!(
        "-A brin-POSTROUTING -m set --match-set {} src -m set ! --match-set {} dst -m comment --comment \"{TAG}: natOutgoing\" -j MASQUERADE",
        set_name("nat", v6),
        set_name("pools", v6)
    );
    vec![
        Table {
            name: "filter",
            jumps: vec![("FORWARD", "brin-FORWARD")],
            rules: vec![
                format!("-A brin-FORWARD -i brin+ -m comment --comment \"{TAG}: from workloads\" -j ACCEPT"),
                format!("-A brin-FORWARD -o brin+ -m comment --comment \"{TAG}: to workloads\" -j ACCEPT"),
            ],
        },
        Table { name: "nat", jumps: vec![("POSTROUTING", "brin-POSTROUTING")], rules: vec![nat_rule] },
    ]
}

fn jump(builtin: &str, chain: &str) -> String {
    format!("-A {builtin} -m comment --comment \"{TAG}: jump\" -j {chain}")
}

/// The `ipset restore` script that makes both sets hold exactly these CIDRs, swapped in
/// atomically.
fn ipset_script(rules: &Rules, v6: bool) -> String {
    let family = if v6 { "inet6" } else { "inet" };
    let mut script = String::new();
    for (kind, cidrs) in [("pools", &rules.pools), ("nat", &rules.nat_pools)] {
        let name = set_name(kind, v6);
        let tmp = format!("{name}-tmp");
        script += &format!("create {name} hash:net family {family} -exist\n");
        script += &format!("create {tmp} hash:net family {family} -exist\nflush {tmp}\n");
        for cidr in cidrs {
            script += &format!("add {tmp} {cidr}\n");
        }
        script += &format!("swap {tmp} {name}\ndestroy {tmp}\n");
    }
    script
}

fn run_with_input(program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running {program}: {e}"))?;
    child.stdin.take().expect("piped stdin").write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!("{program} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn current_sets(v6: bool) -> String {
    let mut listing = String::new();
    for kind in ["pools", "nat"] {
        let out = Command::new("ipset").args(["list", &set_name(kind, v6)]).output();
        match out {
            Ok(out) if out.status.success() => {
                let text = String::from_utf8_lossy(&out.stdout);
                let mut members: Vec<&str> =
                    text.lines().skip_while(|l| !l.starts_with("Members:")).skip(1).filter(|l| !l.is_empty()).collect();
                members.sort();
                listing += &format!("{kind}:{}\n", members.join(","));
            }
            // A set that does not exist never matches what is wanted, even an empty one.
            _ => listing += &format!("{kind} missing\n"),
        }
    }
    listing
}

fn wanted_sets(rules: &Rules) -> String {
    let mut listing = String::new();
    for (kind, cidrs) in [("pools", &rules.pools), ("nat", &rules.nat_pools)] {
        let mut members: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
        members.sort();
        listing += &format!("{kind}:{}\n", members.join(","));
    }
    listing
}

/// Makes the sets and chains of one family match. Returns whether iptables-restore ran.
pub fn sync(backend: Backend, v6: bool, rules: &Rules) -> anyhow::Result<bool> {
    if current_sets(v6) != wanted_sets(rules) {
        run_with_input("ipset", &["restore", "-exist"], &ipset_script(rules, v6))?;
    }
    let mut script = String::new();
    for Table { name: table, jumps, rules: body } in chains(v6) {
        let saved = Command::new(backend.tool(v6, "save")).args(["-t", table]).output()?;
        let saved = String::from_utf8_lossy(&saved.stdout);
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
    run_with_input(&backend.tool(v6, "restore"), &["--noflush", "--wait"], &script)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipsets_are_swapped_in_whole() {
        let rules = Rules { pools: vec!["10.244.0.0/16".parse().unwrap()], nat_pools: vec![] };
        let script = ipset_script(&rules, false);
        assert!(
            script.contains("add brin-pools-v4-tmp 10.244.0.0/16\nswap brin-pools-v4-tmp brin-pools-v4\n"),
            "{script}"
        );
        assert!(script.contains("create brin-nat-v4 hash:net family inet -exist"), "{script}");
    }

    #[test]
    fn every_rule_is_tagged_and_in_our_chains() {
        for table in chains(false) {
            for rule in table.rules {
                assert!(rule.starts_with("-A brin-") && rule.contains("--comment \"brindle"), "{rule}");
            }
        }
    }
}
