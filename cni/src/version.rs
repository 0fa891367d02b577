//! CNI spec versions: which ones the plugins speak and what each allows.

use crate::error::{Error, Result};

/// Every version the plugins accept in a config, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version, used when a request does not name one.
pub const LATEST: &str = "1.1.0";

/// A parsed `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(u32, u32, u32);

impl Version {
    /// CHECK exists from here on.
    pub const CHECK: Version = Version(0, 4, 0);
    /// Results without per-address `version` fields, and `interface` as an index.
    pub const V1: Version = Version(1, 0, 0);
    /// GC and STATUS exist from here on.
    pub const GC: Version = Version(1, 1, 0);

    /// Parses and checks that the plugins speak it.
    pub fn supported(text: &str) -> Result<Version> {
        if !SUPPORTED.contains(&text) {
            return Err(Error::IncompatibleVersion(format!(
                "cniVersion \"{text}\" is not supported; supported: {}",
                SUPPORTED.join(", ")
            )));
        }
        let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        Ok(Version(parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
    }

    /// Fails unless this version has `command`, which appeared in `since`.
    pub fn require(self, since: Version, command: &str) -> Result<()> {
        if self < since {
            return Err(Error::IncompatibleVersion(format!(
                "config version {self} does not allow {command} (it needs {since} or newer)"
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_and_gate_commands() {
        let v031 = Version::supported("0.3.1").unwrap();
        assert!(v031.require(Version::CHECK, "CHECK").is_err());
        assert!(Version::supported("0.4.0").unwrap().require(Version::CHECK, "CHECK").is_ok());
        assert!(Version::supported("1.0.0").unwrap().require(Version::GC, "GC").is_err());
        assert!(Version::supported("1.1.0").unwrap().require(Version::GC, "GC").is_ok());
        assert_eq!(Version::supported("0.2.0").unwrap_err().code(), 1);
        assert_eq!(Version::supported("9.9.9").unwrap_err().code(), 1);
    }
}
