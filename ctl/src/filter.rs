//! This node's policy dataplane as the kernel holds it: brindle's iptables chains with their
//! packet and byte counters (both families, whichever iptables backend holds them) and its
//! policy ipsets. `node policy-counters` reports the counters; `diagnose` checks an
//! endpoint's chains and set members against it.

use std::collections::{BTreeMap, BTreeSet};

use brindle_kernel::Kernel as _;

/// One of our rules with its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedRule {
    /// Packets it matched.
    pub packets: u64,
    /// Bytes it matched.
    pub bytes: u64,
    /// The rule, as `iptables-save` prints it (without the counters).
    pub rule: String,
}

impl CountedRule {
    /// The rule's comment without brindle's tag: the policy and rule it stands for.
    pub fn why(&self) -> Option<&str> {
        let (_, rest) = self.rule.split_once("--comment \"brindle: ")?;
        rest.split_once('"').map(|(why, _)| why)
    }

    /// The target (`DROP`, `RETURN`, a chain...).
    pub fn target(&self) -> &str {
        self.rule.rsplit(" -j ").next().and_then(|t| t.split(' ').next()).unwrap_or_default()
    }
}

/// brindle's chains and sets of one family.
#[derive(Debug, Clone, Default)]
pub struct Family {
    /// Our `brin-` chains of the filter table, by name.
    pub chains: BTreeMap<String, Vec<CountedRule>>,
    /// Our policy sets, by name, with their members.
    pub sets: BTreeMap<String, BTreeSet<String>>,
}

/// Both families: `[IPv4, IPv6]`, and which iptables held them.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The families.
    pub families: [Family; 2],
    /// `nft` or `legacy`: the backend brindle's chains are in (none found: `nft`).
    pub backend: &'static str,
}

fn parse_save(text: &str) -> BTreeMap<String, Vec<CountedRule>> {
    let mut chains: BTreeMap<String, Vec<CountedRule>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix(":brin-") {
            chains.entry(format!("brin-{}", declared.split(' ').next().unwrap_or_default())).or_default();
            continue;
        }
        let Some(rest) = line.strip_prefix('[') else { continue };
        let Some((counts, rule)) = rest.split_once("] ") else { continue };
        let Some(chain) = rule.strip_prefix("-A ").and_then(|r| r.split(' ').next()).filter(|c| c.starts_with("brin-"))
        else {
            continue;
        };
        let (packets, bytes) = counts.split_once(':').unwrap_or_default();
        chains.entry(chain.to_owned()).or_default().push(CountedRule {
            packets: packets.parse().unwrap_or_default(),
            bytes: bytes.parse().unwrap_or_default(),
            rule: rule.to_owned(),
        });
    }
    chains
}

fn parse_sets(text: &str, family: char) -> BTreeMap<String, BTreeSet<String>> {
    let prefix = format!("brin-p{family}-");
    let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["create", name, ..] if name.starts_with(&prefix) => {
                sets.entry((*name).to_owned()).or_default();
            }
            ["add", name, member, ..] if name.starts_with(&prefix) => {
                sets.entry((*name).to_owned()).or_default().insert((*member).to_owned());
            }
            _ => {}
        }
    }
    sets
}

impl Filter {
    /// Reads the calling thread's namespace.
    pub fn read() -> anyhow::Result<Filter> {
        let kernel = brindle_kernel::netlink::Netlink::connect()?;
        let save = |family: &str, backend: &str| -> anyhow::Result<String> {
            let out = kernel.run(&format!("{family}-{backend}-save"), &["-c", "-t", "filter"], None)?;
            Ok(if out.success { out.stdout } else { String::new() })
        };
        let backend = if save("iptables", "legacy")?.contains(":brin-FORWARD") { "legacy" } else { "nft" };
        let sets = kernel.run("ipset", &["save"], None)?;
        let sets = if sets.success { sets.stdout } else { String::new() };
        let mut filter = Filter { backend, ..Filter::default() };
        for (i, (family, digit)) in [("iptables", '4'), ("ip6tables", '6')].into_iter().enumerate() {
            filter.families[i] = Family { chains: parse_save(&save(family, backend)?), sets: parse_sets(&sets, digit) };
        }
        Ok(filter)
    }

    /// Packets and bytes per policy rule (its variants added up) and per tier end of each
    /// endpoint, both families together, busiest first.
    pub fn counters(&self) -> Vec<(String, u64, u64)> {
        let mut by_rule: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for family in &self.families {
            for (chain, rules) in &family.chains {
                let policy_chain = chain.starts_with("brin-pi-") || chain.starts_with("brin-pe-");
                let endpoint_chain = chain.starts_with("brin-tw-") || chain.starts_with("brin-fw-");
                for rule in rules {
                    let Some(why) = rule.why() else { continue };
                    let counted = if policy_chain {
                        rule.target() != "RETURN"
                    } else {
                        endpoint_chain && why.starts_with("end of tier")
                    };
                    if !counted {
                        continue;
                    }
                    let key = if policy_chain { why.to_owned() } else { format!("{chain}: {why}") };
                    let entry = by_rule.entry(key).or_default();
                    entry.0 += rule.packets;
                    entry.1 += rule.bytes;
                }
            }
        }
        let mut rows: Vec<(String, u64, u64)> = by_rule.into_iter().map(|(k, (p, b))| (k, p, b)).collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "*filter
:brin-pi-0011 - [0:0]
:brin-tw-brin1 - [0:0]
[3:180] -A brin-pi-0011 -p tcp -m multiport --dports 80 -m comment --comment \"brindle: NetworkPolicy x/p ingress[0]\" -j MARK --set-xmark 0x10000/0x10000
[2:120] -A brin-pi-0011 -p tcp -m set --match-set brin-p4-aa dst,dst -m comment --comment \"brindle: NetworkPolicy x/p ingress[0]\" -j MARK --set-xmark 0x10000/0x10000
[5:300] -A brin-pi-0011 -m mark --mark 0x10000/0x10000 -m comment --comment \"brindle: NetworkPolicy x/p ingress[0]\" -j RETURN
[7:420] -A brin-tw-brin1 -m mark --mark 0x0/0x20000 -m comment --comment \"brindle: end of tier default: no policy allowed it\" -j DROP
[9:9] -A FORWARD -j ACCEPT
COMMIT
";

    #[test]
    fn counters_add_up_a_rule_s_variants_and_leave_out_its_return() {
        let filter = Filter {
            families: [Family { chains: parse_save(SAVED), ..Family::default() }, Family::default()],
            backend: "nft",
        };
        assert_eq!(
            filter.counters(),
            [
                ("brin-tw-brin1: end of tier default: no policy allowed it".to_owned(), 7, 420),
                ("NetworkPolicy x/p ingress[0]".to_owned(), 5, 300),
            ]
        );
        assert!(!filter.families[0].chains.contains_key("FORWARD"));
    }

    #[test]
    fn policy_sets_are_read_by_family() {
        let sets = "create brin-p4-aa hash:net family inet\nadd brin-p4-aa 10.0.0.1\ncreate brin-p6-bb hash:net family inet6\n\
                    create brin-pools-v4 hash:net family inet\nadd brin-pools-v4 10.244.0.0/16\n";
        let v4 = parse_sets(sets, '4');
        assert_eq!(v4.len(), 1);
        assert!(v4["brin-p4-aa"].contains("10.0.0.1"));
        assert_eq!(parse_sets(sets, '6').len(), 1);
    }
}
