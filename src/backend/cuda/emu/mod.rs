//! The emulated GPU (`--features emu`): kiln's kernels compiled for the host.

pub mod host_kernels;
