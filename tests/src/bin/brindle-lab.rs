//! `brindle-lab`: a brindle cluster in network namespaces on this machine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use brindle_e2e::lab::pods::{self, Family, NewPod, Port, Probe};
use brindle_e2e::lab::{self, Iptables, LabState, Matrix, Mode, Options, Peering, Store, cli_name};
use clap::{Parser, Subcommand};

/// A whole brindle cluster in network namespaces on one machine: nodes on an underlay switch,
/// brindle-node on each, pods wired by the brindle CNI plugin. It stays up to explore until
/// `brindle-lab down`. Needs root.
///
/// Exit codes: 0 success; 1 failure (the message says why; a failed `up` leaves nothing
/// behind); 3 `up` built the lab but some pods cannot reach each other, or `ping` found such
/// a pair (the lab stays up to explore). `exec` exits with the command's own code.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The lab's name: the prefix of its namespaces and the name of its directory.
    #[arg(long, global = true, default_value = "lab")]
    name: String,
    /// Where labs keep their state, datastore and logs.
    #[arg(long, global = true, default_value = lab::DEFAULT_DIR)]
    dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Builds the lab and prints its nodes, BGP sessions, pods and reachability matrix.
    Up {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// How many pods on each node.
        #[arg(long, default_value_t = 2)]
        pods_per_node: usize,
        /// How pod traffic crosses between nodes.
        #[arg(long, value_enum, default_value = "vxlan")]
        mode: Mode,
        /// How nodes learn each other's blocks: a BGP mesh, route reflectors (node-0 onwards),
        /// or no BGP (routes from the datastore).
        #[arg(long, value_enum, default_value = "mesh")]
        peering: Peering,
        /// How many route reflectors with `--peering rr` (they share one cluster ID).
        #[arg(long, default_value_t = 1)]
        reflectors: usize,
        /// The datastore: an SQLite file, an etcd server, or a kube-apiserver (with its own
        /// etcd) in the router's namespace; or etcd beside a kube-apiserver, with
        /// brindle-controllers copying the API's objects into etcd.
        #[arg(long, value_enum, default_value = "sqlite")]
        datastore: Store,
        /// Which iptables the agents program.
        #[arg(long, value_enum, default_value = "nft")]
        iptables: Iptables,
        /// Dual-stack: nodes and pods get IPv6 addresses too (an IPv6 pool, in VXLAN with the
        /// VXLAN modes, routed natively otherwise).
        #[arg(long)]
        ipv6: bool,
        /// Where brindle-node, brindle and brindle-ipam are (default: beside this program).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Shows the nodes, their agents and BGP sessions, and the pods.
    Status,
    /// Pings between every pair of pods and prints the matrix; exit 0 only when all reach.
    Ping,
    /// Runs a command in a node's (or a pod's, the router's, the switch's) namespace, with
    /// BRINDLE_DATASTORE, and in a node also BRINDLE_STATUS_SOCKET, BRINDLE_ENDPOINT_RECORD_DIR
    /// and NODENAME, and brindle's binaries first on PATH, so `brindlectl` works there.
    Exec {
        /// `node-0` (or `0`), a pod such as `pod-0-1`, `router` or `switch`.
        node: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Adds or deletes a pod (a namespace wired by the CNI plugin on a node).
    Pod {
        #[command(subcommand)]
        action: PodCmd,
    },
    /// Tries one port from every pod to every other pod (TCP connect, or UDP request and
    /// answer) and prints the matrix. Always exits 0 when it could probe: the matrix is the
    /// answer.
    Probe {
        /// The port, `tcp:PORT` or `udp:PORT`.
        #[arg(long, default_value = "tcp:80")]
        port: Port,
        /// The pods' addresses to probe (ipv6 in a dual-stack lab).
        #[arg(long, value_enum, default_value = "ipv4")]
        family: Family,
        /// JSON (`{"port": "tcp:80", "results": {"x/a": {"y/b": true, ...}, ...}}`) instead
        /// of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stops the lab's processes and removes its namespaces and files.
    Down,
    /// Answers on the given ports until killed (the server inside a pod).
    #[command(hide = true)]
    Serve {
        /// Comma-separated `tcp:PORT` and `udp:PORT`.
        #[arg(long, value_delimiter = ',', required = true)]
        ports: Vec<Port>,
    },
}

#[derive(Debug, Subcommand)]
enum PodCmd {
    /// Adds pod NAMESPACE/NAME to a node, through the brindle CNI plugin as a runtime calls it.
    Add {
        /// `NAMESPACE/NAME` (a bare NAME is in `default`).
        pod: String,
        /// The node: `node-1` or `1`.
        #[arg(long)]
        node: String,
        /// Labels for its WorkloadEndpoint: `k=v,k2=v2`.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Its service account (on its WorkloadEndpoint).
        #[arg(long)]
        service_account: Option<String>,
        /// Ports a small server in the pod answers on: `tcp:80,tcp:81,udp:80`.
        #[arg(long, value_delimiter = ',')]
        serve: Vec<Port>,
    },
    /// Deletes pod NAMESPACE/NAME (its server, its CNI attachment and its namespace).
    Del {
        /// `NAMESPACE/NAME` (a bare NAME is in `default`).
        pod: String,
    },
    /// Gives pod NAMESPACE/NAME exactly these labels (policy selectors follow).
    Label {
        /// `NAMESPACE/NAME` (a bare NAME is in `default`).
        pod: String,
        /// `k=v,k2=v2`; none removes every label.
        #[arg(value_delimiter = ',')]
        labels: Vec<String>,
    },
}

/// `k=v` pairs as a map; an error names the one that is not.
fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("{l:?}: write key=value"))
        })
        .collect()
}

