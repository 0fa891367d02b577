//! `ipam show`, `ipam check` and `ipam release`: how full the pools and blocks are, what is
//! leaked or out of step, and giving leaked addresses back.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use brindle_datastore::Client;
use brindle_datastore::ipam::{Block, CheckReport, Ipam};
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

/// The `ipam check` report in words, and the report itself.
pub async fn check(client: &Client) -> anyhow::Result<(String, CheckReport)> {
    let report = Ipam::new(client.clone()).check().await?;
    let mut out = format!(
        "{} blocks, {} addresses in use, {} leaked, {} blocks out of step, {} empty owned blocks\n",
        report.blocks,
        report.allocations,
        report.leaked.len(),
        report.mismatched_blocks.len(),
        report.empty_blocks.len()
    );
    if !report.leaked.is_empty() {
        let rows: Vec<Vec<String>> = report
            .leaked
            .iter()
            .map(|l| {
                let pod = match (&l.namespace, &l.pod) {
                    (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
                    _ => "-".into(),
                };
                vec![l.ip.to_string(), l.handle.clone(), l.node.clone(), pod, l.reason.clone()]
            })
            .collect();
        out += "\nLeaked addresses (release with `brindlectl ipam release --from-report FILE`):\n";
        out += &table(&["IP", "HANDLE", "NODE", "POD", "WHY"].map(String::from), &rows);
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
    Ok((out, report))
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

/// Releases the leaks an `ipam check -o FILE` report lists, each only if the same handle
/// still holds it (an address reused since the report is left alone).
pub async fn release_from_report(client: &Client, path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not an `ipam check` report", path.display()))?;
    let leaks = report["leaked"]
        .as_array()
        .with_context(|| format!("{}: no \"leaked\" list (write one with `ipam check -o FILE`)", path.display()))?;
    let ipam = Ipam::new(client.clone());
    let (mut released, mut kept) = (0, 0);
    for (i, leak) in leaks.iter().enumerate() {
        let ip: IpAddr = leak["ip"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{}: leaked[{i}].ip is not an address", path.display()))?;
        let handle =
            leak["handle"].as_str().with_context(|| format!("{}: leaked[{i}].handle is missing", path.display()))?;
        if ipam.release_handle_ips(handle, &[ip]).await?.is_empty() {
            kept += 1;
        } else {
            released += 1;
        }
    }
    Ok(format!(
        "released {released} of {} leaked addresses; {kept} had been released or reused since the report\n",
        leaks.len()
    ))
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
}
