//! Many route changes over one raw rtnetlink socket: requests packed many to a datagram, a
//! few datagrams outstanding at once, and one acknowledgement asked per datagram. The kernel
//! handles a socket's requests in order and answers every refusal, so the acknowledgement of a
//! datagram's last request means every earlier one without a refusal was done. At 100,000
//! routes what costs time besides the kernel's own work is a round trip, a task and an
//! answer per request; here a datagram carries hundreds and brings back one answer.

use std::collections::{BTreeMap, VecDeque};

use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::netlink::route_message;
use crate::{Error, RouteChange};

/// Bytes of requests per datagram.
const DATAGRAM: usize = 64 * 1024;
/// Datagrams sent and not yet acknowledged, at most: the refusals they can bring (36 bytes
/// each) must fit the receive buffer.
const WINDOW: usize = 4;
/// The receive buffer asked for (the kernel may grant less: `net.core.rmem_max`).
const RECEIVE_BUFFER: usize = 1 << 20;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// A socket for [`change_routes`], opened in the calling thread's network namespace.
pub fn socket() -> Result<Socket, Error> {
    let io = |what: &str, e: std::io::Error| Error::Io(format!("{what} the route socket: {e}"));
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| io("opening", e))?;
    socket.bind_auto().map_err(|e| io("binding", e))?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(|e| io("connecting", e))?;
    // Refusals echo only the request's header.
    socket.set_cap_ack(true).map_err(|e| io("configuring", e))?;
    socket.set_rx_buf_sz(RECEIVE_BUFFER).map_err(|e| io("sizing", e))?;
    Ok(socket)
}

fn request(change: &RouteChange, sequence: u32) -> Result<NetlinkMessage<RouteNetlinkMessage>, Error> {
    let (message, flags) = match change {
        RouteChange::Replace(route) => {
            (RouteNetlinkMessage::NewRoute(route_message(route)?), NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE)
        }
        RouteChange::Remove(route) => (RouteNetlinkMessage::DelRoute(route_message(route)?), NLM_F_REQUEST),
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

/// A datagram in flight: its requests by sequence number; the last one asks for the
/// acknowledgement.
struct Datagram {
    requests: BTreeMap<u32, RouteChange>,
    last: u32,
}

/// Fills a datagram with the next changes (about [`DATAGRAM`] bytes), numbering them from
/// `sequence`; its last request asks for the acknowledgement. Changes that cannot be encoded
/// are failures at once.
fn fill(
    changes: &mut std::vec::IntoIter<RouteChange>,
    sequence: &mut u32,
    failures: &mut Vec<Error>,
) -> Option<(Vec<u8>, Datagram)> {
    let mut messages = Vec::new();
    let mut size = 0;
    let mut requests = BTreeMap::new();
    while size < DATAGRAM {
        let Some(change) = changes.next() else { break };
        *sequence = sequence.wrapping_add(1);
        match request(&change, *sequence) {
            Ok(message) => {
                size += message.buffer_len();
                messages.push(message);
                requests.insert(*sequence, change);
            }
            Err(e) => failures.push(e),
        }
    }
    let last = messages.last_mut()?;
    last.header.flags |= NLM_F_ACK;
    let last = last.header.sequence_number;
    let mut bytes = vec![0; size];
    let mut offset = 0;
    for message in &messages {
        message.serialize(&mut bytes[offset..offset + message.buffer_len()]);
        offset += message.buffer_len();
    }
    Some((bytes, Datagram { requests, last }))
}

/// Makes `changes` on `socket` (blocking); returns what failed, each naming its route. A
/// route already gone is not a failure of a removal.
pub fn change_routes(socket: &Socket, changes: Vec<RouteChange>) -> Vec<Error> {
    let mut failures = Vec::new();
    let mut in_flight: VecDeque<Datagram> = VecDeque::new();
    let mut answers = Vec::with_capacity(RECEIVE_BUFFER);
    let mut sequence = 0u32;
    let mut changes = changes.into_iter();
    loop {
        while in_flight.len() < WINDOW {
            let Some((bytes, datagram)) = fill(&mut changes, &mut sequence, &mut failures) else { break };
            if let Err(e) = socket.send(&bytes, 0) {
                failures.extend(datagram.requests.values().map(|change| Error::Refused {
                    what: describe(change),
                    message: format!("sending to the kernel: {e}"),
                }));
                continue;
            }
            in_flight.push_back(datagram);
        }
        if in_flight.is_empty() {
            return failures;
        }
        answers.clear();
        if let Err(e) = socket.recv(&mut answers, 0) {
            failures.extend(in_flight.drain(..).flat_map(|d| d.requests.into_values()).map(|change| Error::Refused {
                what: describe(&change),
                message: format!("reading the kernel's answer: {e}"),
            }));
            return failures;
        }
        let mut offset = 0;
        while offset + 4 <= answers.len() {
            let length = u32::from_ne_bytes(answers[offset..offset + 4].try_into().expect("four bytes")) as usize;
            if length == 0 || offset + length > answers.len() {
                break;
            }
            if let Ok(answer) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answers[offset..offset + length])
                && let NetlinkPayload::Error(error) = answer.payload
            {
                let sequence = answer.header.sequence_number;
                let errno = error.code.map_or(0, |c| -c.get());
                if let Some(datagram) = in_flight.iter_mut().find(|d| d.requests.contains_key(&sequence))
                    && let Some(change) = datagram.requests.remove(&sequence)
                {
                    let gone = matches!(change, RouteChange::Remove(_)) && matches!(errno, ENOENT | ESRCH);
                    if errno != 0 && !gone {
                        failures.push(Error::Refused {
                            what: describe(&change),
                            message: std::io::Error::from_raw_os_error(errno).to_string(),
                        });
                    }
                }
                // The answer to a datagram's last request: everything in it is done.
                while in_flight.front().is_some_and(|d| d.last == sequence || !d.requests.contains_key(&d.last)) {
                    in_flight.pop_front();
                }
            }
            offset += (length + 3) & !3;
        }
    }
}
