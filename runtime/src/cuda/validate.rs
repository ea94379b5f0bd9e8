//! Load-time checks of a CUDA model.bin that need no GPU: every step's descriptor against its
//! buffers and against the weights section in the CUDA weight layout (convolution weights
//! `[in * kh * kw][out]`, linear weights `[in][out]`, bias, scale and shift as plain arrays),
//! and every blob's shape (a cubin is an ELF image, PTX is NUL-free UTF-8 text). The
//! generated kernels read exactly these ranges, so a file that passes cannot make a kernel
//! read outside the weights or write outside its output buffer.
//!
//! Must not talk to a driver (`exec.rs` does) and must not parse the file format (`format`).

use crate::abi;
use crate::error::LoadError;
use crate::format::{Manifest, ModelFile, StepDesc};

/// Checks everything `exec` relies on. `file` has passed `ModelFile::parse`.
pub fn validate(file: &ModelFile<'_>) -> Result<(), LoadError> {
    let m = &file.manifest;
    let Some(code) = &m.cuda else {
        return Err(LoadError::Code {
            reason: "a CUDA model without CUDA code".into(),
        });
    };
    for (arch, section) in &code.blobs {
        let bytes = file.section(section);
        let ok = if arch == "ptx" {
            !bytes.contains(&0) && std::str::from_utf8(bytes).is_ok()
        } else {
            bytes.starts_with(b"\x7fELF")
        };
        if !ok {
            return Err(LoadError::Code {
                reason: format!(
                    "the {arch} blob is not a {}",
                    if arch == "ptx" {
                        "NUL-free UTF-8 PTX text"
                    } else {
                        "cubin (ELF image)"
                    }
                ),
            });
        }
    }
    if m.inputs.len() != 1 || m.outputs.len() != 1 {
        return Err(LoadError::Tensor {
            role: "input",
            index: 0,
            name: m.model_name.clone(),
            reason: format!(
                "this runtime runs models with one input and one output; this one has {} and {}",
                m.inputs.len(),
                m.outputs.len()
            ),
        });
    }
    let weights_len = file.weights().len() as u64;
    for index in 0..m.steps.len() {
        let desc = file
            .step_descriptor(index)
            .ok_or_else(|| LoadError::Descriptor {
                step: index,
                reason: "the descriptor does not fit the constant section".into(),
            })?;
        check_step(m, index, &desc, weights_len).map_err(|reason| LoadError::Descriptor {
            step: index,
            reason,
        })?;
    }
    Ok(())
}

/// The float arrays a descriptor makes its kernel read: `(what, byte offset, floats)`.
fn arrays(desc: &StepDesc) -> Vec<(&'static str, u64, u64)> {
    let mut out = Vec::new();
    let (flags, ic, scale, shift) = match desc {
        StepDesc::Conv(d) => {
            let k = u64::from(d.in_channels) * u64::from(d.kernel_h) * u64::from(d.kernel_w);
            out.push(("weights", d.weight_off, k * u64::from(d.out_channels)));
            if d.flags & abi::FLAG_BIAS != 0 {
                out.push(("bias", d.bias_off, u64::from(d.out_channels)));
            }
            (d.flags, d.in_channels, d.scale_off, d.shift_off)
        }
        StepDesc::Pool(d) => (d.flags, d.channels, d.scale_off, d.shift_off),
        StepDesc::Linear(d) => {
            let k = u64::from(d.in_channels) * u64::from(d.out_features);
            out.push(("weights", d.weight_off, k));
            if d.flags & abi::FLAG_BIAS != 0 {
                out.push(("bias", d.bias_off, u64::from(d.out_features)));
            }
            (d.flags, d.in_channels, d.scale_off, d.shift_off)
        }
    };
    if flags & abi::FLAG_PROLOGUE != 0 {
        out.push(("scale", scale, u64::from(ic)));
        out.push(("shift", shift, u64::from(ic)));
    }
    out
}

