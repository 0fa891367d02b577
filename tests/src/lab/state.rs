//! What a running lab is made of, written when `up` succeeds and read by every later command:
//! its namespaces, its processes' PIDs and its files, so `down` removes exactly those.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::pods::Port;
use super::topology::Options;

/// The default parent of every lab's directory (gone on reboot, as the namespaces are).
pub const DEFAULT_DIR: &str = "/var/run/brindle-lab";

/// A lab that is up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Its name (the prefix of its namespaces).
    pub name: String,
    /// What it was built with.
    pub options: Options,
    /// Where brindle's binaries were taken from.
    pub bin_dir: PathBuf,
    /// The datastore selection every component uses.
    pub datastore: String,
    /// The switch's namespace.
    pub switch: String,
    /// The router's namespace.
    pub router: String,
    /// The Kubernetes API as a datastore selection (`kubernetes://KUBECONFIG?...`), when the
    /// lab has one: the datastore itself, or the API beside etcd.
    #[serde(default)]
    pub kubernetes: Option<String>,
    /// etcd's PID when the datastore is etcd (or the API server's etcd).
    pub etcd_pid: Option<u32>,
    /// kube-apiserver's PID when the lab has one.
    #[serde(default)]
    pub apiserver_pid: Option<u32>,
    /// The API server's own etcd, when brindle's state is in another.
    #[serde(default)]
    pub apiserver_etcd_pid: Option<u32>,
    /// brindle-controllers' PID, beside an etcd datastore in a lab with a Kubernetes API.
    #[serde(default)]
    pub controllers_pid: Option<u32>,
    /// The nodes.
    pub nodes: Vec<LabNode>,
    /// The pods.
    pub pods: Vec<LabPod>,
}

/// One node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    /// Its name in the datastore.
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its underlay address.
    pub address: std::net::Ipv4Addr,
    /// brindle-node's PID.
    pub agent_pid: u32,
    /// Its agent's state directory (MTU and node-name files, status socket, endpoint records).
    pub state_dir: PathBuf,
    /// Its agent's log.
    pub log: PathBuf,
}

impl LabNode {
    /// The agent's status socket.
    pub fn status_socket(&self) -> PathBuf {
        self.state_dir.join("node.sock")
    }
}

/// One pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabPod {
    /// Its name.
    pub name: String,
    /// Its Kubernetes namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The index of its node.
    pub node: usize,
    /// Its network namespace.
    pub netns: String,
    /// Its IPv4 address.
    pub ip: String,
    /// Its IPv6 address, in a dual-stack lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// The sandbox's container ID.
    pub container_id: String,
    /// The PID of its server (`brindle-lab serve`), if it has one.
    #[serde(default)]
    pub server_pid: Option<u32>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its service account.
    #[serde(default)]
    pub service_account: Option<String>,
    /// The ports its server answers on.
    #[serde(default)]
    pub serve: Vec<Port>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl LabPod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The directory of lab `name` under `parent`.
pub fn lab_dir(parent: &Path, name: &str) -> PathBuf {
    parent.join(name)
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

impl LabState {
    /// `kubectl ARGS` against the lab's API server (from its router's namespace, with its
    /// kubeconfig), fed `stdin`: its output, or an error with what kubectl said.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        use std::io::Write;
        let kubeconfig = self.kubeconfig().context("the lab has no Kubernetes API")?;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.router])
            .arg(brindle_datastore::testing::kube_bin_dir().join("kubectl"))
            .args(["--kubeconfig", kubeconfig])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        child.stdin.take().context("kubectl's stdin")?.write_all(stdin.unwrap_or_default().as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The kubeconfig of the lab's Kubernetes API, when it has one.
    pub fn kubeconfig(&self) -> Option<&str> {
        let selection = self.kubernetes.as_deref()?.strip_prefix("kubernetes://")?;
        selection.split('?').next()
    }

    /// Reads the state of the lab in `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<LabState> {
        let path = state_file(dir);
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                anyhow::bail!("no lab is up here ({} does not exist); start one with `brindle-lab up`", path.display())
            }
            other => other.with_context(|| format!("reading {}", path.display()))?,
        };
        serde_json::from_str(&text).with_context(|| format!("{} is not a lab's state", path.display()))
    }

    /// Writes it atomically into `dir`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = state_file(dir);
        let staged = dir.join(".state.json.new");
        std::fs::write(&staged, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", staged.display()))?;
        std::fs::rename(&staged, &path).with_context(|| format!("installing {}", path.display()))
    }

    /// `command` to run in the namespace of `what` (see [`LabState::netns_of`]) as an operator
    /// there would: with BRINDLE_DATASTORE, in a node also BRINDLE_STATUS_SOCKET,
    /// BRINDLE_ENDPOINT_RECORD_DIR and NODENAME, and brindle's binaries first on PATH.
    pub fn command_in(
        &self,
        what: &str,
        command: &[impl AsRef<std::ffi::OsStr>],
    ) -> anyhow::Result<std::process::Command> {
        let netns = self.netns_of(what)?;
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", netns]).args(command);
        cmd.env("BRINDLE_DATASTORE", &self.datastore);
        if let Some(node) = self.nodes.iter().find(|n| n.netns == netns) {
            cmd.env("BRINDLE_STATUS_SOCKET", node.status_socket());
            cmd.env("BRINDLE_ENDPOINT_RECORD_DIR", node.state_dir.join("endpoints"));
            cmd.env("NODENAME", &node.name);
        }
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", self.bin_dir.display()));
        Ok(cmd)
    }

    /// The namespace of a node, a pod, or `router`/`switch`, by name (or a node's index).
    pub fn netns_of(&self, what: &str) -> anyhow::Result<&str> {
        if let Some(node) = self.nodes.iter().enumerate().find(|(i, n)| n.name == what || i.to_string() == what) {
            return Ok(&node.1.netns);
        }
        if let Some(pod) = self.pods.iter().find(|p| p.name == what || p.key() == what) {
            return Ok(&pod.netns);
        }
        match what {
            "router" => Ok(&self.router),
            "switch" => Ok(&self.switch),
            _ => {
                let nodes: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                anyhow::bail!("no node, pod, router or switch named {what:?} in this lab (nodes: {})", nodes.join(", "))
            }
        }
    }
}
