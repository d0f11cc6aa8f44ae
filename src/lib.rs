//! Kagami (鏡): a caching reverse proxy that keeps municipal websites reachable during disasters.
//!
//! Follow a request from `server` (listeners) to `routing` (Host -> site) to `proxy` (the
//! request path), which uses `cache` (rules, store, coalescing) and `origin` (fetching).

pub mod admin;
pub mod cache;
pub mod clock;
pub mod config;
pub mod demo;
pub mod limit;
pub mod log_text;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod tls;
