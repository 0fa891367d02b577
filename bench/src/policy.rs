//! Network policy: programming N endpoints under P Kubernetes NetworkPolicies with brindle's
//! compiler and iptables driver against `ipset restore` + `iptables-restore` of the very same
//! sets and rules, in namespaces made for the run; a resync with nothing to change; one
//! endpoint added beside 50,000 rules; and in a 3-node lab, a policy applied until every node
//! enforces it and CNI ADD until the new endpoint's policy is in place (p50, p99).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle_agent::dataplane::iptables::{self, Backend, Rules};
use brindle_agent::policy::{Compiler, Memo, Program, dispatch_member};
use brindle_datastore::policy::{NamespaceLabels, Policies};
use brindle_datastore::resource::{
    AnyResource, KubernetesNetworkPolicy, Metadata, Resource, WorkloadEndpoint, parse_documents,
};
use brindle_e2e::lab::pods::{self, NewPod};
use brindle_e2e::lab::{self, Iptables, Mode, Options, Peering, Store, TestLab};
use brindle_e2e::netns::{Netns, enter, run};
use clap::Args;

use crate::cni::percentile;

/// Options of `brindle-bench policy`.
#[derive(Args)]
pub struct BenchArgs {
    /// Endpoint counts (all on the node).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    endpoints: Vec<usize>,
    /// Policy counts (the endpoint added is measured beside the smallest table of 50,000
    /// rules or more).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    policies: Vec<usize>,
    /// The iptables to program.
    #[arg(long, value_enum, default_value = "nft")]
    iptables: Iptables,
    /// Times each row is programmed, by brindle and by the reference, each in a fresh
    /// namespace; the row shows the medians.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Rounds of the lab measurements (0 skips the lab).
    #[arg(long, default_value_t = 20)]
    lab_rounds: usize,
}

const NAMESPACES: usize = 10;
/// Endpoints added one at a time beside the table of about 50,000 rules.
const ADDED_ROUNDS: usize = 7;
const APPS: usize = 50;

/// A scrambled interface name like the CNI plugin's (`brin` + 11 hex digits of a digest).
fn interface(i: usize) -> String {
    let mut x = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("brin{:011x}", (x ^ (x >> 31)) & 0xfff_ffff_ffff)
}

fn endpoint(i: usize) -> Resource<WorkloadEndpoint> {
    let mut metadata = Metadata::named(format!("e{i}"));
    metadata.namespace = Some(format!("ns{}", i % NAMESPACES));
    metadata.labels = [("app".to_owned(), format!("a{}", i % APPS))].into();
    let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 64, 0, 0)) + i as u32);
    let spec = WorkloadEndpoint {
        node: "bench".into(),
        orchestrator: "k8s".into(),
        pod: format!("e{i}"),
        endpoint: "eth0".into(),
        container_id: format!("{i:064x}"),
        interface_name: interface(i),
        mac: None,
        ip_networks: vec![format!("{ip}/32").parse().expect("a host address")],
        profiles: vec![],
        service_account_name: None,
        ports: vec![],
    };
    Resource { metadata, spec }
}

/// Policy `j`: app `a{j}` of its namespace takes two peers on two ports; every third also
/// limits its egress to 10/8 but the pods, on 443.
fn policy(j: usize) -> Resource<KubernetesNetworkPolicy> {
    let egress = if j.is_multiple_of(3) {
        ", policyTypes: [Ingress, Egress], egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.64.0.0/16]}}], ports: [{port: 443}]}]"
    } else {
        ""
    };
    let text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{j}, namespace: ns{}}}\n\
         spec: {{podSelector: {{matchLabels: {{app: a{}}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}, \
         {{namespaceSelector: {{matchLabels: {{team: t{}}}}}, podSelector: {{matchLabels: {{app: a{}}}}}}}], \
         ports: [{{port: 80}}, {{port: 8000, endPort: 8100}}]}}]{egress}}}\n",
        j % NAMESPACES,
        j % APPS,
        (j + 7) % APPS,
        j % 3,
        (j + 3) % APPS,
    );
    match parse_documents(&text).ok().and_then(|mut d| d.pop()) {
        Some(AnyResource::KubernetesNetworkPolicy(p)) => p,
        other => panic!("policy {j} did not parse: {other:?}"),
    }
}

