//! Proxmox VE LXC: every container is a `pct` guest of the node.

pub mod apparmor;
pub mod cache;
pub mod conf;
pub mod driver;
#[cfg(test)]
mod fuzz_tests;
pub mod pct;
pub mod template;
pub mod translate;
mod update;
pub mod vmid;

pub use driver::Driver;
