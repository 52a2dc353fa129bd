//! Build step (with `--features cuda`): compiles every kernels/*.cu with
//! NVRTC to a cubin for each architecture in ARCHS and writes
//! `$OUT_DIR/cubins.rs`, which src/backend/cuda/embedded.rs includes, so a
//! GPU server of one of these architectures starts without compiling.
//! Other architectures still compile at start-up (NVRTC, on-disk cache).
//!
//! NVRTC is opened with libloading (no cudarc in build-dependencies) from
//! `$KILN_NVRTC_LIB` (a directory or the libnvrtc.so.13 file; what
//! scripts/install-nvrtc.sh prints), else `.venv-nvrtc/` of the repository,
//! else the loader's path. Without it the step is skipped with a
//! `cargo:warning`. `KILN_BUILD_CUBINS=0` skips it on purpose. A kernel
//! NVRTC rejects fails the build with NVRTC's log.
//!
//! The (file, arch) pairs compile on as many threads as there are cores;
//! the options are the run-time ones (src/backend/cuda/nvrtc.rs `options`,
//! checked by a test of embedded.rs).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// (major, minor) of the architectures embedded: A100, consumer Ampere, Ada, Hopper.
pub const ARCHS: [(u32, u32); 4] = [(8, 0), (8, 6), (8, 9), (9, 0)];
/// Compile options besides `--gpu-architecture` (the run-time ones).
pub const OPTIONS: [&str; 2] = ["-std=c++17", "-lineinfo"];

