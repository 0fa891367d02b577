//! brindle-bgp: a BGP-4 speaker library. It knows nothing of Kubernetes.
//!
//! Today it holds the message codec ([`wire`]) and the sans-IO session state machine
//! ([`fsm`]); the session driver, the RIB and the speaker handle come next (DESIGN.md).

pub mod attrs;
pub mod bfd;
pub mod fsm;
mod gtsm;
mod md5;
mod receive;
pub mod rib;
mod session;
pub mod speaker;
pub mod wire;
