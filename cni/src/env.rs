//! The request as the runtime passes it: `CNI_*` environment variables and kubelet's
//! `CNI_ARGS`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Report the supported versions.
    Version,
    /// Release what no valid attachment holds.
    Gc,
    /// Report whether ADD can be served.
    Status,
}

impl Command {
    fn parse(text: &str) -> Result<Command> {
        Ok(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(Error::InvalidEnv {
                    var: "CNI_COMMAND",
                    why: format!("unknown command \"{other}\" (expected ADD, DEL, CHECK, VERSION, GC or STATUS)"),
                });
            }
        })
    }
}

/// kubelet's attributes of the pod, from `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub infra_container_id: Option<String>,
}

impl PodArgs {
    /// Parses `KEY=VALUE;KEY=VALUE`. Unknown keys are an error unless `IgnoreUnknown` is true,
    /// as libcni's `LoadArgs` does.
    pub fn parse(text: &str) -> Result<PodArgs> {
        let mut pairs = BTreeMap::new();
        for item in text.split(';').filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| Error::InvalidEnv { var: "CNI_ARGS", why: format!("\"{item}\" is not KEY=VALUE") })?;
            pairs.insert(key, value);
        }
        let ignore_unknown = pairs.remove("IgnoreUnknown").is_some_and(|v| matches!(v, "1" | "true" | "True"));
        let mut take = |key| pairs.remove(key).filter(|v| !v.is_empty()).map(str::to_owned);
        let args = PodArgs {
            namespace: take("K8S_POD_NAMESPACE"),
            name: take("K8S_POD_NAME"),
            infra_container_id: take("K8S_POD_INFRA_CONTAINER_ID"),
        };
        pairs.remove("K8S_POD_UID");
        if !ignore_unknown && let Some(key) = pairs.keys().next() {
            return Err(Error::InvalidEnv {
                var: "CNI_ARGS",
                why: format!("unknown argument \"{key}\" (set IgnoreUnknown=1 to allow it)"),
            });
        }
        Ok(args)
    }
}

/// The spec's rule for `CNI_CONTAINERID`: an alphanumeric character, then any of
/// alphanumerics, `_`, `.` and `-` (ASCII only).
fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Everything a request carries besides the config on stdin.
#[derive(Debug, Clone)]
pub struct Request {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the path of the container's network namespace.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_PATH`: where delegated plugins are looked for.
    pub path: Vec<PathBuf>,
    /// `CNI_ARGS`.
    pub pod: PodArgs,
}

impl Request {
    /// Reads the request from a variable lookup (`std::env::var` in the binaries). Which
    /// variables are required depends on the command, as the spec says.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Request> {
        let command = Command::parse(
            &var("CNI_COMMAND").ok_or(Error::InvalidEnv { var: "CNI_COMMAND", why: "is not set".into() })?,
        )?;
        let required = |name: &'static str, needed: bool| -> Result<String> {
            match var(name).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v),
                None if needed => Err(Error::InvalidEnv { var: name, why: "is not set".into() }),
                None => Ok(String::new()),
            }
        };
        use Command::*;
        let attachment = matches!(command, Add | Del | Check);
        let container_id = required("CNI_CONTAINERID", attachment)?;
        let netns = required("CNI_NETNS", matches!(command, Add | Check))?;
        let ifname = required("CNI_IFNAME", attachment)?;
        if !ifname.is_empty() && (ifname.len() > 15 || ifname.contains(['/', ' ']) || ifname == "." || ifname == "..") {
            return Err(Error::InvalidEnv {
                var: "CNI_IFNAME",
                why: format!("\"{ifname}\" is not a valid interface name"),
            });
        }
        if !container_id.is_empty() && !valid_container_id(&container_id) {
            return Err(Error::InvalidEnv {
                var: "CNI_CONTAINERID",
                why: format!(
                    "{container_id:?} is not a container ID: it must start with a letter or digit and hold only \
                     letters, digits, '_', '.' and '-'"
                ),
            });
        }
        let path = required("CNI_PATH", matches!(command, Add | Del | Check | Gc))?;
        Ok(Request {
            command,
            container_id,
            netns: (!netns.is_empty()).then(|| PathBuf::from(netns)),
            ifname,
            path: std::env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()).collect(),
            pod: PodArgs::parse(&var("CNI_ARGS").unwrap_or_default())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn kubelet_args_are_read() {
        let args = PodArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u;X=1",
        )
        .unwrap();
        assert_eq!(args.namespace.as_deref(), Some("default"));
        assert_eq!(args.name.as_deref(), Some("web-0"));
        assert_eq!(args.infra_container_id.as_deref(), Some("abc"));
    }

    #[test]
    fn unknown_args_need_ignore_unknown() {
        let e = PodArgs::parse("K8S_POD_NAME=a;COLOR=blue").unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("COLOR"), "{e}");
        assert_eq!(PodArgs::parse("broken").unwrap_err().code(), 4);
    }

    #[test]
    fn missing_variables_are_named() {
        let e = Request::from_env(env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")]))
            .unwrap_err();
        assert!(matches!(e, Error::InvalidEnv { var: "CNI_NETNS", .. }), "{e}");
        let e = Request::from_env(env(&[])).unwrap_err();
        assert!(matches!(e, Error::InvalidEnv { var: "CNI_COMMAND", .. }), "{e}");
        // DEL may come without a netns (it can be gone already); VERSION needs nothing.
        let del =
            [("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/opt/cni/bin")];
        assert!(Request::from_env(env(&del)).unwrap().netns.is_none());
        assert_eq!(Request::from_env(env(&[("CNI_COMMAND", "VERSION")])).unwrap().command, Command::Version);
        let e = Request::from_env(env(&[("CNI_COMMAND", "ATTACH")])).unwrap_err();
        assert!(e.to_string().contains("ATTACH"), "{e}");
    }

    #[test]
    fn container_ids_follow_the_spec() {
        let del = |id: &str| {
            Request::from_env(env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/opt/cni/bin"),
            ]))
        };
        for good in ["c1", "0f3e", "a_b.c-d", "A"] {
            assert!(del(good).is_ok(), "{good}");
        }
        for bad in ["abc\ndef", "-a", ".hidden", "a/b", "a b", "é", "a\0b"] {
            let e = del(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidEnv { var: "CNI_CONTAINERID", .. }), "{bad:?}: {e}");
        }
    }
}
