//! A conflist run the way libcni runs it: each plugin gets the list's name and version,
//! `prevResult` from the plugin before it (ADD) or the cached result (CHECK, DEL), and the
//! `runtimeConfig` entries its capabilities ask for; DEL goes in reverse order.

use std::path::Path;

use serde_json::{Map, Value};

use super::{Outcome, Pod, cni_path, exec};

/// A network configuration list.
pub struct ConfList {
    /// The whole list as JSON.
    pub list: Value,
    /// What the runtime knows for capabilities (portMappings, bandwidth, ...).
    pub runtime_config: Value,
}

impl ConfList {
    fn plugin_conf(&self, index: usize, prev: Option<&Value>) -> Value {
        let mut conf = self.list["plugins"][index].clone();
        conf["name"] = self.list["name"].clone();
        conf["cniVersion"] = self.list["cniVersion"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let mut runtime = Map::new();
        if let Some(caps) = conf["capabilities"].as_object() {
            for (cap, enabled) in caps {
                if enabled == &Value::Bool(true) && !self.runtime_config[cap].is_null() {
                    runtime.insert(cap.clone(), self.runtime_config[cap].clone());
                }
            }
        }
        if !runtime.is_empty() {
            conf["runtimeConfig"] = Value::Object(runtime);
        }
        conf
    }

    fn plugins(&self) -> usize {
        self.list["plugins"].as_array().map_or(0, Vec::len)
    }

    fn binary(&self, index: usize) -> String {
        let kind = self.list["plugins"][index]["type"].as_str().expect("plugin type");
        cni_path()
            .split(':')
            .map(|dir| Path::new(dir).join(kind))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("plugin {kind} not in {}", cni_path()))
            .display()
            .to_string()
    }

    /// ADD through every plugin; the last result is the list's result.
    pub fn add(&self, pod: &Pod) -> Result<Value, Outcome> {
        let mut prev: Option<Value> = None;
        for i in 0..self.plugins() {
            let out = exec(&self.binary(i), "ADD", &self.plugin_conf(i, prev.as_ref()), pod);
            if !out.ok {
                return Err(out);
            }
            prev = Some(out.json);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK through every plugin with the cached result.
    pub fn check(&self, pod: &Pod, cached: &Value) -> Result<(), Outcome> {
        (0..self.plugins()).try_for_each(|i| {
            let out = exec(&self.binary(i), "CHECK", &self.plugin_conf(i, Some(cached)), pod);
            if out.ok { Ok(()) } else { Err(out) }
        })
    }

    /// DEL through every plugin, last first.
    pub fn del(&self, pod: &Pod, cached: &Value) -> Result<(), Outcome> {
        (0..self.plugins()).rev().try_for_each(|i| {
            let out = exec(&self.binary(i), "DEL", &self.plugin_conf(i, Some(cached)), pod);
            if out.ok { Ok(()) } else { Err(out) }
        })
    }
}
