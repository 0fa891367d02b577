//! brindlectl, the operator CLI: resources, IPAM, node status and path diagnosis.
//!
//! Not implemented yet: DESIGN.md describes what will live here.
