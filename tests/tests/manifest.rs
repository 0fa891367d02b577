//! manifests/brindle.yaml is what `kubectl apply -f` gets: it validates against Kubernetes'
//! OpenAPI schema (strictly: unknown fields are errors) for an old and a new release; it holds
//! the CustomResourceDefinitions brindle defines; a real API server takes it, and the agent,
//! the CNI plugin and IPAM garbage collection do their work with exactly its roles; its
//! install-cni step installs the plugins and a conflist the plugin reads, with the datastore
//! as the host reaches it; the Dockerfile puts every program the manifest runs into the image
//! it names.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn manifest() -> String {
    std::fs::read_to_string(repo().join("manifests/brindle.yaml")).unwrap()
}

/// kubernetes-validate's verdict on `file` for Kubernetes `version`.
fn validate(file: &Path, version: &str) -> (bool, String) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", version])
        .arg(file)
        .output()
        .expect("kubernetes-validate is missing: scripts/install-deps.sh installs it");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_manifest_validates_against_the_kubernetes_schema() {
    let file = repo().join("manifests/brindle.yaml");
    for version in ["1.29", "1.37"] {
        let (ok, said) = validate(&file, version);
        assert!(ok, "Kubernetes {version}: {said}");
    }
    // The check has teeth: a wrong type and an unknown field are both rejected.
    let scratch = tempfile::tempdir().unwrap();
    for (from, to) in [("hostNetwork: true", "hostNetwork: \"yes\""), ("maxUnavailable: 1", "maxUnavailabel: 1")] {
        assert!(manifest().contains(from));
        let broken = scratch.path().join("broken.yaml");
        std::fs::write(&broken, manifest().replacen(from, to, 1)).unwrap();
        let (ok, said) = validate(&broken, "1.37");
        assert!(!ok, "{to} should not validate: {said}");
    }
}

/// The manifest's documents as JSON values.
fn documents() -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(&manifest())
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn install_cni_installs_the_plugins_and_a_conflist_the_plugin_reads() {
    let config = documents().into_iter().find(|d| d["kind"] == "ConfigMap").expect("the ConfigMap");
    let template = config["data"]["cni_network_config"].as_str().unwrap().to_owned();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_brindle-lab")).parent().unwrap();
    let host = tempfile::tempdir().unwrap();
    // etcd's TLS files as the agent's container has them mounted.
    let tls = tempfile::tempdir().unwrap();
    std::fs::write(tls.path().join("etcd-ca"), "CA PEM").unwrap();
    let datastore = format!("etcd://10.0.0.10:2379?cacert={}/etcd-ca&timeout=5s", tls.path().display());
    let run_with = |datastore: &str| {
        Command::new(repo().join("manifests/install-cni.sh"))
            .env("BRINDLE_BIN_DIR", bin_dir)
            .env("HOST_CNI_BIN_DIR", host.path().join("bin"))
            .env("HOST_CNI_NET_DIR", host.path().join("net.d"))
            .env("BRINDLE_ETCD_TLS_DIR", tls.path())
            .env("CNI_NETWORK_CONFIG", &template)
            .env("KUBERNETES_NODE_NAME", "node-a")
            .env("BRINDLE_DATASTORE", datastore)
            .env("CNI_MTU", "0")
            .output()
            .unwrap()
    };
    let run = || run_with(&datastore);
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    for plugin in ["brindle", "brindle-ipam"] {
        assert_eq!(
            std::fs::read(host.path().join("bin").join(plugin)).unwrap(),
            std::fs::read(bin_dir.join(plugin)).unwrap(),
            "{plugin} copied as built"
        );
    }
    let conflist = std::fs::read_to_string(host.path().join("net.d/10-brindle.conflist")).unwrap();
    let conflist: serde_json::Value = serde_json::from_str(&conflist).unwrap_or_else(|e| panic!("{e}: {conflist}"));
    let brindle = &conflist["plugins"][0];
    assert_eq!(brindle["type"], "brindle");
    // The plugin runs on the host: the TLS files are copied beside the conflist and named there.
    assert_eq!(brindle["datastore"], "etcd://10.0.0.10:2379?cacert=/etc/cni/net.d/brindle-tls/etcd-ca&timeout=5s");
    assert_eq!(std::fs::read_to_string(host.path().join("net.d/brindle-tls/etcd-ca")).unwrap(), "CA PEM");
    assert_eq!(brindle["nodename"], "node-a");
    assert_eq!(brindle["mtu"], 0);
    // The plugin accepts it: VERSION with this config answers with the versions it speaks.
    let mut conf = brindle.clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    let version = brindle_e2e::cni::exec_raw(
        &host.path().join("bin/brindle"),
        conf.to_string().as_bytes(),
        &[("CNI_COMMAND".into(), "VERSION".into())],
    )
    .unwrap();
    assert!(version.ok && version.json["supportedVersions"].as_array().is_some(), "{version:?}");

    let again = run();
    assert!(again.status.success() && again.stdout.is_empty(), "a second run changes nothing: {again:?}");

    // The Kubernetes API in-cluster: the plugin uses the kubeconfig brindle-node keeps for it.
    let kubernetes = run_with("kubernetes://");
    assert!(kubernetes.status.success(), "{}", String::from_utf8_lossy(&kubernetes.stderr));
    let conflist = std::fs::read_to_string(host.path().join("net.d/10-brindle.conflist")).unwrap();
    let conflist: serde_json::Value = serde_json::from_str(&conflist).unwrap();
    assert_eq!(conflist["plugins"][0]["datastore"], "kubernetes:///etc/cni/net.d/brindle-kubeconfig");
}

