//! A node in a network namespace for the plugins' end-to-end tests: an uplink to a "world"
//! namespace with a default route (proxy ARP needs one, as on real nodes), pods as further
//! namespaces, a datastore (SQLite or etcd, started inside the node), and the plugins run the
//! way a container runtime runs them. Every name is unique; guards remove everything even
//! when a test fails. The test's thread joins the node's namespace, so the plugins it starts
//! see the node as their host.
#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::process::Command;

use brindle_datastore::Client;
use brindle_datastore::resource::{AnyResource, parse_documents};
use brindle_datastore::testing::{Backend, TestStore};
pub use brindle_e2e::cni::{Attachment, ConfList, Outcome};
use brindle_e2e::netns::{self, Netns, unique};
use serde_json::{Value, json};

/// Runs each listed test once per datastore, as `etcd::name`, `sqlite::name` and
/// `kubernetes::name`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod etcd {
            $( #[test] fn $name() { super::$name(brindle_datastore::testing::Backend::Etcd) } )*
        }
        mod sqlite {
            $( #[test] fn $name() { super::$name(brindle_datastore::testing::Backend::Sqlite) } )*
        }
        mod kubernetes {
            $( #[test] fn $name() { super::$name(brindle_datastore::testing::Backend::Kubernetes) } )*
        }
    };
}

/// Runs a command and returns its stdout, failing the test if it fails.
pub fn run(cmd: &mut Command) -> String {
    netns::run(cmd).unwrap()
}

/// A command's combined output, whatever its status.
pub fn output(cmd: &mut Command) -> (bool, String) {
    netns::output(cmd)
}

/// Moves the calling thread into a namespace.
pub fn enter(path: &Path) {
    netns::enter(path).unwrap()
}

/// A namespace for this suite.
fn namespace(tag: &str) -> Netns {
    Netns::new("cnit", tag).unwrap()
}

/// What the tests expect of a plugin's outcome.
pub trait Expect {
    /// The result, or the test fails with the error.
    fn result(self) -> Value;
    /// The error code, or the test fails because the plugin succeeded.
    fn code(&self) -> u64;
}

impl Expect for Outcome {
    fn result(self) -> Value {
        assert!(self.ok, "plugin failed: {} {}", self.stdout, self.stderr);
        self.json
    }

    fn code(&self) -> u64 {
        assert!(!self.ok, "plugin succeeded unexpectedly: {}", self.stdout);
        self.json["code"].as_u64().unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }
}

pub use brindle_e2e::netns::{NODE_V4, WORLD_V4};

/// The pod pool.
pub const POOL_V4: &str = "10.244.0.0/16";
/// The IPv6 pod pool.
pub const POOL_V6: &str = "fd00:244::/48";

/// A node with its datastore; the current thread is inside its namespace from `new` on.
pub struct Node {
    /// Where the plugins keep their endpoint records.
    pub records: tempfile::TempDir,
    /// Scratch space (configs, logs).
    pub scratch: tempfile::TempDir,
    /// The datastore (dropped before the namespaces).
    pub store: Option<TestStore>,
    /// The node's name in the datastore.
    pub name: String,
    /// A runtime for datastore calls made by the test.
    pub runtime: tokio::runtime::Runtime,
    /// The node's namespace.
    pub netns: Netns,
    /// The world beyond its uplink.
    pub world: Netns,
}

impl Node {
    /// Builds the node, enters it, starts the datastore and creates the IPv4 and IPv6 pools.
    pub fn new(backend: Backend) -> Node {
        let brindle_e2e::netns::UplinkedNode { node: netns, world } =
            brindle_e2e::netns::UplinkedNode::new("cnit").unwrap();
        enter(&netns.path());
        let store = TestStore::start(backend).expect("start the datastore");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let node = Node {
            records: tempfile::tempdir().unwrap(),
            scratch: tempfile::tempdir().unwrap(),
            store: Some(store),
            name: format!("node-{}", unique()),
            runtime,
            netns,
            world,
        };
        node.apply(&format!(
            "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {{name: pods-v4}}\nspec: {{cidr: {POOL_V4}}}\n---\n\
             kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {{name: pods-v6}}\nspec: {{cidr: \"{POOL_V6}\"}}\n"
        ));
        node
    }

    /// The datastore selection.
    pub fn selection(&self) -> String {
        self.store.as_ref().expect("store running").selection()
    }

    /// A datastore client (only usable inside `runtime`).
    pub fn client(&self) -> Client {
        let selection = self.selection();
        self.runtime.block_on(async { Client::new(brindle_datastore::connect(&selection).await.unwrap()) })
    }

    /// Creates resources from YAML.
    pub fn apply(&self, yaml: &str) {
        let client = self.client();
        self.runtime.block_on(async {
            for r in parse_documents(yaml).unwrap() {
                match r {
                    AnyResource::IpPool(p) => drop(client.create(p).await.unwrap()),
                    AnyResource::IpamConfiguration(c) => drop(client.create(c).await.unwrap()),
                    other => panic!("apply: unexpected {other:?}"),
                }
            }
        });
    }