type Prog = *mut c_void;
type CreateProgram = unsafe extern "C" fn(*mut Prog, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> c_int;
type CompileProgram = unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int;
type GetSize = unsafe extern "C" fn(Prog, *mut usize) -> c_int;
type GetBytes = unsafe extern "C" fn(Prog, *mut c_char) -> c_int;
type DestroyProgram = unsafe extern "C" fn(*mut Prog) -> c_int;
type Version = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;

/// The NVRTC entry points the build uses; the libraries stay loaded while it lives.
struct Nvrtc {
    create: CreateProgram,
    compile: CompileProgram,
    log_size: GetSize,
    log: GetBytes,
    cubin_size: GetSize,
    cubin: GetBytes,
    destroy: DestroyProgram,
    version: (i32, i32),
    _libs: Vec<libloading::Library>,
}

/// Compiles and embeds the cubins, or says why not (cargo:warning).
pub fn embed(out_dir: &Path) {
    println!("cargo::rerun-if-env-changed=KILN_NVRTC_LIB");
    println!("cargo::rerun-if-env-changed=KILN_BUILD_CUBINS");
    if std::env::var("KILN_BUILD_CUBINS").is_ok_and(|v| v == "0") {
        return;
    }
    let nvrtc = match Nvrtc::open() {
        Ok(n) => n,
        Err(why) => {
            println!(
                "cargo:warning=kiln: no NVRTC at build time ({why}); CUDA kernels will be compiled at start-up. \
                 Set KILN_NVRTC_LIB=$(scripts/install-nvrtc.sh) to embed cubins for sm_80/86/89/90."
            );
            return;
        }
    };
    let files = kernel_files();
    let jobs: Vec<(&(String, String), (u32, u32))> = files.iter().flat_map(|f| ARCHS.iter().map(move |&a| (f, a))).collect();
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(String, String, PathBuf)>> = Mutex::new(Vec::new());
    let failed: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(jobs.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&((name, src), (major, minor))) = jobs.get(i) else { break };
                let sm = format!("sm_{major}{minor}");
                match nvrtc.compile(name, src, &sm) {
                    Ok(cubin) => {
                        let path = out_dir.join(format!("{name}-{sm}.cubin"));
                        std::fs::write(&path, cubin).expect("write cubin");
                        done.lock().unwrap().push((name.clone(), sm, path));
                    }
                    Err(log) => failed.lock().unwrap().push(format!("kernels/{name}.cu for {sm}:\n{log}")),
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap();
    if !failed.is_empty() {
        panic!("NVRTC rejected kernels (KILN_BUILD_CUBINS=0 skips this step):\n{}", failed.join("\n"));
    }
    let mut done = done.into_inner().unwrap();
    done.sort();
    write_index(out_dir, &done, nvrtc.version);
    println!("cargo::rustc-cfg=kiln_nvrtc_cubins");
}

/// (stem, source with common.cuh pasted in, as kernels.rs `expanded`), sorted.
fn kernel_files() -> Vec<(String, String)> {
    let common = std::fs::read_to_string("kernels/common.cuh").expect("kernels/common.cuh");
    let mut files: Vec<(String, String)> = std::fs::read_dir("kernels")
        .expect("kernels/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .map(|p| {
            let src = std::fs::read_to_string(&p).expect("read kernel");
            (p.file_stem().unwrap().to_string_lossy().into_owned(), src.replacen("#include \"common.cuh\"", &common, 1))
        })
        .collect();
    files.sort();
    files
}

fn write_index(out_dir: &Path, done: &[(String, String, PathBuf)], version: (i32, i32)) {
    let mut src = String::from("/// (kernel file stem, \"sm_XY\", cubin) compiled by build.rs with NVRTC.\nstatic CUBINS: &[(&str, &str, &[u8])] = &[\n");
    for (name, sm, path) in done {
        src += &format!("    ({name:?}, {sm:?}, include_bytes!({:?})),\n", path.display().to_string());
    }
    src += "];\n";
    src += &format!("/// Options of those compilations besides the architecture.\nstatic CUBIN_OPTIONS: &[&str] = &{OPTIONS:?};\n");
    src += &format!("/// The NVRTC version that compiled them.\nstatic CUBIN_NVRTC_VERSION: (i32, i32) = ({}, {});\n", version.0, version.1);
    std::fs::write(out_dir.join("cubins.rs"), src).expect("write cubins.rs");
}

/// Directories that may hold libnvrtc.so.13, in order (see the module comment).
fn candidate_dirs() -> Vec<PathBuf> {
    if let Some(v) = std::env::var_os("KILN_NVRTC_LIB") {
        let p = PathBuf::from(v);
        return vec![if p.is_file() { p.parent().map(Path::to_path_buf).unwrap_or_default() } else { p }];
    }
    let mut dirs = Vec::new();
    if let Ok(rd) = std::fs::read_dir(".venv-nvrtc/lib") {
        for e in rd.flatten() {
            dirs.push(e.path().join("site-packages/nvidia/cu13/lib"));
        }
    }
    dirs
}

impl Nvrtc {
    fn open() -> Result<Nvrtc, String> {
        let mut libs = Vec::new();
        let dir = candidate_dirs().into_iter().find(|d| d.join("libnvrtc.so.13").is_file());
        let main = match &dir {
            Some(d) => {
                // NVRTC opens its builtins by name: load them by path first.
                for e in std::fs::read_dir(d).map_err(|e| e.to_string())?.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.starts_with("libnvrtc-builtins.so.13") && !n.contains(".alt.") {
                        // SAFETY: NVIDIA's library; no unusual initialisers.
                        libs.push(unsafe { libloading::Library::new(e.path()) }.map_err(|e| e.to_string())?);
                    }
                }
                d.join("libnvrtc.so.13")
            }
            None if std::env::var_os("KILN_NVRTC_LIB").is_some() => return Err("no libnvrtc.so.13 in $KILN_NVRTC_LIB".into()),
            None => PathBuf::from("libnvrtc.so.13"),
        };
        // SAFETY: as above.
        let lib = unsafe { libloading::Library::new(&main) }.map_err(|e| format!("{}: {e}", main.display()))?;
        // SAFETY: the signatures are NVRTC's (nvrtc.h, CUDA 13).
        let n = unsafe {
            let sym = |name: &[u8]| -> Result<*const c_void, String> {
                lib.get::<*const c_void>(name).map(|s| *s).map_err(|e| format!("{}: {e}", String::from_utf8_lossy(name)))
            };
            let version: Version = std::mem::transmute(sym(b"nvrtcVersion")?);
            let (mut major, mut minor) = (0, 0);
            version(&mut major, &mut minor);
            Nvrtc {
                create: std::mem::transmute::<*const c_void, CreateProgram>(sym(b"nvrtcCreateProgram")?),
                compile: std::mem::transmute::<*const c_void, CompileProgram>(sym(b"nvrtcCompileProgram")?),
                log_size: std::mem::transmute::<*const c_void, GetSize>(sym(b"nvrtcGetProgramLogSize")?),
                log: std::mem::transmute::<*const c_void, GetBytes>(sym(b"nvrtcGetProgramLog")?),
                cubin_size: std::mem::transmute::<*const c_void, GetSize>(sym(b"nvrtcGetCUBINSize")?),
                cubin: std::mem::transmute::<*const c_void, GetBytes>(sym(b"nvrtcGetCUBIN")?),
                destroy: std::mem::transmute::<*const c_void, DestroyProgram>(sym(b"nvrtcDestroyProgram")?),
                version: (major, minor),
                _libs: Vec::new(),
            }
        };
        libs.push(lib);
        Ok(Nvrtc { _libs: libs, ..n })
    }

    /// The cubin of one file for `sm` ("sm_90"), or NVRTC's log.
    fn compile(&self, name: &str, src: &str, sm: &str) -> Result<Vec<u8>, String> {
        let src = CString::new(src).map_err(|_| "NUL in source".to_string())?;
        let file = CString::new(format!("{name}.cu")).unwrap();
        let opts: Vec<CString> = std::iter::once(format!("--gpu-architecture={sm}")).chain(OPTIONS.iter().map(|s| s.to_string())).map(|s| CString::new(s).unwrap()).collect();
        let ptrs: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: NVRTC's documented calling sequence; buffers are sized as it reports.
        unsafe {
            if (self.create)(&mut prog, src.as_ptr(), file.as_ptr(), 0, std::ptr::null(), std::ptr::null()) != 0 {
                return Err("nvrtcCreateProgram failed".into());
            }
            let ok = (self.compile)(prog, ptrs.len() as c_int, ptrs.as_ptr()) == 0;
            let result = if ok {
                let mut size = 0usize;
                (self.cubin_size)(prog, &mut size);
                let mut buf = vec![0u8; size];
                (self.cubin)(prog, buf.as_mut_ptr().cast());
                Ok(buf)
            } else {
                let mut size = 0usize;
                (self.log_size)(prog, &mut size);
                let mut buf = vec![0u8; size.max(1)];
                (self.log)(prog, buf.as_mut_ptr().cast());
                Err(CStr::from_bytes_until_nul(&buf).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default())
            };
            (self.destroy)(&mut prog);
            result
        }
    }
}
