//! CNI ADD and DEL latency of brindle + brindle-ipam against the reference ptp + host-local
//! in the same run, on the same node namespace: every pod sequentially, then with several
//! concurrent callers, as kubelet's runtime would call them.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use brindle_datastore::Client;
use brindle_datastore::ipam::{AllocateRequest, Allocation, AllocationKind, Ipam};
use brindle_datastore::resource::{IpPool, Resource};
use brindle_datastore::testing::{Backend, TestStore};
use brindle_e2e::cni::{Attachment, exec};
use brindle_e2e::netns::{Netns, UplinkedNode, enter, unique};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

/// Options of `brindle-bench cni`.
#[derive(Args)]
pub struct BenchArgs {
    /// Pods per phase.
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// Concurrent callers in the concurrent phase.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// brindle's datastore for the run.
    #[arg(long, value_enum, default_value = "sqlite")]
    datastore: Store,
    /// Other nodes whose blocks are in the datastore before the run (one address taken in
    /// each), as in a cluster of that many nodes.
    #[arg(long, default_value_t = 0)]
    other_nodes: usize,
    /// Where the brindle and brindle-ipam binaries are (default: next to this program).
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Where the reference plugins are.
    #[arg(long, default_value = "/usr/lib/cni")]
    reference: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Store {
    Sqlite,
    Etcd,
    Kubernetes,
}

/// One plugin setup under test.
struct System {
    name: &'static str,
    binary: PathBuf,
    conf: Value,
    cni_path: String,
}

/// Latencies of one phase of one system.
struct Phase {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let plugins = match &args.plugins {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("program directory")?.to_owned(),
    };
    for binary in ["brindle", "brindle-ipam"] {
        if !plugins.join(binary).is_file() {
            bail!("{binary} not found in {}: build it with `cargo build --release -p brindle-cni`", plugins.display());
        }
    }
    for binary in ["ptp", "host-local"] {
        if !args.reference.join(binary).is_file() {
            bail!(
                "reference plugin {binary} not in {} (Debian: containernetworking-plugins)",
                args.reference.display()
            );
        }
    }
    let lab = UplinkedNode::new("cnib")?;
    enter(&lab.node.path())?;
    let scratch = tempfile::tempdir()?;
    let store = TestStore::start(match args.datastore {
        Store::Sqlite => Backend::Sqlite,
        Store::Etcd => Backend::Etcd,
        Store::Kubernetes => Backend::Kubernetes,
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = Client::new(brindle_datastore::connect(&store.selection()).await?);
        let pool = IpPool::new("10.240.0.0/12".parse()?);
        client.create(Resource::new("bench-pods", pool)).await?;
        seed_other_nodes(&client, args.other_nodes).await
    })?;

    let cni_path = format!("{}:{}", plugins.display(), args.reference.display());
    let systems = [
        System {
            name: "ptp + host-local",
            binary: args.reference.join("ptp"),
            conf: json!({
                "cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "mtu": 1400,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.97.0.0/16"}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": scratch.path().join("host-local")},
            }),
            cni_path: cni_path.clone(),
        },
        System {
            name: "brindle + brindle-ipam",
            binary: plugins.join("brindle"),
            conf: json!({
                "cniVersion": "1.0.0", "name": "bench-brindle", "type": "brindle", "mtu": 1400,
                "datastore": store.selection(), "nodename": "bench-node",
                "endpoint_record_dir": scratch.path().join("records"),
                "ipam": {"type": "brindle-ipam"},
            }),
            cni_path,
        },
    ];

    eprintln!("creating {} pod namespaces...", args.pods);
    let pods: Vec<(Netns, Attachment)> = (0..args.pods)
        .map(|i| {
            let netns = Netns::new("cnib", "pod")?;
            let attachment = Attachment {
                container_id: format!("bench{}{i:05}", unique()),
                netns: netns.path(),
                ifname: "eth0".into(),
                pod_namespace: "bench".into(),
                pod_name: format!("pod-{i}"),
            };
            Ok((netns, attachment))
        })
        .collect::<anyhow::Result<_>>()?;
    let attachments: Vec<&Attachment> = pods.iter().map(|(_, a)| a).collect();

