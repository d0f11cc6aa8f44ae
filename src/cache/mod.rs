//! The HTTP cache: keys, stored entries, the RFC 9111 rules, the memory store and coalescing.
//!
//! Everything here is independent of sockets: `proxy` drives it. The store is reached only
//! through `MemoryStore`, so a disk or shared tier can sit behind the same calls later.

pub mod body;
pub mod coalesce;
pub mod conditional;
pub mod control;
pub mod entry;
pub mod fields;
pub mod footprint;
pub mod key;
pub mod mapped;
pub mod memory;
pub mod policy;
pub mod recent;
pub mod share;
pub mod status;
pub mod tags;

pub use entry::{Entry, StoreSettings};
pub use memory::{Lookup, MemoryStore};
pub use status::{CacheStatus, Phase};
