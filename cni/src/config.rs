//! The network config on stdin, with fields modelled on Calico's plugin.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::result::CniResult;

/// Where the agent publishes the MTU for pods when the config says `mtu: 0`.
pub const DEFAULT_MTU_FILE: &str = "/var/lib/brindle/mtu";
/// Where the agent writes the node's name.
pub const DEFAULT_NODENAME_FILE: &str = "/var/lib/brindle/nodename";
/// Where the host-side endpoint records go.
pub const DEFAULT_RECORD_DIR: &str = "/var/run/brindle/endpoints";
/// The datastore when the config names none: the embedded database.
pub const DEFAULT_DATASTORE: &str = "sqlite:///var/lib/brindle/brindle.db";
/// The MTU when neither the config nor the agent gives one.
pub const FALLBACK_MTU: u32 = 1500;

/// The network config (both plugins read the same document).
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    /// The spec version of the config.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// The network's name: allocations are handled as `<name>.<containerID>`.
    #[serde(default)]
    pub name: String,
    /// The plugin type.
    #[serde(rename = "type", default)]
    pub plugin: String,
    /// The pod interface MTU; 0 reads the value the agent publishes.
    #[serde(default)]
    pub mtu: u32,
    /// Where the agent publishes the MTU.
    #[serde(default)]
    pub mtu_file: Option<PathBuf>,
    /// The datastore selection (`sqlite:///path` or `etcd://host:port,...`).
    #[serde(default)]
    pub datastore: Option<String>,
    /// etcd TLS: CA certificate file.
    #[serde(default)]
    pub etcd_ca_cert_file: Option<String>,
    /// etcd TLS: client certificate file.
    #[serde(default)]
    pub etcd_cert_file: Option<String>,
    /// etcd TLS: client key file.
    #[serde(default)]
    pub etcd_key_file: Option<String>,
    /// The node's name; wins over `nodename_file` and the host name.
    #[serde(default)]
    pub nodename: Option<String>,
    /// A file holding the node's name (written by the agent).
    #[serde(default)]
    pub nodename_file: Option<PathBuf>,
    /// `error`, `warn` (default), `info`, `debug`.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Log to this file instead of stderr.
    #[serde(default)]
    pub log_file_path: Option<PathBuf>,
    /// Where host-side endpoint records are written, beside the lock file of the host's IPAM
    /// writes.
    #[serde(default)]
    pub endpoint_record_dir: Option<PathBuf>,
    /// The IPAM section, kept raw: it is also what a delegated plugin receives.
    #[serde(default)]
    pub ipam: Option<Map<String, Value>>,
    /// The previous result (CHECK, DEL, chained ADD).
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// GC (CNI 1.1): the attachments that are still valid.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// GC: the name an early libcni used for the same list.
    #[serde(rename = "cni.dev/attachments", default)]
    pub attachments: Option<Vec<Attachment>>,
    /// Features off by default, as Calico's plugin names them.
    #[serde(default)]
    pub feature_control: FeatureControl,
    /// Where the Kubernetes API is, when it is not the datastore (an etcd datastore in a
    /// Kubernetes cluster): the plugin reads the pod's Pod there for its labels and annotations.
    #[serde(default)]
    pub kubernetes: KubernetesConf,
}

/// The conflist's `kubernetes` section, as Calico's plugin has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KubernetesConf {
    /// A kubeconfig file (install-cni names the one the agent keeps).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

/// Features a network config turns on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FeatureControl {
    /// Pods may take addresses outside IPAM (`brindle.io/ipAddrsNoIpam`).
    #[serde(default)]
    pub ip_addrs_no_ipam: bool,
}

/// One valid attachment in a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    /// The container's ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface.
    #[serde(default)]
    pub ifname: String,
}

/// The IPAM section when `type` is `brindle-ipam`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrindleIpam {
    /// Allocate an IPv4 address (default true).
    pub assign_ipv4: bool,
    /// Allocate an IPv6 address (default false).
    pub assign_ipv6: bool,
    /// IPv4 pools to use (names or CIDRs); empty means every eligible pool.
    pub ipv4_pools: Vec<String>,
    /// IPv6 pools to use.
    pub ipv6_pools: Vec<String>,
}

