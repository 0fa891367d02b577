//! Network policy checked as Kubernetes' own network policy tests check it: namespaces x, y
//! and z (labelled `ns=<name>`), pods a, b and c in each (labelled `pod=<name>`) spread over
//! three nodes, each answering on TCP 80 and 81 and UDP 80 and 81. For every policy of a
//! catalogue, the whole reachability matrix on every port must equal what an evaluator of the
//! Kubernetes semantics written here, independent of brindle's, says. On both iptables
//! backends, with the objects in a real API server, and on a dual-stack lab at both families'
//! addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use brindle_datastore::resource::{
    AnyResource, IntOrString, KubernetesNetworkPolicy, LabelSelector, NetworkPolicyPeer, NetworkPolicyPort, Resource,
    parse_documents,
};
use brindle_e2e::lab::pods::{self, Family, NewPod, Port, Probe};
use brindle_e2e::lab::{self, Iptables, LabState, Mode, Options, POOL_CIDR, POOL_V6_CIDR, Peering, Store, TestLab};
use brindle_e2e::netns::unique;

const PORTS: [&str; 4] = ["tcp:80", "tcp:81", "udp:80", "udp:81"];
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// How long policy may take to be enforced on every node before the matrix must be right.
const CONVERGENCE: Duration = Duration::from_secs(20);

