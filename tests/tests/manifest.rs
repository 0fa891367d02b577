//! manifests/brindle.yaml is what `kubectl apply -f` gets: it validates against Kubernetes'
//! OpenAPI schema (strictly: unknown fields are errors) for an old and a new release; its
//! install-cni step installs the plugins and a conflist the plugin reads; the Dockerfile puts
//! every program the manifest runs into the image it names.

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
    let run = || {
        Command::new(repo().join("manifests/install-cni.sh"))
            .env("BRINDLE_BIN_DIR", bin_dir)
            .env("HOST_CNI_BIN_DIR", host.path().join("bin"))
            .env("HOST_CNI_NET_DIR", host.path().join("net.d"))
            .env("CNI_NETWORK_CONFIG", &template)
            .env("KUBERNETES_NODE_NAME", "node-a")
            .env("BRINDLE_DATASTORE", "etcd://10.0.0.10:2379?cacert=/etc/brindle/etcd/etcd-ca&timeout=5s")
            .env("CNI_MTU", "0")
            .output()
            .unwrap()
    };
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
    assert_eq!(brindle["datastore"], "etcd://10.0.0.10:2379?cacert=/etc/brindle/etcd/etcd-ca&timeout=5s");
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
