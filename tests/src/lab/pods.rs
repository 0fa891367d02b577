//! Pods beyond the ones `up` makes: added to a node with a namespace, labels and small servers
//! on chosen ports, deleted again, and probed port by port from every pod to every pod (what
//! network policy tests ask of a lab).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use brindle_datastore::resource::{EndpointPort, WorkloadEndpoint};

use super::state::{LabNode, LabPod, LabState};
use super::{in_netns, kube_pods, with_client, with_kubernetes_client};
use crate::cni::{Attachment, exec_in, node_conf};
use crate::netns::{Netns, enter};
use crate::process::terminate;
use crate::wait::wait_for;

/// How long a probe waits for a connection or an answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// What a server answers on every port.
const ANSWER: &[u8] = b"brindle-lab\n";

/// A transport and port, written `tcp:80` or `udp:53` (also in the lab's state file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    /// UDP rather than TCP.
    pub udp: bool,
    /// The port number.
    pub number: u16,
}

impl serde::Serialize for Port {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Port {
    type Err = String;

    fn from_str(text: &str) -> Result<Port, String> {
        let (proto, number) = text.split_once(':').ok_or_else(|| format!("{text:?}: write tcp:PORT or udp:PORT"))?;
        let udp = match proto {
            "tcp" => false,
            "udp" => true,
            _ => return Err(format!("{text:?}: the transport is tcp or udp")),
        };
        let number =
            number.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| format!("{text:?}: no port number"))?;
        Ok(Port { udp, number })
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", if self.udp { "udp" } else { "tcp" }, self.number)
    }
}

/// The address family a probe reaches pods at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    /// Pods' IPv4 addresses.
    #[default]
    Ipv4,
    /// Pods' IPv6 addresses (a dual-stack lab).
    Ipv6,
}

impl LabPod {
    /// The pod's address of `family`, if it has one.
    pub fn address(&self, family: Family) -> Option<std::net::IpAddr> {
        match family {
            Family::Ipv4 => self.ip.parse().ok(),
            Family::Ipv6 => self.ipv6.as_deref()?.parse().ok(),
        }
    }
}

/// A pod to add.
#[derive(Debug, Clone, Default)]
pub struct NewPod {
    /// Its Kubernetes namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The index of its node.
    pub node: usize,
    /// Its labels (on its WorkloadEndpoint).
    pub labels: BTreeMap<String, String>,
    /// Its service account (on its WorkloadEndpoint).
    pub service_account: Option<String>,
    /// The ports a server in it answers on.
    pub serve: Vec<Port>,
}

/// Splits `NAMESPACE/NAME` (a bare name is in `default`).
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

