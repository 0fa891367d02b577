//! A confd-style renderer: templates over datastore resources into files, with check and reload commands.
//!
//! Not implemented yet: DESIGN.md describes what will live here.
