//! `sparsec info model.bin`: what a compiled model needs and holds, read from the validated
//! file alone (`runtime::format::ModelFile`), so it works for a model this machine cannot run
//! (another CPU, a CUDA model): target and CPU features, input and output, maximum batch,
//! arena, scratch and weight bytes, steps, the kernel each step runs per layer kind, and the
//! signature (unsigned, or signed by which key, and whether that key is trusted here).
//! JSON keys are documented on [`ModelInfo`] and in the README.
//!
//! Must not load or run the model: nothing here maps code or touches a device.

use runtime::abi;
use runtime::format::{self, Backend, ModelFile, StepDesc};
use runtime::signature::SignatureState;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Everything `sparsec info` reports (`--json` prints exactly these keys).
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// The model's name from its source.
    pub name: String,
    /// model.bin format version (the runtime reads only its own).
    pub format_version: u32,
    /// The sparsec version that wrote the file.
    pub compiler_version: String,
    /// `"cpu"` or `"cuda"`.
    pub backend: String,
    /// `std::env::consts::ARCH` the code was compiled for.
    pub arch: String,
    /// CPU features the code needs.
    pub cpu_features: Vec<String>,
    /// Whether this machine has the architecture and features (CPU models; CUDA: `null`, the
    /// device is checked when the model loads).
    pub runs_here: Option<bool>,
    /// Per-image input `[C, H, W]` and its name.
    pub input_name: String,
    pub input_shape: [u32; 3],
    /// Output name and the number of classes (the output's elements per image).
    pub output_name: String,
    pub classes: u64,
    pub max_batch: u32,
    pub arena_bytes_per_image: u64,
    /// Activation buffers, and how many of them hold BF16 (CUDA `--precision bf16`).
    pub buffers: usize,
    pub bf16_buffers: usize,
    /// The arena of a session at the maximum batch.
    pub arena_bytes_at_max_batch: u64,
    pub scratch_bytes: u64,
    pub weights_bytes: u64,
    pub file_bytes: u64,
    pub steps: usize,
    /// Direct-convolution floating-point operations per image (2 x multiply-adds).
    pub flops_per_image: u64,
    /// Steps per (layer kind, kernel), in layer-kind order then first appearance.
    pub kernels: Vec<KernelCount>,
    /// CUDA models: the NVRTC version and the architectures of the blobs (`ptx` for PTX).
    pub cuda_archs: Vec<String>,
    /// CUDA models: the bytes of each blob, in `cuda_archs` order (the code: cubins and PTX).
    pub cuda_code_bytes: Vec<u64>,
    /// The signature as `sparsec run` would judge it with the same trusted keys.
    pub signature: SignatureInfo,
}

/// A model.bin's signature, for `sparsec info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignatureInfo {
    /// `unsigned`, `trusted` (valid, by a trusted key: its native code runs), `untrusted`
    /// (valid, by another key: runs data-only) or `invalid` (does not verify: data-only).
    pub state: String,
    /// The signing key's fingerprint (`ed25519:` and 32 hex digits), `null` when unsigned.
    pub fingerprint: Option<String>,
    /// The state in words.
    pub text: String,
}

/// How many steps of one layer kind run one kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelCount {
    /// `runtime::profile::LayerKind::name` (`stem`, `3x3`, `1x1`, `transition`, `head`, ...).
    pub layer_kind: String,
    /// The kernel, e.g. `conv 3x3 Winograd F(4x4)`, `conv 1x1 direct`, `avg pool 2x2`,
    /// `linear (global average)`.
    pub kernel: String,
    pub steps: usize,
}

/// Why `sparsec info` could not describe a file.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error(transparent)]
    Load(#[from] runtime::LoadError),
    #[error("`{path}` is a valid model.bin without an input tensor: nothing can run it")]
    NoInput { path: String },
}

/// The kernel a CUDA step runs, in words, from its descriptor and the name of the generated
/// kernel it launches (`backend/cuda/kernels.rs`, `precision.rs`): a convolution says how
/// (`direct`, `implicit GEMM`, `tf32 tensor cores`, `bf16 tensor cores`) and so in which
/// precision it runs.
pub fn cuda_kernel_name(desc: &StepDesc, kernel: &str) -> String {
    let StepDesc::Conv(d) = desc else {
        return kernel_name(desc);
    };
    let how = if kernel.starts_with("k_mmatf32") {
        "tf32 tensor cores"
    } else if kernel.starts_with("k_mmabf16") {
        "bf16 tensor cores"
    } else if kernel.starts_with("k_direct") {
        "fp32 direct"
    } else {
        "fp32 implicit GEMM"
    };
    conv_name(d, how)
}

/// `conv KHxKW[/STRIDE] HOW`.
fn conv_name(d: &abi::ConvDesc, how: &str) -> String {
    let stride = if d.stride_h > 1 {
        format!("/{}", d.stride_h)
    } else {
        String::new()
    };
    format!("conv {}x{}{stride} {how}", d.kernel_h, d.kernel_w)
}