/// Wires `pod` into its node through the CNI plugin as a runtime would, labels its
/// WorkloadEndpoint, and starts its server. Records it in `state`; on failure nothing of it
/// is left.
pub fn add(state: &mut LabState, pod: &NewPod) -> anyhow::Result<()> {
    let key = format!("{}/{}", pod.namespace, pod.name);
    if state.pods.iter().any(|p| p.key() == key) {
        bail!("pod {key} exists in this lab");
    }
    let Some(node) = state.nodes.get(pod.node) else {
        bail!("no node {} in this lab (it has {})", pod.node, state.nodes.len())
    };
    // The first namespace name no pod of the lab has (pods come and go).
    let index = (0u128..).find(|i| !state.pods.iter().any(|p| p.netns == format!("{}-p{i}", state.name))).unwrap_or(0);
    let netns = Netns::named(&format!("{}-p{}", state.name, index))?;
    // 64 hex digits, as runtimes make them, told apart by their first 16 (all a block records).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let container_id = format!("{:08x}{:08x}{:048x}", std::process::id(), index, now.as_nanos());
    let attachment = Attachment {
        container_id: container_id.clone(),
        netns: netns.path(),
        ifname: "eth0".into(),
        pod_namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
    };
    let mut conf = pod_conf(state, node);
    if state.options.ipv6 {
        conf["ipam"]["assign_ipv6"] = "true".into();
    }
    let bin_dir = state.bin_dir.display().to_string();
    if on_kubernetes(state) {
        let ports = named_ports(&pod.serve);
        let spec = kube_pods::PodSpec {
            namespace: &pod.namespace,
            name: &pod.name,
            node: &node.name,
            labels: &pod.labels,
            service_account: pod.service_account.as_deref(),
            ports: &ports,
        };
        with_kube(state, async |kube| kube_pods::create(&kube, &spec).await)?;
    }
    let added = exec_in(&node.netns, &state.bin_dir.join("brindle"), "ADD", &conf, &attachment, &bin_dir)
        .and_then(|outcome| outcome.into_result())
        .with_context(|| format!("CNI ADD for {key} on {}", node.name));
    let result = match added {
        Ok(result) => result,
        Err(e) => {
            forget_pod(state, &pod.namespace, &pod.name);
            return Err(e);
        }
    };
    let addresses: Vec<std::net::IpAddr> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect();
    let ip = addresses
        .iter()
        .find(|a| a.is_ipv4())
        .with_context(|| format!("CNI ADD for {key} gave no IPv4 address: {result}"))?
        .to_string();
    let ipv6 = addresses.iter().find(|a| a.is_ipv6()).map(ToString::to_string);
    if state.options.ipv6 && ipv6.is_none() {
        bail!("CNI ADD for {key} gave no IPv6 address in a dual-stack lab: {result}");
    }
    let mut added = LabPod {
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        node: pod.node,
        netns: netns.name.clone(),
        ip,
        ipv6,
        container_id,
        server_pid: None,
        labels: pod.labels.clone(),
        service_account: pod.service_account.clone(),
        serve: pod.serve.clone(),
    };
    let host_interface = result["interfaces"][0]["name"].as_str().unwrap_or_default().to_owned();
    let finish = (|| {
        describe(state, &added, &pod.labels, pod.service_account.as_deref(), &pod.serve)?;
        if !pod.serve.is_empty() {
            added.server_pid = Some(serve_in(state, &netns.name, &pod.serve)?);
        }
        wait_for_policy(&node.netns, &added.ip, &host_interface)
    })();
    if let Err(e) = finish {
        if let Some(pid) = added.server_pid {
            terminate(pid, "brindle-lab");
        }
        let _ = exec_in(&node.netns, &state.bin_dir.join("brindle"), "DEL", &conf, &attachment, &bin_dir);
        forget_pod(state, &pod.namespace, &pod.name);
        return Err(e);
    }
    netns.keep();
    state.pods.push(added);
    Ok(())
}

/// Waits until the node's agent dispatches the pod's traffic to its policy (until then it is
/// dropped), as a user would before sending from it: the pod's address on its veth is in a
/// set that the dispatch of workloads' traffic matches.
fn wait_for_policy(node_netns: &str, ip: &str, host_interface: &str) -> anyhow::Result<()> {
    let member = format!("{ip},{host_interface}");
    let programmed = || {
        let sets = Command::new("ipset").arg("save").output().map(|out| out.stdout).unwrap_or_default();
        let sets = String::from_utf8_lossy(&sets);
        ["iptables-nft-save", "iptables-legacy-save"].iter().any(|save| {
            Command::new(save)
                .args(["-t", "filter"])
                .output()
                .is_ok_and(|out| dispatched(&sets, &String::from_utf8_lossy(&out.stdout), &member))
        })
    };
    in_netns(node_netns, || {
        wait_for(&format!("the agent to program the policy of {host_interface}"), Duration::from_secs(30), programmed)
    })?
}

/// Whether `member` (an endpoint's `address,veth`) is in a set, in `sets` (`ipset save`), that
/// the dispatch of workloads' traffic in `filter` (`iptables-save -t filter`) matches: the
/// endpoint's traffic reaches its policy.
pub fn dispatched(sets: &str, filter: &str, member: &str) -> bool {
    sets.lines()
        .filter_map(|l| l.strip_prefix("add ")?.split_once(' '))
        .any(|(set, m)| m == member && filter.contains(&format!("--match-set {set} src,src")))
}

