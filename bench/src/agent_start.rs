//! brindle-node from start to ready with a cluster's state in the datastore: every other
//! node with its block, on each datastore in one run, and the agent's memory once in sync.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle_datastore::ipam::Block;
use brindle_datastore::resource::{IpPool, Node, NodeBgp, Resource};
use brindle_datastore::testing::TestStore;
use brindle_e2e::netns::{Netns, enter, run};
use clap::Args;
use ipnetwork::IpNetwork;

use crate::stores::Which;

/// Options of `brindle-bench agent-start`.
#[derive(Args)]
pub struct BenchArgs {
    /// Other nodes in the cluster, each with one block (a route for the agent).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Which datastores to measure.
    #[arg(long, value_enum, default_value = "all")]
    backend: Which,
}

/// What one start of the agent showed.
pub struct Start {
    /// From spawning the agent to its readiness endpoint answering 200.
    pub to_ready: Duration,
    /// Resident memory then, KiB.
    pub rss_kib: u64,
    /// Peak resident memory, KiB.
    pub peak_kib: u64,
    /// brindle's routes in the namespace then.
    pub routes: usize,
}

/// A namespace with an uplink `eth0` at 10.250.255.2/16, entered by this thread; the other
/// nodes are at 10.250.0.10 and up.
pub fn node_namespace(name: &str) -> anyhow::Result<Netns> {
    let ns = Netns::new(name, "node")?;
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])?;
    ns.ip(&["addr", "add", "10.250.255.2/16", "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["link", "set", "eth1", "up"])?;
    enter(&ns.path())?;
    Ok(ns)
}

/// Writes a pool over 10.64.0.0/10, `nodes` other nodes on the uplink, and `blocks` /26 blocks
/// owned by them in turn, showing progress.
pub async fn populate(selection: &str, nodes: usize, blocks: usize) -> anyhow::Result<()> {
    let store = brindle_datastore::connect(selection).await?;
    let client = brindle_datastore::Client::new(std::sync::Arc::clone(&store));
    client.create(Resource::new("bench", IpPool::new("10.64.0.0/10".parse()?))).await?;
    for i in 0..nodes {
        let address = format!("10.250.{}.{}/16", i / 200, 10 + i % 200);
        let bgp = NodeBgp { ipv4_address: Some(address.parse()?), ..NodeBgp::default() };
        client.create(Resource::new(format!("peer-{i}"), Node { bgp: Some(bgp), ..Node::default() })).await?;
        if (i + 1) % 500 == 0 {
            eprintln!("  {} nodes written", i + 1);
        }
    }
    for i in 0..blocks {
        let start = u32::from(std::net::Ipv4Addr::new(10, 64, 0, 0)) + (i as u32) * 64;
        let cidr = IpNetwork::new(std::net::Ipv4Addr::from(start).into(), 26)?;
        let block = Block::new(cidr, Some(format!("peer-{}", i % nodes)));
        store.create(&brindle_datastore::keys::block(&cidr), &serde_json::to_vec(&block)?).await?;
        if (i + 1) % 2000 == 0 {
            eprintln!("  {} blocks written", i + 1);
        }
    }
    Ok(())
}

/// Starts brindle-node (beside this program) on `selection` in the entered namespace, waits
/// until it is ready, and stops it.
pub fn start_agent(selection: &str) -> anyhow::Result<Start> {
    let agent = std::env::current_exe()?.parent().context("program directory")?.join("brindle-node");
    if !agent.is_file() {
        bail!("{} not found: build it with `cargo build --release -p brindle-agent`", agent.display());
    }
    let state = tempfile::tempdir()?;
    let mut child = std::process::Command::new(&agent)
        .args(["--datastore", selection, "--nodename", "bench-self", "--metrics-listen", "off"])
        .arg("--state-dir")
        .arg(state.path())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let started = Instant::now();
    let ready = loop {
        if readiness().is_some_and(|r| r.starts_with("HTTP/1.0 200")) {
            break Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(300) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let memory = crate::process::memory_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let Some(to_ready) = ready else { bail!("brindle-node was not ready within 5 minutes") };
    let (rss_kib, peak_kib) = memory?;
    let routes = run(std::process::Command::new("ip").args(["route", "show", "proto", "98"]))?.lines().count();
    run(std::process::Command::new("ip").args(["route", "flush", "proto", "98"]))?;
    Ok(Start { to_ready, rss_kib, peak_kib, routes })
}

fn readiness() -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect("127.0.0.1:9099").ok()?;
    c.write_all(b"GET /readiness HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    Some(text)
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let nodes = args.nodes;
    let _ns = node_namespace("asb")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut rows = Vec::new();
    for &(backend, name) in args.backend.backends() {
        eprintln!("[{name}] starting a fresh store and writing {nodes} nodes with a block each...");
        let server = TestStore::start(backend)?;
        let selection = server.selection();
        let written = Instant::now();
        runtime.block_on(populate(&selection, nodes, nodes))?;
        let written = written.elapsed();
        eprintln!("[{name}] starting brindle-node...");
        let start = start_agent(&selection)?;
        if start.routes != nodes {
            bail!("[{name}] brindle-node programmed {} routes for {nodes} blocks", start.routes);
        }
        rows.push((name, written, start));
    }
    println!("brindle-node from start to ready with {nodes} other nodes, one block each, in the datastore");
    println!(
        "{:<8} {:>14} {:>16} {:>10} {:>10}",
        "backend", "written in (s)", "start→ready (s)", "RSS KiB", "peak KiB"
    );
    let base = rows.first().map(|(_, _, s)| s.to_ready.as_secs_f64()).unwrap_or(1.0);
    for (name, written, start) in &rows {
        println!(
            "{name:<8} {:>14.1} {:>16.3} {:>10} {:>10}   {:.2}× the first",
            written.as_secs_f64(),
            start.to_ready.as_secs_f64(),
            start.rss_kib,
            start.peak_kib,
            start.to_ready.as_secs_f64() / base
        );
    }
    Ok(())
}
