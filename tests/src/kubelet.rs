//! A pod's containers run the way kubelet runs them, without a container runtime, so a test can
//! take a manifest's pod spec as it is and bring its commands up against a real API server.
//!
//! Each container gets a mount namespace of its own whose root is this machine's filesystem
//! under a throwaway overlay (standing in for the image), with brindle's programs where the
//! Dockerfile puts them, a fresh `/run`, `/tmp` and `/root`, its volumes mounted where the spec
//! says, and its service account's token, CA and namespace at
//! `/var/run/secrets/kubernetes.io/serviceaccount`. Its environment is exactly the spec's
//! (literal values, the node's name, ConfigMap keys read from the API server) plus the
//! variables kubelet adds (`KUBERNETES_SERVICE_HOST`/`PORT`, `HOSTNAME`). The node's own files,
//! which `hostPath` volumes name, are a scratch directory, so nothing on this machine changes.
//! Containers share the caller's network namespace: the host network.
//!
//! What a pod spec asks for that this does not do (a volume or variable source it does not
//! know, `subPath`) is an error naming it, never ignored.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use brindle_datastore::testing::KubeApiServer;
use serde_json::Value;

/// Where in-cluster clients find their service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Sets up a container's root in a new mount namespace and runs its command there.
/// Arguments: scratch directory, then `kind source destination read-only` quadruples for
/// each mount (kind `dir` or `file`), then `--`, then the command.
const CONTAINER_SCRIPT: &str = r#"
set -eu
d=$1; shift
mount -t tmpfs brindle-pod "$d"
mkdir "$d/up" "$d/work" "$d/root"
mount -t overlay brindle-pod -o "lowerdir=/,upperdir=$d/up,workdir=$d/work" "$d/root"
for m in proc sys dev; do mount --rbind "/$m" "$d/root/$m"; done
for m in run tmp root; do mount -t tmpfs brindle-pod "$d/root/$m"; done
while [ "$1" != -- ]; do
    kind=$1 src=$2 dst=$d/root$3 ro=$4; shift 4
    if [ "$kind" = dir ]; then mkdir -p "$dst"; else mkdir -p "${dst%/*}"; touch "$dst"; fi
    mount --rbind "$src" "$dst"
    if [ "$ro" = ro ]; then mount -o remount,bind,ro "$dst"; fi
done
shift
exec chroot "$d/root" "$@"
"#;

/// One bind mount into a container's root.
#[derive(Debug, Clone)]
struct Mount {
    source: PathBuf,
    target: PathBuf,
    read_only: bool,
}

/// A node's kubelet: its name, its files, the image its pods run, and the API server.
pub struct Kubelet<'a> {
    node_name: String,
    host_root: PathBuf,
    image: Vec<(PathBuf, PathBuf)>,
    api: &'a KubeApiServer,
    scratch: tempfile::TempDir,
}

/// A pod's volumes made ready on the node, shared by its containers.
pub struct Pod<'k, 'a> {
    kubelet: &'k Kubelet<'a>,
    name: String,
    namespace: String,
    spec: Value,
    volumes: BTreeMap<String, PathBuf>,
    service_account: PathBuf,
}

impl<'a> Kubelet<'a> {
    /// A kubelet for `node_name`, whose files are under `host_root`, running pods against `api`
    /// from an image holding `image` (path in the image, file here).
    pub fn new(
        node_name: &str,
        host_root: &Path,
        image: Vec<(PathBuf, PathBuf)>,
        api: &'a KubeApiServer,
    ) -> anyhow::Result<Self> {
        Ok(Kubelet {
            node_name: node_name.into(),
            host_root: host_root.into(),
            image,
            api,
            scratch: tempfile::tempdir().context("kubelet scratch directory")?,
        })
    }