/// The named ports of a pod serving `serve`: `serve-80-tcp` for `tcp:80`, as Kubernetes' own
/// policy tests name them.
fn named_ports(serve: &[Port]) -> Vec<EndpointPort> {
    serve
        .iter()
        .map(|p| {
            let protocol = if p.udp { "UDP" } else { "TCP" };
            EndpointPort {
                name: format!("serve-{}-{}", p.number, protocol.to_ascii_lowercase()),
                protocol: protocol.into(),
                port: p.number,
            }
        })
        .collect()
}

/// Whether the lab has a Kubernetes API (its pods are then Kubernetes Pods).
fn on_kubernetes(state: &LabState) -> bool {
    state.options.datastore.has_kubernetes()
}

/// Runs `work` with a client of the lab's Kubernetes API.
fn with_kube<T: Send>(
    state: &LabState,
    work: impl AsyncFnOnce(kube::Client) -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    with_kubernetes_client(state, async |client| {
        let kube = client.store().kubernetes().context("the lab has no Kubernetes API")?.client();
        work(kube).await
    })
}

/// The CNI configuration of a pod on `node`: the node's, with the lab's Kubernetes API (where
/// the plugin reads the Pod) when it is not the datastore.
fn pod_conf(state: &LabState, node: &LabNode) -> serde_json::Value {
    let mut conf = node_conf(&state.datastore, &node.state_dir);
    if let Some(kubeconfig) = state.kubeconfig() {
        conf["kubernetes"] = serde_json::json!({"kubeconfig": kubeconfig});
    }
    conf
}

/// Deletes the pod's Kubernetes Pod, on a Kubernetes lab; a failure is only reported.
fn forget_pod(state: &LabState, namespace: &str, name: &str) {
    if on_kubernetes(state)
        && let Err(e) = with_kube(state, async |kube| kube_pods::delete(&kube, namespace, name).await)
    {
        eprintln!("brindle-lab: could not delete Pod {namespace}/{name}: {e:#}");
    }
}

/// Gives the pod's WorkloadEndpoint its labels, service account and named ports. On a
/// Kubernetes lab the Pod is relabelled, and this returns once the node's agent has carried the
/// labels to the endpoint; elsewhere the endpoint is written as the Kubernetes integration
/// would from the Pod.
fn describe(
    state: &LabState,
    pod: &LabPod,
    labels: &BTreeMap<String, String>,
    service_account: Option<&str>,
    serve: &[Port],
) -> anyhow::Result<()> {
    let (namespace, name, labels) = (pod.namespace.clone(), pod.name.clone(), labels.clone());
    if on_kubernetes(state) {
        with_kube(state, async |kube| kube_pods::relabel(&kube, &namespace, &name, &labels).await)?;
        let followed = || {
            let (namespace, name, labels) = (namespace.clone(), name.clone(), labels.clone());
            with_client(state, async move |client| {
                let (endpoints, _) = client.list::<WorkloadEndpoint>().await?;
                Ok(endpoints.iter().any(|e| {
                    e.metadata.namespace.as_deref() == Some(namespace.as_str())
                        && e.spec.pod == name
                        && e.metadata.labels == labels
                }))
            })
            .unwrap_or(false)
        };
        return wait_for(
            &format!("the endpoint of {namespace}/{name} to take its Pod's labels"),
            Duration::from_secs(30),
            followed,
        );
    }
    let service_account = service_account.map(str::to_owned);
    let ports = named_ports(serve);
    with_client(state, |client| async move {
        let (endpoints, _) = client.list::<WorkloadEndpoint>().await?;
        let mut endpoint = endpoints
            .into_iter()
            .find(|e| e.metadata.namespace.as_deref() == Some(namespace.as_str()) && e.spec.pod == name)
            .with_context(|| format!("no WorkloadEndpoint for pod {namespace}/{name}"))?;
        endpoint.metadata.labels = labels;
        endpoint.spec.service_account_name = service_account;
        endpoint.spec.ports = ports;
        client.update(endpoint).await?;
        Ok(())
    })
}

