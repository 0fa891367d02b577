//! The datastore selection string, the one way every brindle program names its backend.
//!
//! ```text
//! etcd://127.0.0.1:2379,10.0.0.2:2379?cacert=/etc/brindle/ca.pem&cert=...&key=...&timeout=5s
//! etcd://127.0.0.1:2379?username=brindle&password=...
//! sqlite:///var/lib/brindle/brindle.db?timeout=5s&poll=100ms
//! kubernetes://                                  (in-cluster, KUBECONFIG or ~/.kube/config)
//! kubernetes:///etc/cni/net.d/brindle-kubeconfig?timeout=5s
//! ```

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::store::DEFAULT_TIMEOUT;
use crate::{Error, Result};

/// The default embedded database file.
pub const DEFAULT_SQLITE_PATH: &str = "/var/lib/brindle/brindle.db";

/// A parsed selection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// A cluster of etcd v3 servers.
    Etcd(EtcdOptions),
    /// An SQLite file on this host.
    Sqlite(SqliteOptions),
    /// The Kubernetes API.
    Kubernetes(KubernetesOptions),
}

/// How to reach the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesOptions {
    /// A kubeconfig file; `None`: the in-cluster service account, `KUBECONFIG`, or
    /// `~/.kube/config`, in that order.
    pub kubeconfig: Option<PathBuf>,
    /// The bound on every call.
    pub timeout: Duration,
}

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `host:port` of every member to try.
    pub endpoints: Vec<String>,
    /// CA bundle that signed the servers' certificates (turns TLS on).
    pub ca_cert: Option<PathBuf>,
    /// Client certificate, for mutual TLS.
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    pub key: Option<PathBuf>,
    /// User for etcd's authentication.
    pub username: Option<String>,
    /// That user's password.
    pub password: Option<String>,
    /// The bound on every call, connection included.
    pub timeout: Duration,
}

/// Where the SQLite database lives and how it is polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// The database file; created with its directory when missing.
    pub path: PathBuf,
    /// The bound on every call, waiting for another process's write lock included.
    pub timeout: Duration,
    /// How often a watch looks for new revisions.
    pub poll_interval: Duration,
    /// How many revisions of history are kept for watches to resume from.
    pub history: i64,
}

impl SqliteOptions {
    /// Options for the file at `path`, with the defaults for everything else.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            timeout: DEFAULT_TIMEOUT,
            poll_interval: Duration::from_millis(100),
            history: 10_000,
        }
    }
}

impl EtcdOptions {
    /// Options for plain-text etcd at these endpoints, defaults for everything else.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ca_cert: None,
            cert: None,
            key: None,
            username: None,
            password: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl FromStr for Selection {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |why: String| Error::Invalid(format!("datastore \"{s}\": {why}"));
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| invalid("expected etcd://host:port, sqlite:///path or kubernetes://[/kubeconfig]".into()))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let params = parse_query(query).map_err(invalid)?;
        match scheme {
            "kubernetes" => {
                let mut options = KubernetesOptions {
                    kubeconfig: (!location.is_empty()).then(|| PathBuf::from(location)),
                    timeout: DEFAULT_TIMEOUT,
                };
                for (name, value) in params {
                    match name {
                        "timeout" => options.timeout = parse_duration(name, value).map_err(invalid)?,
                        _ => return Err(invalid(format!("unknown option \"{name}\""))),
                    }
                }
                Ok(Selection::Kubernetes(options))
            }
            "etcd" => {
                let mut options = EtcdOptions::new(location.split(',').filter(|e| !e.is_empty()).map(str::to_owned));
                if options.endpoints.is_empty() {
                    return Err(invalid("no etcd endpoint given".into()));
                }
                for endpoint in &options.endpoints {
                    if !endpoint.contains(':') {
                        return Err(invalid(format!("endpoint \"{endpoint}\" has no port")));
                    }
                }
                for (name, value) in params {
                    match name {
                        "cacert" => options.ca_cert = Some(value.into()),
                        "cert" => options.cert = Some(value.into()),
                        "key" => options.key = Some(value.into()),
                        "username" => options.username = Some(value.to_owned()),
                        "password" => options.password = Some(value.to_owned()),
                        "timeout" => options.timeout = parse_duration(name, value).map_err(invalid)?,
                        _ => return Err(invalid(format!("unknown option \"{name}\""))),
                    }
                }
                if options.cert.is_some() != options.key.is_some() {
                    return Err(invalid("cert and key must be given together".into()));
                }
                Ok(Selection::Etcd(options))
            }
            "sqlite" => {
                let path = if location.is_empty() { DEFAULT_SQLITE_PATH } else { location };
                if !path.starts_with('/') {
                    return Err(invalid(format!("path \"{path}\" must be absolute (sqlite:///var/lib/...)")));
                }
                let mut options = SqliteOptions::new(path);
                for (name, value) in params {
                    match name {
                        "timeout" => options.timeout = parse_duration(name, value).map_err(invalid)?,
                        "poll" => options.poll_interval = parse_duration(name, value).map_err(invalid)?,
                        "history" => {
                            options.history = value
                                .parse()
                                .ok()
                                .filter(|h| *h > 0)
                                .ok_or_else(|| invalid(format!("history \"{value}\" is not a positive number")))?
                        }
                        _ => return Err(invalid(format!("unknown option \"{name}\""))),
                    }
                }
                Ok(Selection::Sqlite(options))
            }
            other => Err(invalid(format!("unknown scheme \"{other}\" (etcd, sqlite or kubernetes)"))),
        }
    }
}

