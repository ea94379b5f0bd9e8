//! Feature extractors (issue 12, item 4): models whose last stage is a block, possibly
//! followed by a batch norm and ReLU, with no head. The models are `tests/models/*.snet`
//! (shared with the end-to-end suites, which check the numbers on both backends). Here: each
//! one optimises to a graph whose output is written by one materialising step, the identity
//! 1x1 average pool reading the block's pieces in place (no concat, add, batch norm or ReLU
//! node left), and compiles for the CPU and for CUDA; the optimised IR of two of them is
//! snapshotted inline; the example models (all with a head) get no such step.

use ir::Op;
use ir::op::{Combine, PoolKind};
use sparsec::backend::cuda;
use sparsec::driver::{self, Optimized, WeightsSource};
use std::path::{Path, PathBuf};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models")
}

fn optimize(path: &Path) -> Result<Optimized, String> {
    let raw = driver::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    driver::optimize(raw, &WeightsSource::Random(0), 1, true)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The node the graph output reads.
fn output_source(graph: &ir::Graph) -> ir::NodeId {
    graph.operands(graph.outputs()[0])[0]
}

/// Whether `op` is the identity pool `materialise-output` inserts.
fn is_identity_pool(op: &Op) -> bool {
    matches!(op, Op::Pool(p) if p.kind == PoolKind::Avg
        && !p.global
        && p.kernel == [1, 1]
        && p.stride == [1, 1]
        && p.pad == [0, 0])
}

/// (model, how the copy combines its pieces, how many pieces, whether it has a prologue, and
/// whether that prologue has a ReLU)
const CASES: &[(&str, Combine, usize, bool, bool)] = &[
    ("sparse-concat-last", Combine::Concat, 3, false, false),
    ("sum-last", Combine::Sum, 3, false, false),
    ("dense-bn-relu-last", Combine::Concat, 5, true, true),
    ("stem-block", Combine::Concat, 4, false, false),
    ("block-on-input", Combine::Concat, 3, true, false),
    ("relu-last", Combine::Concat, 3, true, true),
];

#[test]
fn each_feature_extractor_ends_in_one_copy_reading_the_pieces() -> Result<(), String> {
    for &(name, combine, pieces, prologue, relu) in CASES {
        let path = models().join(format!("{name}.snet"));
        let opt = optimize(&path)?;
        let g = &opt.graph;
        for n in g.node_ids() {
            let op = &g.node(n).op;
            if matches!(op, Op::Concat | Op::Add | Op::BatchNorm(_) | Op::Relu) {
                return Err(format!("{name}: a {} survived", op.mnemonic()));
            }
        }
        let copies = g
            .node_ids()
            .filter(|&n| is_identity_pool(&g.node(n).op))
            .count();
        let source = output_source(g);
        let op = &g.node(source).op;
        let access = op.access().copied();
        let ok = copies == 1
            && is_identity_pool(op)
            && access.is_some_and(|a| {
                a.combine == combine
                    && a.prologue.is_some() == prologue
                    && a.prologue.is_some_and(|p| p.relu) == relu
            })
            && g.operands(source).len() == pieces;
        if !ok {
            return Err(format!(
                "{name}: {copies} copies; the output reads {}",
                ir::print::print(g)
            ));
        }
    }
    Ok(())
}

#[test]
fn each_feature_extractor_compiles_for_cpu_and_cuda() -> Result<(), String> {
    for &(name, ..) in CASES {
        let path = models().join(format!("{name}.snet"));
        let raw = driver::load(&path).map_err(|e| format!("{name}: {e}"))?;
        let want = raw.node(raw.outputs()[0]).ty;
        let (opt, bytes) = driver::compile_cpu(raw, &WeightsSource::Random(0), 4, true)
            .map_err(|e| format!("{name}: cpu: {e}"))?;
        let file = runtime::format::ModelFile::parse(&bytes).map_err(|e| format!("{name}: {e}"))?;
        let spec = &file.manifest.outputs[0];
        if spec.shape != [want.channels, want.height, want.width] {
            return Err(format!(
                "{name}: model.bin says the output is {:?}, the model gives {want}",
                spec.shape
            ));
        }
        cuda::generate(&opt.graph, &opt.plan, true).map_err(|e| format!("{name}: cuda: {e}"))?;
    }
    Ok(())
}

#[test]
fn the_example_models_get_no_copy() -> Result<(), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    for path in paths {
        let opt = optimize(&path)?;
        let g = &opt.graph;
        if g.node_ids().any(|n| is_identity_pool(&g.node(n).op)) {
            return Err(format!("{}: an identity pool", path.display()));
        }
    }
    Ok(())
}

