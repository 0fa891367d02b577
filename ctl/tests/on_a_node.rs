//! brindlectl on a node of a running lab (three nodes, VXLAN, BGP mesh): `node status` shows
//! the agent's established peers, `get workloadendpoints -o wide` joins the CNI plugin's
//! records, and `diagnose` finds a clean path — then names the route that was deliberately
//! removed, with the route the kernel would use instead.

use std::path::Path;
use std::process::{Command, Output};

use brindle_e2e::lab::{self, Iptables, Mode, Options, Peering, Store, TestLab};

/// A lab taken down on drop, whatever happens in the test.
struct Lab(TestLab);

impl std::ops::Deref for Lab {
    type Target = TestLab;

    fn deref(&self) -> &TestLab {
        &self.0
    }
}

impl Lab {
    fn up() -> Lab {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_brindlectl")).parent().unwrap();
        let options = Options {
            nodes: 3,
            pods_per_node: 1,
            mode: Mode::Vxlan,
            peering: Peering::Mesh,
            datastore: Store::Sqlite,
            reflectors: 1,
            iptables: Iptables::Nft,
            ipv6: false,
        };
        let lab = Lab(TestLab::up("ctl", bin_dir, &options).unwrap());
        let matrix = lab::Matrix::settle(&lab.state, std::time::Duration::from_secs(30));
        assert!(matrix.complete(), "{}", matrix.render(&lab.state));
        lab
    }

    /// brindlectl on node `i`, as `brindle-lab exec` runs it.
    fn ctl(&self, i: usize, args: &[&str]) -> Output {
        let mut command = vec![env!("CARGO_BIN_EXE_brindlectl")];
        command.extend(args);
        command.extend(["--config", "/nonexistent"]);
        self.state.command_in(&i.to_string(), &command).unwrap().output().unwrap()
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn node_status_endpoints_and_diagnose_on_a_lab_node() {
    let lab = Lab::up();
    let status = lab.ctl(0, &["node", "status"]);
    let shown = text(&status);
    assert!(status.status.success(), "{shown}");
    assert!(shown.contains("is ready"), "{shown}");
    assert_eq!(shown.lines().filter(|l| l.contains("mesh") && l.contains("Established")).count(), 2, "{shown}");

    let weps = text(&lab.ctl(0, &["get", "workloadendpoints", "-o", "wide"]));
    let pod0 = weps.lines().find(|l| l.contains("pod-0-0")).unwrap_or_else(|| panic!("{weps}"));
    assert!(pod0.contains("1450") && pod0.contains(&lab.state.pods[0].netns), "node-0's record joins in: {pod0}");

    let clean = lab.ctl(0, &["diagnose", "pod-0-0", "pod-1-0"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    assert!(text(&clean).contains("FDB: ") && text(&clean).contains("No problem found"), "{}", text(&clean));

    // Remove node-0's route to node-1's block: diagnose names it and what is used instead.
    let routes = lab.state.nodes[0].netns.clone();
    let block_route =
        brindle_e2e::netns::run(Command::new("ip").args(["-n", &routes, "route", "show", "dev", "vxlan.brindle"]))
            .unwrap()
            .lines()
            .find(|l| l.contains(&format!("via {}", tunnel_of(&lab, 1))))
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .expect("a route to node-1's block");
    // The agent repairs it at its next pass (one comes when BGP converges, about a second
    // after the lab is up), which can land between the removal and diagnose: remove it again
    // until diagnose sees it gone.
    let mut attempts = 0;
    let (broken, shown) = loop {
        let _ = brindle_e2e::netns::run(Command::new("ip").args(["-n", &routes, "route", "del", &block_route]));
        let broken = lab.ctl(0, &["diagnose", "default/pod-0-0", &lab.state.pods[1].ip]);
        let shown = text(&broken);
        attempts += 1;
        if broken.status.code() != Some(0) || attempts == 5 {
            break (broken, shown);
        }
    };
    assert_eq!(broken.status.code(), Some(3), "{shown}");
    let problem = shown.lines().find(|l| l.contains('✗')).unwrap_or_else(|| panic!("{shown}"));
    assert!(problem.contains(&format!("route to {block_route} is missing")), "{problem}");
    assert!(problem.contains("0.0.0.0/0 via 10.250.0.1"), "the route the kernel uses instead: {problem}");
    assert!(shown.contains("1 problem(s) found"), "{shown}");
}

/// Node `i`'s VXLAN tunnel address, from the datastore.
fn tunnel_of(lab: &Lab, i: usize) -> String {
    let out = lab.ctl(0, &["get", "node", &lab.state.nodes[i].name, "-o", "json"]);
    let node: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    node["spec"]["ipv4VXLANTunnelAddr"].as_str().unwrap().to_owned()
}