    /// `path` on the node, as seen from here.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.host_root.join(path.trim_start_matches('/'))
    }

    /// Makes `spec` (a pod template's spec) ready to run in `namespace`: its volumes and its
    /// service account's token.
    pub fn pod(&self, namespace: &str, spec: &Value) -> anyhow::Result<Pod<'_, 'a>> {
        let dir = tempfile::Builder::new().prefix("pod-").tempdir_in(self.scratch.path())?.keep();
        let mut volumes = BTreeMap::new();
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().context("a volume without a name")?;
            let source = if let Some(host) = volume.get("hostPath") {
                let path = self.host_path(host["path"].as_str().context("hostPath without a path")?);
                match host["type"].as_str().unwrap_or("") {
                    "FileOrCreate" | "File" => {
                        std::fs::create_dir_all(path.parent().unwrap())?;
                        std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
                    }
                    _ => std::fs::create_dir_all(&path)?,
                }
                path
            } else if let Some(secret) = volume.get("secret") {
                let dir = dir.join("secrets").join(name);
                std::fs::create_dir_all(&dir)?;
                self.write_secret(namespace, secret, &dir)?;
                dir
            } else {
                bail!("volume {name}: only hostPath and secret volumes are supported here: {volume}");
            };
            volumes.insert(name.to_owned(), source);
        }
        let service_account = dir.join("serviceaccount");
        std::fs::create_dir_all(&service_account)?;
        let account = spec["serviceAccountName"].as_str().unwrap_or("default");
        let token = self.api.kubectl(&["create", "token", account, "-n", namespace, "--duration=1h"])?;
        std::fs::write(service_account.join("token"), token.trim())?;
        std::fs::copy(self.api.ca_cert(), service_account.join("ca.crt"))?;
        std::fs::write(service_account.join("namespace"), namespace)?;
        let name = dir.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        Ok(Pod { kubelet: self, name, namespace: namespace.into(), spec: spec.clone(), volumes, service_account })
    }

    fn write_secret(&self, namespace: &str, secret: &Value, dir: &Path) -> anyhow::Result<()> {
        use base64::Engine;
        use std::os::unix::fs::PermissionsExt;
        let name = secret["secretName"].as_str().context("a secret volume without secretName")?;
        let object = match self.api.kubectl(&["get", "secret", name, "-n", namespace, "-o", "json"]) {
            Ok(text) => serde_json::from_str::<Value>(&text)?,
            Err(_) if secret["optional"] == true => return Ok(()),
            Err(e) => return Err(e).context(format!("secret {namespace}/{name}")),
        };
        let mode = secret["defaultMode"].as_u64().unwrap_or(0o644) as u32;
        for (key, data) in object["data"].as_object().into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap_or_default())?;
            std::fs::write(dir.join(key), bytes)?;
            std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    /// The command under which a program runs on the node's host (as a container runtime
    /// runs CNI plugins): `paths` of the node (e.g. `/etc/cni/net.d`) are its own, and the
    /// machine's network namespaces are at `/run/netns`.
    pub fn host_runner(&self, paths: &[&str]) -> anyhow::Result<Vec<OsString>> {
        let mut mounts: Vec<Mount> = paths
            .iter()
            .map(|p| Mount { source: self.host_path(p), target: PathBuf::from(p), read_only: false })
            .collect();
        mounts.push(Mount { source: "/run/netns".into(), target: "/run/netns".into(), read_only: false });
        self.runner(&mounts)
    }

    /// `unshare` and the script, up to the command.
    fn runner(&self, mounts: &[Mount]) -> anyhow::Result<Vec<OsString>> {
        let scratch = tempfile::Builder::new().prefix("root-").tempdir_in(self.scratch.path())?.keep();
        let mut argv: Vec<OsString> =
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", CONTAINER_SCRIPT, "sh"]
                .into_iter()
                .map(OsString::from)
                .collect();
        argv.push(scratch.into());
        for mount in mounts {
            let kind = if mount.source.is_dir() { "dir" } else { "file" };
            argv.extend([kind.into(), mount.source.clone().into(), resolve(&mount.target).into()]);
            argv.push(if mount.read_only { "ro" } else { "rw" }.into());
        }
        argv.push("--".into());
        Ok(argv)
    }
}

