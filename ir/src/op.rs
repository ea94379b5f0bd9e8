//! The closed op set and its shape inference.
//!
//! One enum serves the IR before and after optimisation: the front end emits plain ops
//! (`Concat`, `BatchNorm`, `Relu`, ...), and passes rewrite them into the fused forms that the
//! same ops can express: a reader's [`Access`] says how it combines several operands (concatenate
//! or sum, read in place) and which per-channel affine + ReLU prologue it applies on the fly;
//! `Conv2d` carries a bias and a ReLU epilogue; `Linear` may average its input globally first.
//! Backends and the reference interpreter implement exactly these semantics.

use crate::{ParamId, Params, TensorType};
use std::fmt;

/// How a reader combines several operands into its one logical input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Combine {
    /// Channel concatenation in operand order, read in place (never materialised by a reader).
    Concat,
    /// Elementwise sum of operands of identical type.
    Sum,
}

/// A per-input-channel `y = x * scale + shift` (a folded inference batch norm), then an
/// optional ReLU, applied by a reader to its combined input as it loads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prologue {
    pub scale: ParamId,
    pub shift: ParamId,
    pub relu: bool,
}

/// How a reader op accesses its operands: the combine rule and an optional prologue. A reader
/// with one operand and no prologue reads it as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    pub combine: Combine,
    pub prologue: Option<Prologue>,
}

impl Access {
    pub const PLAIN: Access = Access {
        combine: Combine::Concat,
        prologue: None,
    };
}

/// 2-D convolution (cross-correlation, as PyTorch), no groups, no dilation.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    pub out_channels: u32,
    /// [height, width]
    pub kernel: [u32; 2],
    pub stride: [u32; 2],
    pub pad: [u32; 2],
    /// `[out, in, kh, kw]`
    pub weight: ParamId,
    /// `[out]`
    pub bias: Option<ParamId>,
    pub access: Access,
    /// ReLU applied to the output (after the bias).
    pub relu: bool,
}

/// Inference-mode batch norm: `(x - mean) / sqrt(var + eps) * gamma + beta`.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    pub eps: f64,
    pub gamma: ParamId,
    pub beta: ParamId,
    pub mean: ParamId,
    pub var: ParamId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Average; padding counts as zeros in the divisor (PyTorch `count_include_pad=True`).
    Avg,
    /// Maximum; padding never wins (PyTorch pads with -inf).
    Max,
}

/// Windowed pooling. `global` pools the whole spatial extent to 1x1 and ignores the window.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub kind: PoolKind,
    pub global: bool,
    pub kernel: [u32; 2],
    pub stride: [u32; 2],
    pub pad: [u32; 2],
    pub access: Access,
}

/// Fully connected layer on `[N, C, 1, 1]` (or on a global average of `[N, C, H, W]` when
/// `global_pool` is set, which is how the fused head reads its input).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub out_features: u32,
    /// `[out, in]`
    pub weight: ParamId,
    /// `[out]`
    pub bias: Option<ParamId>,
    pub access: Access,
    pub global_pool: bool,
}

/// Every operation the IR knows. Closed: a backend matches on it exhaustively.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A graph input (no operands); its type is given, not inferred.
    Input {
        name: String,
    },
    /// A graph output (one operand); its type is the operand's.
    Output {
        name: String,
    },
    Conv2d(Conv2d),
    BatchNorm(BatchNorm),
    Relu,
    Pool(Pool),
    Linear(Linear),
    /// Channel concatenation of its operands, in order.
    Concat,
    /// Elementwise sum of its operands.
    Add,
}

/// Why an op cannot take the operands it was given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("`{op}` takes {expected} operand(s), found {found}")]
    Arity {
        op: &'static str,
        expected: &'static str,
        found: usize,
    },
    #[error("operands of a concatenation must share height and width: {a} and {b}")]
    SpatialMismatch { a: TensorType, b: TensorType },
    #[error("operands of a sum must have the same shape: {a} and {b}")]
    SumMismatch { a: TensorType, b: TensorType },
    #[error("a {kernel}x{kernel2} window with padding {pad} does not fit a {height}x{width} input")]
    WindowTooLarge {
        kernel: u32,
        kernel2: u32,
        pad: u32,
        height: u32,
        width: u32,
    },
    #[error("a stride must be at least 1")]
    ZeroStride,
    #[error("`{op}` needs at least one output channel")]
    ZeroChannels { op: &'static str },
    #[error("linear layer needs a 1x1 input (pool first), found {found}")]
    NotFlat { found: TensorType },
    #[error("parameter `{name}` has shape {found:?}, expected {expected:?}")]
    ParamShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor too large: {what}")]
    TooLarge { what: String },
}

