//! `ipam show`, `ipam check`, `ipam gc` and `ipam release`: how full the pools and blocks are,
//! what is leaked or out of step and when garbage collection frees it, and giving addresses
//! back.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use brindle_datastore::Client;
use brindle_datastore::ipam::{Block, CheckReport, Ipam, Leak, LeakOutcome, NodeOutcome};
use brindle_datastore::resource::{IpPool, Resource};
use ipnetwork::IpNetwork;

use crate::output::table;

/// Width of a usage bar in characters.
const BAR: usize = 20;

/// `[#####---------------]  25.0%`.
fn usage_bar(used: u128, size: u128) -> String {
    let fraction = if size == 0 { 0.0 } else { used as f64 / size as f64 };
    let filled = ((fraction * BAR as f64).ceil() as usize).min(BAR);
    let filled = if used > 0 { filled.max(1) } else { 0 };
    format!("[{}{}] {:5.1}%", "#".repeat(filled), "-".repeat(BAR - filled), fraction * 100.0)
}

fn addresses(net: &IpNetwork) -> u128 {
    let bits = u32::from(if net.is_ipv4() { 32u8 } else { 128u8 } - net.prefix());
    1u128.checked_shl(bits).unwrap_or(u128::MAX)
}

fn pool_of<'a>(pools: &'a [Resource<IpPool>], net: &IpNetwork) -> Option<&'a Resource<IpPool>> {
    pools.iter().find(|p| p.spec.cidr.contains(net.network()))
}

/// The `ipam show` report.
pub async fn show(client: &Client, ip: Option<IpAddr>, show_blocks: bool) -> anyhow::Result<String> {
    let ipam = Ipam::new(client.clone());
    let blocks: Vec<Block> = ipam.blocks().await?.into_iter().map(|(b, _)| b).collect();
    let (pools, _) = client.list::<IpPool>().await?;
    if let Some(ip) = ip {
        return Ok(show_ip(&pools, &blocks, ip));
    }
    let mut rows = Vec::new();
    for pool in &pools {
        let size = addresses(&pool.spec.cidr);
        let mine: Vec<&Block> = blocks.iter().filter(|b| pool.spec.cidr.contains(b.cidr.network())).collect();
        let used: u128 = mine.iter().map(|b| b.in_use() as u128).sum();
        let block_total = 1u128
            .checked_shl(u32::from(pool.spec.block_size().saturating_sub(pool.spec.cidr.prefix())))
            .unwrap_or(u128::MAX);
        rows.push(vec![
            pool.metadata.name.clone(),
            pool.spec.cidr.to_string(),
            format!("{}/{block_total}", mine.len()),
            size.to_string(),
            used.to_string(),
            (size - used).to_string(),
            usage_bar(used, size),
        ]);
    }
    let headers = ["POOL", "CIDR", "BLOCKS", "SIZE", "IN USE", "FREE", "USAGE"].map(String::from);
    let mut out = table(&headers, &rows);
    if show_blocks {
        let rows: Vec<Vec<String>> = blocks
            .iter()
            .map(|b| {
                let size = addresses(&b.cidr);
                let used = b.in_use() as u128;
                vec![
                    b.cidr.to_string(),
                    pool_of(&pools, &b.cidr).map_or("(none)".into(), |p| p.metadata.name.clone()),
                    b.owner.clone().unwrap_or_else(|| "(none)".into()),
                    size.to_string(),
                    used.to_string(),
                    (size - used).to_string(),
                    usage_bar(used, size),
                ]
            })
            .collect();
        out += "\n";
        out += &table(&["BLOCK", "POOL", "OWNER", "SIZE", "IN USE", "FREE", "USAGE"].map(String::from), &rows);
    }
    Ok(out)
}

fn show_ip(pools: &[Resource<IpPool>], blocks: &[Block], ip: IpAddr) -> String {
    let Some(pool) = pools.iter().find(|p| p.spec.cidr.contains(ip)) else {
        return format!("{ip} is not in any IPPool\n");
    };
    let Some(block) = blocks.iter().find(|b| b.cidr.contains(ip)) else {
        return format!("{ip} is free: IPPool \"{}\", in no claimed block yet\n", pool.metadata.name);
    };
    let owner = block.owner.as_deref().unwrap_or("(none)");
    let place = format!("IPPool \"{}\", block {} (owner {owner})", pool.metadata.name, block.cidr);
    match block.holder(ip) {
        None => format!("{ip} is free: {place}\n"),
        Some(a) => {
            let pod = match (&a.namespace, &a.pod) {
                (Some(ns), Some(pod)) => format!(", pod {ns}/{pod}"),
                _ => String::new(),
            };
            format!("{ip} is in use: {place}, handle {}, {:?} on node {}{pod}\n", a.handle, a.kind, a.node)
        }
    }
}