impl Pod<'_, '_> {
    /// The command kubelet would run for the container (or init container) `name`: its root,
    /// mounts and environment as the spec gives them.
    pub fn container(&self, name: &str) -> anyhow::Result<Command> {
        let container = ["initContainers", "containers"]
            .iter()
            .flat_map(|list| self.spec[list].as_array().into_iter().flatten())
            .find(|c| c["name"] == name)
            .with_context(|| format!("the pod has no container {name}"))?;
        let kubelet = self.kubelet;
        let mut mounts: Vec<Mount> = kubelet
            .image
            .iter()
            .map(|(inside, here)| Mount { source: here.clone(), target: inside.clone(), read_only: true })
            .collect();
        mounts.push(Mount {
            source: self.service_account.clone(),
            target: SERVICE_ACCOUNT_DIR.into(),
            read_only: true,
        });
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume = mount["name"].as_str().unwrap_or_default();
            if mount.get("subPath").is_some() {
                bail!("container {name}: subPath is not supported here");
            }
            let source = self.volumes.get(volume).with_context(|| format!("container {name}: no volume {volume}"))?;
            let target = mount["mountPath"].as_str().with_context(|| format!("{volume}: no mountPath"))?;
            mounts.push(Mount { source: source.clone(), target: target.into(), read_only: mount["readOnly"] == true });
        }

        let (address, port) = kubelet.api.endpoint();
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), PATH.into()),
            ("HOSTNAME".into(), kubelet.node_name.clone()),
            ("KUBERNETES_SERVICE_HOST".into(), address.to_string()),
            ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ];
        for var in container["env"].as_array().into_iter().flatten() {
            let key = var["name"].as_str().context("a variable without a name")?;
            env.push((key.into(), self.value_of(key, var)?));
        }

        let argv: Vec<&str> = ["command", "args"]
            .iter()
            .flat_map(|f| container[f].as_array().into_iter().flatten())
            .map(|a| a.as_str().unwrap_or_default())
            .collect();
        if argv.is_empty() {
            bail!("container {name}: no command (the image's entrypoint is not known here)");
        }
        let runner = kubelet.runner(&mounts)?;
        let mut command = Command::new(&runner[0]);
        command.args(&runner[1..]).args(argv).env_clear().envs(env);
        Ok(command)
    }

    fn value_of(&self, key: &str, var: &Value) -> anyhow::Result<String> {
        if let Some(value) = var.get("value") {
            return Ok(value.as_str().unwrap_or_default().to_owned());
        }
        let from = &var["valueFrom"];
        if let Some(field) = from["fieldRef"]["fieldPath"].as_str() {
            return match field {
                "spec.nodeName" => Ok(self.kubelet.node_name.clone()),
                "metadata.namespace" => Ok(self.namespace.clone()),
                "metadata.name" => Ok(self.name.clone()),
                _ => bail!("{key}: fieldRef {field} is not supported here"),
            };
        }
        if let Some(map) = from.get("configMapKeyRef") {
            let (name, wanted) = (map["name"].as_str().unwrap_or_default(), map["key"].as_str().unwrap_or_default());
            let text = self.kubelet.api.kubectl(&["get", "configmap", name, "-n", &self.namespace, "-o", "json"])?;
            let object: Value = serde_json::from_str(&text)?;
            return object["data"][wanted]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("{key}: ConfigMap {name} has no key {wanted}"));
        }
        bail!("{key}: {from} is not supported here")
    }
}

/// `path` with the symbolic links of this machine's filesystem resolved (`/var/run` is a link
/// to `/run`), so a mount lands where a process in the container looks.
fn resolve(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => {
                let next = out.join(part);
                out = match std::fs::read_link(&next) {
                    Ok(target) if target.is_absolute() => resolve(&target),
                    Ok(target) => resolve(&out.join(target)),
                    Err(_) => next,
                };
            }
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_follow_the_machines_links() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/run", dir.path().join("run-link")).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("relative")).unwrap();
        let base = dir.path().display();
        assert_eq!(resolve(Path::new(&format!("{base}/run-link/secrets"))), Path::new("/run/secrets"));
        assert_eq!(resolve(Path::new(&format!("{base}/relative/x"))), dir.path().join("real/x"));
        assert_eq!(resolve(Path::new("/no/such/path")), Path::new("/no/such/path"));
    }
}
