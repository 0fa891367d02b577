//! The kernel layer against a real kernel, in a namespace made for each test: what it reads
//! back is what it wrote, many routes go in and out in one call, and a refusal names exactly
//! the route the kernel refused.

use brindle_e2e::netns::{Netns, enter};
use brindle_kernel::names::{MAIN_TABLE, ROUTE_PROTOCOL};
use brindle_kernel::netlink::Netlink;
use brindle_kernel::{Kernel, Neighbour, Route, RouteChange, Rule, Table};
use ipnetwork::IpNetwork;

/// A namespace with `eth0` (10.250.0.2/24, up), entered by this thread.
fn node(tag: &str) -> Netns {
    let ns = Netns::new("krn", tag).unwrap();
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]).unwrap();
    ns.ip(&["addr", "add", "10.250.0.2/24", "dev", "eth0"]).unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    ns.ip(&["link", "set", "eth1", "up"]).unwrap();
    enter(&ns.path()).unwrap();
    ns
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn thousands_of_routes_go_in_and_out_and_a_refusal_names_its_route() {
    let ns = node("rt");
    runtime().block_on(async {
        let kernel = Netlink::connect().unwrap();
        let eth0 = kernel.links().await.unwrap().into_iter().find(|l| l.name == "eth0").unwrap();
        assert!(eth0.up);
        let via = "10.250.0.10".parse().unwrap();
        let routes: Vec<Route> = (0..5000u32)
            .map(|i| {
                let dst = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 64, 0, 0)) + i * 64);
                Route::ours(IpNetwork::new(dst.into(), 26).unwrap(), Some(via), Some(eth0.index), false)
            })
            .collect();
        // One route the kernel must refuse: its gateway is on no network of this node.
        let unreachable =
            Route::ours("10.99.0.0/26".parse().unwrap(), Some("192.0.2.1".parse().unwrap()), Some(eth0.index), false);
        let mut changes: Vec<RouteChange> = routes.iter().cloned().map(RouteChange::Replace).collect();
        changes.insert(2500, RouteChange::Replace(unreachable));
        let failures = kernel.change_routes(changes).await;
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].to_string().contains("adding route 10.99.0.0/26 via 192.0.2.1"), "{}", failures[0]);
        let ours = kernel.routes(MAIN_TABLE, Some(ROUTE_PROTOCOL)).await.unwrap();
        assert_eq!(ours.len(), 5000);
        assert!(ours.contains(&routes[4999]), "what is read back is what was written");
        assert_eq!(ns.ip(&["route", "show", "proto", "98"]).unwrap().lines().count(), 5000);

        // Removing them, and one that is not there, fails nothing.
        let mut removals: Vec<RouteChange> = routes.into_iter().map(RouteChange::Remove).collect();
        removals.push(RouteChange::Remove(Route::blackhole("10.98.0.0/26".parse().unwrap())));
        assert!(kernel.change_routes(removals).await.is_empty());
        assert!(kernel.routes(MAIN_TABLE, Some(ROUTE_PROTOCOL)).await.unwrap().is_empty());
    });
}

#[test]
fn a_multipath_route_reads_back_as_written_and_is_replaced_in_place() {
    let ns = node("ecmp");
    runtime().block_on(async {
        let kernel = Netlink::connect().unwrap();
        let eth0 = kernel.links().await.unwrap().into_iter().find(|l| l.name == "eth0").unwrap();
        let dst: IpNetwork = "10.64.0.0/24".parse().unwrap();
        let two = Route {
            multipath: vec!["10.250.0.12".parse().unwrap()],
            ..Route::ours(dst, Some("10.250.0.11".parse().unwrap()), Some(eth0.index), false)
        };
        assert!(kernel.change_routes(vec![RouteChange::Replace(two.clone())]).await.is_empty());
        assert_eq!(kernel.routes(MAIN_TABLE, Some(ROUTE_PROTOCOL)).await.unwrap(), std::slice::from_ref(&two));
        let shown = ns.ip(&["route", "show", "10.64.0.0/24"]).unwrap();
        assert!(shown.contains("nexthop via 10.250.0.11") && shown.contains("nexthop via 10.250.0.12"), "{shown}");
        // One hop left: the same route, replaced.
        let one = Route { multipath: Vec::new(), ..two };
        assert!(kernel.change_routes(vec![RouteChange::Replace(one.clone())]).await.is_empty());
        assert_eq!(kernel.routes(MAIN_TABLE, Some(ROUTE_PROTOCOL)).await.unwrap(), [one]);
    });
}

