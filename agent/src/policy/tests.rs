use std::collections::BTreeMap;

use brindle_datastore::policy::Policies;
use brindle_datastore::resource::{EndpointPort, Metadata, Resource, WorkloadEndpoint};
use brindle_datastore::testing::policies_from_yaml;

use super::*;

struct World {
    policies: Policies,
    endpoints: Vec<Resource<WorkloadEndpoint>>,
    namespaces: NamespaceLabels,
}

fn world(text: &str) -> World {
    let endpoints = vec![
        endpoint("x", "a", "n1", "brin-a", "10.0.1.1", &[("app", "web")]),
        endpoint("x", "b", "n1", "brin-b", "10.0.1.2", &[("app", "db")]),
        endpoint("y", "c", "n2", "brin-c", "10.0.2.1", &[("app", "web")]),
    ];
    let namespaces: NamespaceLabels = [
        ("x".to_owned(), [("ns".to_owned(), "x".to_owned())].into()),
        ("y".to_owned(), [("ns".to_owned(), "y".to_owned())].into()),
    ]
    .into();
    World { policies: policies_from_yaml(text), endpoints, namespaces }
}

fn endpoint(
    ns: &str,
    name: &str,
    node: &str,
    iface: &str,
    ip: &str,
    labels: &[(&str, &str)],
) -> Resource<WorkloadEndpoint> {
    let mut metadata = Metadata::named(name);
    metadata.namespace = Some(ns.into());
    metadata.labels = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect::<BTreeMap<_, _>>();
    let spec = WorkloadEndpoint {
        node: node.into(),
        orchestrator: "k8s".into(),
        pod: name.into(),
        endpoint: "eth0".into(),
        container_id: name.into(),
        interface_name: iface.into(),
        mac: None,
        ip_networks: vec![format!("{ip}/32").parse().unwrap()],
        profiles: vec![],
        service_account_name: None,
        ports: vec![EndpointPort { name: "http".into(), protocol: "TCP".into(), port: 8080 }],
    };
    Resource { metadata, spec }
}

fn compile(w: &World) -> Program {
    Compiler::new(&w.policies, &w.endpoints, &w.namespaces, &mut Memo::default()).compile("n1")
}

const DB_FROM_WEB: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}, {port: http}]
";

/// The profile chain `root` dispatches `member` (an address on a veth) to, by its set.
fn dispatched_to(family: &FamilyProgram, root: &str, member: &str) -> Option<String> {
    family.chains[root].iter().find_map(|r| {
        let set = r.split("--match-set ").nth(1)?.split(' ').next()?;
        family.sets.get(set).filter(|s| s.kind == DISPATCH_SET && s.members.contains(member))?;
        r.rsplit_once(" -g ").map(|(_, target)| target.to_owned())
    })
}

#[test]
fn local_endpoints_are_dispatched_by_address_and_veth_and_the_rest_dropped() {
    let program = compile(&world(DB_FROM_WEB));
    let v4 = &program[0];
    // Two profiles for ingress (a: no policy; b: db's), then the drop.
    let to = &v4.chains[TO_WORKLOADS];
    assert_eq!(to.len(), 3, "two profiles and the drop: {to:#?}");
    assert!(to[0].contains(" dst,dst ") && to[2].ends_with("-j DROP"), "{to:#?}");
    assert!(v4.chains[FROM_WORKLOADS].iter().all(|r| !r.contains("--match-set") || r.contains(" src,src ")));
    let a = dispatched_to(v4, TO_WORKLOADS, "10.0.1.1,brin-a").expect("a is dispatched");
    let b = dispatched_to(v4, TO_WORKLOADS, "10.0.1.2,brin-b").expect("b is dispatched");
    assert!(a.starts_with("brin-tw-") && b.starts_with("brin-tw-") && a != b);
    assert_eq!(dispatched_to(v4, TO_WORKLOADS, "10.0.1.2,brin-a"), None, "another's address on a's veth");
    assert!(v4.sets.values().all(|s| !s.members.iter().any(|m| m.ends_with(",brin-c"))), "c is not this node's");
    // a: no policy selects it; b: isolated for ingress by the one policy, not for egress.
    assert!(v4.chains[&a].is_empty());
    let b_out = dispatched_to(v4, FROM_WORKLOADS, "10.0.1.2,brin-b").expect("b's egress is dispatched");
    assert!(v4.chains[&b_out].is_empty(), "not isolated for egress");
    let b = &v4.chains[&b];
    let chain = policy_chain(&w_id("db"), Direction::Ingress);
    assert!(b[1].ends_with(&format!("-j {chain}")), "{b:#?}");
    assert!(b[2].ends_with("-j RETURN") && b[3].ends_with("-j DROP"), "allowed returns, else the tier drops: {b:#?}");
    // No IPv6 address: IPv6 dispatches nothing.
    assert_eq!(program[1].chains[TO_WORKLOADS].len(), 1);
}

