//! IPAM throughput against the raw compare-and-swap rate of the same store.
//!
//! Each measured phase runs in separate OS processes (`ipam-worker`), one datastore client
//! each, started together; the rate is operations over the phase's wall time. The reference
//! is a worker doing compare-and-swap writes on a key of its own with the same client (on the
//! Kubernetes API: updates of one small custom resource), so the ratio says what IPAM's
//! bookkeeping costs on top of the store's own write rate.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle_datastore::ipam::{AllocateRequest, Allocation, AllocationKind, Ipam, WriteLock};
use brindle_datastore::resource::{IpPool, Resource};
use brindle_datastore::testing::TestStore;
use brindle_datastore::{Client, Error};
use clap::{Args, Subcommand};

use crate::stores::Which;
use tokio::process::Command;

/// How long a long-lived IPAM client reuses pools and settings.
const CONTEXT_TTL: Duration = Duration::from_secs(2);

/// Options of `brindle-bench ipam`.
#[derive(Args)]
pub struct BenchArgs {
    /// Which backends to measure (each on a private server or file started for the run).
    #[arg(long, value_enum, default_value = "both")]
    backend: Which,
    /// Concurrent processes in the multi-client phases.
    #[arg(long, default_value_t = 8)]
    processes: usize,
    /// Operations per process.
    #[arg(long, default_value_t = 500)]
    operations: usize,
    /// Rounds in which the phases take turns; each phase's best round counts.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// Options of one worker process.
#[derive(Args)]
pub struct WorkerArgs {
    /// The datastore selection string.
    #[arg(long)]
    datastore: String,
    #[command(subcommand)]
    job: Job,
}

#[derive(Subcommand)]
enum Job {
    /// Allocate one IPv4 address for each of `count` pods of `<prefix>`; print `<handle> <ip>`.
    Allocate {
        #[arg(long)]
        node: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
        /// Hold this lock file around each write of a block, as the CNI plugin does.
        #[arg(long)]
        write_lock: Option<PathBuf>,
    },
    /// Release the addresses of `count` pods of `<prefix>`; print `<handle> <ip>` for every
    /// address freed.
    Release {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
    },
    /// Compare-and-swap one key `count` times (the reference), with values of `bytes` bytes.
    Cas {
        #[arg(long)]
        key: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        bytes: usize,
    },
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let store = brindle_datastore::connect(&args.datastore).await?;
    match args.job {
        Job::Allocate { node, prefix, count, write_lock } => {
            let mut ipam = Ipam::new(Client::new(store)).with_context_ttl(CONTEXT_TTL);
            if let Some(path) = write_lock {
                ipam = ipam.with_write_lock(WriteLock::new(path));
            }
            for i in 0..count {
                let holder = pod(&node, &prefix, i);
                let handle = holder.handle.clone();
                let request = AllocateRequest { holder, ipv4: 1, ..AllocateRequest::default() };
                let got = ipam.allocate(&request).await.with_context(|| format!("allocate {handle}"))?;
                println!("{handle} {}", got[0].ip);
            }
        }
        Job::Release { prefix, count } => {
            let ipam = Ipam::new(Client::new(store));
            for i in 0..count {
                let handle = pod("", &prefix, i).handle;
                for ip in ipam.release_handle(&handle).await.with_context(|| format!("release {handle}"))? {
                    println!("{handle} {ip}");
                }
            }
        }
        Job::Cas { key, count, bytes } => {
            // A JSON string of `bytes` bytes, different every time.
            let value = |i: usize| format!("\"{i:0>width$}\"", width = bytes.saturating_sub(2)).into_bytes();
            let mut revision = match store.get(&key).await {
                Ok(kv) => kv.revision,
                Err(Error::NotFound(_)) => store.create(&key, &value(0)).await?,
                Err(e) => return Err(e.into()),
            };
            for i in 0..count {
                revision = store.update(&key, &value(i + 1), revision).await?;
            }
        }
    }
    Ok(())
}

/// Requests the API server answered, by verb and resource.
type Requests = BTreeMap<(String, String), u64>;

/// What one phase's worker processes printed and cost.
pub struct Phase {
    /// Each worker's standard output.
    pub outputs: Vec<String>,
    /// From the first start to the last exit.
    pub took: Duration,
    /// CPU seconds of the workers.
    pub client_cpu: f64,
    /// CPU seconds of each of the store's servers meanwhile (the API server, then its etcd).
    pub server_cpu: Vec<f64>,
    /// On the Kubernetes API, the requests it answered meanwhile.
    pub requests: Requests,
}

/// Runs `jobs` worker processes at once against `store`.
pub async fn run_workers(exe: &std::path::Path, store: &TestStore, jobs: &[Vec<String>]) -> anyhow::Result<Phase> {
    let server_cpu =
        || -> anyhow::Result<Vec<f64>> { store.server_pids().into_iter().map(crate::process::cpu_seconds).collect() };
    let requests = || -> anyhow::Result<Requests> {
        match store {
            TestStore::Kubernetes(server) => Ok(server.request_counts()?),
            _ => Ok(Requests::new()),
        }
    };
    let (requests_before, server_before) = (requests()?, server_cpu()?);
    let clients_before = crate::process::children_cpu_seconds()?;
    let start = Instant::now();
    let mut children = Vec::new();
    for job in jobs {
        let child = Command::new(exe)
            .arg("ipam-worker")
            .arg("--datastore")
            .arg(store.selection())
            .args(job)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start worker")?;
        children.push(child);
    }
    let mut outputs = Vec::new();
    for child in children {
        let output = child.wait_with_output().await?;
        if !output.status.success() {
            bail!("worker failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
        }
        outputs.push(String::from_utf8(output.stdout)?);
    }
    let took = start.elapsed();
    let client_cpu = crate::process::children_cpu_seconds()? - clients_before;
    let server_cpu = server_cpu()?.iter().zip(&server_before).map(|(after, before)| after - before).collect();
    let mut requests = requests()?;
    for (kind, count) in &mut requests {
        *count = count.saturating_sub(requests_before.get(kind).copied().unwrap_or_default());
    }
    // The bench's own reading of the metrics has no resource.
    requests.retain(|(_, resource), count| *count > 0 && !resource.is_empty());
    Ok(Phase { outputs, took, client_cpu, server_cpu, requests })
}

/// The best rate of a kind of phase over the rounds, and what its operations cost on average.
#[derive(Default, Clone)]
struct Measured {
    best: f64,
    operations: usize,
    client_cpu: f64,
    server_cpu: Vec<f64>,
    requests: Requests,
}

impl Measured {
    fn add(&mut self, operations: usize, phase: &Phase) {
        self.best = self.best.max(rate(operations, phase.took));
        self.operations += operations;
        self.client_cpu += phase.client_cpu;
        self.server_cpu.resize(phase.server_cpu.len(), 0.0);
        for (total, cpu) in self.server_cpu.iter_mut().zip(&phase.server_cpu) {
            *total += cpu;
        }
        for (kind, count) in &phase.requests {
            *self.requests.entry(kind.clone()).or_default() += count;
        }
    }

    /// Milliseconds of CPU per operation: the clients', then each server's, as `c / s1 + s2`.
    fn cpu_ms(&self) -> String {
        let per = |seconds: f64| seconds * 1000.0 / self.operations.max(1) as f64;
        let servers: Vec<String> = self.server_cpu.iter().map(|&s| format!("{:.2}", per(s))).collect();
        format!("{:.2} / {}", per(self.client_cpu), servers.join(" + "))
    }

    /// The requests per operation, most first (none on a store other than the Kubernetes API).
    fn requests_per_operation(&self) -> String {
        let mut requests: Vec<(&(String, String), &u64)> = self.requests.iter().collect();
        requests.sort_by_key(|(_, count)| std::cmp::Reverse(**count));
        let per = |count: u64| count as f64 / self.operations.max(1) as f64;
        let shown: Vec<String> =
            requests.iter().map(|((verb, resource), count)| format!("{verb} {resource} {:.3}", per(**count))).collect();
        shown.join(", ")
    }
}

fn rate(ops: usize, took: Duration) -> f64 {
    ops as f64 / took.as_secs_f64()
}

struct Row {
    backend: &'static str,
    clients: String,
    cas: Measured,
    block_cas: Measured,
    allocate: Measured,
    release: f64,
}

/// What the allocation phase records for pod `i` of `prefix` on `node`: what the CNI plugin
/// records for a Kubernetes pod, with a container ID of 64 hex digits (the same for the same
/// pod in every worker) and a Deployment's pod name (random in both parts, where a
/// Deployment's pods share the first, so its blocks compress worse than a cluster's).
fn pod(node: &str, prefix: &str, i: usize) -> Allocation {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let container_id: String = (0..4)
        .map(|part| format!("{:016x}", BuildHasherDefault::<DefaultHasher>::default().hash_one((prefix, i, part))))
        .collect();
    Allocation {
        handle: format!("k8s-pod-network.{container_id}"),
        network: Some("k8s-pod-network".into()),
        kind: AllocationKind::Workload,
        endpoint: true,
        node: node.to_owned(),
        pod: Some(format!("web-{}-{}", &container_id[32..42], &container_id[54..59])),
        namespace: Some("bench".into()),
        ..Allocation::default()
    }
}

/// The size of a half-full /26 block's JSON as the allocation phase writes it: what each
/// allocation sends to etcd or SQLite on average (the Kubernetes datastore packs it).
fn half_full_block_bytes() -> anyhow::Result<usize> {
    let mut block = brindle_datastore::ipam::Block::new("10.64.0.0/26".parse()?, Some("node-0".into()));
    for i in 0..32 {
        block.allocate(pod("node-0", "r0p0", i), 1_764_000_000_000, 0).context("a fresh block has room")?;
    }
    Ok(serde_json::to_vec(&block)?.len())
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let backends = args.backend.backends();
    let n = args.operations;
    let mut rows = Vec::new();
    let block_bytes = half_full_block_bytes()?;
    let locks = tempfile::tempdir()?;
    for &(backend, name) in backends {
        for (label, processes, same_node) in [
            ("1".to_string(), 1, true),
            (format!("{} (one node)", args.processes), args.processes, true),
            (format!("{} (own nodes)", args.processes), args.processes, false),
        ] {
            eprintln!("[{name}] {label} client(s): starting a fresh store");
            let server = TestStore::start(backend)?;
            let client = Client::new(brindle_datastore::connect(&server.selection()).await?);
            client.create(Resource::new("bench", IpPool::new("10.64.0.0/10".parse()?))).await?;

            // The phases take turns for `rounds` rounds and each keeps its best: a store's
            // own background work (an API server's first minute above all) hits whichever
            // phase runs then, and taking turns spreads it.
            let (mut cas, mut block_cas, mut allocate) =
                (Measured::default(), Measured::default(), Measured::default());
            let mut allocated = Vec::new();
            for round in 0..args.rounds {
                let cas_jobs: Vec<Vec<String>> = (0..processes)
                    .map(|p| {
                        vec!["cas".into(), "--key".into(), format!("/bench/cas/{p}"), "--count".into(), n.to_string()]
                    })
                    .collect();
                cas.add(processes * n, &run_workers(&exe, &server, &cas_jobs).await?);
                let block_jobs: Vec<Vec<String>> = (0..processes)
                    .map(|p| {
                        let key = format!("/bench/block-sized/{p}");
                        let (count, bytes) = (n.to_string(), block_bytes.to_string());
                        vec!["cas".into(), "--key".into(), key, "--count".into(), count, "--bytes".into(), bytes]
                    })
                    .collect();
                block_cas.add(processes * n, &run_workers(&exe, &server, &block_jobs).await?);
                let alloc_jobs: Vec<Vec<String>> = (0..processes)
                    .map(|p| {
                        let node = if same_node { "node-0".to_string() } else { format!("node-{p}") };
                        let lock = locks.path().join(format!("{node}.lock")).display().to_string();
                        let prefix = format!("r{round}p{p}");
                        vec![
                            "allocate".into(),
                            "--node".into(),
                            node,
                            "--prefix".into(),
                            prefix,
                            "--count".into(),
                            n.to_string(),
                            "--write-lock".into(),
                            lock,
                        ]
                    })
                    .collect();
                let phase = run_workers(&exe, &server, &alloc_jobs).await?;
                let count: usize = phase.outputs.iter().map(|o| o.lines().count()).sum();
                allocate.add(count, &phase);
                allocated.push(count);
                eprintln!(
                    "[{name}] {label}, round {}: raw CAS {:.0}/s, CAS of {block_bytes} bytes {:.0}/s, \
                     allocations {:.0}/s (best so far)",
                    round + 1,
                    cas.best,
                    block_cas.best,
                    allocate.best,
                );
            }

            let release_jobs: Vec<Vec<String>> = (0..args.rounds)
                .flat_map(|round| (0..processes).map(move |p| (round, p)))
                .map(|(round, p)| {
                    vec!["release".into(), "--prefix".into(), format!("r{round}p{p}"), "--count".into(), n.to_string()]
                })
                .collect();
            let phase = run_workers(&exe, &server, &release_jobs).await?;
            let released: usize = phase.outputs.iter().map(|o| o.lines().count()).sum();
            let allocated: usize = allocated.iter().sum();
            if released != allocated {
                bail!("[{name}] released {released} of {allocated} addresses");
            }
            rows.push(Row {
                backend: name,
                clients: label,
                cas,
                block_cas,
                allocate,
                release: rate(released, phase.took),
            });
        }
    }
    println!(
        "IPAM: {n} operations per client; rates per second over a phase's wall time, the best of {} rounds",
        args.rounds
    );
    println!(
        "(block CAS: values of {block_bytes} bytes, a half-full /26 block's JSON as the allocations write it, \
         unpacked)"
    );
    println!(
        "{:<8} {:<16} {:>10} {:>10} {:>12} {:>10} {:>12} {:>10}",
        "backend", "clients", "raw CAS", "block CAS", "allocations", "÷ raw CAS", "÷ block CAS", "releases"
    );
    for r in &rows {
        println!(
            "{:<8} {:<16} {:>10.0} {:>10.0} {:>12.0} {:>10.2} {:>12.2} {:>10.0}",
            r.backend,
            r.clients,
            r.cas.best,
            r.block_cas.best,
            r.allocate.best,
            r.allocate.best / r.cas.best,
            r.allocate.best / r.block_cas.best,
            r.release
        );
    }
    println!();
    println!(
        "CPU per operation, ms, over every round: the worker processes' / the servers' (an API server + its etcd)"
    );
    println!("{:<8} {:<16} {:>18} {:>18} {:>18}", "backend", "clients", "raw CAS", "block CAS", "allocations");
    for r in &rows {
        let (cas, block_cas, allocate) = (r.cas.cpu_ms(), r.block_cas.cpu_ms(), r.allocate.cpu_ms());
        println!("{:<8} {:<16} {cas:>18} {block_cas:>18} {allocate:>18}", r.backend, r.clients);
    }
    for r in rows.iter().filter(|r| !r.allocate.requests.is_empty()) {
        println!("{} {}: API requests per allocation: {}", r.backend, r.clients, r.allocate.requests_per_operation());
    }
    Ok(())
}
