//! brindle-controllers: the cluster-wide clean-up Kubernetes needs from its network, in one
//! process with leader election (DESIGN.md, "Controllers"). Run as a Deployment of two or more
//! replicas: the one holding the Lease works, the others wait to take over.
//!
//! While leading it runs IPAM garbage collection with the Kubernetes API's Pods as the judges
//! of which pod addresses are still held ([`ipam_gc`]), and, on the etcd datastore, keeps the
//! datastore in step with Kubernetes ([`follow`]): Nodes ([`nodes`]), Namespaces and
//! NetworkPolicies ([`mirror`]), Pods' labels on their endpoints ([`pods`]).

mod follow;
mod ipam_gc;
mod leader;
mod mirror;
mod nodes;
mod pods;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use brindle_datastore::Client;
use brindle_datastore::ipam::Ipam;
use brindle_datastore::store::{self, KubernetesStore};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use brindle_datastore::resource::{Node, WorkloadEndpoint};
use follow::{datastore_changes, follow};
use leader::{Candidate, Leadership};

/// brindle's cluster controllers: IPAM garbage collection judged by the Kubernetes API's Pods,
/// and, on the etcd datastore, the datastore kept in step with Kubernetes: Nodes (labels
/// copied, a node deleted with its Kubernetes Node), Namespaces, NetworkPolicies, and Pods'
/// labels, service accounts and named ports on their endpoints. One replica works at a time,
/// holding a Lease.
///
/// Exit codes: 0 after SIGTERM or SIGINT (the lease is given up first, so another replica takes
/// over at once); 1 when start-up fails or the lease is lost (only the holder may act; restarted,
/// the process stands for the lease again).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// The datastore: `kubernetes://[/path/to/kubeconfig]` or `etcd://host:port,...?cacert=...`.
    #[arg(long, env = "BRINDLE_DATASTORE", default_value = "kubernetes://")]
    datastore: String,
    /// The kubeconfig of the Kubernetes API to follow when the datastore is etcd (default: the
    /// in-cluster service account, KUBECONFIG, or ~/.kube/config). On the Kubernetes datastore
    /// its own API is followed.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "brindle-system")]
    lease_namespace: String,
    /// The name of the Lease the replicas stand for.
    #[arg(long, default_value = "brindle-controllers")]
    lease_name: String,
    /// This replica's name in the Lease (default: the host name and the process ID).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease lasts unrenewed: the longest a dead leader's work waits for another
    /// replica. At least 3s; renewed a third of it before it runs out.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// How often IPAM garbage collection runs (how long an address takes to come back is
    /// mostly IPAMConfiguration's leakGracePeriod).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    gc_interval: Duration,
    /// On the etcd datastore, how often Nodes, Namespaces, NetworkPolicies and Pods' endpoints
    /// are compared with Kubernetes in full, besides at every change.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    resync_interval: Duration,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `brindle_controllers=debug`.
    #[arg(long, env = "BRINDLE_LOG", default_value = "warn")]
    log: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = init_logging(&args.log) {
        eprintln!("brindle-controllers: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match runtime.map_err(anyhow::Error::from).and_then(|r| r.block_on(run(args))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("brindle-controllers: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).with_context(|| format!("--log {filter:?}"))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let datastore = store::connect(&args.datastore).await.with_context(|| format!("datastore {}", args.datastore))?;
    let client = Client::new(datastore.clone());
    let own_datastore = datastore.kubernetes().is_some();
    let kubernetes = store::kubernetes_api(&*datastore, args.kubeconfig.clone()).await.context("the Kubernetes API")?;
    let candidate = Candidate {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: args.identity.clone().unwrap_or_else(default_identity),
        duration: args.lease_duration,
    };
    let mut leadership = Leadership::stand(kubernetes.client(), &candidate).await?;
    tracing::info!(identity = %candidate.identity, lease = %candidate.name, "standing for the lease");
    let stopped = tokio::select! {
        won = leadership.won() => {
            won?;
            false
        }
        _ = terminate.recv() => true,
        _ = interrupt.recv() => true,
    };
    if stopped {
        leadership.resign().await;
        return Ok(());
    }
    tracing::info!(identity = %candidate.identity, "leading");

    let ipam = Ipam::new(client.clone()).with_kubernetes(kubernetes.clone());
    let gc = ipam_gc::run(ipam, args.gc_interval);
    let following = async {
        if own_datastore {
            // Nodes, Namespaces, NetworkPolicies and Pods are Kubernetes' own objects there.
            std::future::pending::<()>().await
        }
        follow_kubernetes(&kubernetes, &client, args.resync_interval).await
    };
    tokio::select! {
        _ = leadership.lost() => {
            anyhow::bail!("lost the lease {}/{}; stopping, as only its holder may act", candidate.namespace, candidate.name)
        }
        _ = gc => unreachable!("garbage collection runs for ever"),
        _ = following => unreachable!("following Kubernetes runs for ever"),
        _ = terminate.recv() => leadership.resign().await,
        _ = interrupt.recv() => leadership.resign().await,
    }
    Ok(())
}

/// On the etcd datastore: Nodes, Namespaces, NetworkPolicies and Pods' facts kept in step with
/// Kubernetes, each as its objects change and every `resync`, for ever.
async fn follow_kubernetes(kubernetes: &KubernetesStore, client: &Client, resync: Duration) {
    let api = || kubernetes.client();
    tokio::join!(
        // A node that registers after its Kubernetes Node, or an endpoint written after its Pod,
        // is synced at once, not at the next resync.
        follow(
            "Nodes",
            kube::Api::all(api()),
            resync,
            datastore_changes::<Node>(client.clone()),
            nodes::kubernetes_labels,
            async |labels| nodes::sync(labels, client).await
        ),
        follow("Namespaces", kube::Api::all(api()), resync, never(), mirror::namespaces, async |wanted| {
            mirror::apply(client, wanted).await
        }),
        follow("NetworkPolicies", kube::Api::all(api()), resync, never(), mirror::network_policies, async |wanted| {
            mirror::apply(client, wanted).await
        }),
        follow(
            "Pods",
            kube::Api::all(api()),
            resync,
            datastore_changes::<WorkloadEndpoint>(client.clone()),
            pods::facts,
            async |facts| pods::sync(facts, client).await
        ),
    );
}

/// No nudges: the datastore's side changes only by the sync itself.
fn never() -> futures::stream::Pending<()> {
    futures::stream::pending()
}

/// The host name and the process ID.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