fn parse_query(query: &str) -> Result<Vec<(&str, &str)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').ok_or_else(|| format!("option \"{pair}\" has no value (name=value)")))
        .collect()
}

fn parse_duration(name: &str, value: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(value).map_err(|e| format!("{name} \"{value}\": {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_with_two_endpoints_and_tls() {
        let s: Selection =
            "etcd://10.0.0.1:2379,10.0.0.2:2379?cacert=/ca.pem&cert=/c.pem&key=/k.pem&timeout=2s".parse().unwrap();
        let Selection::Etcd(o) = s else { panic!("not etcd") };
        assert_eq!(o.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(o.ca_cert, Some("/ca.pem".into()));
        assert_eq!(o.timeout, Duration::from_secs(2));
    }

    #[test]
    fn kubernetes_in_cluster_or_with_a_kubeconfig() {
        let Selection::Kubernetes(o) = "kubernetes://".parse().unwrap() else { panic!("not kubernetes") };
        assert_eq!((o.kubeconfig, o.timeout), (None, DEFAULT_TIMEOUT));
        let s: Selection = "kubernetes:///etc/cni/net.d/brindle-kubeconfig?timeout=3s".parse().unwrap();
        let Selection::Kubernetes(o) = s else { panic!("not kubernetes") };
        assert_eq!(o.kubeconfig, Some("/etc/cni/net.d/brindle-kubeconfig".into()));
        assert_eq!(o.timeout, Duration::from_secs(3));
        let err = "kubernetes://?poll=1s".parse::<Selection>().unwrap_err().to_string();
        assert!(err.contains("unknown option \"poll\""), "{err}");
    }

    #[test]
    fn sqlite_defaults_to_the_embedded_path() {
        let s: Selection = "sqlite://".parse().unwrap();
        assert_eq!(s, Selection::Sqlite(SqliteOptions::new(DEFAULT_SQLITE_PATH)));
    }

    #[test]
    fn errors_name_the_problem() {
        for (input, needle) in [
            ("mysql://x", "unknown scheme \"mysql\""),
            ("etcd://", "no etcd endpoint"),
            ("etcd://host", "has no port"),
            ("etcd://h:1?cert=/c", "cert and key"),
            ("etcd://h:1?colour=red", "unknown option \"colour\""),
            ("sqlite://relative.db", "must be absolute"),
            ("sqlite:///x.db?poll=soon", "poll \"soon\""),
            ("/var/lib/x.db", "expected etcd://"),
        ] {
            let err = input.parse::<Selection>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
    }
}
