//! The reference interpreter: the numerical oracle every pass and every backend is checked
//! against. It runs a [`Graph`] on float32 NCHW tensors and implements every op of
//! [`crate::op`] exactly as documented there, fused forms included: a reader's [`Access`]
//! (operands combined by channel concatenation or elementwise sum, then the per-channel
//! prologue `x * scale + shift` and its optional ReLU, then zero padding), `Conv2d`'s bias and
//! ReLU epilogue, pooling with PyTorch's padding rules, and `Linear`'s optional global average.
//!
//! Owns the meaning of the ops in numbers. It must not optimise and must not be clever: plain
//! loops in the order the formulas read, every dot product and sum accumulated in `f64`, a
//! reader's combined and prologued input kept in `f64` and never rounded, each node's result
//! rounded to `f32` once. It is allowed exactly two concessions to size: loops are ordered so
//! that a convolution streams through cache-sized planes (the golden `sparsenet-bc-1000-12`
//! is 2 GMAC per image), and a node's value is freed after its last reader in
//! [`Graph::topo_order`]. It checks what it reads (input shapes, parameter lengths, operand
//! shapes, and each node's computed shape against its inferred type) and reports a malformed
//! graph as an [`InterpError`] instead of panicking, so a broken pass shows up as an error here.

use crate::op::{Access, BatchNorm, Combine, Conv2d, Linear, Pool, PoolKind};
use crate::{Graph, Node, NodeId, Op, ParamId, TensorType};

/// An NCHW float32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// `[batch, channels, height, width]`
    pub shape: [usize; 4],
    /// Row-major data, `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: [usize; 4]) -> Tensor {
        Tensor {
            shape,
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// Number of values the shape calls for (saturating: an absurd shape never matches data).
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }
}

/// Why a graph could not be run.
#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    #[error("the graph takes {expected} input(s), {found} given")]
    WrongInputCount { expected: usize, found: usize },
    #[error("input `{name}` must have shape {expected}, found {found:?}")]
    InputShape {
        name: String,
        expected: TensorType,
        found: [usize; 4],
    },
    #[error("input `{name}` has batch size {found}, but the first input has {expected}")]
    BatchMismatch {
        name: String,
        expected: usize,
        found: usize,
    },
    #[error("input `{name}` has shape {shape:?} ({expected} values) but holds {found} values")]
    InputData {
        name: String,
        shape: [usize; 4],
        expected: usize,
        found: usize,
    },
    #[error("parameter `{name}` has no data: bind weights before running the graph")]
    Unbound { name: String },
    #[error("parameter `{name}` holds {found} values, but its op needs {expected}")]
    ParamLength {
        name: String,
        expected: usize,
        found: usize,
    },
    #[error("the graph has a cycle")]
    Cycle,
    #[error("node {node} (`{op}`): {reason}")]
    Malformed {
        /// The raw node index ([`NodeId::index`]).
        node: usize,
        op: &'static str,
        reason: String,
    },
}

/// Runs `graph` on `inputs` (one tensor per [`Graph::inputs`], in that order; the batch size is
/// taken from them) and returns the values of [`Graph::outputs`], in that order.
pub fn run(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, InterpError> {
    let order = graph.topo_order().ok_or(InterpError::Cycle)?;
    check_inputs(graph, inputs)?;

    // Operands of each node in evaluation order, and the position of each value's last reader.
    let operands: Vec<Vec<NodeId>> = order.iter().map(|&id| graph.operands(id)).collect();
    let mut last_use: Vec<Option<usize>> = vec![None; graph.index_bound()];
    for (pos, ops) in operands.iter().enumerate() {
        for o in ops {
            last_use[o.index()] = Some(pos);
        }
    }
    let keep = |id: NodeId| graph.outputs().contains(&id);

    let mut values: Vec<Option<Tensor>> = vec![None; graph.index_bound()];
    for (pos, (&id, ops)) in order.iter().zip(&operands).enumerate() {
        let node = graph.node(id);
        let args = ops
            .iter()
            .map(|o| {
                values[o.index()].as_ref().ok_or_else(|| {
                    malformed(
                        id,
                        node,
                        "an operand has no value (freed or never computed)",
                    )
                })
            })
            .collect::<Result<Vec<&Tensor>, InterpError>>()?;
        let out = eval(graph, id, node, &args, inputs)?;
        let [_, c, h, w] = out.shape;
        let ty = node.ty;
        if [c, h, w] != [ty.channels, ty.height, ty.width].map(|d| d as usize) {
            let reason = format!("computed shape [N,{c},{h},{w}] but the node is typed {ty}");
            return Err(malformed(id, node, reason));
        }
        drop(args);
        values[id.index()] = Some(out);
        for o in ops {
            if last_use[o.index()] == Some(pos) && !keep(*o) {
                values[o.index()] = None;
            }
        }
        if last_use[id.index()].is_none() && !keep(id) {
            values[id.index()] = None;
        }
    }
    graph
        .outputs()
        .iter()
        .map(|&o| {
            values[o.index()]
                .clone()
                .ok_or_else(|| malformed(o, graph.node(o), "the output was never computed"))
        })
        .collect()
}

/// `n` deterministic uniform values in [-1, 1) from `seed` (splitmix64), non-zero with
/// probability ~1: the random input every comparison with the interpreter uses (tests,
/// benchmarks, the compiler's accuracy guard), the same on every platform.
pub fn random_input(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// `‖got − want‖₂ / ‖want‖₂`, computed in `f64`. Slices of different lengths are infinitely
/// far apart; two all-zero slices are 0 apart; a NaN anywhere gives NaN (which fails any
/// `< tolerance` check).
pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        let d = f64::from(g) - f64::from(w);
        diff += d * d;
        norm += f64::from(w) * f64::from(w);
    }
    if diff == 0.0 {
        return 0.0;
    }
    (diff / norm).sqrt()
}

