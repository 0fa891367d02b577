//! A cluster on one machine for the agent's end-to-end tests: nodes as namespaces on a bridge
//! underlay with a router, a shared SQLite datastore, a real `brindle-node` per node, and pods
//! made by the `brindle` CNI plugin the way each node's runtime would call it. Guards stop
//! every agent and remove every namespace even when a test fails.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brindle_datastore::Client;
use brindle_datastore::resource::parse_documents;
use brindle_datastore::testing::SqliteFile;
use brindle_e2e::cni::{Attachment, exec_in, node_conf};
use brindle_e2e::lab::agent_status;
use brindle_e2e::netns::{self, Netns, unique};
use brindle_e2e::process::Process;
use brindle_e2e::underlay::Underlay;
use brindle_e2e::wait::wait_for;
use serde_json::Value;

/// One node.
pub struct Node {
    /// Its name in the datastore.
    pub name: String,
    /// Its namespace.
    pub netns: Netns,
    /// Its underlay address.
    pub address: Ipv4Addr,
    /// Where its agent writes the MTU and node-name files.
    pub state: tempfile::TempDir,
}

/// A pod on a node.
pub struct Pod {
    /// Its namespace.
    pub netns: Netns,
    /// How it was attached.
    pub attachment: Attachment,
    /// Its IPv4 address.
    pub ip: String,
    /// Its IPv6 address, when it has one.
    pub ipv6: Option<String>,
    /// The node it runs on.
    pub node: usize,
}

impl Pod {
    /// Whether one ping from this pod to `ip` is answered.
    pub fn ping(&self, ip: &str) -> bool {
        netns::ping(&self.netns.name, ip)
    }
}

/// The cluster. Fields drop in order: pods, agents, nodes, underlay, datastore.
pub struct Cluster {
    /// Pods made so far.
    pub pods: Vec<Pod>,
    /// One agent per node (None while stopped).
    pub agents: Vec<Option<Process>>,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// Switch and router.
    pub underlay: Underlay,
    /// The datastore file.
    pub db: SqliteFile,
    /// Runs datastore calls of the test.
    pub runtime: tokio::runtime::Runtime,
    /// Extra options for every agent (e.g. `--bgp embedded`).
    pub agent_args: Vec<String>,
    /// Options for one node's agent instead of `agent_args`.
    pub node_args: std::collections::HashMap<usize, Vec<String>>,
    scratch: tempfile::TempDir,
}

/// The directory with our binaries.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_brindle-node")).parent().unwrap().to_owned()
}

impl Cluster {
    /// Nodes placed as `(subnet index, host number)` on an underlay of `subnets`, with the
    /// resources in `yaml` applied before any agent starts.
    pub fn new(subnets: &[&str], placement: &[(usize, u32)], yaml: &str) -> Cluster {
        let cni = bin_dir().join("brindle");
        assert!(cni.is_file(), "{} is missing: build the CNI plugin first (cargo build -p brindle-cni)", cni.display());
        let underlay = Underlay::new("agt", subnets).unwrap();
        let nodes = placement
            .iter()
            .enumerate()
            .map(|(i, &(subnet, n))| {
                let netns = Netns::new("agt", &format!("n{i}")).unwrap();
                let address = underlay.attach(&netns, subnet, n).unwrap();
                Node { name: format!("node-{i}-{}", unique()), netns, address, state: tempfile::tempdir().unwrap() }
            })
            .collect();
        let cluster = Cluster {
            pods: Vec::new(),
            agents: Vec::new(),
            nodes,
            underlay,
            db: SqliteFile::new().unwrap(),
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            agent_args: Vec::new(),
            node_args: Default::default(),
            scratch: tempfile::tempdir().unwrap(),
        };
        cluster.apply(yaml);
        cluster
    }

