//! `brindle-lab up`: builds the lab step by step, recording each part in the lab's state as
//! soon as it exists, so a failure (or an interrupted run) can always be taken down.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use brindle_datastore::resource::parse_documents;
use brindle_datastore::testing::{KubeApiServer, KubePlacement};

use super::pods::{self, NewPod};
use super::progress::Progress;
use super::report::agent_status;
use super::state::{LabNode, LabState};
use super::topology::{Options, Store, cli_name, node_name, pod_name};
use super::{in_netns, teardown};
use crate::netns::{Netns, http_get, http_get_at};
use crate::process::alive;
use crate::underlay::Underlay;
use crate::wait::wait_for;

/// The binaries a lab runs, looked up in the bin directory.
pub const BINARIES: &[&str] = &["brindle-node", "brindle", "brindle-ipam", "brindle-controllers"];

/// How long agents get to become ready, and pods to reach each other.
const SETTLE: Duration = Duration::from_secs(60);

/// The etcd client port inside the router's namespace.
const ETCD_PORT: u16 = 2379;

/// Builds lab `name` in `dir` with brindle's binaries from `bin_dir`. On failure, whatever
/// was built is removed again.
pub fn up(name: &str, dir: &Path, bin_dir: &Path, options: &Options) -> anyhow::Result<LabState> {
    options.check()?;
    for binary in BINARIES {
        let path = bin_dir.join(binary);
        if !path.is_file() {
            bail!(
                "{} is missing: build brindle first (cargo build --release -p brindle-agent -p brindle-cni \
                 -p brindle-controllers) \
                 or point --bin-dir at the binaries",
                path.display()
            );
        }
    }
    if options.mode.needs_ipip() && !crate::netns::kernel_has_ipip()? {
        bail!(
            "mode {} needs the kernel's ipip module, and this kernel has none (`modprobe ipip` fails \
             and a new network namespace gets no tunl0); choose --mode vxlan or vxlan-crosssubnet",
            cli_name(&options.mode)
        );
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "a lab named {name:?} exists ({}); take it down first (brindle-lab down --name {name})",
            dir.display()
        ),
        other => other.with_context(|| format!("creating {}", dir.display()))?,
    }
    let mut state = LabState {
        name: name.to_owned(),
        options: options.clone(),
        bin_dir: bin_dir.to_owned(),
        datastore: String::new(),
        switch: String::new(),
        router: String::new(),
        kubernetes: None,
        etcd_pid: None,
        apiserver_pid: None,
        apiserver_etcd_pid: None,
        controllers_pid: None,
        nodes: Vec::new(),
        pods: Vec::new(),
    };
    match build(&mut state, dir) {
        Ok(()) => Ok(state),
        Err(e) => {
            eprintln!("  taking down what was built ...");
            teardown(&state, dir);
            Err(e)
        }
    }
}

fn build(state: &mut LabState, dir: &Path) -> anyhow::Result<()> {
    let options = state.options.clone();
    let mut progress = Progress::new(6);
    size_neighbour_tables(&options)?;
    let underlay =
        progress.step(&format!("underlay: switch and router, {} subnet(s)", options.subnets().len()), || {
            let underlay = Underlay::build(
                Netns::named(&format!("{}-switch", state.name))?,
                Netns::named(&format!("{}-router", state.name))?,
                options.subnets(),
            )?;
            if options.ipv6 { underlay.with_ipv6(options.subnets_v6()) } else { Ok(underlay) }
        })?;
    let gateway = underlay.gateway(0)?;
    state.switch = underlay.switch.name.clone();
    state.router = underlay.router.name.clone();
    state.save(dir)?;

    let store = match options.datastore {
        Store::Sqlite => "sqlite",
        Store::Etcd => "etcd",
        Store::Kubernetes => "kubernetes",
        Store::EtcdKubernetes => "etcd, beside kube-apiserver and brindle-controllers",
    };
    progress.step(&format!("datastore: {store}"), || start_datastore(state, dir, gateway))?;
    state.save(dir)?;

    let addresses: Vec<std::net::Ipv4Addr> =
        (0..options.nodes).map(|i| node_address(&options, i)).collect::<anyhow::Result<_>>()?;
    progress
        .step("resources: pool, agent configuration, BGP topology", || apply(state, &options.resources(&addresses)))?;

    progress.step(&format!("nodes: {} namespaces on the underlay, brindle-node on each", options.nodes), || {
        for i in 0..options.nodes {
            start_node(state, &underlay, dir, i)?;
            state.save(dir)?;
        }
        Ok(())
    })?;
    progress.step("agents ready, every BGP session established", || {
        wait_ready(state)?;
        wait_for("every BGP session to be established", SETTLE, || state.nodes.iter().all(sessions_established))
    })?;
    progress.step(&format!("pods: {} per node through the brindle CNI plugin", options.pods_per_node), || {
        for i in 0..options.nodes {
            for j in 0..options.pods_per_node {
                let pod = NewPod { namespace: "default".into(), name: pod_name(i, j), node: i, ..NewPod::default() };
                pods::add(state, &pod)?;
                state.save(dir)?;
            }
        }
        Ok(())
    })?;
    underlay.keep();
    Ok(())
}