/// The kernel a step runs, in words.
pub fn kernel_name(desc: &StepDesc) -> String {
    match desc {
        StepDesc::Conv(d) => {
            let how = if d.flags & abi::FLAG_WINOGRAD4 != 0 {
                "Winograd F(4x4)"
            } else if d.flags & abi::FLAG_WINOGRAD != 0 {
                "Winograd F(2x2)"
            } else {
                "direct"
            };
            conv_name(d, how)
        }
        StepDesc::Pool(d) => {
            let kind = if d.kind == abi::POOL_MAX {
                "max"
            } else {
                "avg"
            };
            if d.flags & abi::FLAG_GLOBAL != 0 {
                format!("global {kind} pool")
            } else {
                format!("{kind} pool {}x{}", d.kernel_h, d.kernel_w)
            }
        }
        StepDesc::Linear(d) => {
            if d.flags & abi::FLAG_GLOBAL != 0 {
                "linear (global average first)".into()
            } else {
                "linear".into()
            }
        }
    }
}

/// Reads and validates `path` (structure and checksum, not the machine) and describes it,
/// with no key trusted.
pub fn read(path: &Path) -> Result<ModelInfo, InfoError> {
    read_with(path, &[])
}

/// Like [`read`], judging the signature against `trusted` keys.
pub fn read_with(
    path: &Path,
    trusted: &[runtime::signature::VerifyingKey],
) -> Result<ModelInfo, InfoError> {
    let bytes = format::read(path)?;
    let signature = runtime::signature::check(&bytes, trusted)?;
    let file = ModelFile::parse(&bytes)?;
    let kinds = runtime::Model::layer_kinds(&file).ok_or_else(|| InfoError::NoInput {
        path: path.display().to_string(),
    })?;
    let m = &file.manifest;
    let mut kernels: Vec<KernelCount> = Vec::new();
    let mut order: Vec<(runtime::profile::LayerKind, usize)> = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let Some(desc) = file.step_descriptor(i) else {
            continue;
        };
        // A CUDA step: how its throughput launch computes (`cuda_kernel_name`).
        let launch = m
            .cuda
            .as_ref()
            .and_then(|c| c.launches.get(i))
            .and_then(|l| l.last());
        let kernel = match launch {
            Some(l) => cuda_kernel_name(&desc, &l.kernel),
            None => kernel_name(&desc),
        };
        let layer_kind = kind.name().to_string();
        match kernels
            .iter()
            .position(|k| k.layer_kind == layer_kind && k.kernel == kernel)
        {
            Some(at) => kernels[at].steps += 1,
            None => {
                order.push((*kind, kernels.len()));
                kernels.push(KernelCount {
                    layer_kind,
                    kernel,
                    steps: 1,
                });
            }
        }
    }
    // Layer-kind order (stem, 3x3, 1x1, ..., head), then first appearance.
    order.sort();
    let kernels = order.iter().map(|&(_, at)| kernels[at].clone()).collect();
    let input = &m.inputs[0];
    let classes = m.outputs.first().map_or(0, |o| {
        o.shape.iter().map(|&d| u64::from(d)).product::<u64>()
    });
    let runs_here = match m.target.backend {
        Backend::Cpu => Some(format::check_target(&m.target).is_ok()),
        Backend::Cuda => None,
    };
    let cuda_archs = m
        .cuda
        .as_ref()
        .map(|c| c.blobs.iter().map(|(arch, _)| arch.clone()).collect())
        .unwrap_or_default();
    let cuda_code_bytes = m
        .cuda
        .as_ref()
        .map(|c| c.blobs.iter().map(|(_, s)| s.len).collect())
        .unwrap_or_default();
    Ok(ModelInfo {
        name: m.model_name.clone(),
        format_version: format::FORMAT_VERSION,
        compiler_version: m.compiler_version.clone(),
        backend: match m.target.backend {
            Backend::Cpu => "cpu".into(),
            Backend::Cuda => "cuda".into(),
        },
        arch: m.target.arch.clone(),
        cpu_features: m.target.features.clone(),
        runs_here,
        input_name: input.name.clone(),
        input_shape: input.shape,
        output_name: m
            .outputs
            .first()
            .map_or_else(String::new, |o| o.name.clone()),
        classes,
        max_batch: m.max_batch,
        arena_bytes_per_image: m.arena_bytes_per_image,
        buffers: m.buffers.len(),
        bf16_buffers: m
            .buffers
            .iter()
            .filter(|b| b.element == format::Element::Bf16)
            .count(),
        arena_bytes_at_max_batch: m.arena_bytes(u64::from(m.max_batch)).unwrap_or(u64::MAX),
        scratch_bytes: m.scratch_bytes,
        weights_bytes: m.weights.len,
        file_bytes: bytes.len() as u64,
        steps: m.steps.len(),
        flops_per_image: m.steps.iter().map(|s| s.flops_per_image).sum(),
        kernels,
        cuda_archs,
        cuda_code_bytes,
        signature: SignatureInfo {
            state: match &signature {
                SignatureState::Unsigned => "unsigned",
                SignatureState::Trusted { .. } => "trusted",
                SignatureState::Untrusted { .. } => "untrusted",
                SignatureState::Invalid { .. } => "invalid",
            }
            .into(),
            fingerprint: signature.fingerprint().map(str::to_string),
            text: signature.to_string(),
        },
    })
}

