//! brindlectl against both datastore backends, as an operator runs it: files of resources
//! created, read back in every format, replaced, labelled, patched and deleted; validation
//! errors that name the resource, field and problem; `ipam check` finding a planted leak and
//! `ipam release --from-report` giving it back.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use brindle_datastore::testing::{Backend, TestStore};

const RESOURCES: &str = "\
kind: IPPool
apiVersion: brindle.io/v1
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, vxlanMode: Always}
---
kind: BGPPeer
apiVersion: brindle.io/v1
metadata: {name: tor}
spec: {peerIP: 10.0.0.254, asNumber: 65001}
";

const POLICIES: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{ports: [{port: 5432}]}]
---
apiVersion: brindle.io/v1
kind: NetworkPolicy
metadata: {name: deny-ssh, namespace: x}
spec:
  order: 10
  ingress: [{action: Deny, protocol: TCP, source: {nets: [10.0.0.0/8], selector: role == 'ops'}, destination: {ports: [22]}}]
";

struct Ctl {
    store: TestStore,
    scratch: tempfile::TempDir,
}

impl Ctl {
    fn new(backend: Backend) -> Ctl {
        Ctl { store: TestStore::start(backend).unwrap(), scratch: tempfile::tempdir().unwrap() }
    }

    /// Runs brindlectl with the datastore in BRINDLE_DATASTORE and `stdin`.
    fn run_with(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_brindlectl"))
            .args(args)
            .args(["--config", "/nonexistent"])
            .env("BRINDLE_DATASTORE", self.store.selection())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, "")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "brindlectl {args:?} failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn file(&self, name: &str, content: &str) -> String {
        let path = self.scratch.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn round_trips(backend: Backend) {
    let ctl = Ctl::new(backend);
    let file = ctl.file("resources.yaml", RESOURCES);
    let created = ctl.ok(&["create", "-f", &file]);
    assert_eq!(created, "IPPool \"pods\" created\nBGPPeer \"tor\" created\n");
    let again = ctl.run(&["create", "-f", &file]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again).contains("IPPool \"pods\" already exists"), "{}", text(&again));

    // What get prints in YAML or JSON goes back in unchanged.
    for format in ["yaml", "json"] {
        let shown = ctl.ok(&["get", "ippools", "-o", format]);
        let back = ctl.run_with(&["apply", "-f", "-"], &shown);
        assert_eq!(String::from_utf8_lossy(&back.stdout), "IPPool \"pods\" unchanged\n", "{format}: {}", text(&back));
    }
    let table = ctl.ok(&["get", "ippool", "pods"]);
    assert!(
        table.lines().nth(1).unwrap().split_whitespace().eq([
            "pods",
            "10.244.0.0/16",
            "Never",
            "Always",
            "false",
            "false"
        ]),
        "{table}"
    );
    let peers = ctl.ok(&["get", "bgpp", "-o", "wide"]);
    assert!(peers.contains("10.0.0.254") && peers.contains("65001"), "{peers}");

