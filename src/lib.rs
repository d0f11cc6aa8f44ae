//! Kagami (鏡): a caching reverse proxy that keeps municipal websites reachable during disasters.

pub mod cache;
pub mod config;
pub mod routing;
