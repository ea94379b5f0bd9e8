//! NVRTC at compile time: the generated CUDA C becomes a cubin for each of [`CUBIN_ARCHS`]
//! and PTX for [`PTX_ARCH`] (the fallback a newer GPU JIT-compiles), through cudarc's
//! dynamically loaded `libnvrtc` (found by `dlopen` under the names cudarc tries, e.g.
//! `libnvrtc.so.12`, so through `LD_LIBRARY_PATH`). No GPU is needed.
//!
//! cudarc panics when it calls into a library it cannot load, so [`available`] checks
//! presence first and every entry point here returns [`NvrtcError::Missing`] instead.
//! Each target's output is looked up first in the on-disk cache (`cache.rs`) when one is
//! given, keyed by the source, NVRTC's version, the architecture and the options.
//! Must not generate source (see `kernels.rs`).

use super::cache::{KernelCache, Lookup};
use cudarc::nvrtc::{result, sys};
use std::ffi::{CString, c_char, c_int};

/// Real architectures a cubin is built for (A100, H100/H200).
pub const CUBIN_ARCHS: &[&str] = &["sm_80", "sm_90"];
/// The virtual architecture of the PTX fallback.
pub const PTX_ARCH: &str = "compute_80";
/// Options for every compilation: plain FP32 (no fast math, no flush to zero).
const OPTIONS: &[&str] = &[
    "--std=c++17",
    "--fmad=true",
    "--ftz=false",
    "--prec-div=true",
];

#[derive(Debug, thiserror::Error)]
pub enum NvrtcError {
    #[error(
        "NVRTC (libnvrtc) was not found: `--target cuda` compiles kernels with it. Install it \
         (e.g. `pip install nvidia-cuda-nvrtc-cu12==12.9.*`) and put the directory holding \
         libnvrtc.so.12 on LD_LIBRARY_PATH (see docs/cuda.md)"
    )]
    Missing,
    #[error("NVRTC {call} failed: {code}")]
    Call { call: &'static str, code: String },
    #[error("NVRTC could not compile the generated kernels for {arch}:\n{log}")]
    Compile { arch: String, log: String },
    #[error("the generated source contains a NUL byte")]
    Nul,
}

/// What NVRTC produced for one source.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// `"12.9"`.
    pub version: String,
    /// `(arch, bytes)`: `"sm_80"`, `"sm_90"` cubins, then `"ptx"` (text, no trailing NUL).
    pub blobs: Vec<(String, Vec<u8>)>,
    /// How many of the blobs came from the cache.
    pub cache_hits: usize,
}

/// Whether libnvrtc can be loaded.
pub fn available() -> bool {
    // SAFETY: `is_culib_present` only tries to dlopen the library names cudarc knows and
    // closes what it opened; it calls nothing inside the library.
    unsafe { sys::is_culib_present() }
}

fn call(name: &'static str, r: sys::nvrtcResult) -> Result<(), NvrtcError> {
    r.result().map_err(|e| NvrtcError::Call {
        call: name,
        code: format!("{:?}", e.0),
    })
}

