//! brindle-node, the agent on every node: keeps the kernel's routes, VXLAN tunnel, iptables
//! and sysctls in line with the datastore (DESIGN.md, "Data flow in the agent").

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use brindle_datastore::Client;
use brindle_datastore::ipam::Ipam;
use brindle_datastore::resource::{AgentConfiguration, IptablesBackend};
use brindle_datastore::store;
use brindle_kernel::Kernel;
use clap::Parser;
use tokio::sync::watch;

use brindle_agent::autodetect::{self, Method};
use brindle_agent::calc::{self, Me};
use brindle_agent::dataplane::{Dataplane, iptables};
use brindle_agent::logging::Logging;
use brindle_agent::passes::{BgpBackend, Passes};
use brindle_agent::status::{self, Metrics};
use brindle_agent::{node_condition, pod_facts, services, startup, syncer};

/// The brindle node agent.
///
/// Exit codes: 0 after SIGTERM or SIGINT (the dataplane is left in place, so pods keep
/// talking), 1 when start-up fails (the message says why).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// The datastore: `sqlite:///path` or `etcd://host:port,...?cacert=...`.
    #[arg(long, env = "BRINDLE_DATASTORE", default_value = brindle_cni::config::DEFAULT_DATASTORE)]
    datastore: String,
    /// This node's name (default: the host name).
    #[arg(long, env = "NODENAME")]
    nodename: Option<String>,
    /// How to find this node's IPv4 address: first-found, interface=NAME, cidr=CIDR,
    /// can-reach=ADDRESS, kubernetes-internal-ip (the Kubernetes Node's InternalIP).
    #[arg(long, env = "IP_AUTODETECTION_METHOD", default_value = "first-found")]
    ip_autodetection_method: Method,
    /// The same for IPv6; none when not given.
    #[arg(long, env = "IP6_AUTODETECTION_METHOD")]
    ip6_autodetection_method: Option<Method>,
    /// Where `/liveness` and `/readiness` are served (default: 127.0.0.1, AgentConfiguration
    /// `healthPort`, 9099).
    #[arg(long)]
    health_listen: Option<SocketAddr>,
    /// Where Prometheus metrics are served (`/metrics`): ADDRESS:PORT, or `off`. By default
    /// this node's address and AgentConfiguration `prometheusMetricsPort` (9091), or off when
    /// `prometheusMetricsEnabled` is false; never every address of the node.
    #[arg(long, env = "BRINDLE_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Full resync interval (default: AgentConfiguration's routeRefreshInterval).
    #[arg(long, value_parser = humantime::parse_duration)]
    resync_interval: Option<Duration>,
    /// Where to keep a kubeconfig for the CNI plugin on the host, made from this agent's
    /// service account and rewritten when its token rotates (the Kubernetes datastore in a
    /// cluster; the conflist names the file).
    #[arg(long, env = "BRINDLE_CNI_KUBECONFIG")]
    cni_kubeconfig: Option<PathBuf>,
    /// A kubeconfig for the Kubernetes API when it is not the datastore (an etcd datastore in a
    /// Kubernetes cluster; in a pod the service account serves without one). Through it the
    /// agent follows Services, reads its Node's InternalIP and clears NetworkUnavailable.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The status socket (`brindlectl node status` asks it).
    #[arg(long, default_value = "/var/run/brindle/node.sock")]
    status_socket: PathBuf,
    /// Where the MTU and node-name files for the CNI plugin are written.
    #[arg(long, default_value = "/var/lib/brindle")]
    state_dir: PathBuf,
    /// How routes between nodes are learned: `none` (from the datastore: which node owns
    /// which block), `embedded` (the built-in BGP speaker) or `bird` (BIRD 2, configured by
    /// the agent). Default: AgentConfiguration's `bgpBackend`, else `none`.
    #[arg(long, env = "BRINDLE_BGP", value_enum)]
    bgp: Option<BgpBackend>,
    /// The BGP hold time proposed to peers, in seconds: how long a silent node keeps its
    /// routes on the others.
    #[arg(long, default_value_t = 90)]
    bgp_hold_time: u16,
    /// Where Kubernetes secrets are mounted, one directory per secret (as a secret volume
    /// lays them out): a BGPPeer's `password.secretKeyRef {name, key}` is read from
    /// `DIR/name/key`, again at every resync, so rotated secrets take effect.
    #[arg(long, env = "BRINDLE_SECRETS_DIR", default_value = "/etc/brindle/secrets")]
    secrets_dir: PathBuf,
    /// Log filter (`warn`, `info`, `debug`, or tracing directives), fixed for the process's
    /// life. Default: AgentConfiguration's and BGPConfiguration's `logSeverityScreen`, applied
    /// as they change, else warnings and errors only.
    #[arg(long, env = "BRINDLE_LOG")]
    log: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let logging = Logging::init(args.log.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(args, logging))
}

