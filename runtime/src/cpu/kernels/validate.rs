//! The load-time descriptor checks ([`validate_conv`], ...): a descriptor's geometry is
//! consistent (the same checks a kernel repeats on every call) and every array it reads lies in
//! the weights section at an aligned offset. The loader runs them once per step, before any
//! model runs.
//!
//! Must not run kernels or allocate beyond the error text.

use super::*;

/// Checks a convolution descriptor's internal consistency and that every array it uses lies in
/// a weights section of `weights_len` bytes at a 64-byte-aligned offset.
pub fn validate_conv(desc: &ConvDesc, weights_len: u64) -> Result<(), String> {
    let fail = |why: &str| format!("bad conv2d descriptor: {why} ({desc:?})");
    let g = conv_geom(desc).map_err(|b| fail(b.0))?;
    let mut arrays = vec![("weights", desc.weight_off, g.weight_len)];
    if desc.flags & abi::FLAG_BIAS != 0 {
        arrays.push(("bias", desc.bias_off, g.oc));
    }
    if desc.flags & abi::FLAG_PROLOGUE != 0 {
        arrays.push(("scale", desc.scale_off, g.ic));
        arrays.push(("shift", desc.shift_off, g.ic));
    }
    check_arrays(&arrays, weights_len).map_err(|e| fail(&e))
}

/// Checks a pool descriptor like [`validate_conv`].
pub fn validate_pool(desc: &PoolDesc, weights_len: u64) -> Result<(), String> {
    let fail = |why: &str| format!("bad pool descriptor: {why} ({desc:?})");
    let g = pool_geom(desc).map_err(|b| fail(b.0))?;
    let mut arrays = Vec::new();
    if desc.flags & abi::FLAG_PROLOGUE != 0 {
        arrays.push(("scale", desc.scale_off, g.c));
        arrays.push(("shift", desc.shift_off, g.c));
    }
    check_arrays(&arrays, weights_len).map_err(|e| fail(&e))
}

/// Checks a linear descriptor like [`validate_conv`].
pub fn validate_linear(desc: &LinearDesc, weights_len: u64) -> Result<(), String> {
    let fail = |why: &str| format!("bad linear descriptor: {why} ({desc:?})");
    let g = linear_geom(desc).map_err(|b| fail(b.0))?;
    let mut arrays = vec![("weights", desc.weight_off, g.weight_len)];
    if desc.flags & abi::FLAG_BIAS != 0 {
        arrays.push(("bias", desc.bias_off, g.out));
    }
    if desc.flags & abi::FLAG_PROLOGUE != 0 {
        arrays.push(("scale", desc.scale_off, g.ic));
        arrays.push(("shift", desc.shift_off, g.ic));
    }
    check_arrays(&arrays, weights_len).map_err(|e| fail(&e))
}

/// Each `(name, byte offset, floats)` must be 64-byte aligned and end inside the section.
fn check_arrays(arrays: &[(&str, u64, usize)], weights_len: u64) -> Result<(), String> {
    for &(name, off, floats) in arrays {
        if off % WEIGHT_ALIGN != 0 {
            return Err(format!(
                "{name} offset {off} is not {WEIGHT_ALIGN}-byte aligned"
            ));
        }
        let end = (floats as u64)
            .checked_mul(4)
            .and_then(|bytes| bytes.checked_add(off));
        if end.is_none_or(|end| end > weights_len) {
            return Err(format!(
                "{name} ({floats} floats at byte {off}) run past the {weights_len}-byte weights section"
            ));
        }
    }
    Ok(())
}