    // apply changes, replace needs the resource to exist, label and patch edit in place.
    let changed = RESOURCES.replace("vxlanMode: Always", "vxlanMode: CrossSubnet");
    assert!(ctl.run_with(&["apply", "-f", "-"], &changed).status.success());
    assert!(ctl.ok(&["get", "ippool", "pods", "-o", "json"]).contains("\"CrossSubnet\""));
    let missing = ctl.run_with(&["replace", "-f", "-"], &RESOURCES.replace("name: tor", "name: nobody"));
    assert!(
        text(&missing).contains("BGPPeer \"nobody\"") && text(&missing).contains("not found"),
        "{}",
        text(&missing)
    );
    ctl.ok(&["label", "ippool", "pods", "team=net"]);
    let relabel = ctl.run(&["label", "ippool", "pods", "team=other"]);
    assert!(!relabel.status.success() && text(&relabel).contains("--overwrite"), "{}", text(&relabel));
    ctl.ok(&["patch", "ippool", "pods", "-p", r#"{"spec":{"natOutgoing":true}}"#]);
    let pool = ctl.ok(&["get", "ippool", "pods", "-o", "json"]);
    let pool: serde_json::Value = serde_json::from_str(&pool).unwrap();
    assert_eq!(
        (pool["metadata"]["labels"]["team"].as_str(), pool["spec"]["natOutgoing"].as_bool()),
        (Some("net"), Some(true))
    );
    let bad_patch = ctl.run(&["patch", "ippool", "pods", "-p", r#"{"spec":{"blockSize":99}}"#]);
    assert_eq!(bad_patch.status.code(), Some(1));
    assert!(text(&bad_patch).contains("IPPool \"pods\" is invalid: spec.blockSize"), "{}", text(&bad_patch));

    // Validation errors name the resource, the field and the problem; nothing is written.
    let overlapping =
        "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: other}\nspec: {cidr: 10.244.128.0/17}\n";
    let out = ctl.run_with(&["create", "-f", "-"], overlapping);
    assert!(
        text(&out).contains("IPPool \"other\" is invalid: spec.cidr \"10.244.128.0/17\": overlaps IPPool \"pods\""),
        "{}",
        text(&out)
    );
    let typo =
        "kind: IPPool\napiVersion: brindle.io/v1\nmetadata: {name: t}\nspec: {cidr: 10.9.0.0/16, natOutgoin: true}\n";
    let out = ctl.run_with(&["apply", "-f", "-"], typo);
    assert!(text(&out).contains("spec") && text(&out).contains("natOutgoin"), "{}", text(&out));
    assert!(!ctl.ok(&["get", "ippools"]).contains("other"));
    let unknown = ctl.run(&["get", "widgets"]);
    assert!(text(&unknown).contains("unknown kind \"widgets\""), "{}", text(&unknown));

    // Policies: Kubernetes' as kubectl takes them and brindle's, listed together; a file with a
    // bad policy is refused whole, naming each field.
    let policies = ctl.file("policies.yaml", POLICIES);
    assert_eq!(
        ctl.ok(&["apply", "-f", &policies]),
        "Namespace \"x\" created\nKubernetesNetworkPolicy \"x/db\" created\nNetworkPolicy \"x/deny-ssh\" created\n"
    );
    let listed = ctl.ok(&["get", "networkpolicies", "-A"]);
    assert!(listed.contains("networking.k8s.io/v1") && listed.contains("deny-ssh"), "{listed}");
    let kubernetes = ctl.ok(&["get", "netpol", "db", "-n", "x", "-o", "yaml"]);
    assert!(kubernetes.contains("kind: NetworkPolicy") && kubernetes.contains("podSelector"), "{kubernetes}");
    let bad = POLICIES.replace("action: Deny", "action: Reject");
    let out = ctl.run_with(&["apply", "-f", "-"], &bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("spec.ingress[0].action") && text(&out).contains("Reject"), "{}", text(&out));
    let bad = POLICIES
        .replace("name: db", "name: db2")
        .replace("port: 5432", "port: Not_A_Port")
        .replace("10.0.0.0/8", "10.0.0.1/8")
        .replace("role == 'ops'", "role === 'ops'");
    let out = ctl.run_with(&["apply", "-f", "-"], &bad);
    for field in [
        "spec.ingress[0].ports[0].port \"Not_A_Port\"",
        "spec.ingress[0].source.nets[0] \"10.0.0.1/8\"",
        "spec.ingress[0].source.selector \"role === 'ops'\"",
        "nothing was written",
    ] {
        assert!(text(&out).contains(field), "{field} in {}", text(&out));
    }
    assert!(!ctl.ok(&["get", "netpol", "-A"]).contains("db2"), "the valid part of a refused file is not written");
    ctl.ok(&["delete", "-f", &policies]);

    assert_eq!(ctl.ok(&["delete", "-f", &file]), "IPPool \"pods\" deleted\nBGPPeer \"tor\" deleted\n");
    let gone = ctl.run(&["delete", "ippool", "pods"]);
    assert!(text(&gone).contains("IPPool \"pods\"") && text(&gone).contains("not found"), "{}", text(&gone));
}

#[test]
fn resources_round_trip_on_sqlite() {
    round_trips(Backend::Sqlite);
}

#[test]
fn resources_round_trip_on_etcd() {
    round_trips(Backend::Etcd);
}

#[test]
fn resources_round_trip_on_kubernetes() {
    round_trips(Backend::Kubernetes);
}

/// Takes an address for a pod that never got (or lost) its endpoint: a leak.
fn plant_leak(ctl: &Ctl, container: &str) -> std::net::IpAddr {
    let selection = ctl.store.selection();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let client = brindle_datastore::Client::new(brindle_datastore::connect(&selection).await.unwrap());
        let request = brindle_datastore::ipam::AllocateRequest {
            holder: brindle_datastore::ipam::Allocation {
                handle: format!("k8s-pod-network.{container}"),
                network: Some("k8s-pod-network".into()),
                endpoint: true,
                node: "n1".into(),
                pod: Some("ghost".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ipv4: 1,
            ..Default::default()
        };
        brindle_datastore::ipam::Ipam::new(client).allocate(&request).await.unwrap()[0].ip
    })
}

/// Whether `ipam gc --apply` said it released an address.
fn releases_any(said: &str) -> bool {
    said.lines().any(|l| l.starts_with("released "))
}

#[test]
fn ipam_gc_and_release_from_report_free_a_leak_only_after_an_earlier_pass_saw_it() {
    let ctl = Ctl::new(Backend::Sqlite);
    ctl.ok(&["create", "-f", &ctl.file("pool.yaml", RESOURCES)]);
    let setup = "kind: Node\napiVersion: brindle.io/v1\nmetadata: {name: n1}\nspec: {}\n---\n\
                 kind: IPAMConfiguration\napiVersion: brindle.io/v1\nmetadata: {name: default}\n\
                 spec: {leakGracePeriod: 1ms}\n";
    ctl.ok(&["create", "-f", &ctl.file("setup.yaml", setup)]);
    let leaked = plant_leak(&ctl, "deadbeef");

    let early = ctl.scratch.path().join("early.json").display().to_string();
    let check = ctl.run(&["ipam", "check", "-o", &early]);
    assert_eq!(check.status.code(), Some(3), "{}", text(&check));
    let said = text(&check);
    assert!(said.contains(&leaked.to_string()) && said.contains("default/ghost"), "{said}");
    assert!(said.contains("1s after the first `ipam gc --apply` that sees it"), "{said}");
    let shown = ctl.ok(&["ipam", "show", "--ip", &leaked.to_string()]);
    assert!(shown.contains("is in use") && shown.contains("k8s-pod-network.deadbeef"), "{shown}");
    assert!(ctl.ok(&["ipam", "show", "--show-blocks"]).contains("n1"));

    // Nothing has seen the leak before: neither a report nor a pass may free it yet, and a
    // dry run records nothing.
    let released = ctl.ok(&["ipam", "release", "--from-report", &early]);
    assert!(released.starts_with("released 0 of 0 releasable leaks; 1 more were not releasable yet"), "{released}");
    for _ in 0..2 {
        assert!(ctl.ok(&["ipam", "gc"]).contains("a pass now would release 0 addresses"));
    }
    let first = ctl.ok(&["ipam", "gc", "--apply"]);
    assert!(!releases_any(&first), "{first}");
    assert!(ctl.ok(&["ipam", "gc"]).contains("a pass now would release 1 addresses"));

    let report = ctl.scratch.path().join("report.json").display().to_string();
    let check = ctl.run(&["ipam", "check", "-o", &report]);
    assert!(text(&check).contains("(1 releasable now)"), "{}", text(&check));
    assert!(ctl.ok(&["ipam", "release", "--from-report", &report]).starts_with("released 1 of 1"));
    assert!(ctl.ok(&["ipam", "show", "--ip", &leaked.to_string()]).contains("is free"));
    assert_eq!(ctl.run(&["ipam", "check"]).status.code(), Some(0));
    // A second release from the same report changes nothing and says why.
    let again = ctl.ok(&["ipam", "release", "--from-report", &report]);
    assert!(again.starts_with("released 0 of 1") && again.contains("released or taken by another handle"), "{again}");

    // The CronJob's way: passes with --apply alone.
    let second = plant_leak(&ctl, "cafe");
    assert!(!releases_any(&ctl.ok(&["ipam", "gc", "--apply"])));
    let pass = ctl.ok(&["ipam", "gc", "--apply"]);
    assert!(pass.contains(&format!("released {second} (handle k8s-pod-network.cafe")), "{pass}");
    assert_eq!(ctl.run(&["ipam", "check"]).status.code(), Some(0));
}

#[test]
fn an_unreachable_datastore_and_a_missing_agent_are_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_brindlectl"))
        .args(["--datastore", "etcd://127.0.0.1:1?timeout=1s", "get", "ippools"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).starts_with("brindlectl: "), "{}", text(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_brindlectl"))
        .args(["node", "status", "--socket", "/nonexistent/node.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("is the agent running on this node?"), "{}", text(&out));
    let usage = Command::new(env!("CARGO_BIN_EXE_brindlectl")).args(["get"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}