    /// A network config for the `brindle` plugin with `brindle-ipam`.
    pub fn conf(&self, version: &str, ipv6: bool) -> Value {
        json!({
            "cniVersion": version,
            "name": "k8s-pod-network",
            "type": "brindle",
            "mtu": 1400,
            "datastore": self.selection(),
            "nodename": self.name,
            "endpoint_record_dir": self.records.path(),
            "log_level": "debug",
            "log_file_path": self.scratch.path().join("cni.log"),
            "ipam": {"type": "brindle-ipam", "assign_ipv4": "true", "assign_ipv6": if ipv6 { "true" } else { "false" }},
        })
    }

    /// Runs the `brindle` plugin.
    pub fn brindle(&self, command: &str, conf: &Value, pod: &Pod) -> Outcome {
        exec(env!("CARGO_BIN_EXE_brindle"), command, conf, pod)
    }

    /// The node's pod-facing routes (proto 98 is brindle's).
    pub fn routes(&self) -> String {
        run(Command::new("ip").args(["route", "show"]))
    }

    /// How many addresses IPAM has given out.
    pub fn allocations(&self) -> usize {
        let ipam = brindle_datastore::ipam::Ipam::new(self.client());
        self.runtime.block_on(ipam.blocks()).unwrap().iter().map(|(b, _)| b.in_use()).sum()
    }

    /// How many WorkloadEndpoints exist.
    pub fn endpoints(&self) -> usize {
        let client = self.client();
        self.runtime.block_on(client.list::<brindle_datastore::resource::WorkloadEndpoint>()).unwrap().0.len()
    }

    /// The files of the record directory that are pods' endpoint records (the lock file of the
    /// host's IPAM writes stays).
    pub fn endpoint_records(&self) -> Vec<std::ffi::OsString> {
        let files = std::fs::read_dir(self.records.path()).unwrap().flatten().map(|e| e.file_name());
        files.filter(|name| name != brindle_cni::ipam::IPAM_LOCK_FILE).collect()
    }

    /// Fails the test if anything of a pod is left: veth, route, record, address, endpoint.
    pub fn assert_clean(&self) {
        assert!(!self.links().contains("brin"), "a veth is left: {}", self.links());
        assert!(!self.routes().contains("proto 98"), "a route is left: {}", self.routes());
        let records = self.endpoint_records();
        assert!(records.is_empty(), "records are left: {records:?}");
        assert_eq!(self.allocations(), 0, "addresses are left allocated");
        assert_eq!(self.endpoints(), 0, "endpoints are left");
    }

    /// Every link on the node.
    pub fn links(&self) -> String {
        run(Command::new("ip").args(["-o", "link", "show"]))
    }

    /// How many host veths of pods the node has.
    pub fn host_veths(&self) -> usize {
        self.links().lines().filter(|l| l.split(": ").nth(1).is_some_and(|name| name.starts_with("brin"))).count()
    }
}

/// A pod: a network namespace and the identity kubelet gives the runtime.
pub struct Pod {
    /// Its sandbox namespace.
    pub netns: Netns,
    /// How the runtime attaches it.
    pub attachment: Attachment,
    /// The sandbox's container ID.
    pub container_id: String,
}

impl Pod {
    /// A new pod named `name` in namespace `default`.
    pub fn new(name: &str) -> Pod {
        let tag = unique();
        let netns = namespace("pod");
        // 64 hex digits, as runtimes make them; the tag makes the first 16 (what a block
        // records) unique.
        let container_id = format!("{tag}{}", "c".repeat(64 - tag.len()));
        let attachment = Attachment {
            container_id: container_id.clone(),
            netns: netns.path(),
            ifname: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: format!("{name}-{tag}"),
        };
        Pod { netns, attachment, container_id }
    }

    /// Runs a program inside the pod.
    pub fn exec(&self, program: &str, args: &[&str]) -> (bool, String) {
        output(self.netns.command(program).args(args))
    }

    /// Whether one ping to `ip` is answered.
    pub fn ping(&self, ip: &str) -> bool {
        self.exec("ping", &["-c", "1", "-W", "2", ip]).0
    }
}

/// CNI_PATH: our plugins, then the reference plugins.
pub fn cni_path() -> String {
    let ours = Path::new(env!("CARGO_BIN_EXE_brindle-ipam")).parent().unwrap().display().to_string();
    format!("{ours}:/usr/lib/cni")
}

fn checked(outcome: Outcome) -> Outcome {
    assert!(
        !outcome.stdout.contains("panicked") && !outcome.stderr.contains("panicked"),
        "plugin panicked: {} {}",
        outcome.stdout,
        outcome.stderr
    );
    outcome
}

/// Runs a plugin binary as a runtime would.
pub fn exec(binary: &str, command: &str, conf: &Value, pod: &Pod) -> Outcome {
    checked(brindle_e2e::cni::exec(Path::new(binary), command, conf, &pod.attachment, &cni_path()).unwrap())
}

/// Runs a plugin binary with exactly these CNI variables and `conf` on stdin.
pub fn exec_env(binary: &str, conf: &Value, vars: &[(&str, &str)]) -> Outcome {
    exec_raw(binary, conf.to_string().as_bytes(), vars)
}

/// Runs a plugin binary with raw stdin.
pub fn exec_raw(binary: &str, stdin: &[u8], vars: &[(&str, &str)]) -> Outcome {
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    checked(brindle_e2e::cni::exec_raw(Path::new(binary), stdin, &vars).unwrap())
}