fn check_inputs(graph: &Graph, inputs: &[Tensor]) -> Result<(), InterpError> {
    if inputs.len() != graph.inputs().len() {
        return Err(InterpError::WrongInputCount {
            expected: graph.inputs().len(),
            found: inputs.len(),
        });
    }
    let batch = inputs.first().map_or(0, |t| t.shape[0]);
    for (&id, t) in graph.inputs().iter().zip(inputs) {
        let node = graph.node(id);
        let name = match &node.op {
            Op::Input { name } => name.clone(),
            other => other.mnemonic().to_string(),
        };
        let ty = node.ty;
        let [n, c, h, w] = t.shape;
        if [c, h, w] != [ty.channels, ty.height, ty.width].map(|d| d as usize) {
            return Err(InterpError::InputShape {
                name,
                expected: ty,
                found: t.shape,
            });
        }
        if n != batch {
            return Err(InterpError::BatchMismatch {
                name,
                expected: batch,
                found: n,
            });
        }
        if t.data.len() != t.numel() {
            return Err(InterpError::InputData {
                name,
                shape: t.shape,
                expected: t.numel(),
                found: t.data.len(),
            });
        }
    }
    Ok(())
}

fn malformed(id: NodeId, node: &Node, reason: impl Into<String>) -> InterpError {
    InterpError::Malformed {
        node: id.index(),
        op: node.op.mnemonic(),
        reason: reason.into(),
    }
}

/// The data of a parameter, which must hold exactly `len` values.
fn param(graph: &Graph, id: ParamId, len: usize) -> Result<&[f32], InterpError> {
    let p = graph.params.get(id);
    let data = graph.params.data(id).ok_or_else(|| InterpError::Unbound {
        name: p.name.clone(),
    })?;
    if data.len() != len {
        return Err(InterpError::ParamLength {
            name: p.name.clone(),
            expected: len,
            found: data.len(),
        });
    }
    Ok(data)
}

/// Evaluates one node on its operand values.
fn eval(
    graph: &Graph,
    id: NodeId,
    node: &Node,
    args: &[&Tensor],
    inputs: &[Tensor],
) -> Result<Tensor, InterpError> {
    let one = || -> Result<&Tensor, InterpError> {
        match args {
            [x] => Ok(x),
            _ => Err(malformed(
                id,
                node,
                format!("takes 1 operand, found {}", args.len()),
            )),
        }
    };
    match &node.op {
        Op::Input { .. } => {
            let k = graph
                .inputs()
                .iter()
                .position(|&i| i == id)
                .ok_or_else(|| malformed(id, node, "not one of the graph's inputs"))?;
            Ok(inputs[k].clone())
        }
        Op::Output { .. } => Ok(one()?.clone()),
        Op::Relu => {
            let x = one()?;
            Ok(Tensor {
                shape: x.shape,
                data: x.data.iter().map(|&v| relu(v)).collect(),
            })
        }
        Op::BatchNorm(bn) => batch_norm(graph, bn, one()?),
        Op::Concat => {
            let x = combine(Combine::Concat, args).map_err(|r| malformed(id, node, r))?;
            Ok(round(&x))
        }
        Op::Add => {
            let x = combine(Combine::Sum, args).map_err(|r| malformed(id, node, r))?;
            Ok(round(&x))
        }
        Op::Conv2d(c) => {
            let x = reader_input(graph, &c.access, args).map_err(|e| e.at(id, node))?;
            conv2d(graph, c, &x).map_err(|e| e.at(id, node))
        }
        Op::Pool(p) => {
            let x = reader_input(graph, &p.access, args).map_err(|e| e.at(id, node))?;
            pool(p, &x).map_err(|r| malformed(id, node, r))
        }
        Op::Linear(l) => {
            let x = reader_input(graph, &l.access, args).map_err(|e| e.at(id, node))?;
            linear(graph, l, &x).map_err(|e| e.at(id, node))
        }
    }
}

