//! Pieces of the `kagami` command that are not the command definitions themselves.

pub mod allocator;
pub mod demo;
pub mod startup;