#[test]
fn the_manifest_holds_the_custom_resource_definitions_brindle_defines() {
    use brindle_datastore::store::kubernetes::layout;
    let mut defined = layout::crds(&layout::collections());
    let mut held: Vec<serde_json::Value> =
        documents().into_iter().filter(|d| d["kind"] == "CustomResourceDefinition").collect();
    let name = |d: &serde_json::Value| d["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    defined.sort_by_key(name);
    held.sort_by_key(name);
    assert!(held == defined, "the manifest's CRDs differ from brindle's: paste `brindlectl kubernetes crds` in");
}

#[test]
fn the_dockerfile_builds_every_program_the_manifest_runs_into_the_image_it_names() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let text = manifest();
    let images: std::collections::BTreeSet<&str> =
        text.lines().filter_map(|l| l.trim().strip_prefix("image: ")).collect();
    assert_eq!(images.len(), 1, "one image for everything: {images:?}");
    let image = images.into_iter().next().unwrap();
    assert!(dockerfile.contains(&format!("docker build -t {image} .")), "the Dockerfile names {image}");
    for program in ["brindle-node", "brindle", "brindle-ipam", "brindlectl"] {
        assert!(dockerfile.contains(&format!("target/release/{program} ")), "the image lacks {program}");
    }
    assert!(text.contains("/opt/brindle/install-cni.sh") && dockerfile.contains("/opt/brindle/install-cni.sh"));
}