/// The kernel's neighbour tables are shared by every namespace (their `gc_thresh` limits are
/// the initial namespace's), and a lab's nodes each hold an entry for every other node on the
/// underlay and on the VXLAN device: past 1,024 in all (Debian's default, about 22 nodes) the
/// kernel drops entries, sessions flap and pods stop reaching. Raises the limits to what the lab
/// needs, never lowers them, and says so.
fn size_neighbour_tables(options: &Options) -> anyhow::Result<()> {
    let entries_per_node = 2 * options.nodes + options.pods_per_node + 8;
    let needed = options.nodes * entries_per_node;
    for family in ["ipv4", "ipv6"] {
        let dir = Path::new("/proc/sys/net").join(family).join("neigh/default");
        for (name, want) in [("gc_thresh2", 2 * needed), ("gc_thresh3", 4 * needed)] {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let have: usize = text.trim().parse().with_context(|| format!("{}: {text:?}", path.display()))?;
            if have < want {
                std::fs::write(&path, want.to_string()).with_context(|| format!("raising {}", path.display()))?;
                eprintln!(
                    "  net.{family}.neigh.default.{name} raised from {have} to {want} for {} nodes",
                    options.nodes
                );
            }
        }
    }
    Ok(())
}

fn node_address(options: &Options, i: usize) -> anyhow::Result<std::net::Ipv4Addr> {
    let (subnet, host) = options.placement(i);
    let net: ipnetwork::Ipv4Network = options.subnets()[subnet].parse()?;
    net.nth(host).with_context(|| format!("{net} has no host {host}"))
}

fn start_datastore(state: &mut LabState, dir: &Path, gateway: std::net::Ipv4Addr) -> anyhow::Result<()> {
    match state.options.datastore {
        Store::Sqlite => {
            state.datastore = format!("sqlite://{}", dir.join("brindle.db").display());
            Ok(())
        }
        Store::Etcd => start_etcd(state, dir, gateway),
        Store::Kubernetes => {
            let (etcd, apiserver, selection) = start_apiserver(state, dir, gateway)?;
            (state.etcd_pid, state.apiserver_pid) = (Some(etcd), Some(apiserver));
            state.datastore = selection.clone();
            state.kubernetes = Some(selection);
            Ok(())
        }
        Store::EtcdKubernetes => {
            start_etcd(state, dir, gateway)?;
            let (etcd, apiserver, selection) = start_apiserver(state, dir, gateway)?;
            (state.apiserver_etcd_pid, state.apiserver_pid) = (Some(etcd), Some(apiserver));
            state.kubernetes = Some(selection);
            start_controllers(state, dir)
        }
    }
}