/// `1h 2m 3s` for a span of milliseconds, to the second.
fn span(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string()
}

/// When a leak or a gone node may go, as the RELEASE column says it. `recorded`: a pass has
/// recorded the sighting (an earlier one, or the acting pass that made this report).
fn when(report: &CheckReport, releasable: bool, first_seen_ms: u64, release_after_ms: u64, recorded: bool) -> String {
    if releasable {
        return "now".into();
    }
    if report.grace_ms == 0 {
        return "never (leakGracePeriod is 0: releasing is off)".into();
    }
    let now = report.at_ms;
    if recorded || first_seen_ms < now {
        let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(release_after_ms.max(now)));
        format!("in {} ({at})", span(release_after_ms.saturating_sub(now)))
    } else {
        // Nothing has recorded it yet: the wait starts with the first acting pass that sees it.
        format!("{} after the first `ipam gc --apply` that sees it", span(release_after_ms - first_seen_ms))
    }
}

fn pod_of(leak: &Leak) -> String {
    match (&leak.holder.namespace, &leak.holder.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => "-".into(),
    }
}

/// A report in words: counts, then leaks and gone nodes with when each may go, then blocks and
/// addresses out of step. `recorded`: an acting pass made it and recorded its sightings.
pub fn describe(report: &CheckReport, recorded: bool) -> String {
    let releasable = report.leaked.iter().filter(|l| l.releasable).count();
    let mut out = format!(
        "{} blocks, {} addresses in use, {} leaked ({releasable} releasable now), {} gone nodes, \
         {} blocks out of step, {} address conflicts, {} empty owned blocks\n",
        report.blocks,
        report.allocations,
        report.leaked.len(),
        report.gone_nodes.len(),
        report.mismatched_blocks.len(),
        report.conflicts.len(),
        report.empty_blocks.len()
    );
    if !report.leaked.is_empty() {
        let rows: Vec<Vec<String>> = report
            .leaked
            .iter()
            .map(|l| {
                vec![
                    l.ip.to_string(),
                    l.holder.handle.clone(),
                    l.holder.node.clone(),
                    pod_of(l),
                    l.reason.clone(),
                    when(report, l.releasable, l.first_seen_ms, l.release_after_ms, recorded),
                ]
            })
            .collect();
        out += &format!(
            "\nLeaked addresses (released once {} old and seen leaked by an `ipam gc --apply` that long before):\n",
            span(report.grace_ms)
        );
        out += &table(&["IP", "HANDLE", "NODE", "POD", "WHY", "RELEASE"].map(String::from), &rows);
    }
    if !report.gone_nodes.is_empty() {
        let rows: Vec<Vec<String>> = report
            .gone_nodes
            .iter()
            .map(|n| {
                let blocks: Vec<String> = n.blocks.iter().map(ToString::to_string).collect();
                vec![
                    n.node.clone(),
                    if blocks.is_empty() { "-".into() } else { blocks.join(",") },
                    n.endpoints.len().to_string(),
                    when(report, n.releasable, n.first_seen_ms, n.release_after_ms, recorded),
                ]
            })
            .collect();
        out += "\nNodes that do not exist (their endpoints are deleted; their blocks lose their owner):\n";
        out += &table(&["NODE", "BLOCKS", "ENDPOINTS", "CLEARED"].map(String::from), &rows);
    }
    if !report.mismatched_blocks.is_empty() {
        let rows: Vec<Vec<String>> = report
            .mismatched_blocks
            .iter()
            .map(|b| vec![b.cidr.to_string(), b.owner.clone().unwrap_or("(none)".into()), b.reason.clone()])
            .collect();
        out += "\nBlocks out of step:\n";
        out += &table(&["BLOCK", "OWNER", "WHY"].map(String::from), &rows);
    }
    if !report.conflicts.is_empty() {
        let rows: Vec<Vec<String>> = report
            .conflicts
            .iter()
            .map(|c| {
                vec![c.ip.to_string(), c.endpoints.join(","), c.holder.clone().unwrap_or("-".into()), c.reason.clone()]
            })
            .collect();
        out += "\nAddresses the endpoints and IPAM disagree on (garbage collection leaves these to you):\n";
        out += &table(&["IP", "ENDPOINTS", "IPAM HANDLE", "WHY"].map(String::from), &rows);
    }
    out
}

/// The `ipam check` report in words, and the report itself.
pub async fn check(client: &Client) -> anyhow::Result<(String, CheckReport)> {
    let report = Ipam::new(client.clone()).check().await?;
    Ok((describe(&report, false), report))
}

