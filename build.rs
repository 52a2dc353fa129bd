//! Build script, with `--features cuda` (both steps embed kernel modules in
//! the binary through src/backend/cuda/embedded.rs):
//! - with NVRTC at build time (`$KILN_NVRTC_LIB`, see build/cubins.rs):
//!   every kernels/*.cu compiled to cubins for sm_80, sm_86, sm_89, sm_90;
//! - with nvcc on the PATH (or $KILN_NVCC): every kernels/*.cu compiled to a
//!   fatbin (sm_80, sm_86, sm_89, sm_90 code plus compute_90 PTX).
//! With neither the kernels are compiled by NVRTC at start-up.
//! KILN_NVCC=0 disables the nvcc path, KILN_BUILD_CUBINS=0 the NVRTC one. A
//! kernel that either compiler rejects fails the build with its output.
//!
//! With `--features emu` it also compiles every kernel for the host, for the
//! emulated device (build/host_emu.rs).

#[path = "build/cubins.rs"]
mod cubins;

use std::path::{Path, PathBuf};
use std::process::Command;

#[cfg(feature = "emu")]
#[path = "build/host_emu.rs"]
mod host_emu;

const GENCODE: &[&str] = &[
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_86,code=sm_86",
    "-gencode=arch=compute_89,code=sm_89",
    "-gencode=arch=compute_90,code=[sm_90,compute_90]",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kiln_nvcc_fatbins)");
    println!("cargo::rustc-check-cfg=cfg(kiln_nvrtc_cubins)");
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-changed=build");
    println!("cargo::rerun-if-env-changed=KILN_NVCC");
    #[cfg(feature = "emu")]
    host_emu::build(&PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")));
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    cubins::embed(&PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")));
    let nvcc = std::env::var("KILN_NVCC").unwrap_or_else(|_| "nvcc".into());
    if nvcc == "0" || Command::new(&nvcc).arg("--version").output().map_or(true, |o| !o.status.success()) {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut entries = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    for cu in files {
        let name = cu.file_stem().unwrap().to_string_lossy().into_owned();
        let fatbin = out.join(format!("{name}.fatbin"));
        compile(&nvcc, &cu, &fatbin);
        entries.push(format!("    ({name:?}, include_bytes!({:?})),\n", fatbin.display().to_string()));
    }
    let src = format!("/// (kernel file stem, fatbin) made by build.rs with nvcc.\nstatic FATBINS: &[(&str, &[u8])] = &[\n{}];\n", entries.concat());
    std::fs::write(out.join("fatbins.rs"), src).expect("write fatbins.rs");
    println!("cargo::rustc-cfg=kiln_nvcc_fatbins");
}

fn compile(nvcc: &str, cu: &Path, fatbin: &Path) {
    let o = Command::new(nvcc)
        .args(["-fatbin", "-O3", "-std=c++17", "-lineinfo", "-Ikernels"])
        .args(GENCODE)
        .arg("-o")
        .arg(fatbin)
        .arg(cu)
        .output()
        .expect("run nvcc");
    if !o.status.success() {
        panic!(
            "nvcc failed on {}:\n{}{}",
            cu.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
