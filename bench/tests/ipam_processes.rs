//! Eight OS processes, each with its own datastore client, allocate 500 addresses each (100 on
//! the Kubernetes API, whose writes cost more), on one node and on eight nodes, on etcd, SQLite
//! and Kubernetes: no address is handed out twice, the blocks account for every address, and
//! releasing every handle leaves every block empty.

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

async fn many_processes(backend: Backend, same_node: bool) {
    let per_process = if backend == Backend::Kubernetes { 100 } else { PER_PROCESS };
    let exe = Path::new(env!("CARGO_BIN_EXE_brindle-bench"));
    let server = TestStore::start(backend).unwrap();
    let selection = server.patient_selection();
    let client = Client::new(brindle_datastore::connect(&selection).await.unwrap());
    client.create(Resource::new("p", IpPool::new("10.40.0.0/16".parse().unwrap()))).await.unwrap();

    let allocate = (0..PROCESSES)
        .map(|p| {
            let node = if same_node { "shared".to_string() } else { format!("node-{p}") };
            let args =
                ["allocate", "--node", &node, "--prefix", &format!("net.p{p}"), "--count", &per_process.to_string()];
            args.map(String::from).to_vec()
        })
        .collect();
    let granted = run(exe, &selection, allocate).await;
    assert_eq!(granted.len(), PROCESSES * per_process);
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
    many_processes(Backend::Etcd, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_eight_nodes() {
    many_processes(Backend::Etcd, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_node() {
    many_processes(Backend::Sqlite, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_eight_nodes() {
    many_processes(Backend::Sqlite, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_one_node() {
    many_processes(Backend::Kubernetes, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_eight_nodes() {
    many_processes(Backend::Kubernetes, false).await;
}