fn namespaces() -> NamespaceLabels {
    (0..NAMESPACES).map(|i| (format!("ns{i}"), [("team".to_owned(), format!("t{}", i % 3))].into())).collect()
}

fn compile(endpoints: &[Resource<WorkloadEndpoint>], policies: &Policies, memo: &mut Memo) -> Program {
    Compiler::new(policies, endpoints, &namespaces(), memo).compile("bench")
}

fn rules(program: &Program) -> Rules {
    Rules {
        pools: vec!["10.64.0.0/16".parse().expect("a CIDR")],
        nodes: vec!["10.250.255.2".parse().expect("an address")],
        control_hosts: vec!["10.250.255.2".parse().expect("an address")],
        bgp_ports: vec![179],
        policy: program[0].clone(),
        ..Rules::default()
    }
}

fn backend(iptables: Iptables) -> Backend {
    match iptables {
        Iptables::Nft => Backend::Nft,
        Iptables::Legacy => Backend::Legacy,
    }
}

fn tool(iptables: Iptables, tool: &str) -> String {
    match iptables {
        Iptables::Nft => format!("iptables-nft-{tool}"),
        Iptables::Legacy => format!("iptables-legacy-{tool}"),
    }
}

/// brindle's sets and tables as the kernel lists them: what the reference restores (the base
/// rules of the raw and nat tables too, which brindle's sync writes beside the policy).
fn dump(iptables: Iptables) -> anyhow::Result<(String, String)> {
    let sets = run(std::process::Command::new("ipset").arg("save"))?;
    let sets: String = sets
        .lines()
        .filter(|l| l.split(' ').nth(1).is_some_and(|name| name.starts_with("brin-")))
        .map(|l| format!("{l}\n"))
        .collect();
    let tables = run(&mut std::process::Command::new(tool(iptables, "save")))?;
    Ok((sets, tables))
}