    /// Makes the cluster dual-stack: gives every node the IPv6 address `fd00:250::N/64` on
    /// its underlay interface, where `N` is the last octet of its IPv4 address, and tells every
    /// agent (in `agent_args` and `node_args`, set before) to use it.
    pub fn add_ipv6(&mut self) {
        for node in &self.nodes {
            let address = format!("fd00:250::{}/64", node.address.octets()[3]);
            node.netns.ip(&["-6", "addr", "add", &address, "dev", "eth0", "nodad"]).unwrap();
        }
        let v6 = ["--ip6-autodetection-method".to_owned(), "interface=eth0".to_owned()];
        for args in std::iter::once(&mut self.agent_args).chain(self.node_args.values_mut()) {
            args.extend(v6.iter().cloned());
        }
    }

    /// Adds a pod with an address of each family to node `i`.
    pub fn add_dual_stack_pod(&mut self, i: usize) {
        self.add_pod(i, |conf| {
            conf["ipam"] = serde_json::json!({"type": "brindle-ipam", "assign_ipv4": "true", "assign_ipv6": "true"});
        });
    }

    /// The datastore selection every component uses.
    pub fn selection(&self) -> String {
        self.db.selection()
    }

    /// A client for the test's own datastore calls.
    pub fn client(&self) -> Client {
        let selection = self.selection();
        self.runtime.block_on(async { Client::new(brindle_datastore::connect(&selection).await.unwrap()) })
    }

    /// Creates or replaces resources from YAML.
    pub fn apply(&self, yaml: &str) {
        let client = self.client();
        self.runtime.block_on(async {
            for r in parse_documents(yaml).unwrap() {
                r.apply(&client).await.unwrap();
            }
        });
    }

    /// Starts the agent of node `i`.
    pub fn start_agent(&mut self, i: usize) {
        while self.agents.len() <= i {
            self.agents.push(None);
        }
        let node = &self.nodes[i];
        let log = std::fs::File::create(self.scratch.path().join(format!("agent-{i}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &node.netns.name])
            .arg(env!("CARGO_BIN_EXE_brindle-node"))
            .args(["--datastore", &self.selection(), "--nodename", &node.name])
            .args(["--resync-interval", "2s", "--log", "info,brindle_node=debug"])
            .arg("--state-dir")
            .arg(node.state.path())
            .arg("--status-socket")
            .arg(node.state.path().join("node.sock"))
            .args(self.node_args.get(&i).unwrap_or(&self.agent_args))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents[i] = Some(Process(child));
    }

    /// Stops the agent of node `i` (SIGKILL: nothing is cleaned up, like a crash).
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(mut agent) = self.agents[i].take() {
            let _ = agent.0.kill();
            let _ = agent.0.wait();
        }
    }

    /// Stops the agent of node `i` the way Kubernetes does (SIGTERM), and waits for it.
    pub fn terminate_agent(&mut self, i: usize) {
        if let Some(mut agent) = self.agents[i].take() {
            let _ = Command::new("kill").args(["-TERM", &agent.0.id().to_string()]).status();
            let _ = agent.0.wait();
        }
    }

    /// An agent's log so far.
    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.scratch.path().join(format!("agent-{i}.log"))).unwrap_or_default()
    }

