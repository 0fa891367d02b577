//! The few rtnetlink operations the plugin needs, with kernel errors turned into messages
//! that name the object.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::error::{Error, Result};

/// The routing protocol number on every route brindle makes, so the agent can tell its own
/// routes from everyone else's (`ip route show proto 98`).
pub const ROUTE_PROTOCOL: u8 = 98;

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;

/// Opens a netlink connection in the calling thread's namespace (needs a tokio runtime).
pub fn connect() -> Result<Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| Error::Io(format!("opening a netlink socket: {e}")))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The kernel's errno in a netlink error, if that is what it is.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// True when the error says the object does not exist.
pub fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENODEV | ENOENT | ESRCH))
}

/// True when the error says the object exists already.
pub fn is_existing(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(EEXIST)
}

/// Finds a link by name.
pub async fn link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match handle.link().get().match_name(name).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(Error::Internal(format!("looking up link {name}: {e}"))),
    }
}

/// A link's MAC address as `aa:bb:...`.
pub fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(format_mac(mac)),
            _ => None,
        })
        .unwrap_or_default()
}

/// Formats a MAC address.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Deletes a link by name; a link that is not there is not an error. Returns whether it
/// existed.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool> {
    let Some(link) = link(handle, name).await? else { return Ok(false) };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(Error::Internal(format!("deleting link {name}: {e}"))),
    }
}

/// A route message of our protocol: `dst` through `gateway` or straight out of `index`.
pub fn route(dst: IpNetwork, gateway: Option<IpAddr>, index: u32) -> Result<RouteMessage> {
    let scope = if gateway.is_some() { RouteScope::Universe } else { RouteScope::Link };
    let builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.ip(), dst.prefix())
        .map_err(|e| Error::Internal(format!("route to {dst}: {e}")))?
        .output_interface(index)
        .scope(scope)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
    let builder = match gateway {
        Some(gw) => builder.gateway(gw).map_err(|e| Error::Internal(format!("route to {dst} via {gw}: {e}")))?,
        None => builder,
    };
    Ok(builder.build())
}

/// Adds (or replaces) a route.
pub async fn replace_route(handle: &Handle, dst: IpNetwork, gateway: Option<IpAddr>, index: u32) -> Result<()> {
    handle.route().add(route(dst, gateway, index)?).replace().execute().await.map_err(|e| {
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        Error::Internal(format!("adding route {dst}{via}: {e}"))
    })
}

/// Every route of a family in the main table.
pub async fn routes(handle: &Handle, ipv6: bool) -> Result<Vec<RouteMessage>> {
    let filter = if ipv6 {
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
    };
    handle
        .route()
        .get(filter)
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::Internal(format!("listing routes: {e}")))
}

/// A route attribute's address.
pub fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

/// A neighbour entry's link-layer address.
pub fn neighbour_lladdr(m: &NeighbourMessage) -> Option<Vec<u8>> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => Some(l.clone()),
        _ => None,
    })
}

/// A neighbour entry's IP: the neighbour's address (ARP, NDP), or the remote VTEP (FDB,
/// where the bridge family leaves the address undecoded).
pub fn neighbour_ip(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => match bytes.len() {
            4 => <[u8; 4]>::try_from(&bytes[..]).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(&bytes[..]).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

/// Writes a sysctl through /proc (in the calling thread's network namespace).
pub fn sysctl(path: &str, value: &str) -> Result<()> {
    let file = format!("/proc/sys/{path}");
    std::fs::write(&file, value).map_err(|e| Error::Io(format!("setting {file} to {value}: {e}")))
}
