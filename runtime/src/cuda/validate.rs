//! Load-time checks of a CUDA model.bin that need no GPU: every step's descriptor against its
//! buffers and against the weights section in the CUDA weight layout (convolution weights
//! `[in * kh * kw][out]`, linear weights `[in][out]`, bias, scale and shift as plain arrays),
//! and every blob's shape (a cubin is an ELF image, PTX is NUL-free UTF-8 text). The
//! kernels are shared by every step with the same tile and read every shape and offset from
//! the step records of `table.rs`, built here from the checked descriptors (with their own
//! checked-arithmetic checks), so a file that passes cannot make a kernel read outside the
//! weights or its input buffers or write outside its output buffer, even if whoever made it
//! recomputed the checksum.
//!
//! Must not talk to a driver (`exec.rs` does) and must not parse the file format (`format`).

use super::table::{self, StepTable};
use crate::abi;
use crate::error::LoadError;
use crate::format::{Manifest, ModelFile, StepDesc};

/// Checks everything `exec` relies on. `file` has passed `ModelFile::parse`.
pub fn validate(file: &ModelFile<'_>) -> Result<(), LoadError> {
    step_table(file).map(|_| ())
}

/// [`validate`], then the step records the kernels read (`table::build`).
pub fn step_table(file: &ModelFile<'_>) -> Result<StepTable, LoadError> {
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
    m.check_one_input_one_output()?;
    let weights_len = file.weights().len() as u64;
    let mut descs = Vec::with_capacity(m.steps.len());
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
        descs.push(desc);
    }
    table::build(&m.steps, &m.buffers, &descs, m.max_batch)
        .map_err(|(step, reason)| LoadError::Descriptor { step, reason })
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
    let geometry = match desc {
        StepDesc::Conv(d) => {
            window(d.in_h, d.kernel_h, d.stride_h, d.pad_h) == Some(d.out_h)
                && window(d.in_w, d.kernel_w, d.stride_w, d.pad_w) == Some(d.out_w)
                && d.in_channels > 0
                && d.out_channels > 0
        }
        StepDesc::Pool(d) => {
            let window_fits = if d.flags & abi::FLAG_GLOBAL != 0 {
                d.out_h == 1 && d.out_w == 1
            } else {
                window(d.in_h, d.kernel_h, d.stride_h, d.pad_h) == Some(d.out_h)
                    && window(d.in_w, d.kernel_w, d.stride_w, d.pad_w) == Some(d.out_w)
            };
            window_fits && d.channels > 0 && d.kind <= abi::POOL_MAX
        }
        StepDesc::Linear(d) => d.in_channels > 0 && d.out_features > 0,
    };
    if !geometry {
        return Err(format!("inconsistent geometry {desc:?}"));
    }
    crate::format::check_step_buffers(m, index, desc)?;
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
