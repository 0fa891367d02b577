//! Many route changes over one raw rtnetlink socket: requests packed many to a datagram, each
//! acknowledged, thousands outstanding at once. At 100,000 routes what costs time is not the
//! kernel but a round trip and a task per request; here a datagram carries hundreds.

use std::collections::HashMap;

use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::netlink::route_message;
use crate::{Error, RouteChange};

/// Bytes of requests per datagram.
const DATAGRAM: usize = 64 * 1024;
/// Requests sent and not yet acknowledged, at most: their acknowledgements must fit the
/// receive buffer.
const WINDOW: usize = 4096;
/// The receive buffer asked for.
const RECEIVE_BUFFER: usize = 4 << 20;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// A socket for [`change_routes`], opened in the calling thread's network namespace.
pub fn socket() -> Result<Socket, Error> {
    let io = |what: &str, e: std::io::Error| Error::Io(format!("{what} the route socket: {e}"));
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| io("opening", e))?;
    socket.bind_auto().map_err(|e| io("binding", e))?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(|e| io("connecting", e))?;
    // Refusals echo only the request's header, so a window of them fits the buffer.
    socket.set_cap_ack(true).map_err(|e| io("configuring", e))?;
    socket.set_rx_buf_sz(RECEIVE_BUFFER).map_err(|e| io("sizing", e))?;
    Ok(socket)
}

fn request(change: &RouteChange, sequence: u32) -> Result<NetlinkMessage<RouteNetlinkMessage>, Error> {
    let (message, flags) = match change {
        RouteChange::Replace(route) => (
            RouteNetlinkMessage::NewRoute(route_message(route)?),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        ),
        RouteChange::Remove(route) => (RouteNetlinkMessage::DelRoute(route_message(route)?), NLM_F_REQUEST | NLM_F_ACK),
    };
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
    request.finalize();
    Ok(request)
}

fn describe(change: &RouteChange) -> String {
    match change {
        RouteChange::Replace(route) => format!("adding route {route}"),
        RouteChange::Remove(route) => format!("removing route {route}"),
    }
}

/// Makes `changes` on `socket` (blocking); returns what failed, each naming its route. A
/// route already gone is not a failure of a removal.
pub fn change_routes(socket: &Socket, changes: Vec<RouteChange>) -> Vec<Error> {
    let mut failures = Vec::new();
    let mut outstanding: HashMap<u32, RouteChange> = HashMap::new();
    let mut datagram = Vec::with_capacity(DATAGRAM + 1024);
    let mut acks = Vec::with_capacity(RECEIVE_BUFFER);
    let mut sequence = 0u32;
    let mut changes = changes.into_iter().peekable();
    while changes.peek().is_some() || !outstanding.is_empty() {
        // Fill a datagram while the window has room, then send it.
        while datagram.len() < DATAGRAM && outstanding.len() < WINDOW {
            let Some(change) = changes.next() else { break };
            sequence = sequence.wrapping_add(1);
            match request(&change, sequence) {
                Ok(message) => {
                    let start = datagram.len();
                    datagram.resize(start + message.buffer_len(), 0);
                    message.serialize(&mut datagram[start..]);
                    outstanding.insert(sequence, change);
                }
                Err(e) => failures.push(e),
            }
        }
        if !datagram.is_empty() {
            if let Err(e) = socket.send(&datagram, 0) {
                // Nothing of this datagram reached the kernel.
                let sent: Vec<u32> = outstanding.keys().copied().collect();
                failures.extend(sent.into_iter().filter_map(|s| outstanding.remove(&s)).map(|change| Error::Refused {
                    what: describe(&change),
                    message: format!("sending to the kernel: {e}"),
                }));
                datagram.clear();
                continue;
            }
            datagram.clear();
        }
        if outstanding.is_empty() {
            continue;
        }
        // Read what the kernel has answered so far (at least one datagram of answers).
        acks.clear();
        if let Err(e) = socket.recv(&mut acks, 0) {
            failures.extend(outstanding.drain().map(|(_, change)| Error::Refused {
                what: describe(&change),
                message: format!("reading the kernel's answer: {e}"),
            }));
            continue;
        }
        let mut offset = 0;
        while offset + 4 <= acks.len() {
            let length = u32::from_ne_bytes(acks[offset..offset + 4].try_into().expect("four bytes")) as usize;
            if length == 0 || offset + length > acks.len() {
                break;
            }
            if let Ok(answer) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&acks[offset..offset + length])
                && let NetlinkPayload::Error(error) = answer.payload
                && let Some(change) = outstanding.remove(&answer.header.sequence_number)
            {
                let errno = error.code.map_or(0, |c| -c.get());
                let gone = matches!(change, RouteChange::Remove(_)) && matches!(errno, ENOENT | ESRCH);
                if errno != 0 && !gone {
                    failures.push(Error::Refused {
                        what: describe(&change),
                        message: std::io::Error::from_raw_os_error(errno).to_string(),
                    });
                }
            }
            offset += (length + 3) & !3;
        }
    }
    failures
}
