//! `brindlectl`, the operator CLI: resources, IPAM, node status and path diagnosis.

mod config;
mod diagnose;
mod filter;
mod ipam;
mod kernel;
mod node_status;
mod output;
mod resources;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use brindle_datastore::Client;
use brindle_datastore::resource::AnyResource;
use clap::{Parser, Subcommand};

use crate::output::Format;
use crate::resources::Write;

/// brindle's operator CLI: create and inspect resources, see and repair IPAM, ask the local
/// agent for its BGP peers, and explain the path between two pods.
///
/// The datastore comes from --datastore, else BRINDLE_DATASTORE, else `datastore:` in the
/// config file (/etc/brindle/brindlectl.yaml), else sqlite:///var/lib/brindle/brindle.db.
///
/// Exit codes: 0 success; 1 an error (the message names the resource, field and problem);
/// 2 bad usage; 3 `ipam check` or `diagnose` found a problem.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The datastore: `kubernetes://[/kubeconfig]`, `etcd://host:2379,...?cacert=...` or
    /// `sqlite:///path`.
    #[arg(long, global = true, env = "BRINDLE_DATASTORE")]
    datastore: Option<String>,
    /// The Kubernetes API as the datastore, through this kubeconfig (`kubernetes://<PATH>`).
    #[arg(long, global = true, conflicts_with = "datastore")]
    kubeconfig: Option<PathBuf>,
    /// The config file naming the datastore.
    #[arg(long, global = true, default_value = config::DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Creates the resources in FILE (`-` for stdin); an error for any that exists.
    Create(FileArgs),
    /// Creates the resources in FILE, or replaces those that exist.
    Apply(FileArgs),
    /// Replaces the resources in FILE; an error for any that does not exist. With
    /// metadata.resourceVersion set, only if nobody changed it since.
    Replace(FileArgs),
    /// Deletes the resources in FILE, or one resource by kind and name.
    Delete {
        /// A file of resources to delete.
        #[arg(short, long, conflicts_with_all = ["kind", "name"])]
        filename: Option<PathBuf>,
        /// The kind (ippool, node, bgppeer, ...).
        kind: Option<String>,
        /// The name.
        name: Option<String>,
        /// The namespace, for namespaced kinds.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Shows resources of a kind: ippools, nodes, bgppeers, bgpfilters, bgpconfigurations,
    /// agentconfigurations, ipamconfigurations, workloadendpoints, networkpolicies (brindle's
    /// and Kubernetes' together; netpol for Kubernetes' alone), globalnetworkpolicies, tiers,
    /// namespaces.
    Get {
        /// The kind.
        kind: String,
        /// One resource's name (all when left out).
        name: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        /// The namespace, for namespaced kinds.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// For workloadendpoints -o wide on a node: where the CNI plugin keeps its records.
        #[arg(long, env = "BRINDLE_ENDPOINT_RECORD_DIR", default_value = brindle_cni::config::DEFAULT_RECORD_DIR)]
        record_dir: PathBuf,
        /// For workloadendpoints -o wide on a node: the CNI network name.
        #[arg(long, default_value = "k8s-pod-network")]
        network: String,
    },
    /// Sets (`key=value`) or removes (`key-`) labels.
    Label {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
        /// `key=value` to set, `key-` to remove.
        #[arg(required = true)]
        labels: Vec<String>,
        /// Change labels that are already set.
        #[arg(long)]
        overwrite: bool,
        /// The namespace, for namespaced kinds.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Changes a resource with a JSON merge patch (RFC 7386), e.g. `-p '{"spec":{"natOutgoing":true}}'`.
    Patch {
        /// The kind.
        kind: String,
        /// The name.
        name: String,
        /// The patch.
        #[arg(short, long)]
        patch: String,
        /// The namespace, for namespaced kinds.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// IP address management.
    #[command(subcommand)]
    Ipam(IpamCmd),
    /// The local node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// The Kubernetes datastore.
    #[command(subcommand)]
    Kubernetes(KubernetesCmd),
    /// Explains the path and the policy between two pods (`namespace/name`, `name`, or an
    /// IP), from the datastore and, on one of their nodes, from the kernel; says what is
    /// missing and which policy rule decides each direction.
    Diagnose {
        /// The first pod.
        pod_a: String,
        /// The second pod.
        pod_b: String,
        /// What policy is judged for: `tcp/80`, `udp/53` (default: a ping).
        #[arg(long)]
        port: Option<diagnose::Probe>,
    },
}

#[derive(Debug, clap::Args)]
struct FileArgs {
    /// The file (YAML or JSON, many documents), `-` for stdin.
    #[arg(short, long)]
    filename: PathBuf,
}

#[derive(Debug, Subcommand)]
enum IpamCmd {
    /// Per pool (and block): size, in use, free, with a usage bar; or who holds one address.
    Show {
        /// Who holds this address.
        #[arg(long)]
        ip: Option<IpAddr>,
        /// Every block, with its owner.
        #[arg(long)]
        show_blocks: bool,
    },
    /// Finds leaked addresses, nodes that are gone but own blocks, and blocks that disagree
    /// with their pool, and says when garbage collection may release each; changes nothing.
    /// Exit 3 when it finds any.
    Check {
        /// Also write the report as JSON, for `ipam release --from-report`.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Garbage collection: releases addresses whose pod or node is gone and clears what
    /// deleted nodes left. A dry run unless --apply.
    ///
    /// An address is leaked when its holder is missing: its node does not exist, or, for a
    /// pod's address taken by the brindle plugin, no WorkloadEndpoint has the container its
    /// handle names (a tunnel address is held by its node; a pod's address taken by
    /// brindle-ipam under another plugin is held as long as its node exists). A leaked address
    /// is released only when it was allocated at least the grace period ago
    /// (IPAMConfiguration leakGracePeriod, 15m by default; 0 turns releasing off) and an
    /// earlier pass with --apply saw the same address leaked by the same handle at least the
    /// grace period before. A pod whose CNI ADD is still running (its address taken, its
    /// endpoint not yet written) therefore keeps its address however often this runs, as long
    /// as no ADD takes longer than the grace period. Before each release the holder is looked
    /// up again, and the address is freed by compare-and-swap only if the same handle still
    /// holds it.
    ///
    /// A node that no longer exists is cleared by the same two-pass rule: its endpoints are
    /// deleted (no pod runs on a node that does not exist), its addresses released, and its
    /// blocks lose their owner, so any node can claim them; a block with nothing in use is
    /// deleted once its released addresses have rested for releaseCooldown.
    ///
    /// Each pass with --apply records what it saw in the datastore for the next one; a dry run
    /// reads that record and changes nothing. A pass whose clock is more than a minute behind
    /// the last recorded pass refuses to act. On a cluster, brindle-controllers runs passes
    /// every 5 minutes, judging pods' addresses by their Pods in the Kubernetes API (a Pod that
    /// exists never loses its address); this command judges them by their WorkloadEndpoints.
    Gc {
        /// Act: release, take blocks, and record this pass.
        #[arg(long)]
        apply: bool,
    },
    /// Releases addresses.
    Release {
        /// An address to release, whoever holds it (repeatable).
        #[arg(long, required_unless_present = "from_report")]
        ip: Vec<IpAddr>,
        /// Releases the leaks an `ipam check -o FILE` report found releasable, each only if
        /// its holder is still missing and the same handle still holds it.
        #[arg(long, conflicts_with = "ip")]
        from_report: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KubernetesCmd {
    /// Prints brindle's CustomResourceDefinitions as YAML (`| kubectl apply -f -`);
    /// manifests/brindle.yaml holds the same.
    Crds,
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// The local agent's sync state and BGP peers (address, type, state, since, reason).
    Status {
        /// The agent's status socket.
        #[arg(long, env = "BRINDLE_STATUS_SOCKET", default_value = node_status::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Packets and bytes each policy rule on this node has matched (both families), and the
    /// drops at each endpoint's tier ends, busiest first.
    PolicyCounters {
        /// JSON: `[{"rule": "...", "packets": N, "bytes": N}, ...]`.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code when a check finds a problem.
const FOUND_PROBLEMS: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("brindlectl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("brindlectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let named = cli.kubeconfig.as_ref().map(|path| format!("kubernetes://{}", path.display()));
    let selection = config::datastore(named.as_deref().or(cli.datastore.as_deref()), &cli.config)?;
    let store = brindle_datastore::connect(&selection)
        .await
        .with_context(|| format!("cannot open the datastore {selection}"))?;
    Ok(Client::new(store))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Cmd::Create(f) | Cmd::Apply(f) | Cmd::Replace(f) => {
            let write = match &cli.command {
                Cmd::Create(_) => Write::Create,
                Cmd::Apply(_) => Write::Apply,
                _ => Write::Replace,
            };
            let resources = resources::read_file(&f.filename)?;
            print!("{}", resources::write_all(&connect(&cli).await?, write, resources).await?);
        }
        Cmd::Delete { filename, kind, name, namespace } => {
            let from_file = filename.as_deref().map(resources::read_file).transpose()?;
            let client = connect(&cli).await?;
            let targets = match (from_file, kind, name) {
                (Some(resources), _, _) => resources,
                (None, Some(kind), Some(name)) => {
                    let kind = resources::kind(kind)?;
                    let ns = resources::namespace_for(kind, namespace);
                    vec![AnyResource::get(&client, kind, ns.as_deref(), name).await?]
                }
                _ => anyhow::bail!("say what to delete: -f FILE, or KIND NAME"),
            };
            print!("{}", resources::write_all(&client, Write::Delete, targets).await?);
        }
        Cmd::Get { kind, name, output, namespace, all_namespaces, record_dir, network } => {
            let kind = resources::kind(kind)?;
            let client = connect(&cli).await?;
            let namespace = (!all_namespaces).then_some(namespace.as_str());
            let found = resources::get(&client, kind, name.as_deref(), namespace).await?;
            let extra = if kind == "WorkloadEndpoint" && *output == Format::Wide {
                record_columns(&found, record_dir, network)
            } else {
                Vec::new()
            };
            if found.is_empty() && matches!(output, Format::Table | Format::Wide) {
                eprintln!("no {kind} resources");
            } else {
                print!("{}", output::render(kind, &found, *output, &extra));
            }
        }
        Cmd::Label { kind, name, labels, overwrite, namespace } => {
            let kind = resources::kind(kind)?;
            let client = connect(&cli).await?;
            resources::edit(&client, kind, Some(namespace), name, |json| {
                resources::set_labels(json, labels, *overwrite)
            })
            .await?;
            println!("{kind} \"{name}\" labelled");
        }
        Cmd::Patch { kind, name, patch, namespace } => {
            let kind = resources::kind(kind)?;
            let patch: serde_json::Value = serde_json::from_str(patch).context("the patch is not JSON")?;
            let client = connect(&cli).await?;
            resources::edit(&client, kind, Some(namespace), name, |json| {
                resources::merge_patch(json, &patch);
                Ok(())
            })
            .await?;
            println!("{kind} \"{name}\" patched");
        }
        Cmd::Ipam(IpamCmd::Show { ip, show_blocks }) => {
            print!("{}", ipam::show(&connect(&cli).await?, *ip, *show_blocks).await?);
        }
        Cmd::Ipam(IpamCmd::Check { output }) => {
            let (text, report) = ipam::check(&connect(&cli).await?).await?;
            print!("{text}");
            if let Some(path) = output {
                std::fs::write(path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("report written to {}", path.display());
            }
            if !report.is_clean() {
                return Ok(ExitCode::from(FOUND_PROBLEMS));
            }
        }
        Cmd::Ipam(IpamCmd::Gc { apply }) => {
            print!("{}", ipam::gc(&connect(&cli).await?, *apply).await?);
        }
        Cmd::Ipam(IpamCmd::Release { ip, from_report }) => {
            let client = connect(&cli).await?;
            let text = match from_report {
                Some(path) => ipam::release_from_report(&client, path).await?,
                None => ipam::release_ips(&client, ip).await?,
            };
            print!("{text}");
        }
        Cmd::Kubernetes(KubernetesCmd::Crds) => {
            let layout = brindle_datastore::store::kubernetes::layout::collections();
            let crds = brindle_datastore::store::kubernetes::layout::crds(&layout);
            print!("{}", serde_saphyr::to_string_multiple(&crds).context("writing the definitions as YAML")?);
        }
        Cmd::Node(NodeCmd::Status { socket, json }) => {
            let status = node_status::query(socket)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", node_status::render(&status));
            }
        }
        Cmd::Node(NodeCmd::PolicyCounters { json }) => {
            let counters = filter::Filter::read().context("reading this node's iptables counters")?.counters();
            if *json {
                let rows: Vec<serde_json::Value> = counters
                    .iter()
                    .map(|(rule, packets, bytes)| serde_json::json!({"rule": rule, "packets": packets, "bytes": bytes}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let rows: Vec<Vec<String>> =
                    counters.iter().map(|(rule, p, b)| vec![rule.clone(), p.to_string(), b.to_string()]).collect();
                print!("{}", output::table(&["RULE".into(), "PACKETS".into(), "BYTES".into()], &rows));
            }
        }
        Cmd::Diagnose { pod_a, pod_b, port } => {
            let client = connect(&cli).await?;
            let findings = diagnose::diagnose(&client, pod_a, pod_b, config::local_node().as_deref(), *port).await?;
            print!("{}", findings.render());
            if findings.problems() > 0 {
                return Ok(ExitCode::from(FOUND_PROBLEMS));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// HOST-VETH, MTU and CREATED from the CNI plugin's records on this node, per endpoint.
fn record_columns(endpoints: &[AnyResource], dir: &std::path::Path, network: &str) -> Vec<(String, Vec<String>)> {
    let records = brindle_cni::record::Record::list(dir, network).unwrap_or_default();
    let mut columns = [("RECORD-VETH", Vec::new()), ("MTU", Vec::new()), ("NETNS", Vec::new())];
    for endpoint in endpoints {
        let AnyResource::WorkloadEndpoint(e) = endpoint else { continue };
        let record = records.iter().find(|r| r.container_id == e.spec.container_id);
        columns[0].1.push(record.map_or("-".into(), |r| r.host_veth.clone()));
        columns[1].1.push(record.map_or("-".into(), |r| r.mtu.to_string()));
        columns[2].1.push(record.map_or("-".into(), |r| r.netns.clone()));
    }
    columns.into_iter().map(|(h, cells)| (h.to_owned(), cells)).collect()
}