/// Largest channel count or spatial size the IR accepts.
pub const MAX_DIM: u32 = 1 << 20;
/// Largest tensor (elements per image) and parameter the IR accepts: 16 GiB of float32. With
/// these bounds every byte count of a model at any supported batch fits in u64.
pub const MAX_ELEMENTS: u64 = 1 << 32;

impl Op {
    /// Short mnemonic used by the printer and in errors.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Output { .. } => "output",
            Op::Conv2d(_) => "conv2d",
            Op::BatchNorm(_) => "batch_norm",
            Op::Relu => "relu",
            Op::Pool(p) => match (p.kind, p.global) {
                (PoolKind::Avg, false) => "avg_pool",
                (PoolKind::Max, false) => "max_pool",
                (PoolKind::Avg, true) => "global_avg_pool",
                (PoolKind::Max, true) => "global_max_pool",
            },
            Op::Linear(_) => "linear",
            Op::Concat => "concat",
            Op::Add => "add",
        }
    }

    /// The access rule of a reader op (one that may combine operands and apply a prologue).
    pub fn access(&self) -> Option<&Access> {
        match self {
            Op::Conv2d(c) => Some(&c.access),
            Op::Pool(p) => Some(&p.access),
            Op::Linear(l) => Some(&l.access),
            _ => None,
        }
    }

    pub fn access_mut(&mut self) -> Option<&mut Access> {
        match self {
            Op::Conv2d(c) => Some(&mut c.access),
            Op::Pool(p) => Some(&mut p.access),
            Op::Linear(l) => Some(&mut l.access),
            _ => None,
        }
    }

    /// Every parameter the op references, in a fixed order.
    pub fn params(&self) -> Vec<ParamId> {
        let mut out = Vec::new();
        let prologue = |a: &Access, out: &mut Vec<ParamId>| {
            if let Some(p) = a.prologue {
                out.push(p.scale);
                out.push(p.shift);
            }
        };
        match self {
            Op::Conv2d(c) => {
                prologue(&c.access, &mut out);
                out.push(c.weight);
                out.extend(c.bias);
            }
            Op::BatchNorm(b) => out.extend([b.gamma, b.beta, b.mean, b.var]),
            Op::Pool(p) => prologue(&p.access, &mut out),
            Op::Linear(l) => {
                prologue(&l.access, &mut out);
                out.push(l.weight);
                out.extend(l.bias);
            }
            Op::Input { .. } | Op::Output { .. } | Op::Relu | Op::Concat | Op::Add => {}
        }
        out
    }

    /// Infers the output type from the operand types and checks parameter shapes.
    /// `Input` cannot be inferred: its type is given by the builder.
    pub fn infer(&self, inputs: &[TensorType], params: &Params) -> Result<TensorType, ShapeError> {
        match self {
            // An input's type is given to `Graph::add_input`, never inferred.
            Op::Input { .. } => Err(ShapeError::Arity {
                op: "input",
                expected: "none (typed by the builder)",
                found: inputs.len(),
            }),
            Op::Output { .. } => {
                arity("output", "1", inputs.len(), 1, 1)?;
                Ok(inputs[0])
            }
            Op::Relu => {
                arity("relu", "1", inputs.len(), 1, 1)?;
                Ok(inputs[0])
            }
            Op::Concat => combine(Combine::Concat, "concat", inputs),
            Op::Add => combine(Combine::Sum, "add", inputs),
            Op::BatchNorm(b) => {
                arity("batch_norm", "1", inputs.len(), 1, 1)?;
                let c = inputs[0].channels as usize;
                for p in [b.gamma, b.beta, b.mean, b.var] {
                    check_param(params, p, &[c])?;
                }
                Ok(inputs[0])
            }
            Op::Conv2d(c) => {
                let x = reader_input("conv2d", &c.access, inputs, params)?;
                if c.out_channels == 0 {
                    return Err(ShapeError::ZeroChannels { op: "conv2d" });
                }
                if c.out_channels > MAX_DIM {
                    return Err(ShapeError::TooLarge {
                        what: format!("{} channels", c.out_channels),
                    });
                }
                let (h, w) = window(x, c.kernel, c.stride, c.pad)?;
                let [kh, kw] = c.kernel;
                let window = u64::from(kh) * u64::from(kw);
                let weights = u64::from(c.out_channels).saturating_mul(u64::from(x.channels));
                if weights.saturating_mul(window) > MAX_ELEMENTS {
                    return Err(ShapeError::TooLarge {
                        what: "the convolution's weight tensor".into(),
                    });
                }
                let weight = [
                    c.out_channels as usize,
                    x.channels as usize,
                    kh as usize,
                    kw as usize,
                ];
                check_param(params, c.weight, &weight)?;
                if let Some(b) = c.bias {
                    check_param(params, b, &[c.out_channels as usize])?;
                }
                Ok(TensorType::new(c.out_channels, h, w))
            }
            Op::Pool(p) => {
                let x = reader_input(self.mnemonic(), &p.access, inputs, params)?;
                if p.global {
                    return Ok(TensorType::new(x.channels, 1, 1));
                }
                let (h, w) = window(x, p.kernel, p.stride, p.pad)?;
                Ok(TensorType::new(x.channels, h, w))
            }
            Op::Linear(l) => {
                let x = reader_input("linear", &l.access, inputs, params)?;
                if !l.global_pool && (x.height != 1 || x.width != 1) {
                    return Err(ShapeError::NotFlat { found: x });
                }
                if l.out_features == 0 {
                    return Err(ShapeError::ZeroChannels { op: "linear" });
                }
                if l.out_features > MAX_DIM {
                    return Err(ShapeError::TooLarge {
                        what: format!("{} features", l.out_features),
                    });
                }
                check_param(
                    params,
                    l.weight,
                    &[l.out_features as usize, x.channels as usize],
                )?;
                if let Some(b) = l.bias {
                    check_param(params, b, &[l.out_features as usize])?;
                }
                Ok(TensorType::new(l.out_features, 1, 1))
            }
        }
    }
}

