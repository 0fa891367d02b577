//! A lab of many nodes (100 by default) built from nothing until every BGP session is
//! established and every pod pair reaches, as a full mesh and with route reflectors in one
//! run: how long that took, and what each agent cost in CPU seconds and memory.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle_e2e::lab::{
    self, Iptables, LabState, Matrix, Mode, Options, Peering, Store, agent_status, cli_name, established_sessions,
};
use clap::{Args, ValueEnum};

/// Options of `brindle-bench lab`.
#[derive(Args)]
pub struct BenchArgs {
    /// Nodes in each lab.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Which BGP topologies to build, one lab after the other.
    #[arg(long, value_enum, default_value = "both")]
    peering: Topologies,
    /// Route reflectors in the reflected lab (node-0 onwards, one cluster ID).
    #[arg(long, default_value_t = 2)]
    reflectors: usize,
    /// How pod traffic crosses between nodes.
    #[arg(long, value_enum, default_value = "vxlan")]
    mode: Mode,
    /// The datastore every agent watches.
    #[arg(long, value_enum, default_value = "etcd")]
    datastore: Store,
}

/// The topologies `--peering` chooses between.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Topologies {
    /// A full node-to-node mesh.
    Mesh,
    /// Route reflectors, no mesh.
    Rr,
    /// The mesh, then route reflectors.
    Both,
}

/// How long a settled lab is watched for the agents' idle CPU.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// One agent's bill.
#[derive(Debug, Clone, Copy)]
struct Cost {
    /// CPU seconds (user and system) from start to the lab settling.
    cpu_s: f64,
    /// CPU time per second of wall clock while the settled lab idles, in percent.
    idle_percent: f64,
    /// Resident memory once settled, MiB.
    rss_mib: f64,
    /// Peak resident memory, MiB.
    peak_mib: f64,
    /// Established BGP sessions.
    sessions: usize,
}

/// What one lab showed.
struct Outcome {
    label: String,
    /// From nothing to every agent ready, every session established and every pod made.
    up: Duration,
    /// From then until every pod pair reached.
    reach: Duration,
    pairs: usize,
    /// Per agent, reflectors first.
    costs: Vec<Cost>,
    reflectors: usize,
}

/// Reads `(utime + stime)` in seconds and VmRSS, VmHWM in MiB of process `pid`.
fn usage(pid: u32) -> anyhow::Result<(f64, f64, f64)> {
    let cpu = crate::process::cpu_seconds(pid)?;
    let (rss, peak) = crate::process::memory_kib(pid)?;
    Ok((cpu, rss as f64 / 1024.0, peak as f64 / 1024.0))
}

/// The lab's sessions as its agents report them: established ones per node.
fn established(state: &LabState) -> Vec<usize> {
    state.nodes.iter().map(|node| established_sessions(&agent_status(&node.status_socket()))).collect()
}

/// Builds one lab, measures it and takes it down (also on failure).
fn measure(label: &str, options: &Options) -> anyhow::Result<Outcome> {
    let name = format!("bl{}", std::process::id());
    let parent = tempfile::tempdir()?;
    let dir = lab::lab_dir(parent.path(), &name);
    let bin_dir = std::env::current_exe()?.parent().context("program directory")?.to_owned();
    eprintln!("[{label}] building {} nodes, one pod each ...", options.nodes);
    let started = Instant::now();
    let state = lab::up(&name, &dir, &bin_dir, options)?;
    let outcome = (|| {
        let up = started.elapsed();
        eprintln!("[{label}] up in {:.1} s; pinging every pod pair ...", up.as_secs_f64());
        let reaching = Instant::now();
        let matrix = Matrix::settle(&state, Duration::from_secs(120));
        if !matrix.complete() {
            let failing = matrix.failing();
            bail!("{} of the pod pairs do not reach, the first {:?}", failing.len(), failing.first());
        }
        let reach = reaching.elapsed();
        let sessions = established(&state);
        let settled: Vec<(f64, f64, f64)> =
            state.nodes.iter().map(|n| usage(n.agent_pid)).collect::<anyhow::Result<_>>()?;
        eprintln!("[{label}] every pair reaches; watching the idle lab for {} s ...", IDLE_WINDOW.as_secs());
        std::thread::sleep(IDLE_WINDOW);
        let mut costs = Vec::new();
        for ((node, (cpu, rss, peak)), sessions) in state.nodes.iter().zip(settled).zip(sessions) {
            let (later, _, _) = usage(node.agent_pid)?;
            let idle_percent = (later - cpu) / IDLE_WINDOW.as_secs_f64() * 100.0;
            costs.push(Cost { cpu_s: cpu, idle_percent, rss_mib: rss, peak_mib: peak, sessions });
        }
        let reflectors = if options.peering == Peering::Rr { options.reflectors } else { 0 };
        let pairs = state.pods.len() * state.pods.len().saturating_sub(1);
        Ok(Outcome { label: label.to_owned(), up, reach, pairs, costs, reflectors })
    })();
    eprintln!("[{label}] taking the lab down ...");
    lab::teardown(&state, &dir);
    outcome
}