/// An error from a helper that does not know which node it works for.
enum OpError {
    Interp(InterpError),
    Reason(String),
}

impl OpError {
    fn at(self, id: NodeId, node: &Node) -> InterpError {
        match self {
            OpError::Interp(e) => e,
            OpError::Reason(r) => malformed(id, node, r),
        }
    }
}

impl From<InterpError> for OpError {
    fn from(e: InterpError) -> OpError {
        OpError::Interp(e)
    }
}

impl From<String> for OpError {
    fn from(r: String) -> OpError {
        OpError::Reason(r)
    }
}

/// A reader's logical input in `f64`: operands combined, prologue applied, never rounded.
struct Wide {
    shape: [usize; 4],
    data: Vec<f64>,
}

fn relu(v: f32) -> f32 {
    // NaN propagates, as in PyTorch.
    if v < 0.0 { 0.0 } else { v }
}

fn round(x: &Wide) -> Tensor {
    Tensor {
        shape: x.shape,
        data: x.data.iter().map(|&v| v as f32).collect(),
    }
}

/// Combines operands by channel concatenation (in operand order) or elementwise sum.
fn combine(rule: Combine, args: &[&Tensor]) -> Result<Wide, String> {
    let Some(first) = args.first() else {
        return Err("needs at least one operand".into());
    };
    let [n, _, h, w] = first.shape;
    if h == 0 || w == 0 {
        return Err(format!("operand has an empty spatial extent {h}x{w}"));
    }
    match rule {
        Combine::Concat => {
            for t in args {
                let [tn, _, th, tw] = t.shape;
                if [tn, th, tw] != [n, h, w] {
                    return Err(format!(
                        "cannot concatenate shapes {:?} and {:?}",
                        first.shape, t.shape
                    ));
                }
            }
            let c: usize = args.iter().map(|t| t.shape[1]).sum();
            let mut data = Vec::with_capacity(n * c * h * w);
            for b in 0..n {
                for t in args {
                    let image = t.shape[1] * h * w;
                    data.extend(
                        t.data[b * image..(b + 1) * image]
                            .iter()
                            .map(|&v| f64::from(v)),
                    );
                }
            }
            Ok(Wide {
                shape: [n, c, h, w],
                data,
            })
        }
        Combine::Sum => {
            let mut data = vec![0.0f64; first.numel()];
            for t in args {
                if t.shape != first.shape {
                    return Err(format!(
                        "cannot sum shapes {:?} and {:?}",
                        first.shape, t.shape
                    ));
                }
                for (acc, &v) in data.iter_mut().zip(&t.data) {
                    *acc += f64::from(v);
                }
            }
            Ok(Wide {
                shape: first.shape,
                data,
            })
        }
    }
}

/// Combines a reader's operands and applies its prologue (padding comes later, in the op).
fn reader_input(graph: &Graph, access: &Access, args: &[&Tensor]) -> Result<Wide, OpError> {
    let mut x = combine(access.combine, args)?;
    if let Some(p) = access.prologue {
        let [n, c, h, w] = x.shape;
        let scale = param(graph, p.scale, c)?;
        let shift = param(graph, p.shift, c)?;
        for b in 0..n {
            for ch in 0..c {
                let (s, t) = (f64::from(scale[ch]), f64::from(shift[ch]));
                let plane = &mut x.data[(b * c + ch) * h * w..][..h * w];
                for v in plane {
                    *v = *v * s + t;
                    if p.relu && *v < 0.0 {
                        *v = 0.0;
                    }
                }
            }
        }
    }
    Ok(x)
}

fn batch_norm(graph: &Graph, bn: &BatchNorm, x: &Tensor) -> Result<Tensor, InterpError> {
    let [n, c, h, w] = x.shape;
    let gamma = param(graph, bn.gamma, c)?;
    let beta = param(graph, bn.beta, c)?;
    let mean = param(graph, bn.mean, c)?;
    let var = param(graph, bn.var, c)?;
    let mut out = Tensor::zeros(x.shape);
    for b in 0..n {
        for ch in 0..c {
            let m = f64::from(mean[ch]);
            let d = (f64::from(var[ch]) + bn.eps).sqrt();
            let (g, bt) = (f64::from(gamma[ch]), f64::from(beta[ch]));
            let at = (b * c + ch) * h * w;
            for (o, &v) in out.data[at..at + h * w]
                .iter_mut()
                .zip(&x.data[at..at + h * w])
            {
                *o = ((f64::from(v) - m) / d * g + bt) as f32;
            }
        }
    }
    Ok(out)
}

