//! The CNI error: every failure of either plugin ends here, and this is the one place where a
//! failure becomes a CNI error code (spec section "Error", codes 1-99 reserved by the spec,
//! 100 and up ours).

use std::fmt;

use brindle_datastore::Error as StoreError;
use serde::Serialize;

/// A failure, classified by what the runtime should make of it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config's `cniVersion` is one this plugin does not speak, or the command needs a
    /// newer version (CHECK needs 0.4.0, GC and STATUS need 1.1.0).
    #[error("{0}")]
    IncompatibleVersion(String),
    /// A config field this plugin does not support.
    #[error("unsupported field {field}: {why}")]
    UnsupportedField {
        /// The field's path in the config, e.g. `ipam.subnet`.
        field: String,
        /// What to do instead.
        why: String,
    },
    /// The container or its network namespace does not exist.
    #[error("{0}")]
    UnknownContainer(String),
    /// A required `CNI_*` environment variable is missing or malformed.
    #[error("invalid environment variable {var}: {why}")]
    InvalidEnv {
        /// The variable's name.
        var: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// Reading or writing a file or the kernel failed.
    #[error("{0}")]
    Io(String),
    /// The config on stdin (or a result) is not the JSON it should be.
    #[error("{0}")]
    Decode(String),
    /// The network config is well-formed but wrong.
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    /// A transient failure (the datastore is unreachable, a race was lost too often): the
    /// runtime should try again.
    #[error("{0}")]
    TryAgainLater(String),
    /// STATUS: the plugin cannot serve ADD now (datastore unreachable, no pool with room).
    #[error("{0}")]
    NotAvailable(String),
    /// IPAM has no address to give in the eligible pools.
    #[error("{0}")]
    Exhausted(String),
    /// A Pod's (or its namespace's) annotation for IPAM is malformed or asks for something
    /// not allowed.
    #[error("{on} annotation {annotation}: {why}")]
    InvalidAnnotation {
        /// `Pod` or `namespace`.
        on: &'static str,
        /// The annotation's key.
        annotation: String,
        /// What is wrong with it.
        why: String,
    },
    /// The address a pod asks for (`brindle.io/ipAddrs`) is another's.
    #[error("{0}")]
    AddressTaken(String),
    /// What CHECK found different from the previous result.
    #[error("{0}")]
    CheckFailed(String),
    /// A delegated plugin (another IPAM) failed; its own code and message are kept.
    #[error("{plugin}: {msg}")]
    Delegate {
        /// The delegated plugin's type.
        plugin: String,
        /// Its error code.
        code: u32,
        /// Its message.
        msg: String,
    },
    /// Anything else: a netlink call the kernel refused, an unexpected datastore answer.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion(_) => 1,
            Error::UnsupportedField { .. } => 2,
            Error::UnknownContainer(_) => 3,
            Error::InvalidEnv { .. } => 4,
            Error::Io(_) => 5,
            Error::Decode(_) => 6,
            Error::InvalidConfig(_) | Error::InvalidAnnotation { .. } => 7,
            Error::TryAgainLater(_) => 11,
            Error::NotAvailable(_) => 50,
            Error::Exhausted(_) => 100,
            Error::CheckFailed(_) => 101,
            Error::AddressTaken(_) => 102,
            Error::Delegate { code, .. } => *code,
            Error::Internal(_) => 999,
        }
    }

    /// Adds what was being done to the message.
    pub fn context(self, what: impl fmt::Display) -> Error {
        let wrap = |m: String| format!("{what}: {m}");
        match self {
            Error::IncompatibleVersion(m) => Error::IncompatibleVersion(wrap(m)),
            Error::UnknownContainer(m) => Error::UnknownContainer(wrap(m)),
            Error::Io(m) => Error::Io(wrap(m)),
            Error::Decode(m) => Error::Decode(wrap(m)),
            Error::InvalidConfig(m) => Error::InvalidConfig(wrap(m)),
            Error::TryAgainLater(m) => Error::TryAgainLater(wrap(m)),
            Error::NotAvailable(m) => Error::NotAvailable(wrap(m)),
            Error::Exhausted(m) => Error::Exhausted(wrap(m)),
            Error::CheckFailed(m) => Error::CheckFailed(wrap(m)),
            Error::AddressTaken(m) => Error::AddressTaken(wrap(m)),
            Error::Internal(m) => Error::Internal(wrap(m)),
            Error::Delegate { plugin, code, msg } => Error::Delegate { plugin, code, msg: wrap(msg) },
            other @ (Error::UnsupportedField { .. } | Error::InvalidEnv { .. } | Error::InvalidAnnotation { .. }) => {
                other
            }
        }
    }

    /// The error JSON the spec prescribes, for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: String,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let details = match self {
            Error::UnsupportedField { field, .. } => field.as_str(),
            Error::InvalidEnv { var, .. } => var,
            Error::InvalidAnnotation { annotation, .. } => annotation.as_str(),
            _ => "",
        };
        let wire = Wire { cni_version, code: self.code(), msg: self.to_string(), details };
        serde_json::to_string(&wire).unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", self.code()))
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Conflict { .. } => Error::TryAgainLater(e.to_string()),
            StoreError::Exhausted(_) => Error::Exhausted(e.to_string()),
            StoreError::AddressTaken(_) => Error::AddressTaken(e.to_string()),
            StoreError::Invalid(_) | StoreError::Validation(_) => Error::InvalidConfig(e.to_string()),
            _ => Error::Internal(e.to_string()),
        }
    }
}

impl From<rtnetlink::Error> for Error {
    fn from(e: rtnetlink::Error) -> Self {
        Error::Internal(format!("netlink: {e}"))
    }
}

impl From<brindle_kernel::Error> for Error {
    fn from(e: brindle_kernel::Error) -> Self {
        match e {
            brindle_kernel::Error::Io(m) => Error::Io(m),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

/// Result alias for the plugins.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        assert_eq!(Error::IncompatibleVersion("x".into()).code(), 1);
        assert_eq!(Error::InvalidEnv { var: "CNI_NETNS", why: "is not set".into() }.code(), 4);
        assert_eq!(Error::from(StoreError::Unavailable("etcd".into())).code(), 11);
        assert_eq!(Error::from(StoreError::Exhausted("pool full".into())).code(), 100);
    }

    #[test]
    fn error_json_names_the_variable() {
        let json = Error::InvalidEnv { var: "CNI_IFNAME", why: "is not set".into() }.to_json("1.1.0");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["code"], 4);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["details"], "CNI_IFNAME");
        assert_eq!(v["msg"], "invalid environment variable CNI_IFNAME: is not set");
    }
}
