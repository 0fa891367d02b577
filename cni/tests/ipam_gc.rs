//! IPAM garbage collection while pods come and go. Eight runtimes add and delete 32 pods over
//! and over; every ADD pauses for 2.5 s between taking its address and returning it to the
//! plugin, which writes the pod's WorkloadEndpoint only after that (a slow node, or a slow
//! IPAM). Meanwhile `brindlectl ipam gc --apply` runs every second, so every ADD in flight is
//! seen by two or three passes. With a grace period shorter than an ADD (try `1ms`) the test
//! fails: live pods lose their addresses. No address may ever be
//! held by two live pods, no live pod may lose its address, and an orphan planted at the start
//! must be freed once passes a grace period apart have seen it: garbage collection is really
//! acting, it just never acts on an ADD in flight.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use brindle_datastore::ipam::{AllocateRequest, Allocation, Ipam};
use brindle_datastore::resource::Resource;
use brindle_datastore::testing::Backend;
use common::{Node, Pod};
use serde_json::{Value, json};

per_backend!(churn_with_gc_every_second_never_costs_a_live_pod_its_address);

const PODS: usize = 32;
const RUNTIMES: usize = 8;
/// How long an ADD waits between taking its address and writing its endpoint: longer than
/// the time between two passes, so passes always see ADDs in flight.
const PAUSE: &str = "2.5";
/// Longer than any ADD here takes (the pause plus the work), shorter than the churn.
const GRACE: &str = "6s";
const CHURN: Duration = Duration::from_secs(14);

/// An IPAM plugin that takes longer: brindle-ipam, then a pause on ADD before the result goes
/// back.
fn slow_ipam(dir: &Path) -> PathBuf {
    let script = dir.join("slow-ipam");
    let ipam = Path::new(env!("CARGO_BIN_EXE_brindle-ipam"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nout=$({})\nstatus=$?\n[ \"$CNI_COMMAND\" = ADD ] && sleep {PAUSE}\nprintf '%s' \"$out\"\nexit $status\n",
            ipam.display()
        ),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).unwrap();
    script
}

/// brindlectl, built with the workspace beside the plugins.
fn brindlectl() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_brindle")).with_file_name("brindlectl");
    assert!(path.exists(), "{} is missing: build the workspace (cargo build --workspace)", path.display());
    path
}

/// The live pods, by address: what the runtimes believe each pod holds.
type Live = Mutex<HashMap<IpAddr, String>>;

/// One runtime: adds and deletes its pods in turn until `stop`.
fn runtime(conf: &Value, cni_path: &str, slots: usize, live: &Live, stop: &AtomicBool) -> Vec<String> {
    let plugin = Path::new(env!("CARGO_BIN_EXE_brindle"));
    let mut problems = Vec::new();
    let mut pods: Vec<Option<(Pod, Value, IpAddr)>> = (0..slots).map(|_| None).collect();
    let mut adds = 0;
    while !stop.load(Ordering::SeqCst) {
        for slot in &mut pods {
            match slot.take() {
                Some((pod, result, ip)) => {
                    live.lock().unwrap().remove(&ip);
                    let mut del = conf.clone();
                    del["prevResult"] = result;
                    let out = brindle_e2e::cni::exec(plugin, "DEL", &del, &pod.attachment, cni_path).unwrap();
                    assert!(out.ok, "DEL failed: {}{}", out.stdout, out.stderr);
                }
                None => {
                    let pod = Pod::new(&format!("churn{adds}"));
                    adds += 1;
                    let out = brindle_e2e::cni::exec(plugin, "ADD", conf, &pod.attachment, cni_path).unwrap();
                    assert!(out.ok, "ADD failed: {}{}", out.stdout, out.stderr);
                    let address = out.json["ips"][0]["address"].as_str().unwrap();
                    let ip: IpAddr = address.split('/').next().unwrap().parse().unwrap();
                    let handle = format!("k8s-pod-network.{}", pod.container_id);
                    if let Some(other) = live.lock().unwrap().insert(ip, handle.clone()) {
                        problems.push(format!("{ip} given to {handle} while {other} still has it"));
                    }
                    *slot = Some((pod, out.json, ip));
                }
            }
        }
    }
    // Leave nothing: delete what is still up.
    for (pod, result, ip) in pods.into_iter().flatten() {
        live.lock().unwrap().remove(&ip);
        let mut del = conf.clone();
        del["prevResult"] = result;
        let out = brindle_e2e::cni::exec(plugin, "DEL", &del, &pod.attachment, cni_path).unwrap();
        assert!(out.ok, "DEL failed: {}{}", out.stdout, out.stderr);
    }
    problems
}

