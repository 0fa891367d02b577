//! brindle-bench: runs brindle and a reference system in the same run and prints ratios.

mod agent_start;
mod cni;
mod ipam;
mod lab;
mod policy;
mod process;
mod routes;
mod stores;

use clap::{Parser, Subcommand};

/// Benchmarks that compare brindle with a reference system in one run.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// IPAM allocations and releases per second against raw compare-and-swap writes, with one
    /// client and with several processes, on etcd, SQLite or the Kubernetes API.
    Ipam(ipam::BenchArgs),
    /// CNI ADD and DEL latency (p50, p99) of brindle + brindle-ipam against the reference
    /// ptp + host-local, sequential and concurrent, in a node namespace made for the run.
    Cni(cni::BenchArgs),
    /// Programming remote-block routes (10,000 and 100,000) with brindle-node's route driver
    /// against `ip -batch` of the same routes, a no-change resync, and an iptables resync.
    Routes(routes::BenchArgs),
    /// brindle-node from start to ready with 1,000 other nodes' blocks in the datastore, on
    /// etcd, SQLite and the Kubernetes API in one run.
    AgentStart(agent_start::BenchArgs),
    /// A lab of 100 nodes (one pod each) as a full mesh and with two route reflectors: the
    /// time until every session is established and every pod pair reaches, and each agent's
    /// CPU seconds, idle CPU and memory.
    Lab(lab::BenchArgs),
    /// Network policy: N endpoints under P NetworkPolicies programmed by brindle against
    /// `iptables-restore` of the same rules, a resync, one endpoint added beside 50,000 rules,
    /// and in a 3-node lab a policy until enforced everywhere and CNI ADD until the pod's policy
    /// is in place (p50, p99).
    Policy(policy::BenchArgs),
    /// One benchmark process (started by `ipam`; also used by the multi-process tests).
    #[command(hide = true)]
    IpamWorker(ipam::WorkerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Cni(args) => cni::bench(args),
        Command::Routes(args) => routes::bench(args),
        Command::AgentStart(args) => agent_start::bench(args),
        Command::Lab(args) => lab::bench(args),
        Command::Policy(args) => policy::bench(args),
        Command::Ipam(args) => runtime.block_on(ipam::bench(args)),
        Command::IpamWorker(args) => runtime.block_on(ipam::worker(args)),
    }
}
