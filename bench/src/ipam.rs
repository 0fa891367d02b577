//! IPAM throughput against the raw compare-and-swap rate of the same store.
//!
//! Each measured phase runs in separate OS processes (`ipam-worker`), one datastore client
//! each, started together; the rate is operations over the phase's wall time. The reference
//! is a worker doing compare-and-swap writes on a key of its own with the same client (on the
//! Kubernetes API: updates of one small custom resource), so the ratio says what IPAM's
//! bookkeeping costs on top of the store's own write rate.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle_datastore::ipam::{AllocateRequest, Allocation, AllocationKind, Ipam};
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
    /// Allocate one IPv4 address for each of `count` handles `<prefix>-<i>`; print `<handle> <ip>`.
    Allocate {
        #[arg(long)]
        node: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
    },
    /// Release the handles `<prefix>-<i>`; print `<handle> <ip>` for every address freed.
    Release {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
    },
    /// Compare-and-swap one key `count` times (the reference).
    Cas {
        #[arg(long)]
        key: String,
        #[arg(long)]
        count: usize,
    },
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let store = brindle_datastore::connect(&args.datastore).await?;
    match args.job {
        Job::Allocate { node, prefix, count } => {
            let ipam = Ipam::new(Client::new(store)).with_context_ttl(CONTEXT_TTL);
            for i in 0..count {
                let handle = format!("{prefix}-{i}");
                let holder = Allocation {
                    handle: handle.clone(),
                    kind: AllocationKind::Workload,
                    node: node.clone(),
                    pod: Some(format!("pod-{prefix}-{i}")),
                    namespace: Some("bench".into()),
                    ..Allocation::default()
                };
                let request = AllocateRequest { holder, ipv4: 1, ..AllocateRequest::default() };
                let got = ipam.allocate(&request).await.with_context(|| format!("allocate {handle}"))?;
                println!("{handle} {}", got[0].ip);
            }
        }
        Job::Release { prefix, count } => {
            let ipam = Ipam::new(Client::new(store));
            for i in 0..count {
                let handle = format!("{prefix}-{i}");
                for ip in ipam.release_handle(&handle).await.with_context(|| format!("release {handle}"))? {
                    println!("{handle} {ip}");
                }
            }
        }
        Job::Cas { key, count } => {
            let mut revision = match store.get(&key).await {
                Ok(kv) => kv.revision,
                Err(Error::NotFound(_)) => store.create(&key, b"0").await?,
                Err(e) => return Err(e.into()),
            };
            for i in 0..count {
                revision = store.update(&key, i.to_string().as_bytes(), revision).await?;
            }
        }
    }
    Ok(())
}

/// Runs `jobs` worker processes at once; returns their outputs and the wall time.
pub async fn run_workers(
    exe: &std::path::Path,
    datastore: &str,
    jobs: &[Vec<String>],
) -> anyhow::Result<(Vec<String>, Duration)> {
    let start = Instant::now();
    let mut children = Vec::new();
    for job in jobs {
        let child = Command::new(exe)
            .arg("ipam-worker")
            .arg("--datastore")
            .arg(datastore)
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
    Ok((outputs, start.elapsed()))
}

fn rate(ops: usize, took: Duration) -> f64 {
    ops as f64 / took.as_secs_f64()
}

struct Row {
    backend: &'static str,
    clients: String,
    cas: f64,
    allocate: f64,
    release: f64,
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let backends = args.backend.backends();
    let n = args.operations;
    let mut rows = Vec::new();
    for &(backend, name) in backends {
        for (label, processes, same_node) in [
            ("1".to_string(), 1, true),
            (format!("{} (one node)", args.processes), args.processes, true),
            (format!("{} (own nodes)", args.processes), args.processes, false),
        ] {
            eprintln!("[{name}] {label} client(s): starting a fresh store");
            let server = TestStore::start(backend)?;
            let selection = server.selection();
            let client = Client::new(brindle_datastore::connect(&selection).await?);
            client.create(Resource::new("bench", IpPool::new("10.64.0.0/10".parse()?))).await?;

            let cas_jobs: Vec<Vec<String>> = (0..processes)
                .map(|p| vec!["cas".into(), "--key".into(), format!("/bench/cas/{p}"), "--count".into(), n.to_string()])
                .collect();
            let (_, cas_took) = run_workers(&exe, &selection, &cas_jobs).await?;
            eprintln!("[{name}] {label}: raw CAS {:.0}/s", rate(processes * n, cas_took));

            let alloc_jobs: Vec<Vec<String>> = (0..processes)
                .map(|p| {
                    let node = if same_node { "node-0".to_string() } else { format!("node-{p}") };
                    vec![
                        "allocate".into(),
                        "--node".into(),
                        node,
                        "--prefix".into(),
                        format!("net.p{p}"),
                        "--count".into(),
                        n.to_string(),
                    ]
                })
                .collect();
            let (outputs, alloc_took) = run_workers(&exe, &selection, &alloc_jobs).await?;
            let allocated: usize = outputs.iter().map(|o| o.lines().count()).sum();
            eprintln!("[{name}] {label}: {allocated} allocations {:.0}/s", rate(allocated, alloc_took));

            let release_jobs: Vec<Vec<String>> = (0..processes)
                .map(|p| {
                    vec!["release".into(), "--prefix".into(), format!("net.p{p}"), "--count".into(), n.to_string()]
                })
                .collect();
            let (outputs, release_took) = run_workers(&exe, &selection, &release_jobs).await?;
            let released: usize = outputs.iter().map(|o| o.lines().count()).sum();
            if released != allocated {
                bail!("[{name}] released {released} of {allocated} addresses");
            }
            rows.push(Row {
                backend: name,
                clients: label,
                cas: rate(processes * n, cas_took),
                allocate: rate(allocated, alloc_took),
                release: rate(released, release_took),
            });
        }
    }
    println!("IPAM: {n} operations per client; rates per second over the phase's wall time");
    println!(
        "{:<8} {:<16} {:>10} {:>12} {:>16} {:>12}",
        "backend", "clients", "raw CAS", "allocations", "alloc/CAS ratio", "releases"
    );
    for r in rows {
        println!(
            "{:<8} {:<16} {:>10.0} {:>12.0} {:>16.2} {:>12.0}",
            r.backend,
            r.clients,
            r.cas,
            r.allocate,
            r.allocate / r.cas,
            r.release
        );
    }
    Ok(())
}