/// The manifest applied to a real API server, and brindle at work with nothing but its roles:
/// the agent (as the DaemonSet runs it, which creates the default pool), the CNI plugin (ADD
/// and DEL with the agent's account) and IPAM garbage collection (with its own account).
#[test]
fn the_manifest_applies_and_its_roles_are_all_brindle_needs() {
    use brindle_datastore::testing::{KubeApiServer, KubePlacement};
    use brindle_e2e::netns::{self, UplinkedNode};

    // A node with an uplink and a default route; the API server on its loopback.
    let node = UplinkedNode::new("mft").unwrap();
    netns::enter(&node.node.path()).unwrap();
    let placement = KubePlacement { netns: None, address: std::net::Ipv4Addr::LOCALHOST, dir: None, crds: false };
    let server = KubeApiServer::start_at(placement).unwrap();
    let manifest = repo().join("manifests/brindle.yaml").display().to_string();
    server.kubectl(&["apply", "--server-side", "-f", &manifest]).unwrap();
    server.kubectl(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=30s"]).unwrap();

    // The Node, as kubelet registers it.
    let scratch = tempfile::tempdir().unwrap();
    let node_yaml = scratch.path().join("node.yaml");
    std::fs::write(&node_yaml, "apiVersion: v1\nkind: Node\nmetadata: {name: mft-node}\n").unwrap();
    server.kubectl(&["create", "-f", &node_yaml.display().to_string()]).unwrap();
    let agent_account = server.kubeconfig_for("brindle-system", "brindle-node").unwrap();
    let gc_account = server.kubeconfig_for("brindle-system", "brindle-ipam-gc").unwrap();
    let as_agent = format!("kubernetes://{}", agent_account.display());

    // The agent with the DaemonSet's pool variables.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_brindle-lab")).parent().unwrap();
    let daemonset = documents().into_iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let env = daemonset["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    let value =
        |name: &str| env.iter().find(|e| e["name"] == name).and_then(|e| e["value"].as_str()).unwrap().to_owned();
    let state = scratch.path().join("state");
    let log = std::fs::File::create(scratch.path().join("agent.log")).unwrap();
    let agent = Command::new(bin_dir.join("brindle-node"))
        .args(["--datastore", &as_agent, "--nodename", "mft-node", "--metrics-listen", "off"])
        .arg("--state-dir")
        .arg(&state)
        .arg("--status-socket")
        .arg(state.join("node.sock"))
        .env("BRINDLE_IPV4POOL_CIDR", value("BRINDLE_IPV4POOL_CIDR"))
        .env("BRINDLE_IPV4POOL_VXLAN", value("BRINDLE_IPV4POOL_VXLAN"))
        .stderr(log)
        .spawn()
        .unwrap();
    let agent = brindle_e2e::process::Process(agent);
    let ready = brindle_e2e::wait::wait_for("the agent to become ready", std::time::Duration::from_secs(30), || {
        netns::http_get(&node.node.path(), 9099, "/readiness").starts_with("HTTP/1.0 200")
    });
    let agent_log = || std::fs::read_to_string(scratch.path().join("agent.log")).unwrap_or_default();
    assert!(ready.is_ok(), "{}", agent_log());
    let pools = server.kubectl(&["get", "ippools", "-o", "name"]).unwrap();
    assert_eq!(pools.trim(), "ippool.brindle.io/default-ipv4-ippool", "the first agent made the default pool");

    // The CNI plugin, with the agent's account, as kubelet's runtime calls it.
    let pod = netns::Netns::new("mft", "pod").unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "brindle",
        "datastore": as_agent, "nodename": "mft-node", "mtu": 1400,
        "endpoint_record_dir": scratch.path().join("records"),
        "ipam": {"type": "brindle-ipam"},
    });
    let attachment = brindle_e2e::cni::Attachment {
        container_id: "mft0".into(),
        netns: pod.path(),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: "web".into(),
    };
    let plugin = bin_dir.join("brindle");
    let cni_path = bin_dir.display().to_string();
    let added = brindle_e2e::cni::exec(&plugin, "ADD", &conf, &attachment, &cni_path).unwrap();
    assert!(added.ok, "ADD with the agent's roles: {}{}", added.stdout, added.stderr);
    let endpoints = server.kubectl(&["get", "workloadendpoints", "-A", "-o", "name"]).unwrap();
    assert!(endpoints.contains("workloadendpoint.brindle.io/mft-node-k8s-web-eth0"), "{endpoints}");

    // Garbage collection with its own account.
    let gc = Command::new(bin_dir.join("brindlectl"))
        .args(["--datastore", &format!("kubernetes://{}", gc_account.display()), "ipam", "gc", "--apply"])
        .output()
        .unwrap();
    assert!(gc.status.success(), "ipam gc --apply with its roles: {}", String::from_utf8_lossy(&gc.stderr));

    let mut del = conf.clone();
    del["prevResult"] = added.json;
    let deleted = brindle_e2e::cni::exec(&plugin, "DEL", &del, &attachment, &cni_path).unwrap();
    assert!(deleted.ok, "DEL with the agent's roles: {}{}", deleted.stdout, deleted.stderr);
    drop(agent);
    assert!(!agent_log().contains("forbidden"), "the agent was refused something: {}", agent_log());
}
