//! Kernel modules compiled by nvcc at build time (build.rs), when nvcc was
//! found: one fatbin per kernel file with sm_80/86/89/90 code and compute_90
//! PTX. Without them every module is compiled by NVRTC at start-up.

#[cfg(kiln_nvcc_fatbins)]
include!(concat!(env!("OUT_DIR"), "/fatbins.rs"));

/// The embedded fatbin of kernels/{name}.cu, if build.rs made one.
pub fn fatbin(name: &str) -> Option<&'static [u8]> {
    #[cfg(kiln_nvcc_fatbins)]
    {
        FATBINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }
    #[cfg(not(kiln_nvcc_fatbins))]
    {
        let _ = name;
        None
    }
}
