//! Where brindlectl finds the datastore and the local node: the `--datastore` flag, the
//! `BRINDLE_DATASTORE` environment variable, or the config file, in that order.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

/// The config file read when neither the flag nor the variable names a datastore.
pub const DEFAULT_CONFIG: &str = "/etc/brindle/brindlectl.yaml";

/// The config file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// A datastore selection (`kubernetes://...`, `etcd://...` or `sqlite://...`).
    datastore: Option<String>,
}

/// The datastore selection: `flag_or_env` if given, else the config file's, else the default
/// every brindle program shares.
pub fn datastore(flag_or_env: Option<&str>, config: &Path) -> anyhow::Result<String> {
    if let Some(selection) = flag_or_env {
        return Ok(selection.to_owned());
    }
    let text = match std::fs::read_to_string(config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", config.display())),
    };
    let file: ConfigFile = if text.trim().is_empty() {
        ConfigFile::default()
    } else {
        serde_saphyr::from_str(&text).with_context(|| format!("{} is not a brindlectl config", config.display()))?
    };
    Ok(file.datastore.unwrap_or_else(|| brindle_cni::config::DEFAULT_DATASTORE.to_owned()))
}

/// This machine's node name: `NODENAME`, the agent's node-name file, or the host name.
pub fn local_node() -> Option<String> {
    if let Ok(name) = std::env::var("NODENAME")
        && !name.is_empty()
    {
        return Some(name);
    }
    for file in [brindle_cni::config::DEFAULT_NODENAME_FILE, "/etc/hostname"] {
        if let Ok(name) = std::fs::read_to_string(file)
            && !name.trim().is_empty()
        {
            return Some(name.trim().to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_file_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("brindlectl.yaml");
        assert_eq!(datastore(None, &config).unwrap(), brindle_cni::config::DEFAULT_DATASTORE);
        std::fs::write(&config, "datastore: etcd://10.0.0.1:2379\n").unwrap();
        assert_eq!(datastore(None, &config).unwrap(), "etcd://10.0.0.1:2379");
        assert_eq!(datastore(Some("sqlite:///x.db"), &config).unwrap(), "sqlite:///x.db");
        std::fs::write(&config, "datastor: typo\n").unwrap();
        let err = format!("{:#}", datastore(None, &config).unwrap_err());
        assert!(err.contains("is not a brindlectl config") && err.contains("datastor"), "{err}");
    }
}