/// The suite's lab (taken down whatever happens).
struct Cluster {
    lab: TestLab,
    /// The families of addresses the pods have, each checked.
    families: Vec<Family>,
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl Cluster {
    /// Three nodes, namespaces x, y, z and pods a, b, c in each, every pod serving every port.
    /// Dual-stack pods are routed natively, over a BGP mesh; IPv4-only ones through VXLAN.
    fn up(iptables: Iptables, ipv6: bool, datastore: Store) -> Cluster {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_brindle-lab")).parent().unwrap();
        let options = Options {
            nodes: 3,
            pods_per_node: 0,
            mode: if ipv6 { Mode::None } else { Mode::Vxlan },
            peering: if ipv6 { Peering::Mesh } else { Peering::None },
            datastore,
            reflectors: 1,
            iptables,
            ipv6,
        };
        let families = if ipv6 { vec![Family::Ipv4, Family::Ipv6] } else { vec![Family::Ipv4] };
        let mut cluster = Cluster { lab: TestLab::up("np", bin_dir, &options).unwrap(), families };
        let namespaces: String = NAMESPACES
            .iter()
            .map(|ns| format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n"))
            .collect();
        let namespaces = parse_documents(&namespaces).unwrap();
        lab::with_kubernetes_client(&cluster.lab.state, |client| async move {
            for namespace in namespaces {
                namespace.apply(&client).await?;
            }
            Ok(())
        })
        .unwrap();
        let mut node = 0;
        for ns in NAMESPACES {
            for pod in PODS {
                cluster.add_pod(ns, pod, node, &[("pod", pod)]);
                node = (node + 1) % 3;
            }
        }
        cluster
    }

    fn add_pod(&mut self, namespace: &str, name: &str, node: usize, pod_labels: &[(&str, &str)]) {
        self.add_pod_as(namespace, name, node, pod_labels, None);
    }

    fn add_pod_as(
        &mut self,
        namespace: &str,
        name: &str,
        node: usize,
        pod_labels: &[(&str, &str)],
        service_account: Option<&str>,
    ) {
        let new = NewPod {
            namespace: namespace.into(),
            name: name.into(),
            node,
            labels: labels(pod_labels),
            service_account: service_account.map(str::to_owned),
            serve: PORTS.iter().map(|p| p.parse().unwrap()).collect(),
        };
        pods::add(&mut self.lab.state, &new).unwrap();
    }

    /// The world as the evaluator sees it at `family`'s addresses, with `policies`.
    fn world(&self, policies: &[Resource<KubernetesNetworkPolicy>], family: Family) -> World {
        World {
            namespaces: NAMESPACES.iter().map(|ns| ((*ns).to_owned(), labels(&[("ns", ns)]))).collect(),
            pods: self
                .lab
                .state
                .pods
                .iter()
                .map(|p| Pod {
                    key: p.key(),
                    namespace: p.namespace.clone(),
                    labels: p.labels.clone(),
                    ip: p.address(family).unwrap(),
                })
                .collect(),
            policies: policies.to_vec(),
        }
    }

    /// Makes the Kubernetes NetworkPolicies exactly `policies`, where users make them: in the
    /// API server when the lab has one, else in the datastore.
    fn set_policies(&self, policies: &[Resource<KubernetesNetworkPolicy>]) {
        let wanted = policies.to_vec();
        lab::with_kubernetes_client(&self.lab.state, |client| async move {
            let (held, _) = client.list::<KubernetesNetworkPolicy>().await?;
            for old in held {
                let gone = !wanted
                    .iter()
                    .any(|w| w.metadata.name == old.metadata.name && w.metadata.namespace == old.metadata.namespace);
                if gone {
                    client
                        .delete::<KubernetesNetworkPolicy>(old.metadata.namespace.as_deref(), old.name(), None)
                        .await?;
                }
            }
            for policy in wanted {
                client.apply(policy).await?;
            }
            Ok(())
        })
        .unwrap();
    }

    /// Waits until every port's matrix, at the addresses of every family the pods have, is
    /// what Kubernetes' semantics say of `policies`; panics with the differences when it is not
    /// within [`CONVERGENCE`].
    fn expect(&self, case: &str, policies: &[Resource<KubernetesNetworkPolicy>]) {
        std::thread::scope(|scope| {
            for &family in &self.families {
                let world = self.world(policies, family);
                scope.spawn(move || {
                    self.expect_at(case, family, |from, to, port| {
                        let find = |key: &str| world.pods.iter().find(|p| p.key == key).unwrap();
                        world.allowed(find(from), find(to), port)
                    })
                });
            }
        });
    }

    /// Waits until every port's matrix at IPv4 addresses is what `allowed(from, to, port)`
    /// says.
    fn expect_that(&self, case: &str, allowed: impl Fn(&str, &str, Port) -> bool) {
        self.expect_at(case, Family::Ipv4, allowed);
    }

    /// Waits until every port's matrix at `family`'s addresses is what `allowed` says.
    fn expect_at(&self, case: &str, family: Family, allowed: impl Fn(&str, &str, Port) -> bool) {
        let deadline = Instant::now() + CONVERGENCE;
        loop {
            let measured: Vec<(Port, Probe)> = std::thread::scope(|scope| {
                let probes: Vec<_> = PORTS
                    .iter()
                    .map(|p| {
                        let port: Port = p.parse().unwrap();
                        scope.spawn(move || (port, Probe::measure(&self.lab.state, port, family).unwrap()))
                    })
                    .collect();
                probes.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let mut wrong = Vec::new();
            for (port, probe) in &measured {
                for (from, row) in &probe.results {
                    for (to, reached) in row {
                        let want = allowed(from, to, *port);
                        if want != *reached {
                            wrong.push(format!("{port} {from} -> {to}: reached {reached}, expected {want}"));
                        }
                    }
                }
            }
            let complete = measured.iter().all(|(_, p)| p.results.len() == self.lab.state.pods.len());
            if wrong.is_empty() && complete {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "case {case} at {family:?} addresses: {} wrong:\n{}",
                wrong.len(),
                wrong.join("\n")
            );
        }
    }
}

/// A pod as the evaluator sees it.
struct Pod {
    key: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    ip: IpAddr,
}

/// Namespaces, pods and policies: what Kubernetes' semantics decide reachability from, for
/// traffic between pods' addresses of one family.
struct World {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<Pod>,
    policies: Vec<Resource<KubernetesNetworkPolicy>>,
}

/// A label selector, as Kubernetes defines it.
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().all(|r| {
            let value = labels.get(&r.key);
            match r.operator.as_str() {
                "In" => value.is_some_and(|v| r.values.contains(v)),
                "NotIn" => !value.is_some_and(|v| r.values.contains(v)),
                "Exists" => value.is_some(),
                _ => value.is_none(),
            }
        })
}

impl World {
    fn peer_is(&self, peer: &NetworkPolicyPeer, policy_namespace: &str, pod: &Pod) -> bool {
        if let Some(block) = &peer.ip_block {
            return block.cidr.contains(pod.ip) && !block.except.iter().any(|e| e.contains(pod.ip));
        }
        let namespace_ok = match &peer.namespace_selector {
            Some(s) => selects(s, &self.namespaces[&pod.namespace]),
            None => pod.namespace == policy_namespace,
        };
        namespace_ok && peer.pod_selector.as_ref().is_none_or(|s| selects(s, &pod.labels))
    }

    /// Whether `ports` admit `port` on the destination pod (whose named ports are
    /// `serve-<number>-<protocol>`).
    fn port_is(ports: &[NetworkPolicyPort], port: Port) -> bool {
        let protocol = if port.udp { "UDP" } else { "TCP" };
        ports.is_empty()
            || ports.iter().any(|p| {
                p.protocol() == protocol
                    && match &p.port {
                        None => true,
                        Some(IntOrString::Int(first)) => (*first..=p.end_port.unwrap_or(*first)).contains(&port.number),
                        Some(IntOrString::String(name)) => {
                            *name == format!("serve-{}-{}", port.number, protocol.to_ascii_lowercase())
                        }
                    }
            })
    }

    fn allowed(&self, from: &Pod, to: &Pod, port: Port) -> bool {
        let selecting = |pod: &Pod, egress: bool| -> Vec<&KubernetesNetworkPolicy> {
            self.policies
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(pod.namespace.as_str()))
                .filter(|p| selects(&p.spec.pod_selector, &pod.labels))
                .filter(|p| {
                    let (ingress, egress_too) = p.spec.isolates();
                    if egress { egress_too } else { ingress }
                })
                .map(|p| &p.spec)
                .collect()
        };
        let egress = selecting(from, true);
        let egress_ok = egress.is_empty()
            || egress.iter().any(|p| {
                p.egress.iter().any(|rule| {
                    (rule.to.is_empty() || rule.to.iter().any(|peer| self.peer_is(peer, &from.namespace, to)))
                        && Self::port_is(&rule.ports, port)
                })
            });
        let ingress = selecting(to, false);
        let ingress_ok = ingress.is_empty()
            || ingress.iter().any(|p| {
                p.ingress.iter().any(|rule| {
                    (rule.from.is_empty() || rule.from.iter().any(|peer| self.peer_is(peer, &to.namespace, from)))
                        && Self::port_is(&rule.ports, port)
                })
            });
        egress_ok && ingress_ok
    }
}

/// A Kubernetes NetworkPolicy `name` in `namespace` with `spec` (YAML flow style).
fn policy(namespace: &str, name: &str, spec: &str) -> Resource<KubernetesNetworkPolicy> {
    let text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    );
    match parse_documents(&text).unwrap().pop() {
        Some(AnyResource::KubernetesNetworkPolicy(p)) => {
            p.validate().unwrap();
            p
        }
        other => panic!("{other:?}"),
    }
}

/// The catalogue: a name and the policies in force, given the lab (for pod addresses) and the
/// family of addresses its ipBlocks name.
fn catalogue(state: &LabState, family: Family) -> Vec<(&'static str, Vec<Resource<KubernetesNetworkPolicy>>)> {
    let ip = |key: &str| {
        let address = state.pods.iter().find(|p| p.key() == key).unwrap().address(family).unwrap();
        format!("'{address}/{}'", if address.is_ipv4() { 32 } else { 128 })
    };
    let pool = match family {
        Family::Ipv4 => POOL_CIDR,
        Family::Ipv6 => POOL_V6_CIDR,
    };
    let a = "podSelector: {matchLabels: {pod: a}}";
    vec![
        ("no policy", vec![]),
        ("deny all ingress in x", vec![policy("x", "deny", "{podSelector: {}, policyTypes: [Ingress]}")]),
        ("deny all egress in x", vec![policy("x", "deny", "{podSelector: {}, policyTypes: [Egress]}")]),
        ("deny all both ways in x", vec![policy("x", "deny", "{podSelector: {}, policyTypes: [Ingress, Egress]}")]),
        ("allow all ingress in x", vec![policy("x", "allow", "{podSelector: {}, ingress: [{}]}")]),
        ("allow all egress in x", vec![policy("x", "allow", "{podSelector: {}, policyTypes: [Egress], egress: [{}]}")]),
        (
            "allow same namespace",
            vec![policy("x", "same", "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}")],
        ),
        (
            "x/a from x/b only",
            vec![policy(
                "x",
                "p",
                &format!("{{{a}, ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]}}"),
            )],
        ),
        (
            "x/a from namespace y",
            vec![policy(
                "x",
                "p",
                &format!("{{{a}, ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}]}}"),
            )],
        ),
        (
            "x/a from namespaces other than x",
            vec![policy(
                "x",
                "p",
                &format!(
                    "{{{a}, ingress: [{{from: [{{namespaceSelector: {{matchExpressions: [{{key: ns, operator: NotIn, values: [x]}}]}}}}]}}]}}"
                ),
            )],
        ),
        (
            "x/a from pod b of namespace y (both selectors in one peer)",
            vec![policy(
                "x",
                "p",
                &format!(
                    "{{{a}, ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}]}}]}}"
                ),
            )],
        ),
        (
            "x/a from namespace y or pod b (two peers)",
            vec![policy(
                "x",
                "p",
                &format!(
                    "{{{a}, ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}, {{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]}}"
                ),
            )],
        ),
        ("x/a on TCP 80 only", vec![policy("x", "p", &format!("{{{a}, ingress: [{{ports: [{{port: 80}}]}}]}}"))]),
        (
            "x/a on UDP 81 only",
            vec![policy("x", "p", &format!("{{{a}, ingress: [{{ports: [{{protocol: UDP, port: 81}}]}}]}}"))],
        ),
        (
            "x/a on TCP 80 to 81 (endPort)",
            vec![policy("x", "p", &format!("{{{a}, ingress: [{{ports: [{{port: 80, endPort: 81}}]}}]}}"))],
        ),
        (
            "x/a on the named port serve-81-tcp",
            vec![policy("x", "p", &format!("{{{a}, ingress: [{{ports: [{{port: serve-81-tcp}}]}}]}}"))],
        ),
        (
            "x/a on the named port serve-80-udp",
            vec![policy("x", "p", &format!("{{{a}, ingress: [{{ports: [{{protocol: UDP, port: serve-80-udp}}]}}]}}"))],
        ),
        (
            "x/a sends to TCP 80 only",
            vec![policy("x", "p", &format!("{{{a}, policyTypes: [Egress], egress: [{{ports: [{{port: 80}}]}}]}}"))],
        ),
        (
            "x/a sends to namespace y only",
            vec![policy(
                "x",
                "p",
                &format!(
                    "{{{a}, policyTypes: [Egress], egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}]}}"
                ),
            )],
        ),
        (
            "x/a sends to pods b anywhere, on the named port serve-81-udp",
            vec![policy(
                "x",
                "p",
                &format!(
                    "{{{a}, policyTypes: [Egress], egress: [{{to: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{pod: b}}}}}}], ports: [{{protocol: UDP, port: serve-81-udp}}]}}]}}"
                ),
            )],
        ),
        (
            "x/a from y/b's address (ipBlock)",
            vec![policy("x", "p", &format!("{{{a}, ingress: [{{from: [{{ipBlock: {{cidr: {}}}}}]}}]}}", ip("y/b")))],
        ),
        (
            "x/a from the pool except y/b and z/c (ipBlock except)",
            vec![policy(
                "x",
                "p",
                &format!(
                    "{{{a}, ingress: [{{from: [{{ipBlock: {{cidr: '{pool}', except: [{}, {}]}}}}]}}]}}",
                    ip("y/b"),
                    ip("z/c")
                ),
            )],
        ),
        (
            "x/a sends to the pool except x/b (egress ipBlock)",
            vec![policy(
                "x",
                "p",
                &format!(
                    "{{{a}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: '{pool}', except: [{}]}}}}]}}]}}",
                    ip("x/b")
                ),
            )],
        ),
        (
            "two policies add up: x/a from x/b, and from namespace z",
            vec![
                policy(
                    "x",
                    "p1",
                    &format!("{{{a}, ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]}}"),
                ),
                policy(
                    "x",
                    "p2",
                    &format!("{{{a}, ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: z}}}}}}]}}]}}"),
                ),
            ],
        ),
        (
            "x/a talks with namespace y only, both ways",
            vec![policy(
                "x",
                "p",
                &format!(
                    "{{{a}, policyTypes: [Ingress, Egress], ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}], egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}]}}"
                ),
            )],
        ),
        (
            "pods a and b of x isolated (matchExpressions In)",
            vec![policy(
                "x",
                "p",
                "{podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}, policyTypes: [Ingress]}",
            )],
        ),
        (
            "a selector of nothing isolates nothing (DoesNotExist)",
            vec![policy(
                "x",
                "p",
                "{podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}, policyTypes: [Ingress]}",
            )],
        ),
        (
            "x/a from pods c of every namespace",
            vec![policy(
                "x",
                "p",
                &format!(
                    "{{{a}, ingress: [{{from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{pod: c}}}}}}]}}]}}"
                ),
            )],
        ),
        (
            "y sends nothing, z takes nothing",
            vec![
                policy("y", "deny", "{podSelector: {}, policyTypes: [Egress]}"),
                policy("z", "deny", "{podSelector: {}, policyTypes: [Ingress]}"),
            ],
        ),
        (
            "x/a from namespace y on UDP 80, from x/c on TCP 81",
            vec![policy(
                "x",
                "p",
                &format!(
                    "{{{a}, ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}], ports: [{{protocol: UDP, port: 80}}]}}, {{from: [{{podSelector: {{matchLabels: {{pod: c}}}}}}], ports: [{{port: 81}}]}}]}}"
                ),
            )],
        ),
    ]
}

/// The catalogue, a policy updated and deleted, pods relabelled and new pods; on a dual-stack
/// lab at both families' addresses, with ipBlocks of IPv6 addresses (which no IPv4 packet
/// matches). On the Kubernetes datastore the pods are Kubernetes Pods, relabelled in the API
/// server, and the namespaces and policies are the API server's objects.
fn run_suite(iptables: Iptables, ipv6: bool, datastore: Store) -> Cluster {
    let started = Instant::now();
    let mut cluster = Cluster::up(iptables, ipv6, datastore);
    let catalogue = catalogue(&cluster.lab.state, *cluster.families.last().unwrap());
    let cases = catalogue.len();
    for (case, policies) in &catalogue {
        let began = Instant::now();
        cluster.set_policies(policies);
        cluster.expect(case, policies);
        eprintln!("{iptables:?}: {case}: enforced as expected in {:.1?}", began.elapsed());
    }

    // A policy updated, then deleted.
    let from_b = policy(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    let from_c = policy(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]}",
    );
    for (case, policies) in [("x/a from x/b", vec![from_b]), ("updated: from x/c", vec![from_c]), ("deleted", vec![])] {
        cluster.set_policies(&policies);
        cluster.expect(case, &policies);
    }