fn restore(program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The median of `times`.
fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    percentile(times, 0.5)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    // Where to come back to for the lab: this thread's namespace, held open.
    let home = std::fs::File::open("/proc/thread-self/ns/net").context("opening this thread's namespace")?;
    let home = std::path::PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&home)));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let kernel = {
        let _entered = runtime.enter();
        brindle_kernel::netlink::Netlink::connect()?
    };
    let backend = backend(args.iptables);
    println!("Programming policy from nothing, {:?} iptables (seconds; lower is better)\n", args.iptables);
    println!(
        "{:>9}  {:>8}  {:>7}  {:>9}  {:>9}  {:>9}  {:>6}  {:>13}",
        "endpoints", "policies", "rules", "compile", "reference", "brindle", "ratio", "resync, same"
    );
    // For the endpoint added: its sizes, rule count, what the sync left, its namespace, memo
    // and policies.
    type Kept = (usize, usize, usize, iptables::Programmed, Netns, Memo, Policies);
    let mut kept: Option<Kept> = None;
    for &endpoint_count in &args.endpoints {
        for &policy_count in &args.policies {
            let endpoints: Vec<_> = (0..endpoint_count).map(endpoint).collect();
            let policies: Vec<_> = (0..policy_count).map(policy).collect();
            let model = Policies::new(&[], &policies, &[], &[]);
            let (mut compiled, mut ours, mut resync, mut reference) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let repetitions = args.repeat.max(1);
            let mut rule_count = 0;
            for repetition in 1..=repetitions {
                eprintln!("{endpoint_count} endpoints, {policy_count} policies, run {repetition}: brindle...");
                let ours_ns = Netns::new("polb", "ours")?;
                enter(&ours_ns.path())?;
                let started = Instant::now();
                let mut memo = Memo::default();
                let program = compile(&endpoints, &model, &mut memo);
                compiled.push(started.elapsed());
                let wanted = rules(&program);
                let (_, programmed) = iptables::sync(&kernel, backend, false, &wanted, None)?;
                ours.push(started.elapsed());
                let started = Instant::now();
                let (ran, _) = iptables::sync(&kernel, backend, false, &wanted, None)?;
                resync.push(started.elapsed());
                if ran {
                    bail!("a resync with nothing to change ran iptables-restore");
                }
                let (sets, tables) = dump(args.iptables)?;
                rule_count = tables.lines().filter(|l| l.starts_with("-A brin-")).count();
                // The endpoint-added measurement uses the smallest table of 50,000 rules or more
                // (the last run's).
                let closer = repetition == repetitions
                    && match &kept {
                        None => true,
                        Some((_, _, held, ..)) => {
                            (*held < 50_000 && rule_count > *held) || (rule_count >= 50_000 && rule_count < *held)
                        }
                    };
                if closer {
                    kept = Some((endpoint_count, policy_count, rule_count, programmed, ours_ns, memo, model.clone()));
                }

                eprintln!("{endpoint_count} endpoints, {policy_count} policies, run {repetition}: the reference...");
                let reference_ns = Netns::new("polb", "ref")?;
                enter(&reference_ns.path())?;
                let started = Instant::now();
                restore("ipset", &["restore"], &sets)?;
                restore(&tool(args.iptables, "restore"), &["--noflush", "--wait"], &tables)?;
                reference.push(started.elapsed());
                let (_, again) = dump(args.iptables)?;
                if again.lines().filter(|l| l.starts_with("-A brin-")).count() != rule_count {
                    bail!("the reference did not load {rule_count} rules");
                }
                drop(reference_ns);
            }
            let (ours, reference) = (median(&mut ours), median(&mut reference));
            println!(
                "{endpoint_count:>9}  {policy_count:>8}  {rule_count:>7}  {:>9.3}  {:>9.3}  {:>9.3}  {:>5.2}×  {:>13.3}",
                secs(median(&mut compiled)),
                secs(reference),
                secs(ours),
                secs(ours) / secs(reference),
                secs(median(&mut resync))
            );
        }
    }

    // Endpoints added one at a time beside the kept table: compiled, diffed against what the
    // last sync left, and written, as the agent does between full resyncs. Beside each, the
    // least any endpoint costs iptables there: one rule appended (after the dispatch's final
    // DROP, where it never matches; removed again untimed).
    if let Some((endpoint_count, policy_count, rule_count, mut programmed, ns, mut memo, model)) = kept {
        enter(&ns.path())?;
        let (mut added, mut compiled, mut one_rule) = (Vec::new(), Vec::new(), Vec::new());
        let mut restores = 0;
        for round in 1..=ADDED_ROUNDS {
            let endpoints: Vec<_> = (0..endpoint_count + round).map(endpoint).collect();
            let started = Instant::now();
            let program = compile(&endpoints, &model, &mut memo);
            compiled.push(started.elapsed());
            let (ran, now) = iptables::sync(&kernel, backend, false, &rules(&program), Some(programmed))?;
            added.push(started.elapsed());
            programmed = now;
            let (sets, filter) = dump(args.iptables)?;
            let added_endpoint = &endpoints[endpoint_count + round - 1];
            let member = dispatch_member(&added_endpoint.spec.ip_networks[0], &added_endpoint.spec.interface_name);
            if !pods::dispatched(&sets, &filter, &member) {
                bail!("the added endpoint is not dispatched");
            }
            restores += usize::from(ran);
            let rule = "brin-from-wl -i brinbench -j DROP";
            let started = Instant::now();
            restore(
                &tool(args.iptables, "restore"),
                &["--noflush", "--wait"],
                &format!("*filter\n-A {rule}\nCOMMIT\n"),
            )?;
            one_rule.push(started.elapsed());
            restore(
                &tool(args.iptables, "restore"),
                &["--noflush", "--wait"],
                &format!("*filter\n-D {rule}\nCOMMIT\n"),
            )?;
        }
        // An endpoint whose policies no other endpoint has (namespace ns1 with app a0: no
        // policy selects that pair) needs chains of its own and a dispatch rewrite; taken away
        // again untimed, so each round's is new.
        let mut alone = Vec::new();
        for round in 0..ADDED_ROUNDS {
            let mut endpoints: Vec<_> = (0..endpoint_count + ADDED_ROUNDS).map(endpoint).collect();
            let mut lone = endpoint(endpoint_count + ADDED_ROUNDS + round);
            lone.metadata.namespace = Some("ns1".into());
            lone.metadata.labels = [("app".to_owned(), "a0".to_owned())].into();
            endpoints.push(lone);
            let started = Instant::now();
            let program = compile(&endpoints, &model, &mut memo);
            let (ran, now) = iptables::sync(&kernel, backend, false, &rules(&program), Some(programmed))?;
            alone.push(started.elapsed());
            if !ran {
                bail!("an endpoint with policies of its own changed no rule");
            }
            endpoints.pop();
            let program = compile(&endpoints, &model, &mut memo);
            programmed = iptables::sync(&kernel, backend, false, &rules(&program), Some(now))?.1;
        }
        for times in [&mut added, &mut compiled, &mut one_rule, &mut alone] {
            times.sort();
        }
        let (added, one_rule) = (secs(percentile(&added, 0.5)), secs(percentile(&one_rule, 0.5)));
        println!(
            "\nan endpoint added beside {rule_count} rules ({endpoint_count} endpoints, {policy_count} policies), \
             median of {ADDED_ROUNDS}: {added:.3} s ({:.3} s compiling; {restores} of them ran iptables-restore); \
             one rule appended there with iptables-restore: {one_rule:.3} s; ratio {:.2}×",
            secs(percentile(&compiled, 0.5)),
            added / one_rule
        );
        println!(
            "an endpoint with policies no other endpoint has, added there, median of {ADDED_ROUNDS}: {:.3} s",
            secs(percentile(&alone, 0.5))
        );
    }
    if args.lab_rounds > 0 {
        enter(&home)?;
        lab_latencies(args.iptables, args.lab_rounds)?;
    }
    Ok(())
}