/// Gives pod `key` (`namespace/name`) exactly `labels`.
pub fn relabel(state: &mut LabState, key: &str, labels: BTreeMap<String, String>) -> anyhow::Result<()> {
    let Some(at) = state.pods.iter().position(|p| p.key() == key) else { bail!("no pod {key} in this lab") };
    let pod = &mut state.pods[at];
    pod.labels = labels;
    let pod = pod.clone();
    describe(state, &pod, &pod.labels, pod.service_account.as_deref(), &pod.serve)
}

/// Starts `brindle-lab serve` (beside the lab's binaries, or this program) in namespace
/// `netns`; returns its PID once it answers.
fn serve_in(state: &LabState, netns: &str, ports: &[Port]) -> anyhow::Result<u32> {
    let me = std::env::current_exe()?;
    let program = match me.file_name().and_then(|n| n.to_str()) {
        Some("brindle-lab") => me.clone(),
        _ => state.bin_dir.join("brindle-lab"),
    };
    let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
    let child = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(&program)
        .args(["serve", "--ports", &list.join(",")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} serve", program.display()))?;
    let pid = child.id();
    let first = ports[0];
    let up = crate::wait::wait_for("the pod's server to answer", Duration::from_secs(5), || {
        in_netns(netns, || answers("127.0.0.1".parse().expect("an address"), first)).unwrap_or(false)
    });
    if let Err(e) = up {
        terminate(pid, "brindle-lab");
        return Err(e);
    }
    Ok(pid)
}

/// Stops the pod's server, deletes it through the CNI plugin and removes its namespace.
pub fn delete(state: &mut LabState, key: &str) -> anyhow::Result<()> {
    let (namespace, name) = split_key(key);
    let at = state
        .pods
        .iter()
        .position(|p| p.namespace == namespace && p.name == name)
        .with_context(|| format!("no pod {namespace}/{name} in this lab"))?;
    let pod = state.pods[at].clone();
    if let Some(pid) = pod.server_pid {
        terminate(pid, "brindle-lab");
    }
    let node = &state.nodes[pod.node];
    let attachment = Attachment {
        container_id: pod.container_id.clone(),
        netns: std::path::PathBuf::from(format!("/var/run/netns/{}", pod.netns)),
        ifname: "eth0".into(),
        pod_namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
    };
    let conf = pod_conf(state, node);
    exec_in(
        &node.netns,
        &state.bin_dir.join("brindle"),
        "DEL",
        &conf,
        &attachment,
        &state.bin_dir.display().to_string(),
    )?
    .into_result()
    .with_context(|| format!("CNI DEL for {key}"))?;
    Netns::remove(&pod.netns);
    forget_pod(state, &pod.namespace, &pod.name);
    state.pods.remove(at);
    Ok(())
}

/// Answers on every port, over IPv4 and IPv6 alike, until killed: TCP connections get
/// [`ANSWER`], UDP datagrams get it back.
pub fn serve(ports: &[Port]) -> anyhow::Result<()> {
    let mut workers = Vec::new();
    for port in ports {
        // `[::]` takes IPv4 too (as IPv4-mapped addresses): Linux leaves IPV6_V6ONLY off.
        let address = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port.number));
        if port.udp {
            let socket = UdpSocket::bind(address).with_context(|| format!("binding {port}"))?;
            workers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(ANSWER, from);
                }
            }));
        } else {
            let listener = TcpListener::bind(address).with_context(|| format!("binding {port}"))?;
            workers.push(std::thread::spawn(move || {
                for mut conn in listener.incoming().flatten() {
                    let _ = conn.write_all(ANSWER);
                }
            }));
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

/// Whether `to` answers on `port` from the calling thread's namespace within the timeout.
fn answers(to: std::net::IpAddr, port: Port) -> bool {
    let address = SocketAddr::new(to, port.number);
    let mut answer = [0u8; 32];
    if port.udp {
        let any: std::net::IpAddr =
            if to.is_ipv4() { [0, 0, 0, 0].into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
        let Ok(socket) = UdpSocket::bind(SocketAddr::new(any, 0)) else { return false };
        let _ = socket.set_read_timeout(Some(PROBE_TIMEOUT));
        // A datagram may be lost: ask twice.
        (0..2).any(|_| {
            socket.send_to(b"probe", address).is_ok()
                && socket.recv_from(&mut answer).is_ok_and(|(n, from)| from == address && &answer[..n] == ANSWER)
        })
    } else {
        let Ok(mut conn) = TcpStream::connect_timeout(&address, PROBE_TIMEOUT) else { return false };
        let _ = conn.set_read_timeout(Some(PROBE_TIMEOUT));
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        got == ANSWER
    }
}

/// Which pod reached which on one port: `reached[from][to]`, keyed `namespace/name`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Probe {
    /// The port probed.
    pub port: String,
    /// From pod, to pod: whether it answered.
    pub results: BTreeMap<String, BTreeMap<String, bool>>,
}

impl Probe {
    /// Probes `port` at `family`'s addresses from every pod to every other pod that has one,
    /// every pair at once (each on a thread inside the source pod's namespace), so a probe
    /// takes one timeout however many pods.
    pub fn measure(state: &LabState, port: Port, family: Family) -> anyhow::Result<Probe> {
        let pods = &state.pods;
        let rows: Vec<anyhow::Result<(String, BTreeMap<String, bool>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = pods
                .iter()
                .map(|from| {
                    scope.spawn(move || {
                        enter(&std::path::PathBuf::from(format!("/var/run/netns/{}", from.netns)))?;
                        // Threads made here start in the pod's namespace too.
                        let row = std::thread::scope(|inner| {
                            let probes: Vec<_> = pods
                                .iter()
                                .filter(|to| to.key() != from.key())
                                .filter_map(|to| Some((to.key(), to.address(family)?)))
                                .map(|(to, ip)| inner.spawn(move || (to, answers(ip, port))))
                                .collect();
                            probes.into_iter().filter_map(|p| p.join().ok()).collect()
                        });
                        anyhow::Ok((from.key(), row))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a probe thread panicked"))))
                .collect()
        });
        Ok(Probe { port: port.to_string(), results: rows.into_iter().collect::<anyhow::Result<_>>()? })
    }

    /// The matrix as a table: rows probe columns.
    pub fn render(&self) -> String {
        let names: Vec<&String> = self.results.keys().collect();
        let width = names.iter().map(|n| n.len()).max().unwrap_or(0).max(4);
        let mut out = format!("{:width$}", self.port);
        for name in &names {
            out += &format!("  {name:>w$}", w = name.len());
        }
        out.push('\n');
        for (from, row) in &self.results {
            out += &format!("{from:width$}");
            for to in &names {
                let mark = match row.get(*to) {
                    None => "·",
                    Some(true) => "✓",
                    Some(false) => "✗",
                };
                out += &format!("  {mark:>w$}", w = to.len());
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_written_transport_colon_number() {
        assert_eq!("tcp:80".parse::<Port>(), Ok(Port { udp: false, number: 80 }));
        assert_eq!("udp:53".parse::<Port>().map(|p| p.to_string()), Ok("udp:53".to_owned()));
        for bad in ["80", "sctp:80", "tcp:0", "tcp:http", "tcp:70000"] {
            assert!(bad.parse::<Port>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bare_pod_name_is_in_the_default_namespace() {
        assert_eq!(split_key("x/a"), ("x", "a"));
        assert_eq!(split_key("a"), ("default", "a"));
    }
}
