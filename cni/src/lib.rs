//! brindle's CNI plugins.
//!
//! `brindle` wires a pod to its node with a veth whose host end answers ARP for everything
//! (proxy_arp, MAC ee:ee:ee:ee:ee:ee) and whose pod end routes through the link-local gateway
//! 169.254.1.1, so pods need no subnet of their own and the node routes every packet.
//! `brindle-ipam` gives addresses from brindle's block IPAM; the main plugin calls it in
//! process, and executes any other IPAM plugin (host-local, ...) as the spec describes.
//!
//! Both speak CNI 0.3.0 to 1.1.0 (ADD, DEL, CHECK, VERSION, GC, STATUS), print exactly one
//! JSON document on stdout, and map every failure to a spec error code in [`error`].

pub mod annotations;
pub mod config;
pub mod endpoint;
pub mod env;
pub mod error;
pub mod ipam;
pub mod ipam_plugin;
pub mod netns;
pub mod plugin;
pub mod record;
pub mod result;
pub mod skel;
pub mod version;
pub mod wiring;

pub use error::{Error, Result};
