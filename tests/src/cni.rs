//! CNI plugins run the way a container runtime runs them: the `CNI_*` environment, the config
//! on stdin, one JSON document back; and network configuration lists with libcni's
//! semantics.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Map, Value};

/// The PATH plugins run with.
pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The CNI configuration a node's runtime uses with brindle: the datastore, and the MTU,
/// node-name files and endpoint records in the node agent's state directory.
pub fn node_conf(datastore: &str, state_dir: &Path) -> Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "brindle",
        "datastore": datastore,
        "nodename_file": state_dir.join("nodename"),
        "mtu_file": state_dir.join("mtu"),
        "endpoint_record_dir": state_dir.join("endpoints"),
        "ipam": {"type": "brindle-ipam"},
    })
}

/// One attachment of a container to a network.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The sandbox's container ID.
    pub container_id: String,
    /// The sandbox's network namespace.
    pub netns: PathBuf,
    /// The interface inside it.
    pub ifname: String,
    /// The pod's Kubernetes namespace.
    pub pod_namespace: String,
    /// The pod's name.
    pub pod_name: String,
}

impl Attachment {
    /// The environment kubelet's runtime sets for this attachment.
    pub fn vars(&self, command: &str, cni_path: &str) -> Vec<(String, String)> {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            self.pod_namespace, self.pod_name, self.container_id
        );
        [
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns.display().to_string()),
            ("CNI_IFNAME", self.ifname.clone()),
            ("CNI_PATH", cni_path.to_owned()),
            ("CNI_ARGS", args),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// A plugin's exit status, its stdout (parsed) and how long it took.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status 0.
    pub ok: bool,
    /// The JSON document on stdout (null when there was none).
    pub json: Value,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// Wall time from start to exit.
    pub elapsed: Duration,
}

impl Outcome {
    /// The result, or an error carrying the plugin's error document.
    pub fn into_result(self) -> anyhow::Result<Value> {
        if !self.ok {
            bail!("plugin failed: {}{}", self.stdout.trim(), self.stderr.trim());
        }
        Ok(self.json)
    }
}

/// Runs a plugin with exactly `vars` (plus PATH) and `stdin`.
pub fn exec_raw(binary: &Path, stdin: &[u8], vars: &[(String, String)]) -> anyhow::Result<Outcome> {
    run_plugin(Command::new(binary), binary, stdin, vars)
}

/// Runs a plugin for an attachment inside the network namespace `host` (a node), as that
/// node's runtime would.
pub fn exec_in(
    host: &str,
    binary: &Path,
    command: &str,
    conf: &Value,
    attachment: &Attachment,
    cni_path: &str,
) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host]).arg(binary);
    run_plugin(cmd, binary, conf.to_string().as_bytes(), &attachment.vars(command, cni_path))
}

fn run_plugin(mut cmd: Command, binary: &Path, stdin: &[u8], vars: &[(String, String)]) -> anyhow::Result<Outcome> {
    cmd.env_clear().env("PATH", PATH).envs(vars.iter().map(|(k, v)| (k, v)));
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    // A plugin that fails on its environment exits before it reads stdin.
    let _ = child.stdin.take().context("plugin stdin")?.write_all(stdin);
    let out = child.wait_with_output().with_context(|| format!("waiting for {}", binary.display()))?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)
            .with_context(|| format!("{} printed more than one JSON document: {stdout}", binary.display()))?
    };
    Ok(Outcome {
        ok: out.status.success(),
        json,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    })
}

/// Runs a plugin for an attachment.
pub fn exec(
    binary: &Path,
    command: &str,
    conf: &Value,
    attachment: &Attachment,
    cni_path: &str,
) -> anyhow::Result<Outcome> {
    exec_raw(binary, conf.to_string().as_bytes(), &attachment.vars(command, cni_path))
}

/// A network configuration list, run as libcni runs one: each plugin gets the list's name
/// and version, `prevResult` from the plugin before it (ADD) or the cached result (CHECK,
/// DEL), and the `runtimeConfig` entries its capabilities ask for; DEL goes last to first.
#[derive(Debug, Clone)]
pub struct ConfList {
    /// The list as JSON (`cniVersion`, `name`, `plugins`).
    pub list: Value,
    /// What the runtime knows for capabilities (portMappings, bandwidth, ...).
    pub runtime_config: Value,
    /// Where plugins are looked up, `:`-separated.
    pub cni_path: String,
    /// The command each plugin runs under (a node's view of its own files), as a runtime on
    /// that node would run it; empty: here, directly.
    pub runner: Vec<OsString>,
    /// Where the files the runner shows at `/` are seen from here, to find plugins in
    /// `cni_path`; `None`: the runner shows this machine's.
    pub root: Option<PathBuf>,
}

impl ConfList {
    /// The config plugin `index` receives.
    pub fn plugin_conf(&self, index: usize, prev: Option<&Value>) -> Value {
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

    fn len(&self) -> usize {
        self.list["plugins"].as_array().map_or(0, Vec::len)
    }

    /// The binary of plugin `index`, found in `cni_path`.
    pub fn binary(&self, index: usize) -> anyhow::Result<PathBuf> {
        let kind = self.list["plugins"][index]["type"].as_str().context("plugin without a type")?;
        let seen = |p: &Path| match &self.root {
            Some(root) => root.join(p.strip_prefix("/").unwrap_or(p)),
            None => p.to_owned(),
        };
        self.cni_path
            .split(':')
            .map(|dir| Path::new(dir).join(kind))
            .find(|p| seen(p).is_file())
            .with_context(|| format!("plugin {kind} not found in {}", self.cni_path))
    }

    fn step(
        &self,
        index: usize,
        command: &str,
        prev: Option<&Value>,
        attachment: &Attachment,
    ) -> anyhow::Result<Outcome> {
        let binary = self.binary(index)?;
        let cmd = match self.runner.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&binary);
                cmd
            }
            None => Command::new(&binary),
        };
        let conf = self.plugin_conf(index, prev).to_string();
        run_plugin(cmd, &binary, conf.as_bytes(), &attachment.vars(command, &self.cni_path))
    }

    /// ADD through every plugin; the last result is the list's. Stops at the first failure
    /// and returns its outcome.
    pub fn add(&self, attachment: &Attachment) -> anyhow::Result<Result<Value, Outcome>> {
        let mut prev: Option<Value> = None;
        for i in 0..self.len() {
            let out = self.step(i, "ADD", prev.as_ref(), attachment)?;
            if !out.ok {
                return Ok(Err(out));
            }
            prev = Some(out.json);
        }
        Ok(Ok(prev.unwrap_or(Value::Null)))
    }

    /// CHECK through every plugin with the cached result.
    pub fn check(&self, attachment: &Attachment, cached: &Value) -> anyhow::Result<Result<(), Outcome>> {
        for i in 0..self.len() {
            let out = self.step(i, "CHECK", Some(cached), attachment)?;
            if !out.ok {
                return Ok(Err(out));
            }
        }
        Ok(Ok(()))
    }

    /// DEL through every plugin, last first.
    pub fn del(&self, attachment: &Attachment, cached: &Value) -> anyhow::Result<Result<(), Outcome>> {
        for i in (0..self.len()).rev() {
            let out = self.step(i, "DEL", Some(cached), attachment)?;
            if !out.ok {
                return Ok(Err(out));
            }
        }
        Ok(Ok(()))
    }
}