/// Output size of a sliding window along one axis (PyTorch's floor rule).
fn out_size(size: usize, kernel: usize, stride: usize, pad: usize) -> Result<usize, String> {
    if stride == 0 {
        return Err("a stride is 0".into());
    }
    if kernel == 0 || kernel > size + 2 * pad {
        return Err(format!(
            "a window of {kernel} with padding {pad} does not fit an extent of {size}"
        ));
    }
    Ok((size + 2 * pad - kernel) / stride + 1)
}

/// The output positions `lo..hi` whose input position `o * stride + k - pad` lies in
/// `0..size`, for kernel offset `k`.
fn valid(k: usize, pad: usize, stride: usize, size: usize, out: usize) -> (usize, usize) {
    let lo = if pad > k {
        (pad - k).div_ceil(stride)
    } else {
        0
    };
    let hi = if size + pad > k {
        ((size + pad - k - 1) / stride + 1).min(out)
    } else {
        0
    };
    (lo, hi.max(lo))
}

fn conv2d(graph: &Graph, c: &Conv2d, x: &Wide) -> Result<Tensor, OpError> {
    let [n, cin, h, w] = x.shape;
    let cout = c.out_channels as usize;
    let [kh, kw] = c.kernel.map(|v| v as usize);
    let [sh, sw] = c.stride.map(|v| v as usize);
    let [ph, pw] = c.pad.map(|v| v as usize);
    let oh = out_size(h, kh, sh, ph)?;
    let ow = out_size(w, kw, sw, pw)?;
    let weight = param(graph, c.weight, cout * cin * kh * kw)?;
    let bias = c.bias.map(|b| param(graph, b, cout)).transpose()?;

    let mut out = Tensor::zeros([n, cout, oh, ow]);
    // One output plane accumulates in f64 while the input planes stream past it.
    let mut acc = vec![0.0f64; oh * ow];
    for b in 0..n {
        for co in 0..cout {
            acc.fill(0.0);
            for ci in 0..cin {
                let plane = &x.data[(b * cin + ci) * h * w..][..h * w];
                for ky in 0..kh {
                    let (y0, y1) = valid(ky, ph, sh, h, oh);
                    for kx in 0..kw {
                        let wv = f64::from(weight[((co * cin + ci) * kh + ky) * kw + kx]);
                        let (x0, x1) = valid(kx, pw, sw, w, ow);
                        if x0 == x1 {
                            continue;
                        }
                        for oy in y0..y1 {
                            // In range by `valid`: oy * sh + ky >= ph and ox * sw + kx >= pw.
                            let row = &plane[(oy * sh + ky - ph) * w..][..w];
                            let dst = &mut acc[oy * ow + x0..oy * ow + x1];
                            if sw == 1 {
                                let src = &row[x0 + kx - pw..x1 + kx - pw];
                                for (a, &v) in dst.iter_mut().zip(src) {
                                    *a += wv * v;
                                }
                            } else {
                                for (a, ox) in dst.iter_mut().zip(x0..x1) {
                                    *a += wv * row[ox * sw + kx - pw];
                                }
                            }
                        }
                    }
                }
            }
            let bv = bias.map_or(0.0, |bias| f64::from(bias[co]));
            let dst = &mut out.data[(b * cout + co) * oh * ow..][..oh * ow];
            for (o, &a) in dst.iter_mut().zip(&acc) {
                let v = (a + bv) as f32;
                *o = if c.relu { relu(v) } else { v };
            }
        }
    }
    Ok(out)
}

fn pool(p: &Pool, x: &Wide) -> Result<Tensor, String> {
    let [n, c, h, w] = x.shape;
    if p.global {
        let mut out = Tensor::zeros([n, c, 1, 1]);
        for (o, plane) in out.data.iter_mut().zip(x.data.chunks_exact(h * w)) {
            *o = match p.kind {
                PoolKind::Avg => (plane.iter().sum::<f64>() / (h * w) as f64) as f32,
                PoolKind::Max => max(plane.iter().copied()) as f32,
            };
        }
        return Ok(out);
    }
    let [kh, kw] = p.kernel.map(|v| v as usize);
    let [sh, sw] = p.stride.map(|v| v as usize);
    let [ph, pw] = p.pad.map(|v| v as usize);
    let oh = out_size(h, kh, sh, ph)?;
    let ow = out_size(w, kw, sw, pw)?;
    let mut out = Tensor::zeros([n, c, oh, ow]);
    for (plane, dst) in x
        .data
        .chunks_exact(h * w)
        .zip(out.data.chunks_exact_mut(oh * ow))
    {
        for oy in 0..oh {
            for ox in 0..ow {
                // The window's positions inside the unpadded input.
                let window = (0..kh).flat_map(|ky| (0..kw).map(move |kx| (ky, kx)));
                let inside = window.filter_map(|(ky, kx)| {
                    let iy = (oy * sh + ky).checked_sub(ph).filter(|&i| i < h)?;
                    let ix = (ox * sw + kx).checked_sub(pw).filter(|&i| i < w)?;
                    Some(plane[iy * w + ix])
                });
                dst[oy * ow + ox] = match p.kind {
                    // Padding adds zeros to the sum and counts in the divisor.
                    PoolKind::Avg => (inside.sum::<f64>() / (kh * kw) as f64) as f32,
                    // Padding never wins.
                    PoolKind::Max => max(inside) as f32,
                };
            }
        }
    }
    Ok(out)
}

