//! Addresses for a container: brindle's block IPAM in-process (when the config says
//! `brindle-ipam`, the main plugin calls it directly instead of executing the binary), or any
//! other IPAM plugin executed as the spec describes.

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use brindle_datastore::Client;
use brindle_datastore::ipam::pools::Family;
use brindle_datastore::ipam::{AllocateRequest, Allocation, AllocationKind, Ipam, WriteLock, recorded_form};
use brindle_datastore::store::{KubernetesStore, kubernetes_api};

use crate::annotations::{AddressRequest, IP_ADDRS, IP_ADDRS_NO_IPAM};
use crate::config::{Attachment, BrindleIpam, NetConf};
use crate::env::{Command, Request};
use crate::error::{Error, Result};
use crate::result::{CniResult, IpConfig};
use crate::wiring::host_prefix;

/// The IPAM handle of an attachment: `<network>.<containerID>` (blocks record a runtime's
/// container ID by its first 16 digits, and find the address by either form).
pub fn handle(network: &str, container_id: &str) -> String {
    format!("{network}.{container_id}")
}

/// The file, in the endpoint record directory, whose lock the host's CNI calls hold around
/// each write of an IPAM block (see [`WriteLock`]): calls for pods started together then write
/// their node's block in turn instead of racing for it.
pub const IPAM_LOCK_FILE: &str = "ipam.lock";

/// A connection to the datastore with the IPAM client on top.
pub struct Store {
    /// Typed resources.
    pub client: Client,
    /// Block IPAM.
    pub ipam: Ipam,
    /// The Kubernetes API: the datastore, or the one the config's `kubernetes.kubeconfig`
    /// names beside another datastore.
    pub kubernetes: Option<KubernetesStore>,
}

impl Store {
    /// Connects to the config's datastore.
    pub async fn connect(conf: &NetConf) -> Result<Store> {
        let selection = conf.datastore_selection();
        let store = brindle_datastore::connect(&selection).await.map_err(|e| match e {
            brindle_datastore::Error::Invalid(m) => Error::InvalidConfig(format!("datastore: {m}")),
            other => Error::from(other).context("connecting to the datastore"),
        })?;
        let kubernetes = match &conf.kubernetes.kubeconfig {
            Some(kubeconfig) => Some(kubernetes_api(&*store, Some(kubeconfig.clone())).await.map_err(|e| match e {
                brindle_datastore::Error::Invalid(m) => Error::InvalidConfig(format!("kubernetes.kubeconfig: {m}")),
                other => Error::from(other).context("connecting to the Kubernetes API"),
            })?),
            None => store.kubernetes().cloned(),
        };
        let client = Client::new(store);
        let write_lock = WriteLock::new(conf.record_dir().join(IPAM_LOCK_FILE));
        Ok(Store { ipam: Ipam::new(client.clone()).with_write_lock(write_lock), client, kubernetes })
    }

    /// Allocates an attachment's addresses: as the network config says, or as the pod's
    /// annotations ask (other pools, fixed addresses, addresses outside IPAM where the config
    /// allows them).
    pub async fn add(
        &self,
        conf: &NetConf,
        settings: &BrindleIpam,
        holder: Allocation,
        asked: &AddressRequest,
    ) -> Result<CniResult> {
        let ips: Vec<IpAddr> = if !asked.without_ipam.is_empty() {
            if !conf.feature_control.ip_addrs_no_ipam {
                return Err(Error::InvalidAnnotation {
                    on: "Pod",
                    annotation: IP_ADDRS_NO_IPAM.to_owned(),
                    why: "this network does not allow addresses outside IPAM (its config's \
                          feature_control.ip_addrs_no_ipam is not true)"
                        .to_owned(),
                });
            }
            asked.without_ipam.clone()
        } else if !asked.fixed.is_empty() {
            let assigned = self.ipam.allocate_ips(&holder, &asked.fixed).await.map_err(|e| match e {
                brindle_datastore::Error::Invalid(why) => {
                    Error::InvalidAnnotation { on: "Pod", annotation: IP_ADDRS.to_owned(), why }
                }
                other => Error::from(other).context(IP_ADDRS),
            })?;
            assigned.iter().map(|a| a.ip).collect()
        } else {
            let request = AllocateRequest {
                holder,
                ipv4: u32::from(settings.assign_ipv4),
                ipv6: u32::from(settings.assign_ipv6),
                ipv4_pools: asked.ipv4_pools.clone().unwrap_or_else(|| settings.ipv4_pools.clone()),
                ipv6_pools: asked.ipv6_pools.clone().unwrap_or_else(|| settings.ipv6_pools.clone()),
            };
            self.ipam.allocate(&request).await?.iter().map(|a| a.ip).collect()
        };
        Ok(CniResult {
            ips: ips
                .into_iter()
                .map(|ip| IpConfig { address: host_prefix(ip), gateway: None, interface: None })
                .collect(),
            ..CniResult::default()
        })
    }

    /// Releases a handle: the known addresses cheaply, else by scanning every block.
    pub async fn release(&self, handle: &str, known: &[IpAddr]) -> Result<Vec<IpAddr>> {
        if known.is_empty() {
            return Ok(self.ipam.release_handle(handle).await?);
        }
        Ok(self.ipam.release_handle_ips(handle, known).await?)
    }