    println!(
        "CNI ADD/DEL latency, {} pods per phase, datastore {}, {} other nodes' blocks in it",
        args.pods,
        store.selection(),
        args.other_nodes
    );
    for callers in [1, args.concurrency] {
        let mut phases = Vec::new();
        for system in &systems {
            eprintln!("{}: {} caller(s)...", system.name, callers);
            phases.push(run_phase(system, &attachments, callers)?);
            let leftover =
                brindle_e2e::netns::run(std::process::Command::new("ip").args(["-o", "link", "show", "type", "veth"]))?;
            if leftover.lines().count() > 1 {
                bail!("{} left interfaces behind:\n{leftover}", system.name);
            }
        }
        report(&systems, &phases, callers);
    }
    Ok(())
}

/// Gives each of `count` other nodes a block, with one address taken in it.
async fn seed_other_nodes(client: &Client, count: usize) -> anyhow::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let ipam = Ipam::new(client.clone());
    for i in 0..count {
        let holder = Allocation {
            handle: format!("seed.{i}"),
            kind: AllocationKind::Workload,
            node: format!("node-{i:04}"),
            ..Allocation::default()
        };
        ipam.allocate(&AllocateRequest { holder, ipv4: 1, ..AllocateRequest::default() })
            .await
            .with_context(|| format!("a block for node-{i:04}"))?;
        if (i + 1) % 100 == 0 || i + 1 == count {
            eprintln!("other nodes' blocks: {}/{count}", i + 1);
        }
    }
    Ok(())
}

fn run_phase(system: &System, attachments: &[&Attachment], callers: usize) -> anyhow::Result<Phase> {
    let results: Mutex<Vec<Option<Value>>> = Mutex::new(vec![None; attachments.len()]);
    let add = timed(attachments.len(), callers, |i| {
        let out = exec(&system.binary, "ADD", &system.conf, attachments[i], &system.cni_path)?;
        let elapsed = out.elapsed;
        let result = out.into_result().with_context(|| format!("{} ADD", system.name))?;
        results.lock().expect("results")[i] = Some(result);
        Ok(elapsed)
    })?;
    let results = results.into_inner().expect("results");
    let del = timed(attachments.len(), callers, |i| {
        let mut conf = system.conf.clone();
        conf["prevResult"] = results[i].clone().unwrap_or_default();
        let out = exec(&system.binary, "DEL", &conf, attachments[i], &system.cni_path)?;
        let elapsed = out.elapsed;
        out.into_result().with_context(|| format!("{} DEL", system.name))?;
        Ok(elapsed)
    })?;
    Ok(Phase { add, del })
}

/// Runs `job(0..count)` on `callers` threads; returns the sorted latencies.
fn timed(
    count: usize,
    callers: usize,
    job: impl Fn(usize) -> anyhow::Result<Duration> + Sync,
) -> anyhow::Result<Vec<Duration>> {
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(count));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..callers)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(());
                        }
                        let elapsed = job(i)?;
                        latencies.lock().expect("latencies").push(elapsed);
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|_| bail!("a caller panicked")))
    })?;
    let mut latencies = latencies.into_inner().expect("latencies");
    latencies.sort();
    Ok(latencies)
}

fn report(systems: &[System], phases: &[Phase], callers: usize) {
    println!("\n{} caller(s)          ADD p50   ADD p99   DEL p50   DEL p99  (ms)", callers);
    for (system, phase) in systems.iter().zip(phases) {
        println!(
            "  {:<24} {:>7.1}   {:>7.1}   {:>7.1}   {:>7.1}",
            system.name,
            ms(percentile(&phase.add, 0.5)),
            ms(percentile(&phase.add, 0.99)),
            ms(percentile(&phase.del, 0.5)),
            ms(percentile(&phase.del, 0.99)),
        );
    }
    let (reference, ours) = (&phases[0], &phases[1]);
    let ratio = |a: &[Duration], b: &[Duration], p| ms(percentile(a, p)) / ms(percentile(b, p));
    println!(
        "  ratio brindle/reference   {:>7.2}   {:>7.2}   {:>7.2}   {:>7.2}  (below 1: brindle is faster)",
        ratio(&ours.add, &reference.add, 0.5),
        ratio(&ours.add, &reference.add, 0.99),
        ratio(&ours.del, &reference.del, 0.5),
        ratio(&ours.del, &reference.del, 0.99),
    );
}
