//! Collects validation problems so one error reports all of them, each naming the resource,
//! the field and the value that was wrong.

use std::fmt;

use ipnetwork::IpNetwork;

use super::Metadata;
use crate::selector::Selector;

/// One thing wrong with a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field's path, e.g. `spec.blockSize`.
    pub field: String,
    /// The offending value as written (empty when the field is missing).
    pub value: String,
    /// What is wrong and, where possible, what would be right.
    pub reason: String,
}

/// Every problem found in one resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// The resource's kind.
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// What is wrong, in field order of discovery.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} \"{}\" is invalid: ", self.kind, self.name)?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if p.value.is_empty() {
                write!(f, "{}: {}", p.field, p.reason)?;
            } else {
                write!(f, "{} \"{}\": {}", p.field, p.value, p.reason)?;
            }
        }
        Ok(())
    }
}

/// Gathers problems while a resource is checked.
#[derive(Debug)]
pub struct Validator {
    error: ValidationError,
}

impl Validator {
    /// Starts checking the resource `kind`/`name`.
    pub fn new(kind: &str, name: &str) -> Self {
        Validator { error: ValidationError { kind: kind.to_owned(), name: name.to_owned(), problems: Vec::new() } }
    }

    /// Records a problem with `field`, whose value is `value`.
    pub fn problem(&mut self, field: &str, value: impl fmt::Display, reason: impl Into<String>) {
        self.error.problems.push(Problem { field: field.to_owned(), value: value.to_string(), reason: reason.into() });
    }

    /// Records a problem when `ok` is false.
    pub fn require(&mut self, ok: bool, field: &str, value: impl fmt::Display, reason: &str) {
        if !ok {
            self.problem(field, value, reason);
        }
    }

    /// Checks a name of another Kubernetes object is a DNS-1123 subdomain.
    pub fn dns_subdomain(&mut self, field: &str, name: &str) {
        self.require(is_dns_subdomain(name), field, name, "must be a Kubernetes object name (a DNS-1123 subdomain)");
    }

    /// Checks a label selector parses.
    pub fn selector(&mut self, field: &str, selector: &str) {
        if let Err(e) = selector.parse::<Selector>() {
            self.problem(field, selector, e.to_string());
        }
    }

    /// Checks a CIDR is a network address (no host bits set).
    pub fn network_address(&mut self, field: &str, cidr: &IpNetwork) {
        let network = IpNetwork::new(cidr.network(), cidr.prefix()).unwrap_or(*cidr);
        if network.ip() != cidr.ip() {
            self.problem(field, cidr, format!("has host bits set; did you mean {network}?"));
        }
    }

    /// Checks an AS number is usable: not 0, not AS_TRANS (23456).
    pub fn as_number(&mut self, field: &str, asn: u32) {
        if asn == 0 || asn == 23456 {
            self.problem(field, asn, "must be a usable AS number (not 0 or AS_TRANS 23456)");
        }
    }

    /// Checks a MAC address is six colon-separated hex octets.
    pub fn mac(&mut self, field: &str, mac: &str) {
        let octets: Vec<&str> = mac.split(':').collect();
        let ok = octets.len() == 6 && octets.iter().all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
        self.require(ok, field, mac, "must be a MAC address like ee:ee:ee:ee:ee:ee");
    }

    /// Checks a named port is an IANA service name: 1-15 lower-case letters, digits and
    /// single inner '-', at least one letter.
    pub fn port_name(&mut self, field: &str, name: &str) {
        let ok = (1..=15).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.chars().any(|c| c.is_ascii_lowercase())
            && !name.starts_with('-')
            && !name.ends_with('-')
            && !name.contains("--");
        self.require(ok, field, name, "must be a port name (1-15 lower-case letters, digits and '-')");
    }

    /// Ends the check: `Ok` when nothing was found.
    pub fn finish(self) -> Result<(), ValidationError> {
        if self.error.problems.is_empty() { Ok(()) } else { Err(self.error) }
    }
}

/// Checks the name (a DNS-1123 subdomain, as Kubernetes requires) and the namespace rule.
pub(crate) fn check_metadata(metadata: &Metadata, namespaced: bool, v: &mut Validator) {
    let name = &metadata.name;
    if name.is_empty() {
        v.problem("metadata.name", "", "is required");
    } else if !is_dns_subdomain(name) {
        v.problem(
            "metadata.name",
            name,
            "must be lower-case letters, digits, '-' and '.', start and end with a letter or digit, at most 253 characters",
        );
    }
    match (&metadata.namespace, namespaced) {
        (None, true) => v.problem("metadata.namespace", "", "is required for this kind"),
        (Some(ns), false) => v.problem("metadata.namespace", ns, "this kind is not namespaced"),
        (Some(ns), true) if !is_dns_subdomain(ns) => {
            v.problem("metadata.namespace", ns, "must be a valid namespace name")
        }
        _ => {}
    }
}

/// Whether `s` can name interfaces, with `*` and `?` as wildcards: something a Linux
/// interface name (no '/' or white space) could match, and BIRD's configuration can carry in
/// a string.
pub(crate) fn is_interface_pattern(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '/'))
}

pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    s.len() <= 253
        && edge_ok(s.chars().next())
        && edge_ok(s.chars().last())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_field_and_value() {
        let mut v = Validator::new("IPPool", "p");
        v.network_address("spec.cidr", &"10.0.0.1/24".parse().unwrap());
        v.as_number("spec.asNumber", 0);
        let err = v.finish().unwrap_err().to_string();
        assert_eq!(
            err,
            "IPPool \"p\" is invalid: spec.cidr \"10.0.0.1/24\": has host bits set; did you mean 10.0.0.0/24?; \
             spec.asNumber \"0\": must be a usable AS number (not 0 or AS_TRANS 23456)"
        );
    }

    #[test]
    fn names_follow_dns_rules() {
        for good in ["a", "node-1", "k8s.node-1.example"] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in ["", "Node1", "-a", "a-", "a_b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
