//! Finding cuBLAS and cuBLASLt before cudarc touches them.
//!
//! cudarc opens `libcublas` / `libcublasLt` lazily, by name, on the first
//! cuBLAS call, and panics when no name resolves. Its name list also accepts
//! CUDA 12 sonames (`libcublas.so.12`), which would bind a CUDA 12 library
//! under kiln's CUDA 13 bindings (cudarc feature `cuda-13000`). So at GPU
//! start-up, before any cuBLAS call, this module:
//!
//! 1. finds a directory holding `libcublasLt.so.13` and `libcublas.so.13`
//!    (files of another major version are refused by name), unless the
//!    loader already resolves `libcublas.so.13` by itself;
//! 2. loads both by absolute path (cuBLASLt first: cuBLAS needs it), so the
//!    dynamic loader finds them by soname when cudarc asks;
//! 3. opens the library exactly as cudarc will (its own name list, in its
//!    order) and checks with `cublasGetProperty` / `cublasLtGetProperty`
//!    that its major version is 13.
//!
//! Any failure is a `BlasLibError` naming where it looked, never a panic.
//!
//! Where it looks, in order: `$KILN_CUBLAS_LIB` (a directory or the
//! libcublas.so.13 file; when set, nothing else), the loader's own path, then
//! `nvidia/cu13/lib` and `nvidia/cublas/lib` of the Python environments
//! `$VIRTUAL_ENV`, `<repo>/.venv-nvrtc` and `/opt/torch/.venv` (PyPI wheels),
//! then `/usr/local/cuda/lib64` and every `/usr/local/cuda-*/lib64`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The CUDA major version of kiln's bindings (cudarc `cuda-13000`).
pub const CUDA_MAJOR: u32 = 13;

/// The two libraries, in load order, without their `.so.N` suffix.
pub const LIBS: [&str; 2] = ["libcublasLt", "libcublas"];

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BlasLibError {
    #[error(
        "cuBLAS for CUDA {CUDA_MAJOR} (libcublas.so.{CUDA_MAJOR} and libcublasLt.so.{CUDA_MAJOR}) was not found; looked in: {looked}{refused}. \
         Install it (e.g. `pip install nvidia-cublas` for CUDA {CUDA_MAJOR}, or the CUDA {CUDA_MAJOR} toolkit) and set \
         KILN_CUBLAS_LIB to the directory holding libcublas.so.{CUDA_MAJOR}, or run with --device cpu"
    )]
    NotFound { looked: String, refused: String },
    #[error("loading {path}: {msg}")]
    Load { path: String, msg: String },
    #[error(
        "the {lib} the dynamic loader resolves for kiln ('{name}') is cuBLAS {major}.x, but kiln's CUDA bindings are for \
         CUDA {CUDA_MAJOR}; put the CUDA {CUDA_MAJOR} library first (KILN_CUBLAS_LIB) or remove '{name}' from the loader path"
    )]
    WrongVersion { lib: &'static str, name: String, major: i32 },
}

/// The candidate directories, in search order (see the module comment).
pub fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = super::nvrtc::wheel_lib_dirs(&["nvidia/cu13/lib", "nvidia/cublas/lib"]);
    dirs.push("/usr/local/cuda/lib64".into());
    if let Ok(rd) = std::fs::read_dir("/usr/local") {
        let mut cudas: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cuda-"))).collect();
        cudas.sort();
        dirs.extend(cudas.into_iter().map(|p| p.join("lib64")));
    }
    dirs
}

/// The first of `dirs` holding both libraries for CUDA_MAJOR. The error
/// names every directory looked in and every library of another major
/// version seen there (refused: their API differs).
pub fn find_in(dirs: &[PathBuf]) -> Result<PathBuf, BlasLibError> {
    let mut refused = Vec::new();
    for dir in dirs {
        if LIBS.iter().all(|l| dir.join(format!("{l}.so.{CUDA_MAJOR}")).is_file()) {
            return Ok(dir.clone());
        }
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let major = LIBS.iter().find_map(|l| name.strip_prefix(&format!("{l}.so.")));
            if major.is_some_and(|m| m.split('.').next() != Some(&CUDA_MAJOR.to_string())) {
                refused.push(e.path().display().to_string());
            }
        }
    }
    let looked = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    let refused = if refused.is_empty() {
        String::new()
    } else {
        refused.sort();
        format!(" (refused, another CUDA major version: {})", refused.join(", "))
    };
    Err(BlasLibError::NotFound { looked, refused })
}

/// `$KILN_CUBLAS_LIB` as a directory (a file names its directory).
fn env_dir() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("KILN_CUBLAS_LIB")?);
    Some(if p.is_file() { p.parent().map(Path::to_path_buf).unwrap_or_default() } else { p })
}

static LOADED: OnceLock<Result<Option<PathBuf>, BlasLibError>> = OnceLock::new();

