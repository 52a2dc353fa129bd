//! NVRTC, NVIDIA's run-time CUDA compiler: finding the library and compiling
//! one kernel file to a cubin for one GPU architecture.
//!
//! Needs no GPU and no driver, so it also runs in CI (tests/nvrtc_compile.rs).
//! cudarc opens `libnvrtc.so.13` by name; when the library is not on the
//! loader's path (a PyPI wheel, say) it is loaded here first by absolute
//! path, together with `libnvrtc-builtins.so.13.*` that NVRTC itself opens by
//! name: the dynamic loader then finds both by their SONAME.
//!
//! Where it looks, in order: `$KILN_NVRTC_LIB` (a directory or the
//! libnvrtc.so.13 file), the loader's own path (`LD_LIBRARY_PATH`, system
//! directories), then `nvidia/cu13/lib` of the Python environments
//! `$VIRTUAL_ENV`, `<repo>/.venv-nvrtc` (scripts/install-nvrtc.sh) and
//! `/opt/torch/.venv`, then `/usr/local/cuda/lib64`.

use super::kernels::KernelFile;
use cudarc::nvrtc::{result, sys};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A GPU architecture, `sm_{major}{minor}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
}

impl Arch {
    pub const fn new(major: u32, minor: u32) -> Arch {
        Arch { major, minor }
    }

    /// "sm_90".
    pub fn sm(&self) -> String {
        format!("sm_{}{}", self.major, self.minor)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.sm())
    }
}

/// The architectures kiln's kernels are checked for (Ampere A100, Ampere
/// consumer, Ada, Hopper). The kernels need sm_80 at least (bf16 PTX).
pub const CHECKED_ARCHS: [Arch; 4] = [Arch::new(8, 0), Arch::new(8, 6), Arch::new(8, 9), Arch::new(9, 0)];

#[derive(Debug, thiserror::Error)]
pub enum NvrtcError {
    #[error("the NVRTC library (libnvrtc.so.13) was not found: {0}")]
    NotFound(String),
    #[error("NVRTC failed to compile kernels/{file}.cu for {arch}:\n{log}")]
    Compile { file: String, arch: Arch, log: String },
    #[error("NVRTC call {call} failed: {detail}")]
    Call { call: &'static str, detail: String },
}

/// A compiled module: the cubin and NVRTC's log (warnings, and the ptxas
/// resource report when asked for).
#[derive(Debug)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
}

static PRELOADED: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();

/// Makes NVRTC loadable (see the module comment) and returns the directory it
/// was preloaded from, if it had to be. Cheap after the first call.
pub fn ensure_loaded() -> Result<Option<PathBuf>, NvrtcError> {
    PRELOADED.get_or_init(locate_and_preload).clone().map_err(NvrtcError::NotFound)
}

fn locate_and_preload() -> Result<Option<PathBuf>, String> {
    if let Some(v) = std::env::var_os("KILN_NVRTC_LIB") {
        let p = PathBuf::from(v);
        let dir = if p.is_file() { p.parent().map(Path::to_path_buf).unwrap_or_default() } else { p };
        preload_dir(&dir).map_err(|e| format!("KILN_NVRTC_LIB={}: {e}", dir.display()))?;
        return Ok(Some(dir));
    }
    // SAFETY: only opens and closes the library to see whether it resolves.
    if unsafe { sys::is_culib_present() } {
        return Ok(None);
    }
    for dir in candidate_dirs() {
        if dir.join("libnvrtc.so.13").is_file() {
            preload_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            return Ok(Some(dir));
        }
    }
    Err("not on the loader path and not in $KILN_NVRTC_LIB, $VIRTUAL_ENV, .venv-nvrtc, /opt/torch/.venv \
         or /usr/local/cuda; run scripts/install-nvrtc.sh and set KILN_NVRTC_LIB to the directory it prints"
        .into())
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = wheel_lib_dirs(&["nvidia/cu13/lib"]);
    dirs.push("/usr/local/cuda/lib64".into());
    dirs
}

/// `site-packages/<sub>` for every `sub`, in every Python of the virtual
/// environments kiln looks in, in search order: `$VIRTUAL_ENV`, the
/// repository's `.venv-nvrtc` (scripts/install-nvrtc.sh), `/opt/torch/.venv`
/// (the GPU machine's PyTorch). Shared with the cuBLAS locator (cublas_lib.rs).
pub(crate) fn wheel_lib_dirs(subs: &[&str]) -> Vec<PathBuf> {
    let mut envs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        envs.push(v.into());
    }
    envs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-nvrtc"));
    envs.push("/opt/torch/.venv".into());
    let mut dirs = Vec::new();
    for env in envs {
        let Ok(rd) = std::fs::read_dir(env.join("lib")) else { continue };
        let mut pys: Vec<PathBuf> =
            rd.flatten().map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python3"))).collect();
        pys.sort();
        for py in pys {
            dirs.extend(subs.iter().map(|sub| py.join("site-packages").join(sub)));
        }
    }
    dirs
}

/// Loads libnvrtc-builtins.so.13.* then libnvrtc.so.13 from `dir` and keeps
/// them loaded for the life of the process.
fn preload_dir(dir: &Path) -> Result<(), String> {
    static KEEP: OnceLock<std::sync::Mutex<Vec<libloading::Library>>> = OnceLock::new();
    let keep = KEEP.get_or_init(Default::default);
    let rd = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
    let mut builtins: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with("libnvrtc-builtins.so.13") && !n.contains(".alt.")
        })
        .collect();
    builtins.sort();
    let lib = dir.join("libnvrtc.so.13");
    if !lib.is_file() {
        return Err("no libnvrtc.so.13 there".into());
    }
    let mut held = keep.lock().map_err(|_| "poisoned lock".to_string())?;
    for p in builtins.iter().chain(std::iter::once(&lib)) {
        // SAFETY: NVIDIA's libraries run no unusual initialisers; loading them
        // by path is what the CUDA Python packages themselves do.
        let l = unsafe { libloading::Library::new(p) }.map_err(|e| format!("{}: {e}", p.display()))?;
        held.push(l);
    }
    // SAFETY: as above.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err("loaded by path but still not found by name".into())
    }
}

/// NVRTC's version, e.g. (13, 0). Part of the module cache key.
pub fn version() -> Result<(i32, i32), NvrtcError> {
    ensure_loaded()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters; the library is loaded.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| NvrtcError::Call { call: "nvrtcVersion", detail: format!("{e:?}") })?;
    Ok((major, minor))
}

/// Options every compilation uses. `-lineinfo` keeps source lines for
/// compute-sanitizer reports at no run-time cost.
pub fn options(arch: Arch, resource_report: bool) -> Vec<String> {
    let mut o = vec![format!("--gpu-architecture={}", arch.sm()), "-std=c++17".into(), "-lineinfo".into()];
    if resource_report {
        o.push("--ptxas-options=-v".into());
    }
    o
}

/// Compiles one kernel file to a cubin for `arch`. The error carries NVRTC's
/// log. `resource_report` adds ptxas's registers / shared memory / spill
/// report to the log.
pub fn compile(file: &KernelFile, arch: Arch, resource_report: bool) -> Result<Compiled, NvrtcError> {
    ensure_loaded()?;
    let src = CString::new(file.expanded()).map_err(|_| NvrtcError::Compile {
        file: file.name.into(),
        arch,
        log: "source contains a NUL byte".into(),
    })?;
    let name = CString::new(format!("{}.cu", file.name)).expect("file names have no NUL");
    let call = |call: &'static str| move |e: result::NvrtcError| NvrtcError::Call { call, detail: format!("{e:?}") };
    let prog = result::create_program(&src, Some(&name)).map_err(call("nvrtcCreateProgram"))?;
    let guard = ProgramGuard(prog);
    // SAFETY: `prog` is a live program owned by `guard`.
    let compiled = unsafe { result::compile_program(prog, &options(arch, resource_report)) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(prog) }.map(|raw| c_chars_to_string(&raw)).unwrap_or_default();
    if compiled.is_err() {
        return Err(NvrtcError::Compile { file: file.name.into(), arch, log });
    }
    let cubin = get_cubin(guard.0).map_err(call("nvrtcGetCUBIN"))?;
    Ok(Compiled { cubin, log })
}

fn get_cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, result::NvrtcError> {
    let mut size = 0usize;
    // SAFETY: `prog` was compiled for a real architecture (sm_XY), so a cubin exists.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }.result()?;
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds `size` bytes as NVRTC asked.
    unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) }.result()?;
    Ok(buf)
}

fn c_chars_to_string(raw: &[std::ffi::c_char]) -> String {
    // NVRTC's log is NUL-terminated within the buffer it sized.
    let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).collect();
    CStr::from_bytes_until_nul(&bytes).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

struct ProgramGuard(sys::nvrtcProgram);

impl Drop for ProgramGuard {
    fn drop(&mut self) {
        // SAFETY: destroyed exactly once, here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        assert_eq!(Arch::new(9, 0).sm(), "sm_90");
        assert_eq!(Arch::new(8, 9).to_string(), "sm_89");
    }

    #[test]
    fn options_name_the_architecture() {
        let o = options(Arch::new(8, 0), true);
        assert!(o.contains(&"--gpu-architecture=sm_80".to_string()));
        assert!(o.iter().any(|x| x.starts_with("--ptxas-options")));
        assert!(!options(Arch::new(8, 0), false).iter().any(|x| x.starts_with("--ptxas-options")));
    }
}