/// The type of our own IPAM plugin.
pub const BRINDLE_IPAM: &str = "brindle-ipam";

/// Calico writes booleans as strings ("true"); accept both.
fn flexible_bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Text(String),
    }
    match Option::<B>::deserialize(d)? {
        None => Ok(None),
        Some(B::Bool(b)) => Ok(Some(b)),
        Some(B::Text(t)) => match t.as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            other => Err(serde::de::Error::custom(format!("expected true or false, found \"{other}\""))),
        },
    }
}

impl NetConf {
    /// Parses stdin. Unknown top-level fields are allowed (runtimes add their own); the
    /// IPAM section of `brindle-ipam` is strict.
    pub fn parse(bytes: &[u8]) -> Result<NetConf> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::Decode("no network config on stdin".into()));
        }
        let conf: NetConf = serde_json::from_slice(bytes)
            .map_err(|e| Error::Decode(format!("network config is not valid JSON: {e}")))?;
        if conf.cni_version.is_empty() {
            return Err(Error::InvalidConfig("cniVersion is required".into()));
        }
        Ok(conf)
    }

    /// Checks what ADD, DEL and CHECK need.
    pub fn validate_for_attachment(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::InvalidConfig("name (the network's name) is required".into()));
        }
        if self.name.contains(['/', '\0']) {
            return Err(Error::InvalidConfig(format!("name \"{}\" cannot contain '/'", self.name)));
        }
        Ok(())
    }

    /// The IPAM plugin's type.
    pub fn ipam_type(&self) -> Result<&str> {
        self.ipam
            .as_ref()
            .and_then(|m| m.get("type"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::InvalidConfig("ipam.type is required (e.g. \"brindle-ipam\")".into()))
    }

    /// The `brindle-ipam` settings.
    pub fn brindle_ipam(&self) -> Result<BrindleIpam> {
        const KNOWN: &[&str] = &["type", "assign_ipv4", "assign_ipv6", "ipv4_pools", "ipv6_pools"];
        let section = self.ipam.clone().unwrap_or_default();
        if let Some(field) = section.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(Error::UnsupportedField {
                field: format!("ipam.{field}"),
                why: format!("brindle-ipam takes only {}; pools choose the subnets", KNOWN.join(", ")),
            });
        }
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default, deserialize_with = "flexible_bool")]
            assign_ipv4: Option<bool>,
            #[serde(default, deserialize_with = "flexible_bool")]
            assign_ipv6: Option<bool>,
            #[serde(default)]
            ipv4_pools: Vec<String>,
            #[serde(default)]
            ipv6_pools: Vec<String>,
        }
        let raw: Raw = serde_path_to_error::deserialize(Value::Object(section))
            .map_err(|e| Error::InvalidConfig(format!("ipam.{}: {}", e.path(), e.inner())))?;
        let ipam = BrindleIpam {
            assign_ipv4: raw.assign_ipv4.unwrap_or(true),
            assign_ipv6: raw.assign_ipv6.unwrap_or(false),
            ipv4_pools: raw.ipv4_pools,
            ipv6_pools: raw.ipv6_pools,
        };
        if !ipam.assign_ipv4 && !ipam.assign_ipv6 {
            return Err(Error::InvalidConfig("ipam: assign_ipv4 and assign_ipv6 are both false".into()));
        }
        Ok(ipam)
    }

    /// The datastore selection with the TLS file fields folded in.
    pub fn datastore_selection(&self) -> String {
        let base = self.datastore.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| DEFAULT_DATASTORE.into());
        let tls = [("cacert", &self.etcd_ca_cert_file), ("cert", &self.etcd_cert_file), ("key", &self.etcd_key_file)];
        let mut selection = base;
        for (key, value) in tls {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                let sep = if selection.contains('?') { '&' } else { '?' };
                selection = format!("{selection}{sep}{key}={v}");
            }
        }
        selection
    }

    /// The node's name: `nodename`, else `nodename_file`, else the host name.
    pub fn node_name(&self) -> Result<String> {
        if let Some(name) = self.nodename.as_deref().filter(|n| !n.is_empty()) {
            return Ok(name.to_owned());
        }
        let file = self.nodename_file.as_deref().unwrap_or(Path::new(DEFAULT_NODENAME_FILE));
        match std::fs::read_to_string(file) {
            Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
            Err(e) if self.nodename_file.is_some() => {
                return Err(Error::Io(format!("reading nodename_file {}: {e}", file.display())));
            }
            _ => {}
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_err(|e| Error::Io(format!("reading the host name: {e}")))?;
        Ok(host.trim().to_lowercase())
    }

    /// The pod MTU: `mtu`, else the value the agent published, else 1500.
    pub fn pod_mtu(&self) -> Result<u32> {
        if self.mtu != 0 {
            if !(68..=65535).contains(&self.mtu) {
                return Err(Error::InvalidConfig(format!("mtu {} is outside 68-65535", self.mtu)));
            }
            return Ok(self.mtu);
        }
        let file = self.mtu_file.as_deref().unwrap_or(Path::new(DEFAULT_MTU_FILE));
        match std::fs::read_to_string(file) {
            Ok(text) => text.trim().parse::<u32>().ok().filter(|m| (68..=65535).contains(m)).ok_or_else(|| {
                Error::InvalidConfig(format!("{} holds \"{}\", not an MTU", file.display(), text.trim()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FALLBACK_MTU),
            Err(e) => Err(Error::Io(format!("reading {}: {e}", file.display()))),
        }
    }

    /// Where endpoint records go.
    pub fn record_dir(&self) -> PathBuf {
        self.endpoint_record_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_RECORD_DIR))
    }

    /// The previous result, parsed.
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        self.prev_result.as_ref().map(|v| CniResult::from_json(v).map_err(|e| e.context("prevResult"))).transpose()
    }

    /// The valid attachments of a GC request, from either field name.
    pub fn gc_attachments(&self) -> Vec<Attachment> {
        let mut all = self.valid_attachments.clone().unwrap_or_default();
        all.extend(self.attachments.clone().unwrap_or_default());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calico_style_config_is_read() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"brindle","mtu":1440,
                "datastore":"etcd://10.0.0.1:2379","etcd_ca_cert_file":"/etc/ca.pem","nodename":"n1",
                "ipam":{"type":"brindle-ipam","assign_ipv4":"true","assign_ipv6":"true","ipv6_pools":["fd00::/48"]},
                "capabilities":{"portMappings":true}}"#,
        )
        .unwrap();
        assert_eq!(conf.pod_mtu().unwrap(), 1440);
        assert_eq!(conf.datastore_selection(), "etcd://10.0.0.1:2379?cacert=/etc/ca.pem");
        assert_eq!(conf.node_name().unwrap(), "n1");
        let ipam = conf.brindle_ipam().unwrap();
        assert!(ipam.assign_ipv4 && ipam.assign_ipv6);
        assert_eq!(ipam.ipv6_pools, ["fd00::/48"]);
    }

    #[test]
    fn host_local_fields_in_brindle_ipam_are_unsupported() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"brindle-ipam","subnet":"10.0.0.0/24"}}"#,
        )
        .unwrap();
        let e = conf.brindle_ipam().unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("ipam.subnet"), "{e}");
    }

    #[test]
    fn broken_configs_say_what_is_wrong() {
        assert_eq!(NetConf::parse(b"").unwrap_err().code(), 6);
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code(), 6);
        assert_eq!(NetConf::parse(br#"{"name":"n"}"#).unwrap_err().code(), 7);
        let conf =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"brindle-ipam","assign_ipv4":"yes"}}"#)
                .unwrap();
        let e = conf.brindle_ipam().unwrap_err();
        assert!(e.to_string().contains("assign_ipv4"), "{e}");
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","mtu":20}"#).unwrap();
        assert_eq!(conf.pod_mtu().unwrap_err().code(), 7);
    }

    #[test]
    fn gc_accepts_both_attachment_field_names() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
                "cni.dev/attachments":[{"containerID":"b","ifname":"eth0"}]}"#,
        )
        .unwrap();
        let ids: Vec<_> = conf.gc_attachments().into_iter().map(|a| a.container_id).collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
