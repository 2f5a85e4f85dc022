//! Proxmox VE LXC: every container is a `pct` guest of the node.

pub mod apparmor;
pub mod conf;
pub mod driver;
#[cfg(test)]
mod fuzz_tests;
pub mod pct;
pub mod template;
pub mod translate;
pub mod vmid;

pub use driver::Driver;
