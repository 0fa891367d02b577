//! `brindle-lab` as a newcomer runs it: `up` builds a cluster where every pod reaches every
//! other, `status`, `ping` and `exec` work on it, and `down` leaves nothing behind: no
//! namespace, no process, no file. A failed `up` leaves nothing either.

use std::path::PathBuf;
use std::process::{Command, Output};

use brindle_e2e::lab::LabState;
use brindle_e2e::netns::unique;
use brindle_e2e::process::is_running;

/// A lab directory and name unique to this test; whatever is left is taken down on drop.
struct Lab {
    name: String,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        Lab { name: format!("bl{}", unique()), dir: tempfile::tempdir().unwrap() }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_brindle-lab"))
            .args(["--name", &self.name, "--dir"])
            .arg(self.dir.path())
            .args(args)
            .output()
            .unwrap()
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }

    fn namespaces(&self) -> Vec<String> {
        let listing = std::fs::read_dir("/var/run/netns").map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
        listing
            .into_iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{}-", self.name)))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.state_dir().join("state.json").exists() {
            let _ = self.run(&["down"]);
        }
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `up` with `args`, every check a newcomer would make, then `down` and nothing left.
fn up_explore_down(args: &[&str], nodes: usize, pods: usize) {
    let lab = Lab::new();
    let out = lab.run(&[&["up"], args].concat());
    assert!(out.status.success(), "up failed:\n{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains(&format!("all {} pod pairs reach each other", pods * (pods - 1))), "{shown}");
    assert!(shown.contains("[6/6]"), "progress is shown: {shown}");

    let state = LabState::load(&lab.state_dir()).unwrap();
    assert_eq!((state.nodes.len(), state.pods.len()), (nodes, pods));
    assert!(state.pods.iter().all(|p| p.ipv6.is_some() == args.contains(&"--ipv6")), "{:?}", state.pods);
    assert!(state.nodes.iter().all(|n| is_running(n.agent_pid, "brindle-node")));

    let status = lab.run(&["status"]);
    let shown = text(&status);
    assert!(status.status.success(), "{shown}");
    assert_eq!(shown.matches("ready (pid").count(), nodes, "{shown}");
    assert!(!shown.contains("Idle") && !shown.contains("Active"), "every BGP session is established: {shown}");

    let ping = lab.run(&["ping"]);
    assert!(ping.status.success(), "{}", text(&ping));
    // In a dual-stack lab every pod also reaches every other at its IPv6 address.
    for from in &state.pods {
        for to in state.pods.iter().filter(|to| to.name != from.name) {
            let v6 = to.ipv6.as_deref().unwrap_or_default();
            if !v6.is_empty() {
                assert!(brindle_e2e::netns::ping(&from.netns, v6), "{} cannot reach {} at {v6}", from.name, to.name);
            }
        }
    }
    if args.contains(&"kubernetes") {
        // Every pod is a Kubernetes Pod on its node.
        let listed = state.kubectl(&["get", "pods", "-A", "-o", "jsonpath={.items[*].spec.nodeName}"], None).unwrap();
        let mut on: Vec<&str> = listed.split_whitespace().collect();
        on.sort();
        let mut expected: Vec<&str> = state.pods.iter().map(|p| state.nodes[p.node].name.as_str()).collect();
        expected.sort();
        assert_eq!(on, expected);
    }

    // exec runs in the node's namespace with the lab's datastore in the environment.
    let routes = lab.run(&["exec", "node-1", "--", "ip", "route"]);
    assert!(text(&routes).contains("proto 98"), "{}", text(&routes));
    if args.iter().any(|a| a.starts_with("ipip")) {
        assert!(text(&routes).contains("dev tunl0"), "no IP-in-IP route: {}", text(&routes));
    }
    let env = lab.run(&["exec", "node-0", "--", "printenv", "BRINDLE_DATASTORE"]);
    assert_eq!(String::from_utf8_lossy(&env.stdout).trim(), state.datastore);
    let failing = lab.run(&["exec", "node-0", "--", "false"]);
    assert_eq!(failing.status.code(), Some(1), "exec passes the command's exit code on");

    // A second lab of the same name is refused, and the first one is untouched by that.
    let again = lab.run(&["up"]);
    assert!(!again.status.success() && text(&again).contains("take it down first"), "{}", text(&again));
    assert!(lab.state_dir().join("state.json").exists());

    let down = lab.run(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(lab.namespaces(), Vec::<String>::new(), "namespaces left behind");
    for node in &state.nodes {
        assert!(!is_running(node.agent_pid, "brindle-node"), "{}'s agent still runs", node.name);
    }
    if let Some(pid) = state.etcd_pid {
        assert!(!is_running(pid, "etcd"), "etcd still runs");
    }
    if let Some(pid) = state.apiserver_pid {
        assert!(!is_running(pid, "kube-apiserver"), "kube-apiserver still runs");
    }
    assert!(!lab.state_dir().exists(), "the lab's directory is left behind");
    let status = lab.run(&["status"]);
    assert!(!status.status.success() && text(&status).contains("no lab is up"), "{}", text(&status));
}

#[test]
fn the_default_lab_comes_up_reaches_everything_and_goes_away_without_a_trace() {
    up_explore_down(&[], 3, 6);
}

#[test]
fn a_cross_subnet_lab_with_a_route_reflector_on_etcd_does_too() {
    up_explore_down(
        &[
            "--nodes",
            "4",
            "--pods-per-node",
            "1",
            "--mode",
            "vxlan-crosssubnet",
            "--peering",
            "rr",
            "--datastore",
            "etcd",
        ],
        4,
        4,
    );
}

#[test]
fn a_dual_stack_lab_with_a_route_reflector_does_too_at_both_families() {
    up_explore_down(&["--pods-per-node", "1", "--mode", "none", "--peering", "rr", "--ipv6"], 3, 3);
}

#[test]
fn a_dual_stack_cross_subnet_vxlan_lab_does_too_at_both_families() {
    up_explore_down(&["--pods-per-node", "1", "--mode", "vxlan-crosssubnet", "--ipv6"], 3, 3);
}

/// In Debian's kernel under qemu where this one has no ipip module.
#[test]
fn an_ip_in_ip_cross_subnet_lab_does_too() {
    if !brindle_e2e::vm::here_or_in_a_vm(&["ipip"]) {
        return;
    }
    up_explore_down(&["--pods-per-node", "1", "--mode", "ipip-crosssubnet"], 3, 3);
}

#[test]
fn a_lab_on_the_kubernetes_datastore_does_too() {
    up_explore_down(&["--pods-per-node", "1", "--datastore", "kubernetes"], 3, 3);
}

#[test]
fn a_failed_up_leaves_nothing_behind() {
    let lab = Lab::new();
    let missing = lab.run(&["up", "--bin-dir", "/nonexistent"]);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("/nonexistent/brindle-node is missing"), "{}", text(&missing));
    assert!(!lab.state_dir().exists());

    // A failure in the middle of the build: the agents cannot be started from a directory
    // holding stand-ins that exit at once.
    let fake = tempfile::tempdir().unwrap();
    for binary in brindle_e2e::lab::BINARIES {
        let path = fake.path().join(binary);
        std::fs::write(&path, "#!/bin/sh\nexit 1\n").unwrap();
        Command::new("chmod").arg("755").arg(&path).status().unwrap();
    }
    let broken = lab.run(&["up", "--nodes", "2", "--bin-dir", &fake.path().display().to_string()]);
    assert!(!broken.status.success());
    assert!(text(&broken).contains("brindle-node on node-0 exited"), "{}", text(&broken));
    assert_eq!(lab.namespaces(), Vec::<String>::new(), "namespaces left behind");
    assert!(!lab.state_dir().exists());
}

#[test]
fn a_datastore_outage_makes_the_agents_unready_and_their_pods_keep_talking() {
    let lab = Lab::new();
    let up = lab.run(&["up", "--nodes", "2", "--pods-per-node", "1", "--datastore", "etcd"]);
    assert!(up.status.success(), "{}", text(&up));
    let state = LabState::load(&lab.state_dir()).unwrap();
    let etcd = nix::unistd::Pid::from_raw(state.etcd_pid.expect("an etcd lab has etcd") as i32);
    assert!(is_running(etcd.as_raw() as u32, "etcd"));
    let node = &state.nodes[0];
    let readiness =
        || brindle_e2e::netns::http_get(&PathBuf::from("/var/run/netns").join(&node.netns), 9099, "/readiness");
    // Whatever happens, etcd runs again before the lab is taken down.
    struct Thaw(nix::unistd::Pid);
    impl Drop for Thaw {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
        }
    }
    let _thaw = Thaw(etcd);
    let freeze = |frozen: bool| {
        let signal = if frozen { nix::sys::signal::Signal::SIGSTOP } else { nix::sys::signal::Signal::SIGCONT };
        nix::sys::signal::kill(etcd, signal).unwrap();
    };
    let wait = |what: &str, check: &mut dyn FnMut() -> bool| {
        brindle_e2e::wait::wait_for(what, std::time::Duration::from_secs(60), check).unwrap();
    };

    freeze(true);
    wait("node-0 to report the outage", &mut || readiness().contains("the datastore is unreachable since"));
    assert!(readiness().starts_with("HTTP/1.0 503"), "{}", readiness());
    let status = lab.run(&["exec", "node-0", "--", "brindlectl", "node", "status"]);
    assert!(text(&status).contains("not ready: the datastore is unreachable since"), "{}", text(&status));
    let ping = lab.run(&["ping"]);
    assert!(ping.status.success(), "pods stop talking when the datastore is away: {}", text(&ping));

    freeze(false);
    wait("node-0 to be ready again", &mut || readiness().starts_with("HTTP/1.0 200"));

    // A later outage is retried at once: the wait between attempts started over.
    let logged = std::fs::read_to_string(&node.log).unwrap().len();
    freeze(true);
    wait("node-0 to report the second outage", &mut || readiness().contains("the datastore is unreachable since"));
    freeze(false);
    let log = std::fs::read_to_string(&node.log).unwrap();
    let retry = log[logged..].lines().find(|l| l.contains("listing again in")).unwrap_or_default().to_owned();
    assert!(retry.contains("listing again in 200ms"), "{retry}");
    wait("node-0 to be ready after the second outage", &mut || readiness().starts_with("HTTP/1.0 200"));
}