#[test]
fn stem_block_optimised_ir() -> Result<(), String> {
    let opt = optimize(&models().join("stem-block.snet"))?;
    insta::assert_snapshot!(ir::print::print(&opt.graph), @r#"
    graph "stem-block" {
      # input
      %0 = input "input" : [N,3,16,16]
      # stem
      %1 = conv2d %0 out=16 kernel=3x3 stride=1 pad=1 weight=@features.conv0.weight : [N,16,16,16]
      # block0
      %2 = conv2d %1 pre(@features.dense-stage-0.block-1.bn1.{scale,shift}, relu) out=8 kernel=3x3 stride=1 pad=1 weight=@features.dense-stage-0.block-1.conv1.weight : [N,8,16,16]
      %3 = conv2d [%2, %1] pre(@features.dense-stage-0.block-2.bn1.{scale,shift}, relu) out=8 kernel=3x3 stride=1 pad=1 weight=@features.dense-stage-0.block-2.conv1.weight : [N,8,16,16]
      %4 = conv2d [%3, %2] pre(@features.dense-stage-0.block-3.bn1.{scale,shift}, relu) out=8 kernel=3x3 stride=1 pad=1 weight=@features.dense-stage-0.block-3.conv1.weight : [N,8,16,16]
      %5 = avg_pool [%4, %3, %2, %1] kernel=1x1 stride=1 pad=0 : [N,40,16,16]
      # output
      %6 = output "output" %5 : [N,40,16,16]
    }
    "#);
    Ok(())
}

#[test]
fn dense_bn_relu_last_optimised_ir() -> Result<(), String> {
    let opt = optimize(&models().join("dense-bn-relu-last.snet"))?;
    insta::assert_snapshot!(ir::print::print(&opt.graph), @r#"
    graph "dense-bn-relu-last" {
      # input
      %0 = input "input" : [N,3,16,16]
      # stem
      %1 = conv2d %0 out=16 kernel=3x3 stride=1 pad=1 weight=@features.conv0.weight : [N,16,16,16]
      # block0
      %2 = conv2d %1 pre(@features.dense-stage-0.block-1.bn1.{scale,shift}, relu) out=12 kernel=3x3 stride=1 pad=1 weight=@features.dense-stage-0.block-1.conv1.weight : [N,12,16,16]
      %3 = conv2d [%1, %2] pre(@features.dense-stage-0.block-2.bn1.{scale,shift}, relu) out=12 kernel=3x3 stride=1 pad=1 weight=@features.dense-stage-0.block-2.conv1.weight : [N,12,16,16]
      %4 = conv2d [%1, %2, %3] pre(@features.dense-stage-0.block-3.bn1.{scale,shift}, relu) out=12 kernel=3x3 stride=1 pad=1 weight=@features.dense-stage-0.block-3.conv1.weight : [N,12,16,16]
      %5 = conv2d [%1, %2, %3, %4] pre(@features.dense-stage-0.block-4.bn1.{scale,shift}, relu) out=12 kernel=3x3 stride=1 pad=1 weight=@features.dense-stage-0.block-4.conv1.weight : [N,12,16,16]
      # head
      %6 = avg_pool [%1, %2, %3, %4, %5] pre(@features.norm_last.{scale,shift}, relu) kernel=1x1 stride=1 pad=0 : [N,64,16,16]
      # output
      %7 = output "output" %6 : [N,64,16,16]
    }
    "#);
    Ok(())
}
