//! Eight OS processes, each with its own datastore client, allocate 500 addresses each (100 on
//! the Kubernetes API, whose writes cost more), on one node and on eight nodes, on etcd, SQLite
//! and Kubernetes: no address is handed out twice, the blocks account for every address, and
//! releasing every handle leaves every block empty. On one node they race for its blocks, and
//! on the Kubernetes API also take turns holding the node's write lock, as CNI calls do.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use brindle_datastore::Client;
use brindle_datastore::ipam::Ipam;
use brindle_datastore::resource::{IpPool, Resource};
use brindle_datastore::testing::{Backend, TestStore};

const PROCESSES: usize = 8;
const PER_PROCESS: usize = 500;

async fn run(exe: &Path, selection: &str, jobs: Vec<Vec<String>>) -> Vec<(String, IpAddr)> {
    let mut children = Vec::new();
    for job in jobs {
        let child = tokio::process::Command::new(exe)
            .arg("ipam-worker")
            .arg("--datastore")
            .arg(selection)
            .args(job)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start worker");
        children.push(child);
    }
    let mut lines = Vec::new();
    for child in children {
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success(), "worker failed: {}", String::from_utf8_lossy(&out.stderr));
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let (handle, ip) = line.split_once(' ').expect("`handle ip` lines");
            lines.push((handle.to_owned(), ip.parse().unwrap()));
        }
    }
    lines
}

/// Where the processes allocate.
#[derive(Clone, Copy, PartialEq)]
enum Nodes {
    /// All on one node, racing for its blocks.
    OneRacing,
    /// All on one node, holding one write lock around each write of a block.
    OneLocked,
    /// Each on a node of its own.
    Own,
}

async fn many_processes(backend: Backend, nodes: Nodes) {
    let same_node = nodes != Nodes::Own;
    let per_process = if backend == Backend::Kubernetes { 100 } else { PER_PROCESS };
    let exe = Path::new(env!("CARGO_BIN_EXE_brindle-bench"));
    let server = TestStore::start(backend).unwrap();
    let selection = server.patient_selection();
    let client = Client::new(brindle_datastore::connect(&selection).await.unwrap());
    client.create(Resource::new("p", IpPool::new("10.40.0.0/16".parse().unwrap()))).await.unwrap();

    let locks = tempfile::tempdir().unwrap();
    let allocate = (0..PROCESSES)
        .map(|p| {
            let node = if same_node { "shared".to_string() } else { format!("node-{p}") };
            let args =
                ["allocate", "--node", &node, "--prefix", &format!("net.p{p}"), "--count", &per_process.to_string()];
            let mut args = args.map(String::from).to_vec();
            if nodes == Nodes::OneLocked {
                args.extend(["--write-lock".into(), locks.path().join("shared.lock").display().to_string()]);
            }
            args
        })
        .collect();
    // Updates and reads of single blocks.
    let block_requests = || match &server {
        TestStore::Kubernetes(api) => {
            let counts = api.request_counts().unwrap();
            let count = |verb: &str| counts.get(&(verb.to_owned(), "ipamblocks".to_owned())).copied().unwrap_or(0);
            (count("PUT"), count("GET"))
        }
        _ => (0, 0),
    };
    let before = block_requests();
    let granted = run(exe, &selection, allocate).await;
    assert_eq!(granted.len(), PROCESSES * per_process);
    if nodes == Nodes::OneLocked {
        // Each allocation is one update of a block or one claim; an update loses a race only
        // after a wait for the lock ran out. The block to update is mostly the lock's copy,
        // not read from the API server. (Racing, they made three or four updates and three
        // reads per allocation.)
        let after = block_requests();
        let (updates, reads, allocations) = (after.0 - before.0, after.1 - before.1, granted.len() as u64);
        assert!(updates * 10 <= allocations * 11, "{updates} block updates for {allocations} allocations");
        assert!(reads * 2 <= allocations, "{reads} block reads for {allocations} allocations");
    }
    let distinct: HashSet<IpAddr> = granted.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(distinct.len(), granted.len(), "an address was handed out twice");

    let ipam = Ipam::new(client.clone());
    let mut recorded: HashMap<IpAddr, String> = HashMap::new();
    for (block, _) in ipam.blocks().await.unwrap() {
        for (ip, holder) in block.allocations() {
            assert!(recorded.insert(ip, holder.handle.clone()).is_none());
        }
        if same_node {
            assert_eq!(block.owner.as_deref(), Some("shared"));
        }
    }
    let expected: HashMap<IpAddr, String> =
        granted.iter().map(|(h, ip)| (*ip, brindle_datastore::ipam::recorded_form(h).to_owned())).collect();
    assert_eq!(recorded, expected, "the blocks hold exactly what the processes were given");

    let release = (0..PROCESSES)
        .map(|p| {
            ["release", "--prefix", &format!("net.p{p}"), "--count", &per_process.to_string()]
                .map(String::from)
                .to_vec()
        })
        .collect();
    let released = run(exe, &selection, release).await;
    assert_eq!(released.len(), granted.len());
    let blocks = ipam.blocks().await.unwrap();
    assert!(!blocks.is_empty(), "the nodes keep their blocks");
    for (block, _) in blocks {
        assert!(block.is_empty(), "{} still holds {} addresses", block.cidr, block.in_use());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_one_node() {
    many_processes(Backend::Etcd, Nodes::OneRacing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_eight_nodes() {
    many_processes(Backend::Etcd, Nodes::Own).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_node() {
    many_processes(Backend::Sqlite, Nodes::OneRacing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_eight_nodes() {
    many_processes(Backend::Sqlite, Nodes::Own).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_one_node() {
    many_processes(Backend::Kubernetes, Nodes::OneRacing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_eight_nodes() {
    many_processes(Backend::Kubernetes, Nodes::Own).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_one_node_taking_turns_with_the_write_lock() {
    many_processes(Backend::Kubernetes, Nodes::OneLocked).await;
}