/// Runs `args` on `lab`, asserting success; returns stdout.
fn ok(lab: &Lab, args: &[&str]) -> String {
    let out = lab.run(args);
    assert!(out.status.success(), "{args:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `probe --json` on `port`: from pod, to pod, answered.
fn probe(lab: &Lab, port: &str) -> serde_json::Value {
    let json = ok(lab, &["probe", "--port", port, "--json"]);
    let probe: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(probe["port"], port);
    probe["results"].clone()
}

#[test]
fn pods_come_and_go_with_namespaces_labels_and_servers_and_probe_says_who_answers() {
    let lab = Lab::new();
    ok(&lab, &["up", "--nodes", "2", "--pods-per-node", "0"]);
    ok(&lab, &["pod", "add", "x/a", "--node", "0", "--labels", "app=a,team=blue", "--serve", "tcp:80,udp:81"]);
    ok(&lab, &["pod", "add", "y/b", "--node", "node-1", "--serve", "tcp:80", "--service-account", "robot"]);
    ok(&lab, &["pod", "add", "c", "--node", "1"]);
    let again = lab.run(&["pod", "add", "x/a", "--node", "1"]);
    assert!(!again.status.success() && text(&again).contains("exists"), "{}", text(&again));

    // Only pods with a server on the port answer, across nodes and on the same node.
    let tcp = probe(&lab, "tcp:80");
    for (from, to, answered) in [
        ("x/a", "y/b", true),
        ("y/b", "x/a", true),
        ("default/c", "x/a", true),
        ("default/c", "y/b", true),
        ("x/a", "default/c", false),
    ] {
        assert_eq!(tcp[from][to], answered, "{from} -> {to} on tcp:80: {tcp}");
    }
    let udp = probe(&lab, "udp:81");
    assert_eq!(udp["y/b"]["x/a"], true, "{udp}");
    assert_eq!(udp["x/a"]["y/b"], false, "{udp}");
    assert_eq!(probe(&lab, "tcp:81")["default/c"]["x/a"], false, "nothing listens on tcp:81");

    // The labels are on the pod's WorkloadEndpoint, where policy selectors will read them.
    let endpoints = ok(&lab, &["exec", "node-0", "--", "brindlectl", "get", "workloadendpoints", "-A", "-o", "json"]);
    let endpoints: serde_json::Value = serde_json::from_str(&endpoints).unwrap();
    let items = endpoints.as_array().or_else(|| endpoints["items"].as_array()).cloned().unwrap_or_default();
    let of = |pod: &str| items.iter().find(|e| e["spec"]["pod"] == pod).cloned().unwrap_or_default();
    assert_eq!(of("a")["metadata"]["labels"]["team"], "blue", "{endpoints}");
    assert_eq!(of("b")["spec"]["serviceAccountName"], "robot", "{endpoints}");

    let state = LabState::load(&lab.state_dir()).unwrap();
    let server = state.pods.iter().find(|p| p.key() == "x/a").and_then(|p| p.server_pid).unwrap();
    ok(&lab, &["pod", "del", "x/a"]);
    assert!(!is_running(server, "brindle-lab"), "the pod's server is stopped with it");
    let tcp = probe(&lab, "tcp:80");
    assert!(tcp.get("x/a").is_none() && tcp["default/c"].get("x/a").is_none(), "{tcp}");
    assert!(!lab.namespaces().iter().any(|n| n.ends_with("-p0")), "{:?}", lab.namespaces());

    let last_server = state.pods.iter().find(|p| p.key() == "y/b").and_then(|p| p.server_pid).unwrap();
    ok(&lab, &["down"]);
    assert!(!is_running(last_server, "brindle-lab"), "down stops the servers");
    assert_eq!(lab.namespaces(), Vec::<String>::new());
}