fn window(size: u32, kernel: u32, stride: u32, pad: u32) -> Option<u32> {
    let padded = u64::from(size) + 2 * u64::from(pad);
    if kernel == 0 || stride == 0 || u64::from(kernel) > padded {
        return None;
    }
    u32::try_from((padded - u64::from(kernel)) / u64::from(stride) + 1).ok()
}

fn check_step(m: &Manifest, index: usize, desc: &StepDesc, weights_len: u64) -> Result<(), String> {
    let step = &m.steps[index];
    let bytes = |b: u32| m.buffers.get(b as usize).map(|s| s.bytes_per_image);
    let out = bytes(step.output).ok_or("output buffer out of range")?;
    let pieces: Vec<u64> = step
        .pieces
        .iter()
        .map(|&p| bytes(p).ok_or("piece buffer out of range"))
        .collect::<Result<_, _>>()?;
    let (n_pieces, out_elems, plane, combine, channels) = match desc {
        StepDesc::Conv(d) => {
            let geometry = window(d.in_h, d.kernel_h, d.stride_h, d.pad_h) == Some(d.out_h)
                && window(d.in_w, d.kernel_w, d.stride_w, d.pad_w) == Some(d.out_w)
                && d.in_channels > 0
                && d.out_channels > 0;
            if !geometry {
                return Err(format!("inconsistent convolution geometry {d:?}"));
            }
            let out = u64::from(d.out_channels) * u64::from(d.out_h) * u64::from(d.out_w);
            (
                d.n_pieces,
                out,
                u64::from(d.in_h) * u64::from(d.in_w),
                d.combine,
                d.in_channels,
            )
        }
        StepDesc::Pool(d) => {
            let geometry = if d.flags & abi::FLAG_GLOBAL != 0 {
                d.out_h == 1 && d.out_w == 1
            } else {
                window(d.in_h, d.kernel_h, d.stride_h, d.pad_h) == Some(d.out_h)
                    && window(d.in_w, d.kernel_w, d.stride_w, d.pad_w) == Some(d.out_w)
            };
            if !geometry || d.channels == 0 || d.kind > abi::POOL_MAX {
                return Err(format!("inconsistent pool geometry {d:?}"));
            }
            let out = u64::from(d.channels) * u64::from(d.out_h) * u64::from(d.out_w);
            (
                d.n_pieces,
                out,
                u64::from(d.in_h) * u64::from(d.in_w),
                d.combine,
                d.channels,
            )
        }
        StepDesc::Linear(d) => {
            if d.in_channels == 0 || d.out_features == 0 {
                return Err(format!("empty linear layer {d:?}"));
            }
            (
                d.n_pieces,
                u64::from(d.out_features),
                u64::from(d.in_h) * u64::from(d.in_w),
                d.combine,
                d.in_channels,
            )
        }
    };
    if n_pieces as usize != step.pieces.len() {
        return Err(format!(
            "descriptor has {n_pieces} pieces, the step lists {}",
            step.pieces.len()
        ));
    }
    if out_elems * 4 != out {
        return Err(format!(
            "output buffer holds {out} bytes per image, the kernel writes {}",
            out_elems * 4
        ));
    }
    let total: u64 = pieces.iter().sum();
    let input = u64::from(channels) * plane * 4;
    let fits = match combine {
        abi::COMBINE_CONCAT => {
            total == input && pieces.iter().all(|p| plane > 0 && p % (plane * 4) == 0)
        }
        abi::COMBINE_SUM => pieces.iter().all(|&p| p == input),
        _ => false,
    };
    if !fits {
        return Err(format!(
            "input pieces ({pieces:?} bytes) do not match the kernel's input ({input} bytes)"
        ));
    }
    for (what, offset, floats) in arrays(desc) {
        let end = floats
            .checked_mul(4)
            .and_then(|b| b.checked_add(offset))
            .filter(|&end| end <= weights_len && offset % 4 == 0);
        if end.is_none() {
            return Err(format!(
                "{what}: {floats} floats at byte {offset} do not fit the {weights_len} byte \
                 weights section"
            ));
        }
    }
    Ok(())
}
