//! The ADD result, in the shape of the requested spec version.
//!
//! One internal form (the 1.0.0 shape) is converted on output: 0.3.x and 0.4.0 add a
//! `version` field to each address. Results of delegated plugins, in any of those versions,
//! are read back into the internal form.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::version::Version;

/// An interface the plugin created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The netns path for interfaces inside the container; absent on the host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One address of the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length.
    pub address: IpNetwork,
    /// The gateway, when there is one on the address's subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The destination.
    pub dst: IpNetwork,
    /// The next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings (the plugins pass through what a delegate returned).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A result, independent of the spec version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// Interfaces created.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes inside the container.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Reads a result of any supported version (a `version` field per address is ignored).
    pub fn from_json(value: &Value) -> Result<CniResult> {
        serde_json::from_value(value.clone()).map_err(|e| Error::Decode(format!("result is malformed: {e}")))
    }

    /// The addresses, without prefix lengths.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ips.iter().map(|c| c.address.ip()).collect()
    }

    /// The result as the given version prints it.
    pub fn to_json(&self, version: Version, version_text: &str) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Value::Object(map) = &mut value {
            map.insert("cniVersion".into(), Value::String(version_text.to_owned()));
            if version < Version::V1
                && let Some(Value::Array(ips)) = map.get_mut("ips")
            {
                for (ip, config) in ips.iter_mut().zip(&self.ips) {
                    if let Value::Object(ip) = ip {
                        let family = if config.address.is_ipv4() { "4" } else { "6" };
                        ip.insert("version".into(), Value::String(family.into()));
                    }
                }
            }
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                sandbox: "/var/run/netns/p".into(),
            }],
            ips: vec![
                IpConfig { address: "10.0.0.5/32".parse().unwrap(), gateway: None, interface: Some(0) },
                IpConfig { address: "fd00::5/128".parse().unwrap(), gateway: None, interface: Some(0) },
            ],
            routes: vec![Route { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("169.254.1.1".parse().unwrap()) }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_address_versions() {
        let r = sample();
        let old = r.to_json(Version::supported("0.3.1").unwrap(), "0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert_eq!(old["cniVersion"], "0.3.1");
        let new = r.to_json(Version::supported("1.0.0").unwrap(), "1.0.0");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["ips"][0]["interface"], 0);
        // Either form reads back to the same result.
        assert_eq!(CniResult::from_json(&old).unwrap(), r);
        assert_eq!(CniResult::from_json(&new).unwrap(), r);
    }

    #[test]
    fn reads_a_host_local_result() {
        let v: Value = serde_json::from_str(
            r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.2/24","gateway":"10.1.0.1"}],"dns":{}}"#,
        )
        .unwrap();
        let r = CniResult::from_json(&v).unwrap();
        assert_eq!(r.ips[0].gateway, Some("10.1.0.1".parse().unwrap()));
        assert!(CniResult::from_json(&serde_json::json!({"ips":[{"address":"nonsense"}]})).is_err());
    }
}