#[test]
fn a_rule_and_its_table_of_routes_and_throws_read_back_and_steer_the_lookup() {
    let ns = node("rule");
    runtime().block_on(async {
        let kernel = Netlink::connect().unwrap();
        let eth0 = kernel.links().await.unwrap().into_iter().find(|l| l.name == "eth0").unwrap();
        let block: IpNetwork = "10.64.1.0/26".parse().unwrap();
        let main = Route::ours(block, Some("10.250.0.11".parse().unwrap()), Some(eth0.index), false);
        let other = Route::ours(block, Some("10.250.0.12".parse().unwrap()), Some(eth0.index), false).in_table(7);
        let throw = Route::throw("10.64.1.9/32".parse().unwrap()).in_table(7);
        let changes = [&main, &other, &throw].map(|r| RouteChange::Replace(r.clone()));
        assert!(kernel.change_routes(changes.to_vec()).await.is_empty());
        assert_eq!(kernel.routes(MAIN_TABLE, Some(ROUTE_PROTOCOL)).await.unwrap(), [main]);
        let mut table = kernel.routes(7, Some(ROUTE_PROTOCOL)).await.unwrap();
        table.sort_by_key(|r| r.dst);
        assert_eq!(table, [other, throw.clone()], "the same destination in two tables");

        let rule = Rule { ipv6: false, priority: 99, mark: 0x100000, mask: 0x100000, invert: true, table: 7 };
        assert!(kernel.rules().await.unwrap().is_empty(), "the kernel's own rules are not ours");
        kernel.add_rule(&rule).await.unwrap();
        assert_eq!(kernel.rules().await.unwrap(), [rule]);
        let shown = ns.ip(&["rule", "show"]).unwrap();
        assert!(shown.contains("99:\tnot from all fwmark 0x100000/0x100000 lookup 7 proto 98"), "{shown}");
        let via = |args: &[&str]| ns.ip(&[&["route", "get"], args].concat()).unwrap();
        assert!(via(&["10.64.1.5"]).contains("via 10.250.0.12"), "unmarked: the rule's table");
        assert!(via(&["10.64.1.5", "mark", "0x100000"]).contains("via 10.250.0.11"), "marked: the main table");
        assert!(via(&["10.64.1.9"]).contains("via 10.250.0.11"), "thrown back to the main table");

        kernel.delete_rule(&rule).await.unwrap();
        kernel.delete_rule(&rule).await.unwrap();
        assert!(kernel.rules().await.unwrap().is_empty());
        assert!(via(&["10.64.1.5"]).contains("via 10.250.0.11"));
    });
}

#[test]
fn addresses_neighbours_and_sysctls_read_back_as_written() {
    let ns = node("nb");
    runtime().block_on(async {
        let kernel = Netlink::connect().unwrap();
        let eth0 = kernel.links().await.unwrap().into_iter().find(|l| l.name == "eth0").unwrap();
        kernel.add_address(eth0.index, "10.251.0.1/32".parse().unwrap()).await.unwrap();
        let addresses = kernel.addresses(eth0.index).await.unwrap();
        assert!(
            addresses.contains(&"10.251.0.1/32".parse().unwrap())
                && addresses.contains(&"10.250.0.2/24".parse().unwrap())
        );
        let entry = Neighbour {
            table: Table::Arp,
            index: eth0.index,
            ip: "10.250.0.77".parse().unwrap(),
            mac: [0x66, 0, 0, 0, 0, 0x77],
            permanent: true,
        };
        kernel.set_neighbour(&entry).await.unwrap();
        assert!(kernel.neighbours(Table::Arp, Some(eth0.index)).await.unwrap().contains(&entry));
        assert!(
            ns.ip(&["neigh", "show", "dev", "eth0"])
                .unwrap()
                .contains("10.250.0.77 lladdr 66:00:00:00:00:77 PERMANENT")
        );
        kernel.delete_neighbour(&entry).await.unwrap();
        kernel.delete_neighbour(&entry).await.unwrap(); // gone already: not an error
        assert!(!kernel.neighbours(Table::Arp, Some(eth0.index)).await.unwrap().contains(&entry));
        kernel.set_sysctl("net/ipv4/conf/eth0/rp_filter", "2").unwrap();
        assert_eq!(kernel.sysctl("net/ipv4/conf/eth0/rp_filter").unwrap(), "2");
        assert!(!kernel.delete_link("no-such-link").await.unwrap());
    });
}
