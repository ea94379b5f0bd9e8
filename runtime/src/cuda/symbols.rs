//! The CUDA driver functions the executor needs, checked all at once when a model loads.
//! cudarc resolves each driver symbol lazily, on its first call, and panics ("Missing
//! symbol ...") when the driver library lacks it (an older driver than the CUDA API cudarc
//! was built for, 12.9): so `exec` looks every one of them up first and refuses the model with
//! a typed [`LoadError::Device`] naming what is missing. Always built (no driver needed): the
//! list and the check take the lookup as a function, which `exec` backs with the library.
//!
//! Must not call the driver itself. The list follows cudarc 0.19's `driver::result` for the
//! calls `exec` makes (context, module, stream, memory, launch, graph, event, error text),
//! under the `cuda-12090` feature.

use crate::error::LoadError;
use crate::format::Backend;

/// Every driver symbol the executor's cudarc calls reach, as cudarc names them.
pub const DRIVER_SYMBOLS: &[&str] = &[
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuDeviceGet",
    "cuDeviceGetAttribute",
    "cuDevicePrimaryCtxRelease_v2",
    "cuDevicePrimaryCtxRetain",
    "cuEventCreate",
    "cuEventDestroy_v2",
    "cuEventElapsedTime",
    "cuEventQuery",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuGraphDestroy",
    "cuGraphExecDestroy",
    "cuGraphInstantiateWithFlags",
    "cuGraphLaunch",
    "cuGraphUpload",
    "cuInit",
    "cuLaunchKernel",
    "cuMemAllocAsync",
    "cuMemAlloc_v2",
    "cuMemFreeAsync",
    "cuMemFree_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyHtoDAsync_v2",
    "cuMemsetD8Async",
    "cuModuleGetFunction",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuStreamBeginCapture_v2",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamEndCapture",
    "cuStreamIsCapturing",
    "cuStreamSynchronize",
    "cuStreamWaitEvent",
];

/// Checks that `has` finds every [`DRIVER_SYMBOLS`] entry; otherwise a
/// [`LoadError::Device`] naming the missing ones (`library` names the driver file).
pub fn check(library: &str, has: impl Fn(&str) -> bool) -> Result<(), LoadError> {
    let missing: Vec<&str> = DRIVER_SYMBOLS.iter().copied().filter(|s| !has(s)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(LoadError::Device {
        backend: Backend::Cuda,
        reason: format!(
            "the NVIDIA driver ({library}) lacks {} function(s) this runtime calls: {}; it is \
             too old for this runtime (built against the CUDA 12.9 driver API): update the driver",
            missing.len(),
            missing.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted_and_unique() {
        assert!(DRIVER_SYMBOLS.windows(2).all(|w| w[0] < w[1]));
        assert!(DRIVER_SYMBOLS.iter().all(|s| s.starts_with("cu")));
    }

    #[test]
    fn a_driver_without_some_symbols_is_a_typed_error_naming_them() {
        assert!(check("libcuda.so.1", |_| true).is_ok());
        // An old driver: no CUDA graphs instantiated with flags, no stream-ordered allocator.
        let old = |s: &str| !matches!(s, "cuGraphInstantiateWithFlags" | "cuMemAllocAsync");
        match check("libcuda.so.1", old) {
            Err(e @ LoadError::Device { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("lacks 2 function(s) this runtime calls: cuGraphInstantiateWithFlags, cuMemAllocAsync"),
                    "{text}"
                );
                assert!(text.contains("libcuda.so.1") && text.contains("update the driver"));
            }
            other => panic!("expected a Device error, got {other:?}"),
        }
    }
}