    /// Which of `ips` the handle does not hold.
    pub async fn check(&self, handle: &str, ips: &[IpAddr]) -> Result<Vec<String>> {
        let blocks = self.ipam.blocks().await?;
        let mut problems = Vec::new();
        for ip in ips {
            let holder = blocks.iter().find(|(b, _)| b.cidr.contains(*ip)).and_then(|(b, _)| b.holder(*ip));
            match holder {
                Some(a) if a.is_held_by(handle) => {}
                Some(a) => problems.push(format!("{ip} is allocated to {}, not to {handle}", a.handle)),
                None => problems.push(format!("{ip} is not allocated in IPAM")),
            }
        }
        Ok(problems)
    }

    /// Releases every workload allocation of this network on this node whose attachment is
    /// not valid any more. Returns the released handles. Allocations are matched to the
    /// network exactly (network `a` never collects those of network `a.b`); those stored
    /// without their network are left to `brindlectl ipam gc`.
    pub async fn gc(&self, network: &str, node: &str, valid: &[Attachment]) -> Result<Vec<String>> {
        let valid: HashSet<String> =
            valid.iter().map(|a| recorded_form(&handle(network, &a.container_id)).to_owned()).collect();
        let mut stale: std::collections::BTreeMap<String, Vec<IpAddr>> = Default::default();
        for (block, _) in self.ipam.blocks().await? {
            for (ip, a) in block.allocations() {
                if a.kind == AllocationKind::Workload
                    && a.node == node
                    && a.network.as_deref() == Some(network)
                    && !valid.contains(recorded_form(&a.handle))
                {
                    stale.entry(a.handle.clone()).or_default().push(ip);
                }
            }
        }
        for (handle, ips) in &stale {
            let released = self.ipam.release_handle_ips(handle, ips).await?;
            tracing::info!(%handle, ?released, "garbage-collected an allocation with no valid attachment");
        }
        Ok(stale.into_keys().collect())
    }

    /// STATUS: the datastore answers and a pool has room for each family the config asks for.
    pub async fn status(&self, settings: &BrindleIpam, node: &str) -> Result<()> {
        let families = [
            (settings.assign_ipv4, Family::V4, &settings.ipv4_pools),
            (settings.assign_ipv6, Family::V6, &settings.ipv6_pools),
        ];
        for (wanted, family, pools) in families {
            if !wanted {
                continue;
            }
            let room = self.ipam.has_room(node, family, pools).await.map_err(|e| match e {
                brindle_datastore::Error::Unavailable(m) => Error::NotAvailable(format!("datastore unreachable: {m}")),
                other => Error::NotAvailable(format!("no {} pool can serve node {node}: {other}", family.name())),
            })?;
            if !room {
                return Err(Error::NotAvailable(format!(
                    "every {} pool available to node {node} is full",
                    family.name()
                )));
            }
        }
        Ok(())
    }
}

/// The plugin type that writes a WorkloadEndpoint for every attachment it makes.
pub const ENDPOINT_WRITER: &str = "brindle";

/// The allocation's attributes for an attachment. An endpoint is expected when the main plugin
/// is `brindle` (in process, or running `brindle-ipam` as its delegate: the config names it).
pub fn holder(conf: &NetConf, request: &Request, node: &str) -> Allocation {
    Allocation {
        handle: handle(&conf.name, &request.container_id),
        network: Some(conf.name.clone()),
        endpoint: conf.plugin == ENDPOINT_WRITER,
        kind: AllocationKind::Workload,
        node: node.to_owned(),
        pod: request.pod.name.clone(),
        namespace: request.pod.namespace.clone(),
        ..Allocation::default()
    }
}

/// Another IPAM plugin, executed as the spec says: found in `CNI_PATH`, given the same config
/// and environment with the command set.
pub fn delegate(plugin: &str, command: Command, request: &Request, stdin: &[u8]) -> Result<Option<CniResult>> {
    let binary = find_plugin(plugin, &request.path)?;
    let verb = match command {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Gc => "GC",
        Command::Status => "STATUS",
        Command::Version => "VERSION",
    };
    let mut child = Process::new(&binary)
        .env("CNI_COMMAND", verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::Io(format!("executing IPAM plugin {}: {e}", binary.display())))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).map_err(|e| Error::Io(format!("writing the config to {plugin}: {e}")))?;
    }
    let output = child.wait_with_output().map_err(|e| Error::Io(format!("waiting for {plugin}: {e}")))?;
    if !output.status.success() {
        let err: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        return Err(Error::Delegate {
            plugin: plugin.to_owned(),
            code: err["code"].as_u64().map_or(999, |c| c as u32),
            msg: err["msg"].as_str().map_or_else(|| format!("failed with {}", output.status), str::to_owned),
        });
    }
    if command != Command::Add {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| Error::Decode(format!("{plugin} printed a result that is not JSON: {e}")))?;
    CniResult::from_json(&value).map(Some).map_err(|e| e.context(plugin))
}

fn find_plugin(plugin: &str, path: &[PathBuf]) -> Result<PathBuf> {
    if plugin.contains('/') {
        return Err(Error::InvalidConfig(format!("plugin type \"{plugin}\" cannot contain '/'")));
    }
    path.iter().map(|dir| dir.join(plugin)).find(|p| p.is_file()).ok_or_else(|| {
        let dirs: Vec<String> = path.iter().map(|d| d.display().to_string()).collect();
        Error::InvalidConfig(format!("IPAM plugin \"{plugin}\" not found in CNI_PATH ({})", dirs.join(":")))
    })
}
