//! The optimisation pipeline: one file per pass, run in the order of [`PIPELINE`], with the IR
//! verifier between passes when asked (always in tests and debug builds) and the time of each
//! pass recorded for `--timings`.
//!
//! Every pass is a plain function `fn(&mut Graph) -> Result<usize, PassError>` returning how
//! many rewrites it made. Passes that compute new weights (folding, prologues) do so when the
//! parameters are bound and leave the derived parameters unbound otherwise, so the structure
//! (IR, plan, statistics) never needs weights; code generation does.

mod dead_code;
mod eliminate_concat;
mod fold_batch_norm;
mod fuse_head;
mod fuse_preactivation;
mod fuse_relu_epilogue;
mod materialise_output;
mod pool_before_conv;

use ir::Graph;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("the IR fails verification after pass `{pass}`:\n{errors}")]
    Verify { pass: &'static str, errors: String },
    #[error("pass `{pass}` built an ill-typed node: {error}")]
    Shape {
        pass: &'static str,
        error: ir::ShapeError,
    },
    #[error("no pass named `{name}`; the pipeline is: {pipeline}")]
    UnknownPass { name: String, pipeline: String },
}

pub type Pass = fn(&mut Graph) -> Result<usize, PassError>;

/// The pipeline, in order. Each entry: name, what it does, the pass.
pub const PIPELINE: &[(&str, Pass)] = &[
    // conv → bn (the bottleneck's conv1 → bn2): scale the weights, add a bias.
    ("fold-batch-norm", fold_batch_norm::run),
    // conv → relu with no other reader: the conv applies the ReLU as it writes.
    ("fuse-relu-epilogue", fuse_relu_epilogue::run),
    // output ← concat/add/bn/relu/input: an identity reader writes the output tensor.
    ("materialise-output", materialise_output::run),
    // bn → relu → reader: the reader applies scale, shift and ReLU as it loads.
    ("fuse-preactivation", fuse_preactivation::run),
    // concat/add → reader: the reader reads the pieces in place.
    ("eliminate-concat", eliminate_concat::run),
    // 1x1 conv → 2x2 average pool: pool first, 4x fewer multiply-adds.
    ("pool-before-conv", pool_before_conv::run),
    // global average pool → linear: one fused head op.
    ("fuse-head", fuse_head::run),
    // nodes nobody reads.
    ("dead-code", dead_code::run),
];

#[derive(Clone, Debug)]
pub struct PassTiming {
    pub name: &'static str,
    pub rewrites: usize,
    pub time: Duration,
}

/// Runs the whole pipeline; with `verify`, the verifier runs after every pass.
pub fn optimize(graph: &mut Graph, verify: bool) -> Result<Vec<PassTiming>, PassError> {
    run(graph, PIPELINE, verify)
}

/// Runs the pipeline up to and including the pass named `name` (a name in [`PIPELINE`]), with
/// the verifier after every pass: what the pass-level tests (`compiler/tests/passes/`) see
/// before and after one pass. An unknown name is an error naming the pipeline.
pub fn optimize_until(graph: &mut Graph, name: &str) -> Result<Vec<PassTiming>, PassError> {
    let Some(last) = PIPELINE.iter().position(|&(n, _)| n == name) else {
        return Err(PassError::UnknownPass {
            name: name.to_string(),
            pipeline: PIPELINE
                .iter()
                .map(|&(n, _)| n)
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    run(graph, &PIPELINE[..=last], true)
}

fn run(
    graph: &mut Graph,
    passes: &[(&'static str, Pass)],
    verify: bool,
) -> Result<Vec<PassTiming>, PassError> {
    let mut timings = Vec::with_capacity(passes.len());
    for &(name, pass) in passes {
        let start = Instant::now();
        let rewrites = pass(graph)?;
        timings.push(PassTiming {
            name,
            rewrites,
            time: start.elapsed(),
        });
        if verify {
            check(graph, name)?;
        }
    }
    Ok(timings)
}

fn check(graph: &Graph, pass: &'static str) -> Result<(), PassError> {
    ir::verify::verify(graph).map_err(|errors| PassError::Verify {
        pass,
        errors: errors
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// `scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale`, in f64; `None` when the
/// batch norm's parameters are unbound.
fn batch_norm_affine(graph: &Graph, bn: &ir::BatchNorm) -> Option<(Vec<f64>, Vec<f64>)> {
    let gamma = graph.params.data(bn.gamma)?;
    let beta = graph.params.data(bn.beta)?;
    let mean = graph.params.data(bn.mean)?;
    let var = graph.params.data(bn.var)?;
    let scale: Vec<f64> = gamma
        .iter()
        .zip(var)
        .map(|(&g, &v)| f64::from(g) / (f64::from(v) + bn.eps).sqrt())
        .collect();
    let shift = beta
        .iter()
        .zip(mean)
        .zip(&scale)
        .map(|((&b, &m), &s)| f64::from(b) - f64::from(m) * s)
        .collect();
    Some((scale, shift))
}

/// The prefix of a batch norm's parameter names (`...bn1` of `...bn1.weight`).
fn module_name(graph: &Graph, id: ir::ParamId) -> String {
    let name = &graph.params.get(id).name;
    name.rsplit_once('.')
        .map_or(name.clone(), |(p, _)| p.to_string())
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn is_pinned(graph: &Graph, id: ir::NodeId) -> bool {
    graph
        .outputs()
        .iter()
        .any(|&o| graph.operands(o).contains(&id))
        || graph.inputs().contains(&id)
}
