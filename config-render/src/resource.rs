//! Template resources: TOML files such as
//!
//! ```toml
//! src = "bird.conf.j2"                 # in the templates directory
//! dest = "/etc/bird/bird.conf"
//! keys = ["/brindle/v1/nodes/", "/brindle/v1/bgppeers/"]
//! mode = "0644"
//! check_cmd = "bird -p -c {src}"       # {src}: the staged file
//! reload_cmd = "birdc configure"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;

/// One template resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateResource {
    /// The template, relative to the templates directory.
    pub src: PathBuf,
    /// The file it becomes.
    pub dest: PathBuf,
    /// The datastore prefixes it depends on.
    pub keys: Vec<String>,
    /// The destination's mode.
    pub mode: u32,
    /// Checks the staged file (`{src}` is its path); a failure keeps the old file.
    pub check_cmd: Option<String>,
    /// Runs after a new file is installed.
    pub reload_cmd: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    src: PathBuf,
    dest: PathBuf,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    check_cmd: Option<String>,
    #[serde(default)]
    reload_cmd: Option<String>,
}

impl TemplateResource {
    /// Reads one resource file.
    pub fn load(path: &Path) -> Result<TemplateResource, Error> {
        let bad = |why: String| Error::Resource { path: path.to_owned(), why };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let raw: Raw = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mode = match raw.mode.as_deref() {
            None => 0o644,
            Some(m) => u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| bad(format!("mode \"{m}\" is not octal")))?,
        };
        if raw.dest.as_os_str().is_empty() {
            return Err(bad("dest is empty".into()));
        }
        Ok(TemplateResource {
            src: raw.src,
            dest: raw.dest,
            keys: raw.keys,
            mode,
            check_cmd: raw.check_cmd,
            reload_cmd: raw.reload_cmd,
        })
    }

    /// Every `*.toml` in `dir`, sorted by name.
    pub fn load_dir(dir: &Path) -> Result<Vec<TemplateResource>, Error> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| Error::Io { what: format!("listing {}", dir.display()), source: e })?;
        let mut paths: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
        paths.sort();
        paths.iter().map(|p| TemplateResource::load(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_with_octal_modes_and_reject_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("bird.toml");
        std::fs::write(&good, "src = \"bird.conf.j2\"\ndest = \"/etc/bird/bird.conf\"\nkeys = [\"/brindle/v1/nodes/\"]\nmode = \"0600\"\ncheck_cmd = \"bird -p -c {src}\"\n").unwrap();
        let r = TemplateResource::load(&good).unwrap();
        assert_eq!((r.mode, r.keys.len()), (0o600, 1));
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "src = \"a\"\ndest = \"b\"\nreload = \"x\"\n").unwrap();
        assert!(TemplateResource::load(&bad).unwrap_err().to_string().contains("reload"));
        std::fs::write(&bad, "src = \"a\"\ndest = \"b\"\nmode = \"999\"\n").unwrap();
        assert!(TemplateResource::load(&bad).unwrap_err().to_string().contains("octal"));
    }
}