/// `ipam gc`: a dry run describes what a pass would do; with `apply`, a pass acts and says what
/// it did.
pub async fn gc(client: &Client, apply: bool) -> anyhow::Result<String> {
    let ipam = Ipam::new(client.clone());
    if !apply {
        let report = ipam.check().await?;
        let leaks = report.leaked.iter().filter(|l| l.releasable).count();
        let nodes = report.gone_nodes.iter().filter(|n| n.releasable).count();
        return Ok(format!(
            "{}\ndry run: a pass now would release {leaks} addresses and clear {nodes} gone nodes; \
             nothing was changed or recorded (run with --apply to act)\n",
            describe(&report, false)
        ));
    }
    let outcome = ipam.collect_garbage().await?;
    let mut out = describe(&outcome.report, true);
    out += &describe_releases(&outcome.leaks);
    for (node, result) in &outcome.nodes {
        out += &match result {
            NodeOutcome::EndpointDeleted(path) => format!("deleted endpoint {path} of gone node {node}\n"),
            NodeOutcome::BlockDeleted(cidr) => format!("deleted block {cidr} of gone node {node} (it was empty)\n"),
            NodeOutcome::BlockDisowned(cidr) => {
                format!("block {cidr} of gone node {node} has no owner now; any node may claim it\n")
            }
            NodeOutcome::Kept(why) => format!("left what gone node {node} has: {why}\n"),
        };
    }
    for cidr in &outcome.idle_blocks_deleted {
        out += &format!("deleted block {cidr}: no owner, no address in use or resting\n");
    }
    Ok(out)
}

fn describe_releases(outcomes: &[(Leak, LeakOutcome)]) -> String {
    let mut out = String::new();
    for (leak, outcome) in outcomes {
        let holder = &leak.holder;
        out += &match outcome {
            LeakOutcome::Released => {
                format!("released {} (handle {}, node {}, pod {})\n", leak.ip, holder.handle, holder.node, pod_of(leak))
            }
            LeakOutcome::Kept(why) => format!("left {} (handle {}): {why}\n", leak.ip, holder.handle),
        };
    }
    out
}

/// Releases addresses by IP; says what each held, or that it was free.
pub async fn release_ips(client: &Client, ips: &[IpAddr]) -> anyhow::Result<String> {
    let released = Ipam::new(client.clone()).release_ips(ips).await?;
    let mut out = String::new();
    for ip in ips {
        match released.iter().find(|(r, _)| r == ip) {
            Some((_, a)) => out += &format!("released {ip} (handle {}, node {})\n", a.handle, a.node),
            None => out += &format!("{ip} was not in use; nothing to release\n"),
        }
    }
    Ok(out)
}

/// Releases the leaks an `ipam check -o FILE` report found releasable, each only if its
/// holder is still missing and the same handle still holds it.
pub async fn release_from_report(client: &Client, path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: CheckReport = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a report of this brindlectl's `ipam check -o FILE` (an older one, or another file): \
             run `ipam check -o FILE` again",
            path.display()
        )
    })?;
    let (releasable, waiting): (Vec<Leak>, Vec<Leak>) = report.leaked.into_iter().partition(|l| l.releasable);
    let outcomes = Ipam::new(client.clone()).release_leaks(&releasable).await?;
    let released = outcomes.iter().filter(|(_, o)| *o == LeakOutcome::Released).count();
    let mut out = format!(
        "released {released} of {} releasable leaks; {} more were not releasable yet when the report was made\n",
        releasable.len(),
        waiting.len()
    );
    out += &describe_releases(&outcomes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_bars_show_any_use_and_never_overflow() {
        assert_eq!(usage_bar(0, 64), "[--------------------]   0.0%");
        assert_eq!(usage_bar(1, 65536), "[#-------------------]   0.0%");
        assert_eq!(usage_bar(64, 64), "[####################] 100.0%");
        assert_eq!(addresses(&"::/0".parse().unwrap()), u128::MAX);
    }

    #[test]
    fn release_times_say_now_a_wait_or_what_starts_the_wait() {
        let report = |at_ms, grace_ms| CheckReport { at_ms, grace_ms, ..CheckReport::default() };
        assert_eq!(when(&report(5_000, 900_000), true, 0, 0, false), "now");
        assert_eq!(when(&report(61_000, 900_000), false, 1_000, 901_000, false), "in 14m (1970-01-01T00:15:01Z)");
        let new = report(5_000, 900_000);
        assert_eq!(when(&new, false, 5_000, 905_000, false), "15m after the first `ipam gc --apply` that sees it");
        assert_eq!(when(&new, false, 5_000, 905_000, true), "in 15m (1970-01-01T00:15:05Z)", "an acting pass saw it");
        assert!(when(&report(5_000, 0), false, 5_000, u64::MAX, true).starts_with("never"));
    }
}