/// Maximum that propagates NaN (as PyTorch) and is `-inf` over nothing.
fn max(values: impl Iterator<Item = f64>) -> f64 {
    let mut m = f64::NEG_INFINITY;
    for v in values {
        if v > m || v.is_nan() {
            m = v;
        }
        if m.is_nan() {
            break;
        }
    }
    m
}

fn linear(graph: &Graph, l: &Linear, x: &Wide) -> Result<Tensor, OpError> {
    let [n, c, h, w] = x.shape;
    if !l.global_pool && (h, w) != (1, 1) {
        return Err(format!("needs a 1x1 input without global_pool, found {h}x{w}").into());
    }
    let out_features = l.out_features as usize;
    let weight = param(graph, l.weight, out_features * c)?;
    let bias = l.bias.map(|b| param(graph, b, out_features)).transpose()?;
    // The mean over H x W (the value itself when the input is 1x1), kept in f64.
    let features: Vec<f64> = x
        .data
        .chunks_exact(h * w)
        .map(|plane| plane.iter().sum::<f64>() / (h * w) as f64)
        .collect();
    let mut out = Tensor::zeros([n, out_features, 1, 1]);
    for b in 0..n {
        let xb = &features[b * c..(b + 1) * c];
        for o in 0..out_features {
            let row = &weight[o * c..(o + 1) * c];
            let dot: f64 = row.iter().zip(xb).map(|(&wv, &v)| f64::from(wv) * v).sum();
            let bv = bias.map_or(0.0, |bias| f64::from(bias[o]));
            out.data[b * out_features + o] = (dot + bv) as f32;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::Prologue;
    use crate::{ParamKind, ScopeId, Span};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    struct Builder {
        g: Graph,
        scope: ScopeId,
    }

    impl Builder {
        fn new() -> Builder {
            let mut g = Graph::new("test");
            let scope = g.add_scope("test", Span::DUMMY);
            Builder { g, scope }
        }

        fn input(&mut self, name: &str, c: u32, h: u32, w: u32) -> NodeId {
            let ty = TensorType::new(c, h, w);
            self.g.add_input(name, ty, Span::DUMMY, self.scope)
        }

        fn param(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<ParamId, String> {
            let kind = ParamKind::Weight;
            let id = self
                .g
                .params
                .add(name.into(), shape.to_vec(), kind)
                .map_err(|_| format!("duplicate parameter {name}"))?;
            self.g.params.get_mut(id).data = Some(data.to_vec().into());
            Ok(id)
        }

        fn add(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId, crate::ShapeError> {
            self.g.add(op, operands, Span::DUMMY, self.scope)
        }

        fn output(&mut self, x: NodeId) -> Result<NodeId, crate::ShapeError> {
            let op = Op::Output {
                name: "output".into(),
            };
            self.add(op, &[x])
        }
    }

    fn conv(
        out: u32,
        k: u32,
        stride: u32,
        pad: u32,
        weight: ParamId,
        bias: Option<ParamId>,
    ) -> Conv2d {
        Conv2d {
            out_channels: out,
            kernel: [k, k],
            stride: [stride, stride],
            pad: [pad, pad],
            weight,
            bias,
            access: Access::PLAIN,
            relu: false,
        }
    }

    fn pool(kind: PoolKind, k: u32, stride: u32, pad: u32) -> Pool {
        Pool {
            kind,
            global: false,
            kernel: [k, k],
            stride: [stride, stride],
            pad: [pad, pad],
            access: Access::PLAIN,
        }
    }

    fn t(shape: [usize; 4], data: &[f32]) -> Tensor {
        Tensor {
            shape,
            data: data.to_vec(),
        }
    }

    fn run1(b: &Builder, inputs: &[Tensor]) -> Result<Tensor, InterpError> {
        let mut out = run(&b.g, inputs)?;
        Ok(out.remove(0))
    }

    const NINE: [f32; 9] = [1., 2., 3., 4., 5., 6., 7., 8., 9.];

    #[test]
    fn conv_1x1_with_bias_and_relu() -> TestResult {
        let mut b = Builder::new();
        let x = b.input("x", 2, 1, 2);
        // out0 = 1*c0 + 2*c1 + 0.5, out1 = -1*c0 + 1*c1 - 1
        let w = b.param("w", &[2, 2, 1, 1], &[1., 2., -1., 1.])?;
        let bias = b.param("b", &[2], &[0.5, -1.])?;
        let mut c = conv(2, 1, 1, 0, w, Some(bias));
        c.relu = true;
        let y = b.add(Op::Conv2d(c), &[x])?;
        b.output(y)?;
        // c0 = [1, 3], c1 = [2, -4]
        let out = run1(&b, &[t([1, 2, 1, 2], &[1., 3., 2., -4.])])?;
        // out0 = [1+4+0.5, 3-8+0.5] = [5.5, -4.5 -> 0]; out1 = [-1+2-1, -3-4-1] = [0, -8 -> 0]
        assert_eq!(out, t([1, 2, 1, 2], &[5.5, 0., 0., 0.]));
        Ok(())
    }

    #[test]
    fn conv_3x3_pad_1_stride_1_and_2_batch_2() -> TestResult {
        let mut b = Builder::new();
        let x = b.input("x", 1, 3, 3);
        let w = b.param("w", &[1, 1, 3, 3], &[1.0; 9])?;
        let y1 = b.add(Op::Conv2d(conv(1, 3, 1, 1, w, None)), &[x])?;
        let y2 = b.add(Op::Conv2d(conv(1, 3, 2, 1, w, None)), &[x])?;
        b.output(y1)?;
        b.output(y2)?;
        let neg: Vec<f32> = NINE.iter().map(|v| -v).collect();
        let input = t([2, 1, 3, 3], &[&NINE[..], &neg].concat());
        let out = run(&b.g, &[input])?;
        let full = [12., 21., 16., 27., 45., 33., 24., 39., 28.];
        let full_neg: Vec<f32> = full.iter().map(|v: &f32| -v).collect();
        assert_eq!(out[0], t([2, 1, 3, 3], &[&full[..], &full_neg].concat()));
        assert_eq!(
            out[1],
            t([2, 1, 2, 2], &[12., 16., 24., 28., -12., -16., -24., -28.])
        );
        Ok(())
    }

    #[test]
    fn conv_pads_with_zeros_after_the_prologue() -> TestResult {
        let mut b = Builder::new();
        let x = b.input("x", 1, 1, 1);
        let w = b.param("w", &[1, 1, 3, 3], &[1.0; 9])?;
        let scale = b.param("scale", &[1], &[2.0])?;
        let shift = b.param("shift", &[1], &[1.0])?;
        let mut c = conv(1, 3, 1, 1, w, None);
        c.access.prologue = Some(Prologue {
            scale,
            shift,
            relu: false,
        });
        let y = b.add(Op::Conv2d(c), &[x])?;
        b.output(y)?;
        // Only the centre tap sees 0 * 2 + 1; the 8 padded taps see 0, not 1.
        assert_eq!(run1(&b, &[t([1, 1, 1, 1], &[0.])])?.data, [1.0]);
        Ok(())
    }

    #[test]
    fn avg_pool_counts_padding_max_pool_ignores_it() -> TestResult {
        let mut b = Builder::new();
        let x = b.input("x", 1, 3, 3);
        let avg = b.add(Op::Pool(pool(PoolKind::Avg, 3, 1, 1)), &[x])?;
        let max = b.add(Op::Pool(pool(PoolKind::Max, 3, 2, 1)), &[x])?;
        let two = b.add(Op::Pool(pool(PoolKind::Avg, 2, 1, 0)), &[x])?;
        b.output(avg)?;
        b.output(max)?;
        b.output(two)?;
        let neg: Vec<f32> = NINE.iter().map(|v| -v).collect();
        let out = run(&b.g, &[t([1, 1, 3, 3], &neg)])?;
        let sums = [12., 21., 16., 27., 45., 33., 24., 39., 28.];
        let want: Vec<f32> = sums.iter().map(|&s: &f64| (-s / 9.0) as f32).collect();
        assert_eq!(out[0], t([1, 1, 3, 3], &want));
        // Windows at the corners: the padding (which would be 0) never wins over negatives.
        assert_eq!(out[1], t([1, 1, 2, 2], &[-1., -2., -4., -5.]));
        assert_eq!(out[2], t([1, 1, 2, 2], &[-3., -4., -6., -7.]));
        Ok(())
    }

    #[test]
    fn pool_prologue_applies_before_padding() -> TestResult {
        let mut b = Builder::new();
        let x = b.input("x", 1, 1, 1);
        let scale = b.param("scale", &[1], &[1.0])?;
        let shift = b.param("shift", &[1], &[3.0])?;
        let prologue = Some(Prologue {
            scale,
            shift,
            relu: true,
        });
        let mut p = pool(PoolKind::Avg, 3, 1, 1);
        p.access.prologue = prologue;
        let avg = b.add(Op::Pool(p), &[x])?;
        let mut p = pool(PoolKind::Max, 3, 1, 1);
        p.access.prologue = prologue;
        let max = b.add(Op::Pool(p), &[x])?;
        b.output(avg)?;
        b.output(max)?;
        let out = run(&b.g, &[t([1, 1, 1, 1], &[-5.0])])?;
        // -5 + 3 = -2, ReLU -> 0: the average is 0/9 and the max is 0.
        assert_eq!(out[0].data, [0.0]);
        assert_eq!(out[1].data, [0.0]);
        let out = run(&b.g, &[t([1, 1, 1, 1], &[6.0])])?;
        assert_eq!(out[0].data, [1.0]); // (6 + 3) / 9
        assert_eq!(out[1].data, [9.0]);
        Ok(())
    }

    #[test]
    fn global_pools() -> TestResult {
        let mut b = Builder::new();
        let x = b.input("x", 2, 2, 2);
        let mut p = pool(PoolKind::Avg, 1, 1, 0);
        p.global = true;
        let avg = b.add(Op::Pool(p.clone()), &[x])?;
        p.kind = PoolKind::Max;
        let max = b.add(Op::Pool(p), &[x])?;
        b.output(avg)?;
        b.output(max)?;
        let out = run(
            &b.g,
            &[t([1, 2, 2, 2], &[1., 2., 3., 6., -1., -2., -3., -4.])],
        )?;
        assert_eq!(out[0], t([1, 2, 1, 1], &[3., -2.5]));
        assert_eq!(out[1], t([1, 2, 1, 1], &[6., -1.]));
        Ok(())
    }

    #[test]
    fn concat_and_sum_access_with_prologue() -> TestResult {
        let mut b = Builder::new();
        let a = b.input("a", 1, 1, 2);
        let c = b.input("c", 1, 1, 2);
        // Concat: channels [a, c], prologue per channel, ReLU; weights [1, 10].
        let w2 = b.param("w2", &[1, 2, 1, 1], &[1., 10.])?;
        let scale2 = b.param("scale2", &[2], &[2., 3.])?;
        let shift2 = b.param("shift2", &[2], &[-1., 0.5])?;
        let mut cat = conv(1, 1, 1, 0, w2, None);
        cat.access = Access {
            combine: Combine::Concat,
            prologue: Some(Prologue {
                scale: scale2,
                shift: shift2,
                relu: true,
            }),
        };
        let y_cat = b.add(Op::Conv2d(cat), &[a, c])?;
        // Sum: a + c, prologue on the sum, ReLU; weight [4].
        let w1 = b.param("w1", &[1, 1, 1, 1], &[4.])?;
        let scale1 = b.param("scale1", &[1], &[2.])?;
        let shift1 = b.param("shift1", &[1], &[-1.])?;
        let mut sum = conv(1, 1, 1, 0, w1, None);
        sum.access = Access {
            combine: Combine::Sum,
            prologue: Some(Prologue {
                scale: scale1,
                shift: shift1,
                relu: true,
            }),
        };
        let y_sum = b.add(Op::Conv2d(sum), &[a, c])?;
        // The same through explicit nodes.
        let cat_node = b.add(Op::Concat, &[a, c])?;
        let add_node = b.add(Op::Add, &[a, c])?;
        b.output(y_cat)?;
        b.output(y_sum)?;
        b.output(cat_node)?;
        b.output(add_node)?;
        let out = run(
            &b.g,
            &[t([1, 1, 1, 2], &[1., -1.]), t([1, 1, 1, 2], &[0.5, -2.])],
        )?;
        // a' = relu(2a - 1) = [1, 0]; c' = relu(3c + 0.5) = [2, 0]; y = a' + 10 c' = [21, 0]
        assert_eq!(out[0], t([1, 1, 1, 2], &[21., 0.]));
        // s = a + c = [1.5, -3]; relu(2s - 1) = [2, 0]; y = 4 * [2, 0]
        assert_eq!(out[1], t([1, 1, 1, 2], &[8., 0.]));
        assert_eq!(out[2], t([1, 2, 1, 2], &[1., -1., 0.5, -2.]));
        assert_eq!(out[3], t([1, 1, 1, 2], &[1.5, -3.]));
        Ok(())
    }

    #[test]
    fn concat_interleaves_per_image() -> TestResult {
        let mut b = Builder::new();
        let a = b.input("a", 1, 1, 1);
        let c = b.input("c", 2, 1, 1);
        let y = b.add(Op::Concat, &[c, a])?;
        b.output(y)?;
        let out = run1(
            &b,
            &[
                t([2, 1, 1, 1], &[1., 2.]),
                t([2, 2, 1, 1], &[3., 4., 5., 6.]),
            ],
        )?;
        assert_eq!(out, t([2, 3, 1, 1], &[3., 4., 1., 5., 6., 2.]));
        Ok(())
    }

    #[test]
    fn batch_norm_and_relu() -> TestResult {
        let mut b = Builder::new();
        let x = b.input("x", 2, 1, 1);
        let gamma = b.param("g", &[2], &[2., 1.])?;
        let beta = b.param("b", &[2], &[1., 0.])?;
        let mean = b.param("m", &[2], &[1., -1.])?;
        let var = b.param("v", &[2], &[4., 0.25])?;
        let bn = BatchNorm {
            eps: 0.0,
            gamma,
            beta,
            mean,
            var,
        };
        let y = b.add(Op::BatchNorm(bn), &[x])?;
        let r = b.add(Op::Relu, &[y])?;
        b.output(y)?;
        b.output(r)?;
        let out = run(&b.g, &[t([1, 2, 1, 1], &[5., -2.])])?;
        // (5 - 1) / 2 * 2 + 1 = 5; (-2 + 1) / 0.5 * 1 + 0 = -2
        assert_eq!(out[0].data, [5., -2.]);
        assert_eq!(out[1].data, [5., 0.]);
        Ok(())
    }

    #[test]
    fn linear_with_global_pool_and_flat() -> TestResult {
        let mut b = Builder::new();
        let x = b.input("x", 2, 2, 2);
        let w = b.param("w", &[3, 2], &[1., 0., 0., 1., 1., -1.])?;
        let bias = b.param("b", &[3], &[0., 10., 0.5])?;
        let lin = Linear {
            out_features: 3,
            weight: w,
            bias: Some(bias),
            access: Access::PLAIN,
            global_pool: true,
        };
        let y = b.add(Op::Linear(lin.clone()), &[x])?;
        let mut p = pool(PoolKind::Avg, 2, 2, 0);
        p.global = true;
        let pooled = b.add(Op::Pool(p), &[x])?;
        let flat = b.add(
            Op::Linear(Linear {
                global_pool: false,
                ..lin
            }),
            &[pooled],
        )?;
        b.output(y)?;
        b.output(flat)?;
        // Channel means: 2.5 and -1.
        let out = run(
            &b.g,
            &[t([1, 2, 2, 2], &[1., 2., 3., 4., -1., -1., -1., -1.])],
        )?;
        assert_eq!(out[0], t([1, 3, 1, 1], &[2.5, 9., 4.]));
        assert_eq!(out[1], out[0]);
        Ok(())
    }

    #[test]
    fn errors_name_what_is_wrong() -> TestResult {
        let mut b = Builder::new();
        let x = b.input("x", 1, 2, 2);
        let id =
            b.g.params
                .add("conv.weight".into(), vec![1, 1, 1, 1], ParamKind::Weight)
                .map_err(|_| "duplicate")?;
        let y = b.add(Op::Conv2d(conv(1, 1, 1, 0, id, None)), &[x])?;
        b.output(y)?;
        let input = Tensor::zeros([1, 1, 2, 2]);
        match run(&b.g, std::slice::from_ref(&input)) {
            Err(InterpError::Unbound { name }) => assert_eq!(name, "conv.weight"),
            other => panic!("expected Unbound, got {other:?}"),
        }
        match run(&b.g, &[]) {
            Err(InterpError::WrongInputCount {
                expected: 1,
                found: 0,
            }) => {}
            other => panic!("expected WrongInputCount, got {other:?}"),
        }
        match run(&b.g, &[Tensor::zeros([1, 1, 3, 2])]) {
            Err(InterpError::InputShape { name, found, .. }) => {
                assert_eq!((name.as_str(), found), ("x", [1, 1, 3, 2]));
            }
            other => panic!("expected InputShape, got {other:?}"),
        }
        b.g.params.get_mut(id).data = Some(vec![1.0, 2.0].into());
        match run(&b.g, &[input]) {
            Err(InterpError::ParamLength {
                expected: 1,
                found: 2,
                ..
            }) => {}
            other => panic!("expected ParamLength, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn relative_error_is_a_norm_ratio() {
        assert_eq!(relative_error(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((relative_error(&[3.0, 5.0], &[0.0, 5.0]) - 0.6).abs() < 1e-12);
        assert!(relative_error(&[1.0], &[1.0, 2.0]).is_infinite());
        assert!(relative_error(&[f32::NAN], &[1.0]).is_nan());
    }
}