/// Makes cuBLAS 13 loadable for cudarc and checks the version it will bind
/// (see the module comment). Returns the directory preloaded from, if one
/// had to be. Cheap after the first call.
pub fn ensure_loaded() -> Result<Option<PathBuf>, BlasLibError> {
    LOADED.get_or_init(locate_preload_and_check).clone()
}

fn locate_preload_and_check() -> Result<Option<PathBuf>, BlasLibError> {
    let dir = match env_dir() {
        Some(d) => Some(find_in(std::slice::from_ref(&d))?),
        None if loads_by_name(&format!("libcublas.so.{CUDA_MAJOR}")) => None,
        None => Some(find_in(&candidate_dirs())?),
    };
    if let Some(d) = &dir {
        for l in LIBS {
            preload(&d.join(format!("{l}.so.{CUDA_MAJOR}")))?;
        }
    }
    check_bound_version("cuBLASLt", "cublasLt", b"cublasLtGetProperty")?;
    check_bound_version("cuBLAS", "cublas", b"cublasGetProperty")?;
    Ok(dir)
}

fn loads_by_name(name: &str) -> bool {
    // SAFETY: NVIDIA's libraries run no unusual initialisers; opened and closed.
    unsafe { libloading::Library::new(name) }.is_ok()
}

/// Loads `path` and keeps it loaded for the life of the process.
fn preload(path: &Path) -> Result<(), BlasLibError> {
    static KEEP: OnceLock<Mutex<Vec<libloading::Library>>> = OnceLock::new();
    // SAFETY: as in loads_by_name; this is what the CUDA Python packages do.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| BlasLibError::Load { path: path.display().to_string(), msg: e.to_string() })?;
    KEEP.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner()).push(lib);
    Ok(())
}

/// Opens `stem` under the names cudarc tries, in its order, and checks the
/// major version of the first that opens (the one cudarc will bind).
fn check_bound_version(lib: &'static str, stem: &str, get_property: &[u8]) -> Result<(), BlasLibError> {
    type GetProperty = unsafe extern "C" fn(i32, *mut i32) -> i32;
    let names = cudarc::get_lib_name_candidates(stem);
    for name in &names {
        // SAFETY: as in loads_by_name.
        let Ok(l) = (unsafe { libloading::Library::new(name) }) else { continue };
        // SAFETY: `cublas(Lt)GetProperty(libraryPropertyType type, int* value)`,
        // the same signature in every cuBLAS since 6.0; MAJOR_VERSION is 0.
        let major = unsafe {
            let f = l.get::<GetProperty>(get_property).map_err(|e| BlasLibError::Load { path: name.clone(), msg: e.to_string() })?;
            let mut v = -1;
            let status = f(0, &mut v);
            if status != 0 {
                return Err(BlasLibError::Load { path: name.clone(), msg: format!("{}: status {status}", String::from_utf8_lossy(get_property)) });
            }
            v
        };
        if major != CUDA_MAJOR as i32 {
            return Err(BlasLibError::WrongVersion { lib, name: name.clone(), major });
        }
        return Ok(());
    }
    Err(BlasLibError::NotFound { looked: format!("the loader path, under the names {names:?}"), refused: String::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, names: &[&str]) {
        for n in names {
            std::fs::write(dir.join(n), b"").unwrap();
        }
    }

    #[test]
    fn finds_the_directory_with_both_cuda_13_libraries() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        touch(a.path(), &["libcublas.so.13"]); // cuBLASLt missing: not enough
        touch(b.path(), &["libcublasLt.so.13", "libcublas.so.13", "libcublas.so.13.0.2.14"]);
        let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_in(&dirs).unwrap(), b.path());
    }

    #[test]
    fn cuda_12_libraries_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), &["libcublas.so.12", "libcublasLt.so.12", "libcublas.so.12.8.4.1"]);
        let e = find_in(&[d.path().to_path_buf()]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&d.path().display().to_string()), "{msg}");
        assert!(msg.contains("refused") && msg.contains("libcublas.so.12") && msg.contains("libcublasLt.so.12"), "{msg}");
        assert!(msg.contains("KILN_CUBLAS_LIB"), "{msg}");
    }

    #[test]
    fn nothing_found_names_every_place_looked() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let missing = a.path().join("no/such/dir");
        let e = find_in(&[missing.clone(), b.path().to_path_buf()]).unwrap_err();
        assert_eq!(e, BlasLibError::NotFound { looked: format!("{}, {}", missing.display(), b.path().display()), refused: String::new() });
    }

    #[test]
    fn search_order_starts_with_the_wheels_and_ends_with_the_toolkit() {
        let d = candidate_dirs();
        assert!(d.iter().any(|p| p.ends_with("lib64") && p.starts_with("/usr/local/cuda")));
        let wheel = d.iter().position(|p| p.ends_with("nvidia/cublas/lib"));
        let toolkit = d.iter().position(|p| p == Path::new("/usr/local/cuda/lib64")).unwrap();
        assert!(wheel.is_none_or(|w| w < toolkit));
    }
}
