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
    // 1.30 is the oldest whose CRDs know `selectableFields` (the IPAMBlock's owner).
    for version in ["1.30", "1.37"] {
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
    // On etcd too the plugin reads Pods from the Kubernetes API, with the agent's kubeconfig.
    assert_eq!(brindle["kubernetes"]["kubeconfig"], "/etc/cni/net.d/brindle-kubeconfig");
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
    image_files(); // every program is in it, where the manifest runs it from
    assert!(text.contains("/opt/brindle/install-cni.sh") && text.contains("/usr/local/bin/brindle-node"));
    assert!(text.contains(r#"command: ["brindle-controllers"]"#));
}

/// The programs of the image, where the Dockerfile puts them: (path in the image, file here).
fn image_files() -> Vec<(PathBuf, PathBuf)> {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_brindle-lab")).parent().unwrap();
    let mut files = Vec::new();
    for program in ["brindle-node", "brindle", "brindle-ipam", "brindlectl", "brindle-controllers"] {
        assert!(dockerfile.contains(&format!("target/release/{program} ")), "the image lacks {program}");
        files.push((Path::new("/usr/local/bin").join(program), bin_dir.join(program)));
    }
    assert!(dockerfile.contains("COPY manifests/install-cni.sh /opt/brindle/install-cni.sh"));
    files.push(("/opt/brindle/install-cni.sh".into(), repo().join("manifests/install-cni.sh")));
    files
}

/// Where the manifest's components keep brindle's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Datastore {
    /// The Kubernetes API (the manifest as shipped).
    Kubernetes,
    /// An etcd of brindle's own (the ConfigMap's `datastore` pointed at it).
    Etcd,
}

/// The manifest applied to a real API server, and its pods run as kubelet would run them
/// (their commands, environment, volumes and service accounts exactly as the manifest gives
/// them): install-cni installs the plugins and a conflist, the agent registers, creates the
/// default pool, takes its Node's InternalIP for its address, becomes ready and clears its
/// Node's NetworkUnavailable, the CNI plugin the conflist names ADDs (its endpoint carrying the
/// Pod's labels, service account and named port, and following a relabel) and DELs a pod on
/// the host with the kubeconfig the agent keeps for it, and brindle-controllers takes its Lease
/// and does a pass, all with nothing but the manifest's roles.
#[test]
fn the_manifests_pods_come_up_against_a_real_api_server_with_only_their_roles() {
    the_manifests_pods_come_up(Datastore::Kubernetes);
}

/// The same with brindle's state in an etcd of its own, as Calico's etcd mode runs: the agent
/// and the CNI plugin still read Nodes and Pods from the Kubernetes API (with the service
/// account and the kubeconfig the agent keeps), and brindle-controllers carries relabelled Pods
/// to their endpoints in etcd.
#[test]
fn the_manifest_with_an_etcd_datastore_comes_up_the_same() {
    the_manifests_pods_come_up(Datastore::Etcd);
}

fn the_manifests_pods_come_up(datastore: Datastore) {
    use brindle_datastore::testing::{EtcdServer, KubeApiServer, KubePlacement};
    use brindle_e2e::kubelet::Kubelet;
    use brindle_e2e::netns::{self, UplinkedNode};

    // A node with an uplink and a default route; the API server (and etcd) on its loopback.
    let node = UplinkedNode::new("mft").unwrap();
    netns::enter(&node.node.path()).unwrap();
    let placement = KubePlacement { netns: None, address: std::net::Ipv4Addr::LOCALHOST, dir: None, crds: false };
    let server = KubeApiServer::start_at(placement).unwrap();
    let manifest = repo().join("manifests/brindle.yaml").display().to_string();
    server.kubectl(&["apply", "--server-side", "-f", &manifest]).unwrap();
    server.kubectl(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=30s"]).unwrap();
    let etcd = (datastore == Datastore::Etcd).then(|| EtcdServer::start().unwrap());
    let selection = match &etcd {
        Some(etcd) => {
            let patch = serde_json::json!({"data": {"datastore": format!("etcd://{}", etcd.endpoint())}}).to_string();
            server.kubectl(&["patch", "configmap", "-n", "brindle-system", "brindle-config", "-p", &patch]).unwrap();
            etcd.selection()
        }
        None => server.selection(),
    };
    // brindlectl on the datastore, whichever it is.
    let brindlectl = |args: &[&str]| -> String {
        let bin = Path::new(env!("CARGO_BIN_EXE_brindle-lab")).with_file_name("brindlectl");
        let out = Command::new(bin).args(["--datastore", &selection]).args(args).output().unwrap();
        assert!(out.status.success(), "brindlectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let scratch = tempfile::tempdir().unwrap();

    // The API server checks brindle's resources against their schemas: a pool with a mode
    // that does not exist, a block size that is not a number and no CIDR is refused, every
    // field named.
    let bad_pool = scratch.path().join("bad-pool.yaml");
    std::fs::write(
        &bad_pool,
        "apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: bad}\nspec: {vxlanMode: Sometimes, blockSize: big}\n",
    )
    .unwrap();
    let refused = server.kubectl(&["create", "-f", &bad_pool.display().to_string()]).unwrap_err().to_string();
    for field in ["spec.vxlanMode", "spec.blockSize", "spec.cidr"] {
        assert!(refused.contains(field), "the refusal names {field}: {refused}");
    }

    // The Node, as kubelet registers it: its InternalIP a second address of the uplink (which
    // first-found would not take), the NetworkUnavailable condition a cloud's node controller
    // starts it with; and the node's own files.
    let uplink = node.node.ip(&["-o", "-4", "addr", "show"]).unwrap();
    let uplink = uplink.lines().find(|l| l.contains(netns::NODE_V4)).unwrap().split_whitespace().nth(1).unwrap();
    node.node.ip(&["addr", "add", "10.250.7.2/24", "dev", uplink]).unwrap();
    let node_yaml = scratch.path().join("node.yaml");
    std::fs::write(&node_yaml, "apiVersion: v1\nkind: Node\nmetadata: {name: mft-node}\n").unwrap();
    server.kubectl(&["create", "-f", &node_yaml.display().to_string()]).unwrap();
    let status = r#"{"status": {
        "addresses": [{"type": "InternalIP", "address": "10.250.7.2"}, {"type": "Hostname", "address": "mft-node"}],
        "conditions": [{"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}]}}"#;
    server.kubectl(&["patch", "node", "mft-node", "--subresource=status", "--type=strategic", "-p", status]).unwrap();
    let network_condition = || {
        let jsonpath = r#"jsonpath={.status.conditions[?(@.type=="NetworkUnavailable")].status}/{.status.conditions[?(@.type=="NetworkUnavailable")].reason}"#;
        server.kubectl(&["get", "node", "mft-node", "-o", jsonpath]).unwrap()
    };
    assert_eq!(network_condition(), "True/NoRouteCreated");
    let host = scratch.path().join("host");
    let kubelet = Kubelet::new("mft-node", &host, image_files(), &server).unwrap();

    // The DaemonSet's pod: install-cni runs to completion, then the agent starts.
    let daemonset = documents().into_iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = kubelet.pod("brindle-system", &daemonset["spec"]["template"]["spec"]).unwrap();
    let installed = pod.container("install-cni").unwrap().output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&installed.stdout), String::from_utf8_lossy(&installed.stderr));
    assert!(installed.status.success(), "install-cni: {said}");
    let conflist_path = kubelet.host_path("/etc/cni/net.d/10-brindle.conflist");
    let conflist: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&conflist_path).unwrap()).unwrap();
    let conflist_datastore = match &etcd {
        Some(etcd) => format!("etcd://{}", etcd.endpoint()),
        None => "kubernetes:///etc/cni/net.d/brindle-kubeconfig".to_owned(),
    };
    assert_eq!(conflist["plugins"][0]["datastore"], conflist_datastore.as_str());
    assert_eq!(conflist["plugins"][0]["kubernetes"]["kubeconfig"], "/etc/cni/net.d/brindle-kubeconfig");
    assert_eq!(conflist["plugins"][0]["nodename"], "mft-node");
    for plugin in ["brindle", "brindle-ipam"] {
        assert!(kubelet.host_path("/opt/cni/bin").join(plugin).is_file(), "install-cni installed {plugin}");
    }

    let log_path = scratch.path().join("agent.log");
    let mut agent = pod.container("brindle-node").unwrap();
    agent.stderr(std::fs::File::create(&log_path).unwrap());
    let agent = brindle_e2e::process::Process(agent.spawn().unwrap());
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let ready = brindle_e2e::wait::wait_for("the agent to become ready", std::time::Duration::from_secs(60), || {
        netns::http_get(&node.node.path(), 9099, "/readiness").starts_with("HTTP/1.0 200")
    });
    assert!(ready.is_ok(), "{}", agent_log());
    let pools = brindlectl(&["get", "ippools", "-o", "json"]);
    let pools: serde_json::Value = serde_json::from_str(&pools).unwrap();
    assert_eq!(pools["metadata"]["name"], "default-ipv4-ippool", "the first agent made the default pool: {pools}");
    let brindle_node: serde_json::Value =
        serde_json::from_str(&brindlectl(&["get", "node", "mft-node", "-o", "json"])).unwrap();
    assert_eq!(
        brindle_node["spec"]["bgp"]["ipv4Address"], "10.250.7.2/24",
        "its InternalIP is its address: {brindle_node}"
    );
    if datastore == Datastore::Kubernetes {
        let node_object = server.kubectl(&["get", "node", "mft-node", "-o", "json"]).unwrap();
        assert!(node_object.contains("brindle.io/node"), "the agent registered on its Node: {node_object}");
    }
    let cleared =
        brindle_e2e::wait::wait_for("NetworkUnavailable to be False", std::time::Duration::from_secs(10), || {
            network_condition() == "False/BrindleIsUp"
        });
    assert!(cleared.is_ok(), "the condition is {}: {}", network_condition(), agent_log());

    // The runtime on the node runs the conflist, as it finds it, from /opt/cni/bin (where the
    // node's own CNI package put the reference plugins the list chains).
    for plugin in ["portmap", "bandwidth"] {
        std::fs::copy(Path::new("/usr/lib/cni").join(plugin), kubelet.host_path("/opt/cni/bin").join(plugin)).unwrap();
    }
    let runtime = brindle_e2e::cni::ConfList {
        list: conflist,
        runtime_config: serde_json::json!({}),
        cni_path: "/opt/cni/bin".into(),
        runner: kubelet
            .host_runner(&["/etc/cni/net.d", "/opt/cni/bin", "/var/run/brindle", "/var/lib/brindle"])
            .unwrap(),
        root: Some(host.clone()),
    };
    // The Pod the runtime wires, as the API server holds it: labels, a service account and a
    // named port, all of which its WorkloadEndpoint carries for policy.
    let pod_yaml = scratch.path().join("pod.yaml");
    std::fs::write(
        &pod_yaml,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: robot, namespace: default}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default, labels: {app: web, tier: front}}\n\
         spec: {nodeName: mft-node, serviceAccountName: robot, containers: [{name: web, image: web, \
         ports: [{name: http, containerPort: 8080}, {containerPort: 9090}]}]}\n",
    )
    .unwrap();
    server.kubectl(&["create", "-f", &pod_yaml.display().to_string()]).unwrap();
    let pod_ns = netns::Netns::new("mft", "pod").unwrap();
    let attachment = brindle_e2e::cni::Attachment {
        container_id: "mft0".into(),
        netns: pod_ns.path(),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: "web".into(),
    };
    let added = runtime.add(&attachment).unwrap().unwrap_or_else(|o| panic!("ADD: {}{}", o.stdout, o.stderr));
    let endpoint = || -> serde_json::Value {
        serde_json::from_str(&brindlectl(&[
            "get",
            "workloadendpoint",
            "-n",
            "default",
            "mft-node-k8s-web-eth0",
            "-o",
            "json",
        ]))
        .unwrap()
    };
    let written = endpoint();
    assert_eq!(written["metadata"]["labels"], serde_json::json!({"app": "web", "tier": "front"}), "{written}");
    assert_eq!(written["spec"]["serviceAccountName"], "robot", "{written}");
    assert_eq!(written["spec"]["ports"], serde_json::json!([{"name": "http", "protocol": "TCP", "port": 8080}]));

    // The Deployment's pod: it takes the Lease and runs a garbage collection pass with its own
    // account (which may list Pods).
    let deployment = documents().into_iter().find(|d| d["kind"] == "Deployment").unwrap();
    let controllers_pod = kubelet.pod("brindle-system", &deployment["spec"]["template"]["spec"]).unwrap();
    let controllers_log = scratch.path().join("controllers.log");
    let mut controllers = controllers_pod.container("brindle-controllers").unwrap();
    controllers.stderr(std::fs::File::create(&controllers_log).unwrap());
    let controllers = brindle_e2e::process::Process(controllers.spawn().unwrap());
    let said = || std::fs::read_to_string(&controllers_log).unwrap_or_default();
    let passed = brindle_e2e::wait::wait_for("a garbage collection pass", std::time::Duration::from_secs(30), || {
        said().contains("IPAM garbage collection pass")
    });
    assert!(passed.is_ok(), "{}", said());
    let lease = server
        .kubectl(&[
            "get",
            "lease",
            "-n",
            "brindle-system",
            "brindle-controllers",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap();
    assert!(lease.starts_with("pod-"), "the replica holds the Lease by its pod's name: {lease:?}");

    // Relabelled with kubectl, the Pod's endpoint follows (on the Kubernetes datastore the agent
    // watches its node's Pods; on etcd brindle-controllers copies their labels).
    server.kubectl(&["label", "pod", "-n", "default", "web", "tier=back", "--overwrite"]).unwrap();
    let followed = brindle_e2e::wait::wait_for(
        "the endpoint to follow the Pod's labels",
        std::time::Duration::from_secs(5),
        || endpoint()["metadata"]["labels"]["tier"] == "back",
    );
    assert!(followed.is_ok(), "the endpoint is {}: {}{}", endpoint(), agent_log(), said());
    drop(controllers);
    assert!(!said().contains("forbidden") && !said().contains("failed"), "{}", said());

    runtime.del(&attachment, &added).unwrap().unwrap_or_else(|o| panic!("DEL: {}{}", o.stdout, o.stderr));
    drop(agent);
    assert!(!agent_log().contains("forbidden"), "the agent was refused something: {}", agent_log());
}