/// Median and maximum of `values`.
fn median_max(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values.get(values.len() / 2).copied().unwrap_or(0.0);
    (median, values.last().copied().unwrap_or(0.0))
}

fn print_row(label: &str, costs: &[Cost]) {
    if costs.is_empty() {
        return;
    }
    let column = |f: fn(&Cost) -> f64| median_max(costs.iter().map(f).collect());
    let (sessions, _) = column(|c| c.sessions as f64);
    let (cpu, cpu_max) = column(|c| c.cpu_s);
    let (idle, idle_max) = column(|c| c.idle_percent);
    let (rss, rss_max) = column(|c| c.rss_mib);
    let (peak, peak_max) = column(|c| c.peak_mib);
    println!(
        "  {label:<22} {:>5} {sessions:>9.0} {cpu:>7.2} / {cpu_max:<6.2} {idle:>6.2} / {idle_max:<6.2} \
         {rss:>6.1} / {rss_max:<6.1} {peak:>6.1} / {peak_max:<6.1}",
        costs.len()
    );
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let base = Options {
        nodes: args.nodes,
        pods_per_node: 1,
        mode: args.mode,
        peering: Peering::Mesh,
        datastore: args.datastore,
        reflectors: args.reflectors,
        iptables: Iptables::Nft,
        ipv6: false,
    };
    base.check()?;
    let mut labs = Vec::new();
    if args.peering != Topologies::Rr {
        labs.push(("full mesh".to_owned(), base.clone()));
    }
    if args.peering != Topologies::Mesh {
        let label = format!("{} route reflectors", args.reflectors);
        labs.push((label, Options { peering: Peering::Rr, ..base.clone() }));
    }
    let outcomes: Vec<Outcome> =
        labs.iter().map(|(label, options)| measure(label, options)).collect::<anyhow::Result<_>>()?;

    println!(
        "A lab of {} nodes, one pod each, {} encapsulation, {} datastore, on {} CPU(s)",
        args.nodes,
        cli_name(&args.mode),
        cli_name(&args.datastore),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for outcome in &outcomes {
        println!(
            "\n{}: up (agents ready, sessions established, pods made) in {:.1} s; all {} pod pairs reached {:.1} s later",
            outcome.label,
            outcome.up.as_secs_f64(),
            outcome.pairs,
            outcome.reach.as_secs_f64()
        );
        println!(
            "  {:<22} {:>5} {:>9} {:>16} {:>15} {:>15} {:>15}",
            "agents", "count", "sessions", "CPU s med / max", "idle % med/max", "RSS MiB med/max", "peak MiB med/max"
        );
        let (reflectors, others) = outcome.costs.split_at(outcome.reflectors);
        print_row("route reflectors", reflectors);
        print_row(if outcome.reflectors > 0 { "clients" } else { "every node" }, others);
        let total: f64 = outcome.costs.iter().map(|c| c.cpu_s).sum();
        println!("  all agents together: {total:.1} CPU s");
    }
    Ok(())
}