/// The loaded NVRTC's version, `"major.minor"`.
pub fn version() -> Result<String, NvrtcError> {
    if !available() {
        return Err(NvrtcError::Missing);
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: the library is present (checked above); both pointers are valid for writes.
    call("nvrtcVersion", unsafe {
        sys::nvrtcVersion(&mut major, &mut minor)
    })?;
    Ok(format!("{major}.{minor}"))
}

fn to_bytes(chars: Vec<c_char>) -> Vec<u8> {
    let mut bytes: Vec<u8> = chars.into_iter().map(|c| c as u8).collect();
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// Compiles `source` once for `arch` (`-arch=sm_90` gives a cubin, `-arch=compute_80` PTX);
/// `fast` adds `--Ofast-compile=max` (NVRTC 12.8+: the whole front end and code generation,
/// with the least optimisation; about 20x faster, for checks that the kernels compile).
fn options(arch: &str, fast: bool) -> Vec<String> {
    let mut options: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    if fast {
        options.push("--Ofast-compile=max".into());
    }
    options
}

/// [`compile_one`] through `cache` (when given): a hit is returned as stored, a miss or a
/// corrupt entry is compiled and stored (a failed store is only a slower next compile).
/// Returns the bytes and whether they came from the cache.
fn compile_cached(
    source: &CString,
    text: &str,
    version: &str,
    arch: &str,
    fast: bool,
    cache: Option<&KernelCache>,
) -> Result<(Vec<u8>, bool), NvrtcError> {
    let Some(cache) = cache else {
        return compile_one(source, arch, fast).map(|b| (b, false));
    };
    let key = KernelCache::key(text, version, arch, &options(arch, fast));
    if let Lookup::Hit(bytes) = cache.get(&key) {
        return Ok((bytes, true));
    }
    let bytes = compile_one(source, arch, fast)?;
    let _ = cache.put(&key, &bytes);
    Ok((bytes, false))
}

fn compile_one(source: &CString, arch: &str, fast: bool) -> Result<Vec<u8>, NvrtcError> {
    let name = c"sparsec_kernels.cu";
    let prog = result::create_program(source, Some(name)).map_err(|e| NvrtcError::Call {
        call: "nvrtcCreateProgram",
        code: format!("{:?}", e.0),
    })?;
    let options = options(arch, fast);
    // SAFETY: `prog` was just created and is destroyed below, after its last use; the options
    // contain no NUL bytes (literals and an architecture name).
    let compiled = unsafe { result::compile_program(prog, &options) };
    let out = match compiled {
        Ok(()) if arch.starts_with("sm_") => {
            let mut size = 0usize;
            // SAFETY: `prog` is live and compiled; `size` is valid for writes.
            call("nvrtcGetCUBINSize", unsafe {
                sys::nvrtcGetCUBINSize(prog, &mut size)
            })
            .and_then(|()| {
                let mut cubin = vec![0 as c_char; size];
                // SAFETY: `cubin` has the `size` bytes NVRTC reported for this program.
                call("nvrtcGetCUBIN", unsafe {
                    sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr())
                })
                .map(|()| cubin.into_iter().map(|c| c as u8).collect())
            })
        }
        // SAFETY: `prog` is live and compiled.
        Ok(()) => unsafe { result::get_ptx(prog) }
            .map(to_bytes)
            .map_err(|e| NvrtcError::Call {
                call: "nvrtcGetPTX",
                code: format!("{:?}", e.0),
            }),
        Err(_) => {
            // SAFETY: `prog` is live; the log is read before the program is destroyed.
            let log = unsafe { result::get_program_log(prog) }.map_or_else(
                |e| format!("(no log: {:?})", e.0),
                |l| String::from_utf8_lossy(&to_bytes(l)).into_owned(),
            );
            Err(NvrtcError::Compile {
                arch: arch.to_string(),
                log,
            })
        }
    };
    // SAFETY: `prog` came from `create_program` and is not used after this.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// Like [`compile_for`] (cubins for `archs`, then PTX), every target compiled with
/// `--Ofast-compile=max`: checks that every kernel of `source` goes through NVRTC's front end,
/// code generation and (for cubins) ptxas, in about a tenth of the time (CI compiles every
/// example this way). Not for model.bin: the code is barely optimised.
pub fn check_compiles(source: &str, archs: &[&str]) -> Result<Compiled, NvrtcError> {
    compile_targets(source, archs, true, true, None)
}

/// Compiles the generated source for every architecture in [`CUBIN_ARCHS`] and PTX for
/// [`PTX_ARCH`], one thread per architecture (NVRTC programs are independent).
pub fn compile(source: &str) -> Result<Compiled, NvrtcError> {
    compile_for(source, CUBIN_ARCHS, true)
}

/// Like [`compile`], with cubins for `archs` only, and PTX when `ptx`; no cache.
pub fn compile_for(source: &str, archs: &[&str], ptx: bool) -> Result<Compiled, NvrtcError> {
    compile_targets(source, archs, ptx, false, None)
}

/// Like [`compile_for`], each target looked up in `cache` first and stored there after
/// compiling.
pub fn compile_with_cache(
    source: &str,
    archs: &[&str],
    ptx: bool,
    cache: Option<&KernelCache>,
) -> Result<Compiled, NvrtcError> {
    compile_targets(source, archs, ptx, false, cache)
}

/// Cubins for `archs` and PTX when `ptx`, one thread per target; `fast` as in [`compile_one`].
fn compile_targets(
    source: &str,
    archs: &[&str],
    ptx: bool,
    fast: bool,
    cache: Option<&KernelCache>,
) -> Result<Compiled, NvrtcError> {
    let version = version()?;
    let text = source;
    let source = CString::new(source).map_err(|_| NvrtcError::Nul)?;
    let targets: Vec<(&str, &str)> = archs
        .iter()
        .map(|a| (*a, *a))
        .chain(ptx.then_some(("ptx", PTX_ARCH)))
        .collect();
    let results: Vec<Result<(Vec<u8>, bool), NvrtcError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|&(_, arch)| {
                let (source, version) = (&source, &version);
                scope.spawn(move || compile_cached(source, text, version, arch, fast, cache))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(NvrtcError::Call {
                        call: "nvrtcCompileProgram",
                        code: "the compiling thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut blobs = Vec::new();
    let mut cache_hits = 0;
    for ((name, _), r) in targets.iter().zip(results) {
        let (bytes, hit) = r?;
        cache_hits += usize::from(hit);
        blobs.push((name.to_string(), bytes));
    }
    Ok(Compiled {
        version,
        blobs,
        cache_hits,
    })
}