/// Every live pod's address is held by its own handle. The runtimes wait while this reads, so
/// no pod comes or goes between the two reads.
fn check_live(tokio: &tokio::runtime::Runtime, ipam: &Ipam, live: &Live) -> Vec<String> {
    let live = live.lock().unwrap();
    let blocks = tokio.block_on(ipam.blocks()).unwrap();
    live.iter()
        .filter_map(|(ip, handle)| {
            let holder = blocks.iter().find(|(b, _)| b.cidr.contains(*ip)).and_then(|(b, _)| b.holder(*ip));
            match holder {
                Some(a) if a.is_held_by(handle) => None,
                Some(a) => Some(format!("live pod {handle} lost {ip} to {}", a.handle)),
                None => Some(format!("live pod {handle} lost {ip}: it is free")),
            }
        })
        .collect()
}

fn churn_with_gc_every_second_never_costs_a_live_pod_its_address(backend: Backend) {
    let node = Node::new(backend);
    // The node is registered, as its agent does: garbage collection frees everything of a node
    // that does not exist.
    let client = node.client();
    node.runtime
        .block_on(client.create(Resource::new(node.name.clone(), brindle_datastore::resource::Node::default())))
        .unwrap();
    node.apply(&format!(
        "kind: IPAMConfiguration\napiVersion: brindle.io/v1\nmetadata: {{name: default}}\n\
         spec: {{leakGracePeriod: {GRACE}, releaseCooldown: 0s}}\n"
    ));
    let plugins = node.scratch.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    slow_ipam(&plugins);
    let cni_path = format!("{}:{}", plugins.display(), common::cni_path());
    let mut conf = node.conf("1.0.0", false);
    conf["ipam"] = json!({"type": "slow-ipam", "assign_ipv4": "true", "assign_ipv6": "false"});

    let orphan_holder = Allocation {
        handle: "k8s-pod-network.orphan".into(),
        network: Some("k8s-pod-network".into()),
        endpoint: true,
        node: node.name.clone(),
        pod: Some("orphan".into()),
        namespace: Some("default".into()),
        ..Allocation::default()
    };
    let ipam = Ipam::new(node.client());
    let request = AllocateRequest { holder: orphan_holder, ipv4: 1, ..AllocateRequest::default() };
    let orphan = node.runtime.block_on(ipam.allocate(&request)).unwrap()[0].ip;

    let live = Live::default();
    let stop = AtomicBool::new(false);
    let selection = node.selection();
    let (problems, passes, gc_said) = std::thread::scope(|s| {
        let runtimes: Vec<_> =
            (0..RUNTIMES).map(|_| s.spawn(|| runtime(&conf, &cni_path, PODS / RUNTIMES, &live, &stop))).collect();
        let gc = s.spawn(|| {
            // The runtimes stop when this thread ends, also when it fails.
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _stop = Stop(&stop);
            let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let ipam = tokio.block_on(async {
                Ipam::new(brindle_datastore::Client::new(brindle_datastore::connect(&selection).await.unwrap()))
            });
            let (mut problems, mut passes, mut said) = (Vec::new(), 0, String::new());
            let started = Instant::now();
            while started.elapsed() < CHURN {
                let next = Instant::now() + Duration::from_secs(1);
                let out = Command::new(brindlectl())
                    .args(["--datastore", &selection, "--config", "/nonexistent", "ipam", "gc", "--apply"])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "ipam gc --apply: {}", String::from_utf8_lossy(&out.stderr));
                said += &String::from_utf8_lossy(&out.stdout);
                passes += 1;
                problems.extend(check_live(&tokio, &ipam, &live));
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            (problems, passes, said)
        });
        let (mut problems, passes, said) = gc.join().unwrap();
        for r in runtimes {
            problems.extend(r.join().unwrap());
        }
        (problems, passes, said)
    });

    assert!(problems.is_empty(), "after {passes} passes:\n{}", problems.join("\n"));
    assert!(passes >= 10, "only {passes} garbage-collection passes ran");
    // The orphan, and nothing else: every pod's address went back through its DEL.
    let released: Vec<&str> = gc_said.lines().filter(|l| l.starts_with("released ")).collect();
    assert_eq!(released.len(), 1, "{gc_said}");
    assert!(released[0].starts_with(&format!("released {orphan} (handle k8s-pod-network.orphan")), "{gc_said}");
    node.assert_clean();
}
