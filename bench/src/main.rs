//! brindle-bench: runs brindle and a reference system in the same run and prints ratios.

mod ipam;

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
    /// client and with several processes, on etcd and SQLite.
    Ipam(ipam::BenchArgs),
    /// One benchmark process (started by `ipam`; also used by the multi-process tests).
    #[command(hide = true)]
    IpamWorker(ipam::WorkerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Ipam(args) => runtime.block_on(ipam::bench(args)),
        Command::IpamWorker(args) => runtime.block_on(ipam::worker(args)),
    }
}
