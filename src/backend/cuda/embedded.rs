//! Kernel modules compiled at build time and embedded in the binary:
//! - cubins from NVRTC for sm_80, sm_86, sm_89 and sm_90 (build/cubins.rs),
//!   when NVRTC was found at build time (`$KILN_NVRTC_LIB`);
//! - fatbins from nvcc (build.rs) with the same architectures' code plus
//!   compute_90 PTX, when nvcc was found.
//!
//! `source` says where a module comes from for one GPU: the cubin of its
//! exact architecture, else the fatbin, else NVRTC at start-up (through the
//! on-disk cache; modules.rs). Without `--features cuda` nothing is embedded.

use super::nvrtc::Arch;

#[cfg(kiln_nvcc_fatbins)]
include!(concat!(env!("OUT_DIR"), "/fatbins.rs"));
#[cfg(kiln_nvrtc_cubins)]
include!(concat!(env!("OUT_DIR"), "/cubins.rs"));

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

/// Every embedded cubin: (kernel file stem, "sm_XY", image). Empty when
/// build.rs found no NVRTC.
pub fn cubins() -> &'static [(&'static str, &'static str, &'static [u8])] {
    #[cfg(kiln_nvrtc_cubins)]
    {
        CUBINS
    }
    #[cfg(not(kiln_nvrtc_cubins))]
    {
        &[]
    }
}

/// The options and NVRTC version the embedded cubins were compiled with.
pub fn cubin_build() -> Option<(&'static [&'static str], (i32, i32))> {
    #[cfg(kiln_nvrtc_cubins)]
    {
        Some((CUBIN_OPTIONS, CUBIN_NVRTC_VERSION))
    }
    #[cfg(not(kiln_nvrtc_cubins))]
    {
        None
    }
}

/// The embedded cubin of kernels/{name}.cu for exactly `arch`.
pub fn cubin(name: &str, arch: Arch) -> Option<&'static [u8]> {
    let sm = arch.sm();
    cubins().iter().find(|(n, s, _)| *n == name && *s == sm).map(|(_, _, b)| *b)
}

/// Where the module of one kernel file comes from on a GPU of `arch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Cubin(&'static [u8]),
    Fatbin(&'static [u8]),
    /// Compiled by NVRTC for `arch` at start-up (or read from the cache).
    Nvrtc,
}

/// Embedded cubin of the exact architecture > embedded fatbin > NVRTC.
pub fn source(name: &str, arch: Arch) -> Source {
    if let Some(c) = cubin(name, arch) {
        return Source::Cubin(c);
    }
    fatbin(name).map_or(Source::Nvrtc, Source::Fatbin)
}

/// The SM a CUDA cubin was built for, from its ELF header: an ELF64 file
/// with e_machine EM_CUDA (190). The SM is the low byte of e_flags in ELF
/// ABI version 7 cubins, and bits 8..16 from ABI version 8 on (CUDA 13).
pub fn cubin_sm(image: &[u8]) -> Option<u32> {
    if image.len() < 64 || &image[..4] != b"\x7fELF" || image[4] != 2 {
        return None;
    }
    let machine = u16::from_le_bytes([image[18], image[19]]);
    if machine != 190 {
        return None;
    }
    let flags = u32::from_le_bytes([image[48], image[49], image[50], image[51]]);
    Some(if image[8] >= 8 { (flags >> 8) & 0xff } else { flags & 0xff })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kernels::FILES;
    use crate::backend::cuda::nvrtc::{options, CHECKED_ARCHS};

    /// With cubins embedded (build.rs found NVRTC), every kernel file has one
    /// per checked architecture, each an ELF for its SM, and the loader
    /// takes it for that architecture and for no other. With
    /// KILN_REQUIRE_NVRTC=1 (CI) they must have been embedded.
    #[test]
    fn embedded_cubins_are_elf_for_their_sm_and_preferred_for_it() {
        if cubins().is_empty() {
            // build.rs embeds cubins only for `--features cuda` builds.
            assert!(
                !(cfg!(feature = "cuda") && std::env::var("KILN_REQUIRE_NVRTC").is_ok_and(|v| v == "1")),
                "KILN_REQUIRE_NVRTC=1 but no cubins were embedded: build with --features cuda and KILN_NVRTC_LIB set"
            );
            println!("SKIPPED: no embedded cubins (built without --features cuda or without NVRTC)");
            return;
        }
        assert_eq!(cubins().len(), FILES.len() * CHECKED_ARCHS.len());
        for f in FILES {
            for arch in CHECKED_ARCHS {
                let c = cubin(f.name, arch).unwrap_or_else(|| panic!("no cubin for {} {arch}", f.name));
                assert_eq!(cubin_sm(c), Some(arch.major * 10 + arch.minor), "{} {arch}: ELF header", f.name);
                assert_eq!(source(f.name, arch), Source::Cubin(c));
            }
            // An architecture without a cubin of its own goes to the fatbin or NVRTC.
            assert!(!matches!(source(f.name, Arch::new(8, 7)), Source::Cubin(_)));
            assert!(!matches!(source(f.name, Arch::new(12, 0)), Source::Cubin(_)));
        }
        let (opts, _) = cubin_build().unwrap();
        assert_eq!(opts, &options(Arch::new(9, 0), false)[1..], "build-time options differ from the run-time ones");
    }

    #[test]
    fn elf_header_parsing() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[18..20].copy_from_slice(&190u16.to_le_bytes());
        h[8] = 7;
        h[48..52].copy_from_slice(&0x0050_0550u32.to_le_bytes());
        assert_eq!(cubin_sm(&h), Some(0x50));
        h[8] = 8;
        h[48..52].copy_from_slice(&(90u32 << 8).to_le_bytes());
        assert_eq!(cubin_sm(&h), Some(90));
        h[18] = 62; // x86-64
        assert_eq!(cubin_sm(&h), None);
        assert_eq!(cubin_sm(b"\x7fELF"), None);
    }
}