const PARTLY_UNREACHABLE: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("brindle-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let name_ok = !cli.name.is_empty()
        && cli.name.len() <= 32
        && cli.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !cli.name.starts_with('-');
    anyhow::ensure!(
        name_ok,
        "--name {:?}: use up to 32 letters, digits and dashes (it prefixes namespace names)",
        cli.name
    );
    let dir = lab::lab_dir(&cli.dir, &cli.name);
    match cli.command {
        Cmd::Up { nodes, pods_per_node, mode, peering, reflectors, datastore, iptables, ipv6, bin_dir } => {
            let bin_dir = match bin_dir {
                Some(dir) => dir,
                None => std::env::current_exe()?.parent().context("this program has no directory")?.to_owned(),
            };
            let options = Options { nodes, pods_per_node, mode, peering, datastore, reflectors, iptables, ipv6 };
            eprintln!(
                "brindle-lab: building {:?}: {nodes} nodes, {pods_per_node} pods each, {} encapsulation, \
                 {} peering, {} datastore",
                cli.name,
                cli_name(&mode),
                cli_name(&peering),
                cli_name(&datastore)
            );
            let started = Instant::now();
            let state = lab::up(&cli.name, &dir, &bin_dir, &options)?;
            eprint!("  waiting for every pod to reach every other ... ");
            let matrix = Matrix::settle(&state, Duration::from_secs(60));
            eprintln!("{:.1} s", started.elapsed().as_secs_f64());
            println!("\n{}", lab::render_status(&state));
            println!("{}", matrix.render(&state));
            let me = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or("brindle-lab".into());
            let mut named = String::new();
            if cli.name != "lab" {
                named += &format!(" --name {}", cli.name);
            }
            if cli.dir != std::path::Path::new(lab::DEFAULT_DIR) {
                named += &format!(" --dir {}", cli.dir.display());
            }
            println!("The lab is up in {:.1} s. Explore it:", started.elapsed().as_secs_f64());
            println!("  {me}{named} status");
            println!("  {me}{named} ping");
            println!("  {me}{named} exec node-0 -- ip route");
            println!("  {me}{named} exec node-0 -- brindlectl node status");
            println!("  {me}{named} down");
            Ok(if matrix.complete() { ExitCode::SUCCESS } else { ExitCode::from(PARTLY_UNREACHABLE) })
        }
        Cmd::Status => {
            print!("{}", lab::render_status(&LabState::load(&dir)?));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ping => {
            let state = LabState::load(&dir)?;
            let matrix = Matrix::measure(&state);
            print!("{}", matrix.render(&state));
            Ok(if matrix.complete() { ExitCode::SUCCESS } else { ExitCode::from(PARTLY_UNREACHABLE) })
        }
        Cmd::Exec { node, command } => {
            let state = LabState::load(&dir)?;
            let status = state
                .command_in(&node, &command)?
                .status()
                .with_context(|| format!("running {command:?} in {node}"))?;
            Ok(ExitCode::from(status.code().map_or(1, |c| c as u8)))
        }
        Cmd::Pod { action: PodCmd::Add { pod, node, labels, service_account, serve } } => {
            let mut state = LabState::load(&dir)?;
            let (namespace, name) = pods::split_key(&pod);
            let node = state
                .nodes
                .iter()
                .enumerate()
                .find(|(i, n)| n.name == node || i.to_string() == node)
                .map(|(i, _)| i)
                .with_context(|| format!("no node {node:?} in this lab"))?;
            let labels = parse_labels(&labels).context("--labels")?;
            let new = NewPod { namespace: namespace.into(), name: name.into(), node, labels, service_account, serve };
            pods::add(&mut state, &new)?;
            state.save(&dir)?;
            let added = state.pods.last().context("the pod just added")?;
            let ipv6 = added.ipv6.as_deref().map(|a| format!(" and {a}")).unwrap_or_default();
            println!("pod {} on {} at {}{ipv6}", added.key(), state.nodes[node].name, added.ip);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pod { action: PodCmd::Del { pod } } => {
            let mut state = LabState::load(&dir)?;
            pods::delete(&mut state, &pod)?;
            state.save(&dir)?;
            println!("pod {pod} deleted");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pod { action: PodCmd::Label { pod, labels } } => {
            let mut state = LabState::load(&dir)?;
            let (namespace, name) = pods::split_key(&pod);
            pods::relabel(&mut state, &format!("{namespace}/{name}"), parse_labels(&labels)?)?;
            state.save(&dir)?;
            println!("pod {namespace}/{name} labelled");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { port, family, json } => {
            let state = LabState::load(&dir)?;
            let probe = Probe::measure(&state, port, family)?;
            if json {
                println!("{}", serde_json::to_string(&probe)?);
            } else {
                print!("{}", probe.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Serve { ports } => {
            pods::serve(&ports)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down => {
            let state = LabState::load(&dir)?;
            let removed = lab::teardown(&state, &dir);
            println!(
                "lab {:?} is down: {} processes stopped, {} namespaces removed, {} deleted",
                state.name,
                removed.processes,
                removed.namespaces,
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