    // A pod relabelled into a selector and out of it.
    let friends = vec![policy(
        "x",
        "friends",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: friend}}}]}]}",
    )];
    cluster.set_policies(&friends);
    cluster.expect("x/a from friends: none yet", &friends);
    pods::relabel(&mut cluster.lab.state, "y/c", labels(&[("pod", "c"), ("role", "friend")])).unwrap();
    cluster.expect("y/c relabelled a friend", &friends);
    pods::relabel(&mut cluster.lab.state, "y/c", labels(&[("pod", "c")])).unwrap();
    cluster.expect("y/c a friend no more", &friends);

    // New pods join: one a friend from its first packet, one isolated by its namespace's policy.
    let joined = vec![friends[0].clone(), policy("z", "deny", "{podSelector: {}, policyTypes: [Ingress]}")];
    cluster.set_policies(&joined);
    cluster.add_pod("y", "d", 0, &[("pod", "d"), ("role", "friend")]);
    cluster.add_pod("z", "d", 1, &[("pod", "d")]);
    cluster.expect("new pods y/d (a friend) and z/d (isolated)", &joined);
    eprintln!("{iptables:?}: {} cases enforced as Kubernetes defines them in {:.1?}", cases + 7, started.elapsed());
    cluster
}

/// Calico's semantics, with brindle's own policies: order, Deny before Allow, Pass to the next
/// tier, a Log rule counted and in the kernel log, GlobalNetworkPolicy by namespace, notNets, ICMP types and service accounts.
fn calico_semantics(cluster: &mut Cluster) {
    cluster.set_policies(&[]);
    cluster.add_pod_as("x", "s", 2, &[("pod", "s")], Some("robot"));
    let ip = |key: &str| cluster.lab.state.pods.iter().find(|p| p.key() == key).unwrap().ip.clone();
    let namespace = |key: &str| key.split('/').next().unwrap().to_owned();
    let pod = |key: &str| key.split('/').nth(1).unwrap().to_owned();
    let apply = |yaml: &str| lab::apply(&cluster.lab.state, yaml).unwrap();
    let remove = |kind: &'static str, namespace: Option<&'static str>, name: &'static str| {
        lab::with_client(&cluster.lab.state, move |client| async move {
            AnyResource::get(&client, kind, namespace, name).await?.delete(&client).await?;
            Ok(())
        })
        .unwrap()
    };

    // Order: x/a denies x/b (order 10) before allowing everyone (order 20).
    apply(
        "apiVersion: brindle.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-all, namespace: x}\n\
         spec: {order: 20, selector: pod == 'a', ingress: [{action: Allow}]}\n---\n\
         apiVersion: brindle.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: x}\n\
         spec: {order: 10, selector: pod == 'a', ingress: [{action: Deny, source: {selector: pod == 'b'}}]}\n",
    );
    cluster.expect_that("order: x/b denied before all are allowed", |from, to, _| !(to == "x/a" && from == "x/b"));
    remove("NetworkPolicy", Some("x"), "deny-b");
    remove("NetworkPolicy", Some("x"), "allow-all");

    // The kernel logs what LOG rules match in a namespace only with nf_log_all_netns.
    let logging = KernelLogInNamespaces::on();
    // Tiers: a security tier passes namespace y on to the default tier, denies the rest to
    // every pod a; in the default tier, x's policy then lets y/b alone in.
    apply(
        "apiVersion: brindle.io/v1\nkind: Tier\nmetadata: {name: security}\nspec: {order: 100}\n---\n\
         apiVersion: brindle.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: gate}\n\
         spec: {tier: security, selector: pod == 'a', ingress: [{action: Log, source: {namespaceSelector: ns == 'z'}}, \
         {action: Pass, source: {namespaceSelector: ns == 'y'}}]}\n---\n\
         apiVersion: brindle.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-b, namespace: x}\n\
         spec: {selector: pod == 'a', ingress: [{action: Allow, source: {namespaceSelector: all(), selector: pod == 'b'}}]}\n",
    );
    cluster.expect_that("Pass to the default tier", |from, to, _| {
        pod(to) != "a" || (namespace(from) == "y" && (to != "x/a" || from == "y/b"))
    });
    // The Log rule counted what it logged, on the nodes of the pods a.
    let logged: u64 = (0..3)
        .map(|node| {
            let out =
                cluster.lab.state.command_in(&node.to_string(), &["brindlectl", "node", "policy-counters", "--json"]);
            let out = out.unwrap().output().unwrap();
            let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let rows = rows.as_array().cloned().unwrap_or_default();
            rows.iter()
                .filter(|r| r["rule"] == "GlobalNetworkPolicy gate ingress[0]")
                .map(|r| r["packets"].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert!(logged > 0, "the Log rule counted nothing");
    // And logged it, with a prefix naming the policy and the source of a pod of z.
    let from_z: Vec<String> =
        cluster.lab.state.pods.iter().filter(|p| p.namespace == "z").map(|p| format!("SRC={} ", p.ip)).collect();
    assert!(
        logging.lines_since().iter().any(|l| l.contains("brindle gate: ") && from_z.iter().any(|src| l.contains(src))),
        "no kernel log line with the prefix `brindle gate: ` from a pod of z"
    );
    drop(logging);
    remove("GlobalNetworkPolicy", None, "gate");
    remove("NetworkPolicy", Some("x"), "only-b");

    // A GlobalNetworkPolicy by namespace: z sends UDP only.
    apply(
        "apiVersion: brindle.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: z-udp}\n\
         spec: {namespaceSelector: ns == 'z', types: [Egress], egress: [{action: Allow, protocol: UDP}]}\n",
    );
    cluster.expect_that("z sends UDP only", |from, _, port| namespace(from) != "z" || port.udp);
    remove("GlobalNetworkPolicy", None, "z-udp");

    // notNets: y takes from everyone but x/a; service accounts: x/b only from robot's pods.
    apply(&format!(
        "apiVersion: brindle.io/v1\nkind: NetworkPolicy\nmetadata: {{name: not-a, namespace: y}}\n\
         spec: {{ingress: [{{action: Allow, source: {{notNets: [{}/32]}}}}]}}\n---\n\
         apiVersion: brindle.io/v1\nkind: NetworkPolicy\nmetadata: {{name: robots, namespace: x}}\n\
         spec: {{selector: pod == 'b', ingress: [{{action: Allow, source: {{namespaceSelector: all(), serviceAccounts: {{names: [robot]}}}}}}]}}\n",
        ip("x/a")
    ));
    cluster.expect_that("notNets and serviceAccounts", |from, to, _| {
        !(namespace(to) == "y" && from == "x/a") && (to != "x/b" || from == "x/s")
    });
    remove("NetworkPolicy", Some("y"), "not-a");
    remove("NetworkPolicy", Some("x"), "robots");

    // ICMP: pods c refuse echo requests (type 8) and take everything else.
    apply(
        "apiVersion: brindle.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: no-ping}\n\
         spec: {selector: pod == 'c', ingress: [{action: Deny, protocol: ICMP, icmp: {type: 8}}, {action: Allow}]}\n",
    );
    let x_a = cluster.lab.state.pods.iter().find(|p| p.key() == "x/a").unwrap().netns.clone();
    brindle_e2e::wait::wait_for("pings to y/c to be refused", CONVERGENCE, || {
        !brindle_e2e::netns::ping(&x_a, &ip("y/c"))
    })
    .unwrap();
    assert!(brindle_e2e::netns::ping(&x_a, &ip("y/b")), "a pod no policy isolates answers pings");
    cluster.expect_that("ICMP type 8 denied, TCP and UDP allowed", |_, _, _| true);
    remove("GlobalNetworkPolicy", None, "no-ping");
    remove("Tier", None, "security");
}

/// Turns `net.netfilter.nf_log_all_netns` on (LOG rules outside the initial namespace reach the
/// kernel log) and back to what it was when dropped.
struct KernelLogInNamespaces(String, String);

impl KernelLogInNamespaces {
    const SYSCTL: &str = "/proc/sys/net/netfilter/nf_log_all_netns";

    /// Turns it on and marks the kernel log, so only what is logged after counts.
    fn on() -> KernelLogInNamespaces {
        let was = std::fs::read_to_string(Self::SYSCTL).unwrap();
        std::fs::write(Self::SYSCTL, "1").unwrap();
        let marker = format!("brindle-e2e policy log check {}", unique());
        std::fs::write("/dev/kmsg", &marker).unwrap();
        KernelLogInNamespaces(was.trim().to_owned(), marker)
    }

    /// The kernel log's lines since [`KernelLogInNamespaces::on`].
    fn lines_since(&self) -> Vec<String> {
        let dmesg = std::process::Command::new("dmesg").output().unwrap();
        let text = String::from_utf8_lossy(&dmesg.stdout);
        let after = text.lines().skip_while(|l| !l.contains(&self.1)).skip(1);
        after.map(str::to_owned).collect()
    }
}

impl Drop for KernelLogInNamespaces {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::SYSCTL, &self.0);
    }
}

