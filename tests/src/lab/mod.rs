//! `brindle-lab`: a whole brindle cluster in network namespaces on one machine. Nodes are
//! namespaces on an underlay switch (with a router between subnets), each running the real
//! `brindle-node`; pods are namespaces wired by the real CNI plugin, called the way a container
//! runtime calls it. The lab outlives the command that built it: its state file lists every
//! namespace, process and file it made, and `down` removes exactly those.

mod build;
mod kube_pods;
pub mod pods;
mod progress;
mod report;
mod state;
mod topology;

use std::path::Path;

pub use build::{BINARIES, apply, up, with_client, with_kubernetes_client};
pub use report::{Matrix, agent_status, established_sessions, render_status};
pub use state::{DEFAULT_DIR, LabNode, LabPod, LabState, lab_dir};
pub use topology::{Iptables, MAX_NODES, Mode, Options, POOL_CIDR, POOL_V6_CIDR, Peering, Store, cli_name};

use crate::netns::{Netns, enter};
use crate::process::terminate;

/// Runs `work` on a thread inside namespace `netns` (sockets it opens live there).
pub fn in_netns<T: Send>(netns: &str, work: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = Path::new("/var/run/netns").join(netns);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(&path)?;
                Ok(work())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in {netns} panicked"))?
    })
}

/// A lab for a test: built in a directory of its own, taken down on drop whatever happens.
pub struct TestLab {
    /// The lab.
    pub state: LabState,
    parent: tempfile::TempDir,
}

impl TestLab {
    /// Builds a lab named `prefix` and a unique tag, with the binaries in `bin_dir`.
    pub fn up(prefix: &str, bin_dir: &Path, options: &Options) -> anyhow::Result<TestLab> {
        let parent = tempfile::tempdir()?;
        let name = format!("{prefix}{}", crate::netns::unique());
        let state = up(&name, &lab_dir(parent.path(), &name), bin_dir, options)?;
        Ok(TestLab { state, parent })
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        teardown(&self.state, &lab_dir(self.parent.path(), &self.state.name));
    }
}

/// What `down` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Processes stopped.
    pub processes: usize,
    /// Namespaces deleted.
    pub namespaces: usize,
}

/// Stops the lab's processes, deletes its namespaces and its directory. Every step runs even
/// when one before it fails; what was already gone is skipped.
pub fn teardown(state: &LabState, dir: &Path) -> Removed {
    let mut removed = Removed::default();
    for pid in state.pods.iter().filter_map(|p| p.server_pid) {
        removed.processes += usize::from(terminate(pid, "brindle-lab"));
    }
    for node in &state.nodes {
        removed.processes += usize::from(terminate(node.agent_pid, "brindle-node"));
    }
    if let Some(pid) = state.controllers_pid {
        removed.processes += usize::from(terminate(pid, "brindle-controllers"));
    }
    if let Some(pid) = state.apiserver_pid {
        removed.processes += usize::from(terminate(pid, "kube-apiserver"));
    }
    for pid in [state.etcd_pid, state.apiserver_etcd_pid].into_iter().flatten() {
        removed.processes += usize::from(terminate(pid, "etcd"));
    }
    let namespaces = state
        .pods
        .iter()
        .map(|p| p.netns.as_str())
        .chain(state.nodes.iter().map(|n| n.netns.as_str()))
        .chain([state.router.as_str(), state.switch.as_str()])
        .filter(|name| !name.is_empty());
    for name in namespaces {
        if Path::new("/var/run/netns").join(name).exists() {
            Netns::remove(name);
            removed.namespaces += 1;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    removed
}
