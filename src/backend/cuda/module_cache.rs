//! On-disk cache of compiled kernel modules, so NVRTC runs once per kernel
//! source, GPU architecture and NVRTC version rather than at every start-up.
//!
//! A module is stored as `<dir>/<file>-<sm_XY>-<key>.cubin`, where `key` is
//! the BLAKE3 hash of (expanded source, architecture, NVRTC version, compile
//! options): any change to any of them names a new file. Files are written
//! to a temporary name and renamed, so a crash never leaves a torn cubin
//! under the final name; an unreadable or empty file is recompiled.
//!
//! The directory is `$KILN_KERNEL_CACHE`, else `$XDG_CACHE_HOME/kiln/kernels`,
//! else `$HOME/.cache/kiln/kernels`; with none of them set, nothing is cached.

use super::nvrtc::Arch;
use std::path::{Path, PathBuf};

/// Hex BLAKE3 of everything the cubin depends on.
pub fn cache_key(source: &str, arch: Arch, nvrtc_version: (i32, i32), options: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(source.as_bytes());
    h.update(format!("\0{}\0{}.{}", arch.sm(), nvrtc_version.0, nvrtc_version.1).as_bytes());
    for o in options {
        h.update(b"\0");
        h.update(o.as_bytes());
    }
    h.finalize().to_hex()[..32].to_string()
}

/// The file a module is cached in.
pub fn cache_file(dir: &Path, file: &str, arch: Arch, key: &str) -> PathBuf {
    dir.join(format!("{file}-{}-{key}.cubin", arch.sm()))
}

/// The cache directory from the environment (see the module comment).
pub fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KILN_KERNEL_CACHE") {
        return Some(d.into());
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("kiln/kernels"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln/kernels"))
}

/// Where a module came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Cache,
    Compiled,
}

/// Returns the cached cubin at `path`, or runs `compile` and stores its result
/// there. Cache write failures are not errors (the module is still returned).
pub fn load_or_compile<E>(path: Option<&Path>, compile: impl FnOnce() -> Result<Vec<u8>, E>) -> Result<(Vec<u8>, Origin), E> {
    if let Some(p) = path {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok((bytes, Origin::Cache));
            }
        }
    }
    let bytes = compile()?;
    if let Some(p) = path {
        if let Err(e) = store(p, &bytes) {
            tracing::warn!("could not cache kernel module at {}: {e}", p.display());
        }
    }
    Ok((bytes, Origin::Compiled))
}

fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_every_input() {
        let a = Arch::new(9, 0);
        let o = vec!["-lineinfo".to_string()];
        let k = cache_key("src", a, (13, 0), &o);
        assert_eq!(k.len(), 32);
        assert_eq!(k, cache_key("src", a, (13, 0), &o));
        assert_ne!(k, cache_key("src2", a, (13, 0), &o));
        assert_ne!(k, cache_key("src", Arch::new(8, 0), (13, 0), &o));
        assert_ne!(k, cache_key("src", a, (13, 1), &o));
        assert_ne!(k, cache_key("src", a, (13, 0), &[]));
    }

    #[test]
    fn second_load_hits_the_cache_and_empty_files_are_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let path = cache_file(dir.path(), "rms_norm", Arch::new(8, 9), "abc");
        assert!(path.to_string_lossy().ends_with("rms_norm-sm_89-abc.cubin"));
        let mut calls = 0;
        let mut compile = || -> Result<Vec<u8>, ()> {
            calls += 1;
            Ok(vec![1, 2, 3])
        };
        assert_eq!(load_or_compile(Some(&path), &mut compile).unwrap(), (vec![1, 2, 3], Origin::Compiled));
        assert_eq!(load_or_compile(Some(&path), &mut compile).unwrap(), (vec![1, 2, 3], Origin::Cache));
        std::fs::write(&path, b"").unwrap();
        assert_eq!(load_or_compile(Some(&path), &mut compile).unwrap().1, Origin::Compiled);
        assert_eq!(calls, 2);
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn compile_errors_pass_through_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cubin");
        let r: Result<_, &str> = load_or_compile(Some(&path), || Err("boom"));
        assert_eq!(r.unwrap_err(), "boom");
        assert!(!path.exists());
        assert_eq!(load_or_compile::<()>(None, || Ok(vec![9])).unwrap(), (vec![9], Origin::Compiled));
    }
}
