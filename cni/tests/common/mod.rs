//! A node in a network namespace for the plugins' end-to-end tests: an uplink to a "world"
//! namespace with a default route (proxy ARP needs one, as on real nodes), pods as further
//! namespaces, a datastore (SQLite or etcd, started inside the node), and the plugins run the
//! way a container runtime runs them. Every name is unique; guards remove everything even
//! when a test fails. The test's thread joins the node's namespace, so the plugins it starts
//! see the node as their host.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use brindle_datastore::Client;
use brindle_datastore::resource::{AnyResource, parse_documents};
use brindle_datastore::testing::{Backend, TestStore};
use serde_json::{Value, json};

pub mod libcni;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs each listed test once per datastore, as `etcd::name` and `sqlite::name`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod etcd {
            $( #[test] fn $name() { super::$name(brindle_datastore::testing::Backend::Etcd) } )*
        }
        mod sqlite {
            $( #[test] fn $name() { super::$name(brindle_datastore::testing::Backend::Sqlite) } )*
        }
    };
}

/// A unique short tag (interface names are limited to 15 characters).
pub fn unique() -> String {
    format!("{:x}{:x}", std::process::id() % 0xfff, NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Runs a command and returns its output, failing the test if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's combined output, whatever its status.
pub fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// A network namespace, deleted on drop.
pub struct Netns {
    /// Its name under /var/run/netns.
    pub name: String,
}

impl Netns {
    /// Makes a namespace with its loopback up.
    pub fn new(tag: &str) -> Netns {
        let name = format!("cnit-{}-{tag}", unique());
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns { name }
    }

    /// Its path, as runtimes pass it in CNI_NETNS.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// A command run inside it.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `ip <args>` inside it.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// The node's uplink addresses.
pub const NODE_V4: &str = "10.250.0.2";
/// The world's end of the uplink (the node's default gateway).
pub const WORLD_V4: &str = "10.250.0.1";
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
        let netns = Netns::new("node");
        let world = Netns::new("world");
        let up = format!("up{}", unique());
        let down = format!("dn{}", unique());
        run(Command::new("ip").args([
            "link",
            "add",
            &up,
            "netns",
            &netns.name,
            "type",
            "veth",
            "peer",
            "name",
            &down,
            "netns",
            &world.name,
        ]));
        netns.ip(&["addr", "add", &format!("{NODE_V4}/24"), "dev", &up]);
        netns.ip(&["addr", "add", "fd00:250::2/64", "dev", &up, "nodad"]);
        netns.ip(&["link", "set", &up, "up"]);
        world.ip(&["addr", "add", &format!("{WORLD_V4}/24"), "dev", &down]);
        world.ip(&["addr", "add", "fd00:250::1/64", "dev", &down, "nodad"]);
        world.ip(&["link", "set", &down, "up"]);
        netns.ip(&["route", "add", "default", "via", WORLD_V4]);
        netns.ip(&["-6", "route", "add", "default", "via", "fd00:250::1"]);
        // What the agent does on a real node: forward between pods and the uplink.
        run(netns.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]));
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

    /// Fails the test if anything of a pod is left: veth, route, record, address, endpoint.
    pub fn assert_clean(&self) {
        assert!(!self.links().contains("brin"), "a veth is left: {}", self.links());
        assert!(!self.routes().contains("proto 98"), "a route is left: {}", self.routes());
        let records: Vec<_> =
            std::fs::read_dir(self.records.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(records.is_empty(), "records are left: {records:?}");
        assert_eq!(self.allocations(), 0, "addresses are left allocated");
        assert_eq!(self.endpoints(), 0, "endpoints are left");
    }

    /// Every link on the node.
    pub fn links(&self) -> String {
        run(Command::new("ip").args(["-o", "link", "show"]))
    }
}

/// Moves the calling thread into a namespace.
pub fn enter(path: &Path) {
    let file = File::open(path).unwrap();
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// A pod: a network namespace and the identity kubelet gives the runtime.
pub struct Pod {
    /// Its sandbox namespace.
    pub netns: Netns,
    /// The sandbox's container ID.
    pub container_id: String,
    /// Its Kubernetes namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The interface to create.
    pub ifname: String,
}

impl Pod {
    /// A new pod named `name` in namespace `default`.
    pub fn new(name: &str) -> Pod {
        let tag = unique();
        Pod {
            netns: Netns::new("pod"),
            container_id: format!("{tag}{}", "c".repeat(40)),
            namespace: "default".into(),
            name: format!("{name}-{tag}"),
            ifname: "eth0".into(),
        }
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

/// A plugin's exit status and its stdout.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status 0.
    pub ok: bool,
    /// The one JSON document on stdout.
    pub json: Value,
    /// Everything on stdout.
    pub stdout: String,
}

impl Outcome {
    /// The result, or the test fails with the error.
    pub fn result(self) -> Value {
        assert!(self.ok, "plugin failed: {}", self.stdout);
        self.json
    }

    /// The error code, or the test fails because it succeeded.
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "plugin succeeded unexpectedly: {}", self.stdout);
        self.json["code"].as_u64().unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }
}

/// CNI_PATH: our plugins, then the reference plugins.
pub fn cni_path() -> String {
    let ours = Path::new(env!("CARGO_BIN_EXE_brindle-ipam")).parent().unwrap().display().to_string();
    format!("{ours}:/usr/lib/cni")
}

/// The PATH plugins run with.
pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs a plugin binary as a runtime would.
pub fn exec(binary: &str, command: &str, conf: &Value, pod: &Pod) -> Outcome {
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
        pod.namespace, pod.name, pod.container_id
    );
    exec_env(
        binary,
        conf,
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", &pod.container_id),
            ("CNI_NETNS", &pod.netns.path().display().to_string()),
            ("CNI_IFNAME", &pod.ifname),
            ("CNI_PATH", &cni_path()),
            ("CNI_ARGS", &args),
        ],
    )
}

/// Runs a plugin binary with exactly these CNI variables and `conf` on stdin.
pub fn exec_env(binary: &str, conf: &Value, vars: &[(&str, &str)]) -> Outcome {
    exec_raw(binary, conf.to_string().as_bytes(), vars)
}

/// Runs a plugin binary with raw stdin.
pub fn exec_raw(binary: &str, stdin: &[u8], vars: &[(&str, &str)]) -> Outcome {
    let mut cmd = Command::new(binary);
    cmd.env_clear().env("PATH", PATH);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // A plugin that fails on its environment exits before it reads stdin.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let Output { status, stdout, stderr } = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        !stdout.contains("panicked") && !String::from_utf8_lossy(&stderr).contains("panicked"),
        "plugin panicked: {stdout} {}",
        String::from_utf8_lossy(&stderr)
    );
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout}"))
    };
    Outcome { ok: status.success(), json, stdout }
}
