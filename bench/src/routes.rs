//! Programming remote-block routes: brindle-node's route driver against `ip -batch` of the
//! same routes, in the same run, in a namespace made for it; then a full resync with nothing
//! to change (what every resync interval costs), and an iptables resync.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle_agent::calc::Target;
use brindle_agent::dataplane::{iptables, routes};
use brindle_e2e::netns::{Netns, run};
use brindle_kernel::names::MAIN_TABLE;
use clap::Args;
use ipnetwork::IpNetwork;

use crate::agent_start;

/// Options of `brindle-bench routes`.
#[derive(Args)]
pub struct BenchArgs {
    /// Route counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    counts: Vec<usize>,
    /// Remote blocks in the datastore when measuring brindle-node's memory (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    agent_blocks: usize,
}

/// `count` /26 blocks of 10.64.0.0/10, each via one of 250 neighbours on the uplink.
fn desired(count: usize) -> BTreeMap<IpNetwork, Target> {
    (0..count)
        .map(|i| {
            let block = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + (i as u32) * 64);
            let via = Ipv4Addr::new(10, 250, 0, 10 + (i % 240) as u8);
            (IpNetwork::new(IpAddr::V4(block), 26).expect("a /26"), Target::Direct { via: via.into() })
        })
        .collect()
}

fn count_routes(ns: &Netns) -> anyhow::Result<usize> {
    Ok(ns.ip(&["route", "show", "proto", "98"])?.lines().count())
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let ns = agent_start::node_namespace("rtb")?;
    let scratch = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let kernel = {
        let _entered = runtime.enter();
        brindle_kernel::netlink::Netlink::connect()?
    };
    println!("Programming remote-block routes in a fresh namespace (seconds; lower is better)\n");
    println!("{:>8}  {:>10}  {:>10}  {:>7}  {:>16}", "routes", "ip -batch", "brindle", "ratio", "resync, no change");
    for &count in &args.counts {
        let routes = desired(count);
        eprintln!("{count} routes: ip -batch...");
        let batch = scratch.path().join(format!("routes-{count}"));
        let mut text = String::with_capacity(count * 64);
        for (dst, target) in &routes {
            let Target::Direct { via } = target else { unreachable!() };
            text += &format!("route add {dst} via {via} dev eth0 proto 98\n");
        }
        std::fs::write(&batch, text)?;
        let started = Instant::now();
        run(std::process::Command::new("ip").arg("-batch").arg(&batch))?;
        let reference = started.elapsed();
        if count_routes(&ns)? != count {
            bail!("ip -batch did not program {count} routes");
        }
        run(std::process::Command::new("ip").args(["route", "flush", "proto", "98"]))?;

        eprintln!("{count} routes: brindle...");
        let (ours, resync) = runtime.block_on(async {
            let devices = routes::Devices::read(&kernel, "eth0").await?;
            let started = Instant::now();
            let (changes, _) = routes::sync(&kernel, MAIN_TABLE, &routes, &devices, None).await?;
            let ours = started.elapsed();
            anyhow::ensure!(changes == count, "brindle made {changes} changes for {count} routes");
            let started = Instant::now();
            let (again, _) = routes::sync(&kernel, MAIN_TABLE, &routes, &devices, None).await?;
            anyhow::ensure!(again == 0, "a resync with nothing to change made {again} changes");
            anyhow::Ok((ours, started.elapsed()))
        })?;
        if count_routes(&ns)? != count {
            bail!("brindle did not program {count} routes");
        }
        run(std::process::Command::new("ip").args(["route", "flush", "proto", "98"]))?;
        let secs = |d: Duration| d.as_secs_f64();
        println!(
            "{count:>8}  {:>10.3}  {:>10.3}  {:>6.2}×  {:>16.3}",
            secs(reference),
            secs(ours),
            secs(ours) / secs(reference),
            secs(resync)
        );
    }

    if args.agent_blocks > 0 {
        agent_memory(&runtime, args.agent_blocks)?;
    }

    // iptables: brindle's base rules match pod veths by the `brin+` wildcard (no policy
    // here); a resync is one iptables-save per table and, only when something differs, one
    // iptables-restore.
    let backend = iptables::Backend::detect(&kernel);
    let rules = iptables::Rules {
        pools: vec!["10.244.0.0/16".parse()?],
        nat_pools: vec!["10.244.0.0/16".parse()?],
        nodes: vec!["10.250.0.10".parse()?],
        control_hosts: vec!["10.250.0.10".parse()?],
        vxlan_port: Some(4789),
        ipip: false,
        bgp_ports: vec![179],
        ..iptables::Rules::default()
    };
    iptables::sync(&kernel, backend, false, &rules, None).context("first iptables sync")?;
    let started = Instant::now();
    let (restored, _) = iptables::sync(&kernel, backend, false, &rules, None)?;
    let unchanged = started.elapsed();
    run(std::process::Command::new("iptables").args(["-F", "brin-FORWARD"]))?;
    let started = Instant::now();
    iptables::sync(&kernel, backend, false, &rules, None)?;
    let repaired = started.elapsed();
    println!(
        "\niptables resync ({backend:?}), base rules without policy: {:.1} ms with nothing to change{}, {:.1} ms repairing a flushed chain",
        unchanged.as_secs_f64() * 1000.0,
        if restored { " (it restored!)" } else { "" },
        repaired.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Runs brindle-node against a datastore of `blocks` remote blocks (40 other nodes on the
/// uplink) and reports its memory once it is in sync.
fn agent_memory(runtime: &tokio::runtime::Runtime, blocks: usize) -> anyhow::Result<()> {
    let db = brindle_datastore::testing::SqliteFile::new()?;
    eprintln!("writing {blocks} blocks to the datastore...");
    runtime.block_on(agent_start::populate(&db.selection(), 40, blocks))?;
    let start = agent_start::start_agent(&db.selection())?;
    println!(
        "\nbrindle-node with {} routes from {blocks} blocks: in sync {:.2} s after start, RSS {} KiB, peak {} KiB",
        start.routes,
        start.to_ready.as_secs_f64(),
        start.rss_kib,
        start.peak_kib
    );
    Ok(())
}