/// etcd in the router's namespace, serving the nodes on the gateway's address.
fn start_etcd(state: &mut LabState, dir: &Path, gateway: std::net::Ipv4Addr) -> anyhow::Result<()> {
    let client = format!("http://{gateway}:{ETCD_PORT}");
    let peer = format!("http://{gateway}:{}", ETCD_PORT + 1);
    let log = std::fs::File::create(dir.join("etcd.log"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", &state.router, "etcd", "--name=lab"])
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=lab={peer}"))
        .arg("--log-level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting etcd (is etcd-server installed?)")?;
    state.etcd_pid = Some(child.id());
    state.datastore = format!("etcd://{gateway}:{ETCD_PORT}");
    let router = PathBuf::from(format!("/var/run/netns/{}", state.router));
    wait_for("etcd to become healthy", Duration::from_secs(20), || {
        http_get_at(&router, gateway.into(), ETCD_PORT, "/health").contains("\"health\":\"true\"")
    })
    .map_err(|e| e.context(std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()))
}

/// kube-apiserver (with its own etcd on the router's loopback) serving the nodes on the
/// gateway's address: the PIDs of its etcd and of itself, and the selection that reaches it.
fn start_apiserver(state: &LabState, dir: &Path, gateway: std::net::Ipv4Addr) -> anyhow::Result<(u32, u32, String)> {
    let placement = KubePlacement {
        netns: Some(state.router.clone()),
        address: gateway,
        dir: Some(dir.join("kubernetes")),
        crds: true,
    };
    let server = KubeApiServer::start_at(placement).context("starting kube-apiserver")?;
    let selection = server.selection();
    let (etcd, apiserver) = server.detach();
    Ok((etcd, apiserver, selection))
}

/// brindle-controllers in the router's namespace, keeping the etcd datastore in step with the
/// Kubernetes API (its Lease in kube-system).
fn start_controllers(state: &mut LabState, dir: &Path) -> anyhow::Result<()> {
    let kubeconfig = state.kubeconfig().context("the lab has no Kubernetes API")?.to_owned();
    let child = Command::new("ip")
        .args(["netns", "exec", &state.router])
        .arg(state.bin_dir.join("brindle-controllers"))
        .args(["--datastore", &state.datastore, "--kubeconfig", &kubeconfig])
        .args(["--lease-namespace", "kube-system", "--identity", "lab", "--log", "info"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("controllers.log"))?)
        .process_group(0)
        .spawn()
        .context("starting brindle-controllers")?;
    state.controllers_pid = Some(child.id());
    Ok(())
}

/// Runs `work` with a client of the lab's datastore, from inside the router's namespace (where
/// an etcd or Kubernetes datastore listens).
pub fn with_client<T, F, Fut>(state: &LabState, work: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce(brindle_datastore::Client) -> Fut + Send,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    with_selection(state, state.datastore.clone(), work)
}

/// Runs `work` with a client of the lab's Kubernetes API, where Kubernetes' own kinds
/// (Namespaces, NetworkPolicies) are the API server's objects, as a cluster's users make them;
/// on a lab without one, a client of its datastore.
pub fn with_kubernetes_client<T, F, Fut>(state: &LabState, work: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce(brindle_datastore::Client) -> Fut + Send,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    with_selection(state, state.kubernetes.clone().unwrap_or_else(|| state.datastore.clone()), work)
}

fn with_selection<T, F, Fut>(state: &LabState, selection: String, work: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce(brindle_datastore::Client) -> Fut + Send,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    in_netns(&state.router, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let client = brindle_datastore::Client::new(brindle_datastore::connect(&selection).await?);
            work(client).await
        })
    })?
}

/// Creates or replaces `yaml`'s resources.
pub fn apply(state: &LabState, yaml: &str) -> anyhow::Result<()> {
    let resources = parse_documents(yaml)?;
    with_client(state, |client| async move {
        for r in resources {
            r.apply(&client).await?;
        }
        Ok(())
    })
}

fn start_node(state: &mut LabState, underlay: &Underlay, dir: &Path, i: usize) -> anyhow::Result<()> {
    let (subnet, host) = state.options.placement(i);
    let netns = Netns::named(&format!("{}-{}", state.name, node_name(i)))?;
    let address = underlay.attach(&netns, subnet, host)?;
    let state_dir = dir.join("nodes").join(node_name(i));
    std::fs::create_dir_all(&state_dir)?;
    let log = dir.join(format!("{}.log", node_name(i)));
    if state.options.datastore.has_kubernetes() {
        // As kubelet registers its Node before any pod network exists.
        let node = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\n", node_name(i));
        state
            .kubectl(&["apply", "-f", "-"], Some(&node))
            .with_context(|| format!("registering Node {}", node_name(i)))?;
    }
    let child = Command::new("ip")
        .args(["netns", "exec", &netns.name])
        .arg(state.bin_dir.join("brindle-node"))
        .args(["--datastore", &state.datastore, "--nodename", &node_name(i)])
        .args(state.kubeconfig().map(|kubeconfig| ["--kubeconfig", kubeconfig]).iter().flatten())
        .args(if state.options.ipv6 { &["--ip6-autodetection-method", "interface=eth0"][..] } else { &[] })
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("--status-socket")
        .arg(state_dir.join("node.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .process_group(0)
        .spawn()
        .context("starting brindle-node")?;
    state.nodes.push(LabNode {
        name: node_name(i),
        netns: netns.keep(),
        address,
        agent_pid: child.id(),
        state_dir,
        log,
    });
    Ok(())
}

fn wait_ready(state: &LabState) -> anyhow::Result<()> {
    for node in &state.nodes {
        let path = PathBuf::from(format!("/var/run/netns/{}", node.netns));
        let mut exited = false;
        wait_for(&format!("{} to become ready", node.name), SETTLE, || {
            exited = !alive(node.agent_pid);
            exited || http_get(&path, 9099, "/readiness").starts_with("HTTP/1.0 200")
        })
        .and_then(|()| match exited {
            true => bail!("brindle-node on {} exited", node.name),
            false => Ok(()),
        })
        .map_err(|e| {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            e.context(format!(
                "the last lines of {}:\n{}",
                node.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        })?;
    }
    Ok(())
}

/// Whether every BGP peer of the node's agent is established (true when BGP is off).
fn sessions_established(node: &LabNode) -> bool {
    let status = agent_status(&node.status_socket());
    match status["bgp"]["peers"].as_array() {
        None => !status.is_null(),
        Some(peers) => peers.iter().all(|p| p["state"] == "Established"),
    }
}