fn w_id(name: &str) -> PolicyId {
    PolicyId { kind: "KubernetesNetworkPolicy", namespace: Some("x".into()), name: name.into() }
}

#[test]
fn selectors_and_named_ports_are_sets_of_every_node_s_endpoints() {
    let program = compile(&world(DB_FROM_WEB));
    let v4 = &program[0];
    let rules = &v4.chains[&policy_chain(&w_id("db"), Direction::Ingress)];
    let text = rules.join("\n");
    assert!(text.contains("-p tcp -m set --match-set brin-p4-"), "{text}");
    assert!(text.contains(" src -m multiport --dports 5432 "), "{text}");
    assert!(text.contains(" dst,dst "), "the named port: {text}");
    let web: Vec<&Arc<IpSet>> = v4.sets.values().filter(|s| s.kind == "hash:net").collect();
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].members, ["10.0.1.1", "10.0.2.1"].map(str::to_owned).into(), "web pods of both nodes");
    let named: Vec<&Arc<IpSet>> = v4.sets.values().filter(|s| s.kind == "hash:ip,port").collect();
    assert_eq!(
        named[0].members,
        ["10.0.1.1,tcp:8080", "10.0.1.2,tcp:8080", "10.0.2.1,tcp:8080"].map(str::to_owned).into()
    );
    // IPv6 has the same chains, sets without members.
    let v6 = &program[1];
    assert_eq!(v6.chains.keys().collect::<Vec<_>>(), v4.chains.keys().collect::<Vec<_>>());
    assert!(v6.sets.values().all(|s| s.members.is_empty()));
}

#[test]
fn calico_rules_keep_their_order_actions_and_tiers() {
    let w = world(
        "
apiVersion: brindle.io/v1
kind: Tier
metadata: {name: security}
spec: {order: 1}
---
apiVersion: brindle.io/v1
kind: GlobalNetworkPolicy
metadata: {name: guard}
spec:
  tier: security
  ingress:
  - {action: Log, protocol: ICMP, icmp: {type: 8}}
  - {action: Deny, source: {nets: [192.168.0.0/16], notNets: [192.168.1.0/24]}}
  - {action: Pass}
---
apiVersion: brindle.io/v1
kind: NetworkPolicy
metadata: {name: v6-only, namespace: x}
spec:
  ingress: [{action: Allow, ipVersion: 6}]
",
    );
    let program = compile(&w);
    let v4 = &program[0];
    let a = &v4.chains[&dispatched_to(v4, TO_WORKLOADS, "10.0.1.1,brin-a").unwrap()];
    let tiers: Vec<&String> = a.iter().filter(|r| r.contains("end of tier")).collect();
    assert!(tiers[0].contains("tier security") && tiers[1].contains("tier default"), "{a:#?}");
    let guard = PolicyId { kind: "GlobalNetworkPolicy", namespace: None, name: "guard".into() };
    let rules = &v4.chains[&policy_chain(&guard, Direction::Ingress)];
    assert!(
        rules[0].contains("-p icmp -m icmp --icmp-type 8 ")
            && rules[0].contains("-j LOG --log-prefix \"brindle guard: \"")
    );
    assert!(rules[1].contains("-m set --match-set brin-p4-") && rules[1].contains("-m set ! --match-set brin-p4-"));
    assert!(rules[1].ends_with("-j DROP"));
    assert!(rules[2].ends_with(&format!("-j MARK --set-xmark {PASS_MARK:#x}/{PASS_MARK:#x}")));
    assert!(rules[3].ends_with("-j RETURN"));
    // The IPv6-only rule and the ICMP (not ICMPv6) rule stay in their families.
    let v6_only = PolicyId { kind: "NetworkPolicy", namespace: Some("x".into()), name: "v6-only".into() };
    assert!(v4.chains[&policy_chain(&v6_only, Direction::Ingress)].is_empty());
    assert_eq!(program[1].chains[&policy_chain(&v6_only, Direction::Ingress)].len(), 2);
    assert!(!program[1].chains[&policy_chain(&guard, Direction::Ingress)].iter().any(|r| r.contains("icmp")));
}

