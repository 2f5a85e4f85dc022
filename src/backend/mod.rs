//! Backends that turn a container into a guest of some kind. Today: Proxmox LXC.

pub mod proxmox;