async fn run(args: Args, mut logging: Logging) -> anyhow::Result<()> {
    let name = match &args.nodename {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_lowercase(),
    };
    let store = brindle_datastore::connect(&args.datastore).await.context("connecting to the datastore")?;
    let client = Client::new(Arc::clone(&store));
    // `node.<name>` overrides the cluster's `default`, as Calico's FelixConfiguration does.
    let config = match client.find::<AgentConfiguration>(None, &format!("node.{name}")).await? {
        Some(own) => own.spec,
        None => client.find::<AgentConfiguration>(None, "default").await?.map(|c| c.spec).unwrap_or_default(),
    };
    logging.set_agent(config.log_severity_screen);

    // The Kubernetes API, whatever the datastore, wherever there is one: the datastore, a
    // kubeconfig, or this pod's service account.
    let in_a_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let kubernetes = if store.kubernetes().is_some() || args.kubeconfig.is_some() || in_a_pod {
        Some(store::kubernetes_api(&*store, args.kubeconfig.clone()).await.context("the Kubernetes API")?)
    } else {
        None
    };
    let by_internal_ip = [Some(&args.ip_autodetection_method), args.ip6_autodetection_method.as_ref()]
        .contains(&Some(&Method::KubernetesInternalIp));
    let internal_ips = match (&kubernetes, by_internal_ip) {
        (_, false) => Vec::new(),
        (Some(api), true) => api.node_internal_ips(&name).await.context("kubernetes-internal-ip")?,
        (None, true) => anyhow::bail!(
            "kubernetes-internal-ip needs the Kubernetes API: the Kubernetes datastore, --kubeconfig, or a pod's \
             service account"
        ),
    };
    // On etcd, brindle-controllers keeps endpoints in step with their Pods; on the Kubernetes
    // datastore every agent does it for its own.
    let follows_pods = store.kubernetes().is_some();

    let kernel = Arc::new(brindle_kernel::netlink::Netlink::connect()?);
    let v4 = autodetect::detect(&*kernel, &args.ip_autodetection_method, false, &internal_ips)
        .await
        .context("detecting the IPv4 address")?;
    tracing::warn!(address = %v4.address, interface = %v4.interface, reason = %v4.reason, "node address");
    let v6 = match &args.ip6_autodetection_method {
        Some(method) => Some(
            autodetect::detect(&*kernel, method, true, &internal_ips).await.context("detecting the IPv6 address")?,
        ),
        None => None,
    };
    // A key pair per family whose WireGuard is on (IPv6's only with an IPv6 address).
    let wireguard_on = [config.wireguard_enabled, config.wireguard_enabled_v6 && v6.is_some()];
    if config.wireguard_enabled_v6 && v6.is_none() {
        tracing::warn!(
            "wireguardEnabledV6 needs this node's IPv6 address (--ip6-autodetection-method): IPv6 WireGuard is off"
        );
    }
    let wireguard_key_files = [args.state_dir.join("wireguard.key"), args.state_dir.join("wireguard-v6.key")];
    let mut wireguard_public_keys = [None, None];
    for (family, file) in wireguard_key_files.iter().enumerate() {
        if wireguard_on[family] {
            let key = startup::wireguard_key(&*kernel, file)
                .with_context(|| format!("the WireGuard key pair in {}", file.display()))?;
            wireguard_public_keys[family] = Some(key);
        }
    }
    startup::register(&client, &name, Some(&v4), v6.as_ref(), wireguard_public_keys).await?;
    let default_pools = startup::default_pools(|k| std::env::var(k).ok()).context("the default pools")?;
    startup::ensure_default_pools(&client, default_pools).await.context("creating the default pools")?;
    let write_cni_kubeconfig = || {
        let Some(path) = &args.cni_kubeconfig else { return };
        let service_account = Path::new("/var/run/secrets/kubernetes.io/serviceaccount");
        let result = match startup::cni_kubeconfig(service_account, |k| std::env::var(k).ok()) {
            Some(text) => startup::publish(path, &text).map(drop),
            None => Err(anyhow::anyhow!("no service account here (not in a pod?)")),
        };
        if let Err(e) = result {
            tracing::warn!(error = %format!("{e:#}"), path = %path.display(), "cannot write the CNI plugin's kubeconfig");
        }
    };
    write_cni_kubeconfig();
    startup::publish(&args.state_dir.join("nodename"), &name)?;
    // tunl0 stays down (and decapsulates nothing) until a pool uses IP-in-IP.
    let ipip_supported = kernel.load_ipip().await.context("looking for tunl0")?;
    if !ipip_supported {
        tracing::warn!(
            "this kernel has no IP-in-IP (no ipip module): IP-in-IP pools cannot be routed; the others work"
        );
    }

    let backend = match config.iptables_backend {
        IptablesBackend::Auto => None,
        IptablesBackend::Legacy => Some(iptables::Backend::Legacy),
        IptablesBackend::NFT => Some(iptables::Backend::Nft),
    };
    // AgentConfiguration's `mtu` wins over the detected uplink MTU.
    let uplink_mtu = if config.mtu != 0 { config.mtu } else { v4.mtu };
    if !v4.address.is_ipv4() {
        anyhow::bail!("the IPv4 method found an IPv6 address");
    }
    let tunnels = calc::Tunnels {
        uplink_mtu,
        vxlan_vni: config.vxlan_vni,
        vxlan_port: config.vxlan_port,
        vxlan_macs: [startup::vxlan_mac(&name, false), startup::vxlan_mac(&name, true)],
    };
    let me = Me {
        name: name.clone(),
        ipv4: Some(v4.address),
        ipv6: v6.as_ref().map(|d| d.address),
        ipip_supported,
        tunnels,
        to_host: config.default_endpoint_to_host_action,
        device_routes: autodetect::device_routes(kernel.as_ref()).await.context("reading the interfaces' subnets")?,
        wireguard: [false, true].map(|v6| {
            let family = usize::from(v6);
            let (interface, port, mtu) = if v6 {
                (&config.wireguard_interface_name_v6, config.wireguard_listening_port_v6, config.wireguard_mtu_v6)
            } else {
                (&config.wireguard_interface_name, config.wireguard_listening_port, config.wireguard_mtu)
            };
            wireguard_on[family].then(|| calc::WireguardSettings {
                ipv6: v6,
                interface: interface.clone(),
                port,
                mtu: if mtu != 0 { mtu } else { uplink_mtu.saturating_sub(if v6 { 80 } else { 60 }) },
                private_key_file: wireguard_key_files[family].clone(),
                table: config.wireguard_routing_table_index,
                rule_priority: config.wireguard_routing_rule_priority,
                mark: config.wireguard_firewall_mark,
            })
        }),
        wireguard_interfaces: [config.wireguard_interface_name.clone(), config.wireguard_interface_name_v6.clone()],
    };
    let metrics_listen = match args.metrics_listen.as_deref() {
        Some("off") => None,
        Some(listen) => Some(listen.parse::<SocketAddr>().with_context(|| format!("--metrics-listen {listen}"))?),
        None => {
            config.prometheus_metrics_enabled.then(|| SocketAddr::new(v4.address.ip(), config.prometheus_metrics_port))
        }
    };
    let health_listen = args.health_listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], config.health_port)));
    let dataplane = Dataplane::new(kernel, v4.interface.clone(), backend);

    let backend = args.bgp.unwrap_or(match config.bgp_backend {
        brindle_datastore::resource::BgpBackend::None => BgpBackend::None,
        brindle_datastore::resource::BgpBackend::Embedded => BgpBackend::Embedded,
        brindle_datastore::resource::BgpBackend::Bird => BgpBackend::Bird,
    });
    tracing::info!(?backend, "BGP backend");
    let metrics = Arc::new(Metrics::default());
    let health = status::bind(health_listen).await?;
    tokio::spawn(status::serve(health, Arc::clone(&metrics), false));
    if let Some(listen) = metrics_listen {
        tokio::spawn(status::serve(status::bind(listen).await?, Arc::clone(&metrics), true));
    }

    let (status_tx, status_rx) = tokio::sync::mpsc::channel::<status::StatusRequest>(16);
    tokio::spawn({
        let path = args.status_socket.clone();
        async move {
            if let Err(e) = status::serve_socket(path, status_tx).await {
                tracing::error!(error = %e, "status socket failed");
            }
        }
    });
    let (tx, rx) = watch::channel::<syncer::Published>(None);
    tokio::spawn(syncer::run(store, name.clone(), tx, Arc::clone(&metrics)));
    tokio::spawn(startup::keep_tunnel_address(
        client.clone(),
        Ipam::new(client.clone()),
        name.clone(),
        startup::Tunnelling {
            ipip_supported: me.ipip_supported,
            wireguard: me.wireguard.each_ref().map(Option::is_some),
        },
        rx.clone(),
        Arc::clone(&metrics),
    ));
    // Without the Kubernetes API the sender stays here, silent.
    let (local_services_tx, local_services) = watch::channel(Vec::new());
    if let Some(api) = kubernetes {
        tokio::spawn(services::follow_local_services(api.clone(), name.clone(), local_services_tx.clone()));
        if follows_pods {
            tokio::spawn(pod_facts::follow_pods(api.clone(), client.clone(), name.clone(), rx.clone()));
        }
        tokio::spawn(node_condition::keep_network_available(api, name.clone(), metrics.readiness()));
    }
    let passes = Passes {
        me: &me,
        dataplane: &dataplane,
        metrics: &metrics,
        state_dir: &args.state_dir,
        backend,
        bgp_settings: calc::bgp::Settings { hold_time: args.bgp_hold_time, secrets_dir: args.secrets_dir.clone() },
        resync_every: args.resync_interval.unwrap_or(config.route_refresh_interval).max(Duration::from_secs(1)),
    };
    passes.run(rx, local_services, status_rx, &mut logging, write_cni_kubeconfig).await
}