    /// Starts every agent and waits until all are ready.
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start_agent(i);
        }
        for i in 0..self.nodes.len() {
            self.wait_ready(i);
        }
    }

    /// Waits until node `i`'s agent answers /readiness with 200.
    pub fn wait_ready(&self, i: usize) {
        wait_for(&format!("agent {i} to become ready"), Duration::from_secs(20), || {
            self.http(i, 9099, "/readiness").starts_with("HTTP/1.0 200")
        })
        .unwrap_or_else(|e| {
            let readiness = self.http(i, 9099, "/readiness");
            panic!("{e}: {readiness}; the agents' logs:\n{}", self.agent_logs())
        });
    }

    /// Every agent's log, each under a heading naming its node.
    pub fn agent_logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("--- agent {i} ({})\n{}", self.nodes[i].name, self.agent_log(i)))
            .collect()
    }

    /// What node `i`'s agent says on its status socket (it answers between passes and gives
    /// up after 5 s, so a slow pass is waited out).
    pub fn status(&self, i: usize) -> Value {
        let socket = self.nodes[i].state.path().join("node.sock");
        let mut status = Value::Null;
        wait_for(&format!("agent {i}'s JSON status on its socket"), Duration::from_secs(20), || {
            status = agent_status(&socket);
            !status.is_null()
        })
        .unwrap_or_else(|e| panic!("{e}; its log:\n{}", self.agent_log(i)));
        status
    }

    /// GET on a node's loopback; the raw response, or "" when nothing answers.
    pub fn http(&self, i: usize, port: u16, path: &str) -> String {
        netns::http_get(&self.nodes[i].netns.path(), port, path)
    }

    /// Node `i`'s metrics, served on its address (port 9091), as Prometheus scrapes them.
    pub fn metrics(&self, i: usize) -> String {
        let node = &self.nodes[i];
        netns::http_get_at(&node.netns.path(), node.address.into(), 9091, "/metrics")
    }

    /// The CNI config every node's runtime uses: MTU and node name from the agent's files.
    pub fn cni_conf(&self, i: usize) -> Value {
        node_conf(&self.selection(), self.nodes[i].state.path())
    }

    /// Makes a pod on node `i` through the CNI plugin; returns its index.
    pub fn add_pod(&mut self, i: usize, conf_patch: impl FnOnce(&mut Value)) -> usize {
        let netns = Netns::new("agt", "pod").unwrap();
        let tag = unique();
        let attachment = Attachment {
            container_id: format!("ctr{tag}"),
            netns: netns.path(),
            ifname: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: format!("pod-{tag}"),
        };
        let mut conf = self.cni_conf(i);
        conf_patch(&mut conf);
        let out = exec_in(
            &self.nodes[i].netns.name,
            &bin_dir().join("brindle"),
            "ADD",
            &conf,
            &attachment,
            &bin_dir().display().to_string(),
        )
        .unwrap();
        let result = out.into_result().unwrap();
        let addresses: Vec<String> = result["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| ip["address"].as_str().unwrap().split('/').next().unwrap().to_owned())
            .collect();
        let ip = addresses.iter().find(|a| !a.contains(':')).expect("an IPv4 address").clone();
        let ipv6 = addresses.into_iter().find(|a| a.contains(':'));
        self.pods.push(Pod { netns, attachment, ip, ipv6, node: i });
        self.pods.len() - 1
    }

    /// Waits until every pod reaches every other pod, at its IPv4 address and, when both
    /// have one, at its IPv6 address; the pairs that never did otherwise.
    pub fn reachability(&self, within: Duration) -> Vec<(usize, usize)> {
        let deadline = Instant::now() + brindle_e2e::wait::patience(within);
        loop {
            let mut failing = Vec::new();
            for (a, from) in self.pods.iter().enumerate() {
                for (b, to) in self.pods.iter().enumerate() {
                    let v6_ok = match (&from.ipv6, &to.ipv6) {
                        (Some(_), Some(ip)) => from.ping(ip),
                        _ => true,
                    };
                    if a != b && !(from.ping(&to.ip) && v6_ok) {
                        failing.push((a, b));
                    }
                }
            }
            if failing.is_empty() || Instant::now() > deadline {
                return failing;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `ip <args>` on node `i`.
    pub fn ip(&self, i: usize, args: &[&str]) -> String {
        self.nodes[i].netns.ip(args).unwrap()
    }

    /// Waits until `check` holds, or fails with `what`.
    pub fn eventually(&self, within: Duration, what: &str, check: impl FnMut() -> bool) {
        wait_for(what, within, check).unwrap_or_else(|e| panic!("{e}"));
    }
}