/// The report as text.
pub fn render(i: &ModelInfo) -> String {
    let g = crate::stats::group;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: model.bin format version {}, written by {}",
        i.name, i.format_version, i.compiler_version
    );
    let needs = if i.cpu_features.is_empty() {
        "baseline code, no CPU feature required".to_string()
    } else {
        format!("needs {}", i.cpu_features.join(", "))
    };
    let runs = match i.runs_here {
        Some(true) => "runs on this machine",
        Some(false) => "cannot run on this machine",
        None => "the GPU is checked when the model loads",
    };
    let _ = writeln!(
        out,
        "target:   {} on {}, {needs} ({runs})",
        i.backend.to_uppercase(),
        i.arch
    );
    if !i.cuda_archs.is_empty() {
        let blobs: Vec<String> = i
            .cuda_archs
            .iter()
            .zip(&i.cuda_code_bytes)
            .map(|(arch, bytes)| format!("{arch} ({})", g(*bytes)))
            .collect();
        let total: u64 = i.cuda_code_bytes.iter().sum();
        let _ = writeln!(
            out,
            "cuda:     code for {}: {} bytes",
            blobs.join(", "),
            g(total)
        );
    }
    let runs = if i.signature.state == "trusted" {
        "its native code runs"
    } else if i.backend == "cuda" {
        "refused unless trusted (--trust KEY.pub) or --allow-unsigned-code"
    } else {
        "runs data-only unless trusted (--trust KEY.pub) or --allow-unsigned-code"
    };
    let _ = writeln!(out, "signature: {} ({runs})", i.signature.text);
    let [c, h, w] = i.input_shape;
    let _ = writeln!(
        out,
        "input:    `{}` [N, {c}, {h}, {w}] float32",
        i.input_name
    );
    let _ = writeln!(
        out,
        "output:   `{}` [N, {}] float32 ({} classes, logits)",
        i.output_name, i.classes, i.classes
    );
    let _ = writeln!(
        out,
        "batch:    at most {} (recompile with --max-batch for more)",
        i.max_batch
    );
    let _ = writeln!(
        out,
        "memory:   arena {} bytes per image ({} at batch {}), scratch {} bytes, weights {} bytes, file {} bytes",
        g(i.arena_bytes_per_image),
        g(i.arena_bytes_at_max_batch),
        i.max_batch,
        g(i.scratch_bytes),
        g(i.weights_bytes),
        g(i.file_bytes)
    );
    if i.bf16_buffers > 0 {
        let _ = writeln!(
            out,
            "          {} of {} activation buffers in bf16 (the rest f32)",
            i.bf16_buffers, i.buffers
        );
    }
    let _ = writeln!(
        out,
        "steps:    {} kernel calls per image, {} FLOP per image (direct convolution)",
        i.steps,
        g(i.flops_per_image)
    );
    let _ = writeln!(out, "kernels:");
    let _ = writeln!(
        out,
        "  {:<12} {:<32} {:>5}",
        "layer kind", "kernel", "steps"
    );
    for k in &i.kernels {
        let _ = writeln!(
            out,
            "  {:<12} {:<32} {:>5}",
            k.layer_kind, k.kernel, k.steps
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CUDA convolution is named by how its generated kernel computes, and so by its
    /// precision; pools and heads keep their descriptor's name.
    #[test]
    fn cuda_steps_say_how_and_in_which_precision_they_run() {
        let conv = StepDesc::Conv(abi::ConvDesc {
            kernel_h: 1,
            kernel_w: 1,
            stride_h: 1,
            ..abi::ConvDesc::default()
        });
        for (kernel, want) in [
            ("k_mmabf16_1x1p_2_4_2_2_32_h", "conv 1x1 bf16 tensor cores"),
            ("k_mmatf32_1x1p_2_4_2_2_32", "conv 1x1 tf32 tensor cores"),
            ("k_direct3x3_4_16_4_16_16_8", "conv 1x1 fp32 direct"),
            (
                "k_conv1x1p_4_1_1_16_16_128_h",
                "conv 1x1 fp32 implicit GEMM",
            ),
        ] {
            assert_eq!(cuda_kernel_name(&conv, kernel), want);
        }
        let pool = StepDesc::Pool(abi::PoolDesc {
            kernel_h: 2,
            kernel_w: 2,
            ..abi::PoolDesc::default()
        });
        assert_eq!(cuda_kernel_name(&pool, "k_pool_h"), "avg pool 2x2");
    }
}
