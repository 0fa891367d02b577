//! The host-side record of each endpoint: what the plugin built and why, in a file an
//! operator (or `brindlectl`) can read on the node without the datastore. Written crash-safely
//! (temporary file, fsync, rename), so a reader sees the old record or the new one, never half.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::result::CniResult;

/// One endpoint's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The network's name.
    pub network: String,
    /// The container runtime's ID of the sandbox.
    pub container_id: String,
    /// The interface inside the container.
    pub ifname: String,
    /// The container's network namespace.
    pub netns: String,
    /// The pod's namespace, when kubelet said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// The pod's name, when kubelet said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The node.
    pub node: String,
    /// The host end of the veth.
    pub host_veth: String,
    /// The MTU of both ends.
    pub mtu: u32,
    /// The IPAM plugin that gave the addresses.
    pub ipam: String,
    /// The IPAM handle (`<network>.<containerID>`).
    pub handle: String,
    /// The WorkloadEndpoint written for it (`namespace/name`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_endpoint: Option<String>,
    /// Seconds since the epoch when the endpoint was made.
    pub created: u64,
    /// The result given to the runtime: interfaces, addresses, routes.
    pub result: CniResult,
}

impl Record {
    /// The record's file in `dir`.
    pub fn path_in(dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        dir.join(format!("{network}.{container_id}.{ifname}.json"))
    }

    /// Reads a record; `None` when there is none.
    pub fn load(dir: &Path, network: &str, container_id: &str, ifname: &str) -> Result<Option<Record>> {
        Self::load_file(&Self::path_in(dir, network, container_id, ifname))
    }

    fn load_file(path: &Path) -> Result<Option<Record>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Decode(format!("endpoint record {} is corrupt: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io(format!("reading endpoint record {}: {e}", path.display()))),
        }
    }

    /// Every record of a network in `dir` (unreadable ones are skipped with a warning).
    pub fn list(dir: &Path, network: &str) -> Result<Vec<Record>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::Io(format!("listing {}: {e}", dir.display()))),
        };
        let prefix = format!("{network}.");
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with(&prefix) || !name.ends_with(".json") {
                continue;
            }
            match Self::load_file(&entry.path()) {
                Ok(Some(r)) if r.network == network => records.push(r),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "skipping an endpoint record"),
            }
        }
        Ok(records)
    }

    /// Writes the record atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io = |what: &str, e: std::io::Error| Error::Io(format!("{what} endpoint record in {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory for the", e))?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| io("creating a temporary", e))?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(format!("encoding a record: {e}")))?;
        file.write_all(&bytes).map_err(|e| io("writing the", e))?;
        file.as_file().sync_all().map_err(|e| io("syncing the", e))?;
        file.persist(Self::path_in(dir, &self.network, &self.container_id, &self.ifname))
            .map_err(|e| io("renaming the", e.error))?;
        Ok(())
    }

    /// Removes a record; a missing one is not an error.
    pub fn remove(dir: &Path, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        match std::fs::remove_file(Self::path_in(dir, network, container_id, ifname)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::Io(format!("removing the endpoint record of {container_id}: {e}")))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(container: &str) -> Record {
        Record {
            network: "net".into(),
            container_id: container.into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            pod_namespace: Some("default".into()),
            pod_name: Some("web".into()),
            node: "n1".into(),
            host_veth: "brin0123456789a".into(),
            mtu: 1500,
            ipam: "brindle-ipam".into(),
            handle: format!("net.{container}"),
            workload_endpoint: None,
            created: 1,
            result: CniResult::default(),
        }
    }

    #[test]
    fn records_round_trip_and_list_by_network() {
        let dir = tempfile::tempdir().unwrap();
        let a = record("a");
        a.save(dir.path()).unwrap();
        record("b").save(dir.path()).unwrap();
        let mut other = record("c");
        other.network = "other".into();
        other.save(dir.path()).unwrap();
        assert_eq!(Record::load(dir.path(), "net", "a", "eth0").unwrap(), Some(a));
        assert_eq!(Record::list(dir.path(), "net").unwrap().len(), 2);
        Record::remove(dir.path(), "net", "a", "eth0").unwrap();
        Record::remove(dir.path(), "net", "a", "eth0").unwrap();
        assert_eq!(Record::load(dir.path(), "net", "a", "eth0").unwrap(), None);
        // Nothing but records is left: no temporary files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