/// Whether every node's filter table has `chain` with at least one rule.
fn everywhere(state: &lab::LabState, chain: &str, iptables: Iptables) -> bool {
    state.nodes.iter().all(|node| {
        lab::in_netns(&node.netns, || {
            run(std::process::Command::new(tool(iptables, "save")).args(["-t", "filter"]))
                .is_ok_and(|saved| saved.contains(&format!("-A {chain} ")))
        })
        .unwrap_or(false)
    })
}

fn lab_latencies(iptables: Iptables, rounds: usize) -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?.parent().context("program directory")?.to_owned();
    let options = Options {
        nodes: 3,
        pods_per_node: 0,
        mode: Mode::Vxlan,
        peering: Peering::None,
        datastore: Store::Sqlite,
        reflectors: 1,
        iptables,
        ipv6: false,
    };
    eprintln!("lab: 3 nodes...");
    let mut test_lab = TestLab::up("polb", &bin_dir, &options)?;
    for node in 0..3 {
        let pod = NewPod { namespace: "x".into(), name: format!("base{node}"), node, ..NewPod::default() };
        pods::add(&mut test_lab.state, &pod)?;
    }
    // A policy applied to every pod of x, until every node has its chain.
    let mut applied = Vec::new();
    for round in 0..rounds {
        let name = format!("round{round}");
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
             spec: {{podSelector: {{}}, ingress: [{{ports: [{{port: {}}}]}}]}}\n",
            1000 + round
        );
        let chain = brindle_kernel::names::policy_chain(&format!("KubernetesNetworkPolicy x/{name}"), true);
        let started = Instant::now();
        lab::apply(&test_lab.state, &yaml)?;
        while !everywhere(&test_lab.state, &chain, iptables) {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{name} was not enforced on every node within 30 s");
            }
        }
        applied.push(started.elapsed());
    }
    // CNI ADD until the new endpoint is dispatched to its policy chains on its node.
    let mut added = Vec::new();
    for round in 0..rounds {
        let pod = NewPod { namespace: "x".into(), name: format!("new{round}"), node: round % 3, ..NewPod::default() };
        let started = Instant::now();
        pods::add(&mut test_lab.state, &pod)?;
        added.push(started.elapsed());
    }
    applied.sort();
    added.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("\nIn a 3-node lab ({rounds} rounds; milliseconds):");
    println!(
        "  a NetworkPolicy applied until every node enforces it: p50 {:.0}, p99 {:.0}",
        ms(percentile(&applied, 0.5)),
        ms(percentile(&applied, 0.99))
    );
    println!(
        "  CNI ADD until the endpoint's policy is programmed:     p50 {:.0}, p99 {:.0}",
        ms(percentile(&added, 0.5)),
        ms(percentile(&added, 0.99))
    );
    drop(test_lab);
    Ok(())
}