fn arity(
    op: &'static str,
    expected: &'static str,
    found: usize,
    min: usize,
    max: usize,
) -> Result<(), ShapeError> {
    if found < min || found > max {
        return Err(ShapeError::Arity {
            op,
            expected,
            found,
        });
    }
    Ok(())
}

/// The type of the logical input a reader sees after combining its operands.
pub fn combine(
    rule: Combine,
    op: &'static str,
    inputs: &[TensorType],
) -> Result<TensorType, ShapeError> {
    arity(op, "1 or more", inputs.len(), 1, usize::MAX)?;
    let first = inputs[0];
    let mut channels = u64::from(first.channels);
    for &t in &inputs[1..] {
        match rule {
            Combine::Concat => {
                if (t.height, t.width) != (first.height, first.width) {
                    return Err(ShapeError::SpatialMismatch { a: first, b: t });
                }
                channels += u64::from(t.channels);
            }
            Combine::Sum => {
                if t != first {
                    return Err(ShapeError::SumMismatch { a: first, b: t });
                }
            }
        }
    }
    let channels = u32::try_from(channels)
        .ok()
        .filter(|&c| c <= MAX_DIM)
        .ok_or_else(|| ShapeError::TooLarge {
            what: format!("{channels} channels"),
        })?;
    Ok(TensorType { channels, ..first })
}

fn reader_input(
    op: &'static str,
    access: &Access,
    inputs: &[TensorType],
    params: &Params,
) -> Result<TensorType, ShapeError> {
    let x = combine(access.combine, op, inputs)?;
    if let Some(p) = access.prologue {
        check_param(params, p.scale, &[x.channels as usize])?;
        check_param(params, p.shift, &[x.channels as usize])?;
    }
    Ok(x)
}

/// Output height and width of a sliding window, PyTorch's floor rule.
pub fn window(
    x: TensorType,
    kernel: [u32; 2],
    stride: [u32; 2],
    pad: [u32; 2],
) -> Result<(u32, u32), ShapeError> {
    if stride[0] == 0 || stride[1] == 0 {
        return Err(ShapeError::ZeroStride);
    }
    let too_large = || ShapeError::WindowTooLarge {
        kernel: kernel[0],
        kernel2: kernel[1],
        pad: pad[0],
        height: x.height,
        width: x.width,
    };
    let dim = |size: u32, k: u32, s: u32, p: u32| -> Result<u32, ShapeError> {
        let padded = u64::from(size) + 2 * u64::from(p);
        if k == 0 || u64::from(k) > padded {
            return Err(too_large());
        }
        Ok(((padded - u64::from(k)) / u64::from(s) + 1) as u32)
    };
    Ok((
        dim(x.height, kernel[0], stride[0], pad[0])?,
        dim(x.width, kernel[1], stride[1], pad[1])?,
    ))
}

fn check_param(params: &Params, id: ParamId, expected: &[usize]) -> Result<(), ShapeError> {
    let p = params.get(id);
    if p.shape != expected {
        return Err(ShapeError::ParamShape {
            name: p.name.clone(),
            expected: expected.to_vec(),
            found: p.shape.clone(),
        });
    }
    Ok(())
}

impl fmt::Display for Combine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Combine::Concat => "concat",
            Combine::Sum => "sum",
        })
    }
}
