//! The VM engine: turns an image file into a running, reachable node and back into
//! nothing.
//!
//! [`config`] says what a VM should be; [`Vm`] is a running one. The base image is never
//! written (each VM runs on a qcow2 overlay in its run folder), QEMU lives in a process
//! group owned by the [`Vm`] guard, and the serial console is logged from the first byte.

pub mod accel;
pub mod config;
pub mod console;
pub mod disk;
pub mod ignition;
mod machine;
pub mod qemu;
pub mod qmp;
pub mod rootfs;
pub mod seed;

pub use config::{AccelChoice, Boot, BootTimeouts, FirstBoot, GuestForward, VmConfig};
pub use machine::{
    footprint_mib, mem_available_mib, BootTimings, Phase, Vm, VmError, QEMU_OVERHEAD_MIB,
};