/// A pod sends only from its own address (of `family`); an interface with no endpoint gets
/// nowhere. What arrives is counted at the receiver (a reply could never come back to a
/// stolen address, so an unanswered ping would prove nothing), and what the rogue interface
/// sent is counted where it enters its node, so the drop is not a wiring mistake.
fn spoofing_is_dropped(cluster: &Cluster, family: Family) {
    let pod = |key: &str| cluster.lab.state.pods.iter().find(|p| p.key() == key).unwrap().clone();
    let (a, b, c) = (pod("x/a"), pod("y/b"), pod("z/c"));
    let address = |pod: &brindle_e2e::lab::LabPod| pod.address(family).unwrap().to_string();
    let v6 = family == Family::Ipv6;
    let (iptables, bits, icmp) = if v6 { ("ip6tables-nft", 128, "ipv6-icmp") } else { ("iptables-nft", 32, "icmp") };
    // Made-up addresses of the pool: one a pod steals, one the rogue interface sends from.
    let (made_up, rogue_address) =
        if v6 { ("fd00:10:244:fa::fa", "fd00:10:244:fb::1") } else { ("10.244.250.250", "10.244.251.1") };
    let run = |netns: &str, args: &[&str]| {
        let out = std::process::Command::new("ip").args(["netns", "exec", netns]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let target = address(&b);
    let ping_from = |netns: &str, source: &str| {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", netns, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", source, &target])
            .output();
    };
    // Packets from `source` counted by a rule (no target) in `table` of `netns`.
    let count = |netns: &str, table: &str, chain: &str, source: &str| {
        let rule = format!("-s {source}/{bits}");
        run(netns, &[iptables, "-t", table, "-A", chain, "-s", &format!("{source}/{bits}"), "-p", icmp]);
        let (netns, table) = (netns.to_owned(), table.to_owned());
        move || -> u64 {
            let saved = run(&netns, &[&format!("{iptables}-save"), "-c", "-t", &table]);
            let line = saved.lines().find(|l| l.contains(&rule)).unwrap().to_owned();
            line.trim_start_matches('[').split(':').next().unwrap().parse().unwrap()
        }
    };
    // y/b counts the echo requests that reach it, by source.
    let from_a = count(&b.netns, "filter", "INPUT", &address(&a));
    let stolen = [
        (address(&c), count(&b.netns, "filter", "INPUT", &address(&c))),
        (made_up.to_owned(), count(&b.netns, "filter", "INPUT", made_up)),
    ];
    let from_rogue = count(&b.netns, "filter", "INPUT", rogue_address);
    ping_from(&a.netns, &address(&a));
    assert!(from_a() > 0, "from its own address it arrives (the count works)");
    // x/a takes another pod's address and a made-up one of the pool.
    for (source, arrived) in &stolen {
        let prefix = format!("{source}/{bits}");
        let mut add = vec!["ip", "addr", "add", &prefix, "dev", "eth0"];
        if v6 {
            add.push("nodad");
        }
        run(&a.netns, &add);
        ping_from(&a.netns, source);
        run(&a.netns, &["ip", "addr", "del", &format!("{source}/{bits}"), "dev", "eth0"]);
        assert_eq!(arrived(), 0, "x/a sending as {source} must be dropped");
    }

    // A workload interface with no endpoint, wired by hand as the CNI plugin would wire one.
    let rogue = brindle_e2e::netns::Netns::new("np", "rogue").unwrap();
    let node = &cluster.lab.state.nodes[0].netns;
    let host_end = format!("brinrogue{}", unique());
    let link = std::process::Command::new("ip")
        .args(["link", "add", &host_end, "netns", node, "type", "veth", "peer", "name", "eth0", "netns", &rogue.name])
        .status()
        .unwrap();
    assert!(link.success());
    let entered = count(node, "raw", "PREROUTING", rogue_address);
    if v6 {
        // The gateway the CNI plugin gives pods: the host end's link-local address, from its MAC.
        run(node, &["ip", "link", "set", &host_end, "address", "ee:ee:ee:ee:ee:ee"]);
        run(node, &["sysctl", "-qw", &format!("net.ipv6.conf.{host_end}.accept_dad=0")]);
        run(&rogue.name, &["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"]);
    } else {
        run(node, &["sysctl", "-qw", &format!("net.ipv4.conf.{host_end}.proxy_arp=1")]);
    }
    run(node, &["ip", "link", "set", &host_end, "up"]);
    run(node, &["ip", "route", "add", &format!("{rogue_address}/{bits}"), "dev", &host_end]);
    let prefix = format!("{rogue_address}/{bits}");
    let mut add = vec!["ip", "addr", "add", &prefix, "dev", "eth0"];
    if v6 {
        add.push("nodad");
    }
    run(&rogue.name, &add);
    run(&rogue.name, &["ip", "link", "set", "eth0", "up"]);
    if v6 {
        run(&rogue.name, &["ip", "-6", "route", "add", "default", "via", "fe80::ecee:eeff:feee:eeee", "dev", "eth0"]);
    } else {
        run(&rogue.name, &["ip", "route", "add", "169.254.1.1", "dev", "eth0"]);
        run(&rogue.name, &["ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
    }
    ping_from(&rogue.name, rogue_address);
    let sent = entered();
    run(node, &["ip", "link", "del", &host_end]);
    assert!(sent > 0, "the rogue interface's pings must reach its node (the wiring works)");
    assert_eq!(from_rogue(), 0, "an interface with no endpoint gets nowhere");
    run(node, &[iptables, "-t", "raw", "-D", "PREROUTING", "-s", &format!("{rogue_address}/{bits}"), "-p", icmp]);
}

/// `brindlectl diagnose` names the policy and rule that decide, and finds a set member the
/// kernel lost.
fn diagnose_explains(cluster: &Cluster) {
    let policies = vec![policy(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    )];
    cluster.set_policies(&policies);
    cluster.expect("x/a from x/b only, for diagnose", &policies);
    let state = &cluster.lab.state;
    let x_a = state.pods.iter().find(|p| p.key() == "x/a").unwrap();
    let x_b_ip = state.pods.iter().find(|p| p.key() == "x/b").unwrap().ip.clone();
    let node = x_a.node.to_string();
    let diagnose = |from: &str| {
        let out = state
            .command_in(&node, &["brindlectl", "diagnose", from, "x/a", "--port", "tcp/80"])
            .unwrap()
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, denied) = diagnose("y/b");
    assert_eq!(code, Some(0), "{denied}");
    assert!(denied.contains("tier default: KubernetesNetworkPolicy x/p (order 1000)"), "{denied}");
    assert!(denied.contains("ingress of x/a: denied: no rule of tier default allowed it"), "{denied}");
    let (code, allowed) = diagnose("x/b");
    assert_eq!(code, Some(0), "{allowed}");
    assert!(
        allowed.contains("ingress of x/a: allowed by KubernetesNetworkPolicy x/p, ingress rule 0 (Allow)"),
        "{allowed}"
    );
    assert!(allowed.contains(&format!("its sets hold {x_b_ip}")), "{allowed}");

    // The kernel loses x/b from the set the rule matches it by: diagnose names the set.
    let saved = state.command_in(&node, &["ipset", "save"]).unwrap().output().unwrap();
    let saved = String::from_utf8_lossy(&saved.stdout).into_owned();
    for line in saved.lines().filter(|l| l.starts_with("add brin-p4-") && l.ends_with(&format!(" {x_b_ip}"))) {
        let set = line.split(' ').nth(1).unwrap();
        assert!(state.command_in(&node, &["ipset", "del", set, &x_b_ip]).unwrap().status().unwrap().success());
    }
    let (code, broken) = diagnose("x/b");
    assert_eq!(code, Some(3), "{broken}");
    assert!(broken.contains(&format!("{x_b_ip} is missing from set brin-p4-")), "{broken}");
    // The kernel loses x/a's address on its veth from the dispatch: diagnose says so.
    let x_a_member = format!("{},", x_a.ip);
    let dispatched: Vec<Vec<&str>> = saved
        .lines()
        .filter(|l| l.starts_with("add brin-p4-"))
        .map(|l| l.split(' ').collect::<Vec<&str>>())
        .filter(|words| words.get(2).is_some_and(|m| m.starts_with(&x_a_member)))
        .collect();
    assert_eq!(dispatched.len(), 2, "x/a is dispatched in both directions: {saved}");
    let ipset = |verb: &str, words: &[&str]| {
        let done = state.command_in(&node, &["ipset", verb, words[1], words[2]]).unwrap().status().unwrap();
        assert!(done.success());
    };
    for words in &dispatched {
        ipset("del", words);
    }
    let (code, undispatched) = diagnose("x/b");
    assert_eq!(code, Some(3), "{undispatched}");
    assert!(undispatched.contains(&format!("does not dispatch {x_a_member}")), "{undispatched}");
    for words in &dispatched {
        ipset("add", words);
    }
    cluster.set_policies(&[]);
    cluster.expect("no policy after diagnose", &[]);
}

#[test]
fn kubernetes_network_policy_truth_table_on_nft_then_calico_semantics_and_spoofing() {
    let mut cluster = run_suite(Iptables::Nft, false, Store::Sqlite);
    spoofing_is_dropped(&cluster, Family::Ipv4);
    diagnose_explains(&cluster);
    calico_semantics(&mut cluster);
}

/// With iptables-legacy, and with Pods, Namespaces and NetworkPolicies in a real API server
/// (the Kubernetes datastore): what kubectl creates, changes and deletes is enforced.
#[test]
fn kubernetes_network_policy_truth_table_on_legacy_with_the_objects_in_the_api_server() {
    drop(run_suite(Iptables::Legacy, false, Store::Kubernetes));
}

/// With brindle's state in etcd beside a real API server, as clusters that keep Calico in etcd
/// run: brindle-controllers copies the Namespaces, NetworkPolicies and Pods' labels that
/// kubectl changes into etcd, and the CNI plugin reads each new Pod from the API.
#[test]
fn kubernetes_network_policy_truth_table_on_etcd_through_the_controller() {
    drop(run_suite(Iptables::Nft, false, Store::EtcdKubernetes));
}

/// The same truth table on a dual-stack lab, at IPv4 and at IPv6 addresses, with ipBlocks of
/// IPv6 addresses; Calico's `ipVersion` and ICMPv6 rules; no forged IPv6 source gets through.
#[test]
fn ipv6_is_enforced_as_ipv4_is_on_a_dual_stack_lab() {
    let cluster = run_suite(Iptables::Nft, true, Store::Sqlite);
    spoofing_is_dropped(&cluster, Family::Ipv6);
    cluster.set_policies(&[]);
    let apply = |yaml: &str| lab::apply(&cluster.lab.state, yaml).unwrap();
    let pod = |key: &str| key.split('/').nth(1).unwrap().to_owned();

    // ipVersion: pods c take IPv6 only.
    apply(
        "apiVersion: brindle.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: c-v6}\n\
         spec: {selector: pod == 'c', ingress: [{action: Allow, ipVersion: 6}]}\n",
    );
    for family in [Family::Ipv4, Family::Ipv6] {
        cluster.expect_at("pods c take IPv6 only", family, |_, to, _| pod(to) != "c" || family == Family::Ipv6);
    }

    // ICMPv6: pods c refuse echo requests (type 128) and take everything else.
    apply(
        "apiVersion: brindle.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: c-v6}\n\
         spec: {selector: pod == 'c', ingress: [{action: Deny, protocol: ICMPv6, icmp: {type: 128}}, {action: Allow}]}\n",
    );
    let state = &cluster.lab.state;
    let find = |key: &str| state.pods.iter().find(|p| p.key() == key).unwrap();
    let (x_a, y_b, y_c) = (find("x/a"), find("y/b"), find("y/c"));
    let y_c_v6 = y_c.ipv6.clone().unwrap();
    brindle_e2e::wait::wait_for("IPv6 pings to y/c to be refused", CONVERGENCE, || {
        !brindle_e2e::netns::ping(&x_a.netns, &y_c_v6)
    })
    .unwrap();
    assert!(brindle_e2e::netns::ping(&x_a.netns, &y_c.ip), "IPv4 pings are not ICMPv6");
    assert!(brindle_e2e::netns::ping(&x_a.netns, y_b.ipv6.as_deref().unwrap()), "y/b is not isolated");
    cluster.expect_at("ICMPv6 type 128 denied, TCP and UDP allowed", Family::Ipv6, |_, _, _| true);
}