#[test]
fn endpoints_with_the_same_policies_share_a_chain_and_differ_by_set_member() {
    let mut w = world(DB_FROM_WEB);
    let before = compile(&w);
    for (i, iface) in ["brin0aa", "brinf00"].iter().enumerate() {
        w.endpoints.push(endpoint("x", &format!("h{i}"), "n1", iface, &format!("10.0.3.{i}"), &[("app", "db")]));
    }
    let after = compile(&w);
    let (v4, was) = (&after[0], &before[0]);
    assert_eq!(v4.chains, was.chains, "no rule changes for two more pods like b");
    let b = dispatched_to(v4, TO_WORKLOADS, "10.0.1.2,brin-b").unwrap();
    assert_eq!(dispatched_to(v4, TO_WORKLOADS, "10.0.3.0,brin0aa").as_ref(), Some(&b));
    assert_eq!(dispatched_to(v4, TO_WORKLOADS, "10.0.3.1,brinf00").as_ref(), Some(&b));
    let set = v4.sets.values().find(|s| s.members.contains("10.0.3.0,brin0aa") && s.members.len() == 3);
    assert!(set.is_some(), "b's profile set holds b, h0 and h1: {:#?}", v4.sets);
}

#[test]
fn long_port_lists_are_split_by_multiport_slots() {
    let ports: Vec<PortMatch> = (1..=20).map(|p| PortMatch::Range(p, p)).chain([PortMatch::Range(100, 200)]).collect();
    let chunks = multiport_chunks(&ports);
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(chunks[0].split(',').count(), 15);
    assert_eq!(chunks[1], "16,17,18,19,20,100:200");
}

#[test]
fn a_memo_compiles_changes_to_what_a_fresh_compilation_gives() {
    let mut w = world(DB_FROM_WEB);
    let mut memo = Memo::default();
    let fresh = |w: &World| Compiler::new(&w.policies, &w.endpoints, &w.namespaces, &mut Memo::default()).compile("n1");
    let first = Compiler::new(&w.policies, &w.endpoints, &w.namespaces, &mut memo).compile("n1");
    assert_eq!(first, fresh(&w));
    // Unchanged: the very same pieces come back (the dispatch is rebuilt, equal).
    let again = Compiler::new(&w.policies, &w.endpoints, &w.namespaces, &mut memo).compile("n1");
    let dispatch = |k: &str| k == FROM_WORKLOADS || k == TO_WORKLOADS;
    assert!(first[0].chains.iter().all(|(k, v)| dispatch(k) || Arc::ptr_eq(v, &again[0].chains[k])));
    assert_eq!(first, again);
    assert!(first[0].sets.iter().all(|(k, v)| Arc::ptr_eq(v, &again[0].sets[k])));
    type Change = Box<dyn Fn(&mut World)>;
    let steps: Vec<(&str, Change)> = vec![
        (
            "a local pod added",
            Box::new(|w| w.endpoints.push(endpoint("x", "d", "n1", "brin-d", "10.0.1.9", &[("app", "web")]))),
        ),
        (
            "a remote pod joins a selector",
            Box::new(|w| w.endpoints[2].metadata.labels.insert("app".into(), "db".into()).map(drop).unwrap_or(())),
        ),
        ("a local pod leaves one", Box::new(|w| drop(w.endpoints[0].metadata.labels.remove("app")))),
        ("a named port changes", Box::new(|w| w.endpoints[1].spec.ports[0].port = 9090)),
        ("a pod goes", Box::new(|w| drop(w.endpoints.remove(1)))),
        ("the policies change", Box::new(|w| *w = World { endpoints: std::mem::take(&mut w.endpoints), ..world("") })),
    ];
    for (step, change) in steps {
        change(&mut w);
        let memoised = Compiler::new(&w.policies, &w.endpoints, &w.namespaces, &mut memo).compile("n1");
        assert_eq!(memoised, fresh(&w), "after {step}");
    }
}
