//! The optimiser and the memory planner on every example model: every plan passes the plan
//! verifier and stays within 2% of its lower bound; on the golden models no concatenation,
//! batch norm or ReLU survives as a node and the multiply-adds go down. The optimised IR and
//! the plan are snapshotted for the models of `common::SNAPSHOT_MODELS`.

mod common;

use ir::Op;
use sparsec::driver::{self, Optimized, WeightsSource};
use sparsec::plan::{arena, memory};
use std::path::Path;

fn optimize(path: &Path, batch: u64) -> (ir::Graph, Optimized) {
    let raw = driver::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opt = driver::optimize(raw.clone(), &WeightsSource::Random(0), batch, true)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (raw, opt)
}

#[test]
fn emit_opt_ir() {
    let models = common::glob(&common::SNAPSHOT_MODELS);
    insta::glob!("../../examples/models", &models, |path| {
        let (_, opt) = optimize(path, 1);
        insta::assert_snapshot!(ir::print::print(&opt.graph));
    });
}

#[test]
fn emit_plan() {
    let models = common::glob(&common::SNAPSHOT_MODELS);
    insta::glob!("../../examples/models", &models, |path| {
        let (_, opt) = optimize(path, 1);
        insta::assert_snapshot!(memory::print(&opt.graph, &opt.plan));
    });
}

#[test]
fn every_plan_is_valid_and_within_two_percent_of_its_lower_bound() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    for path in paths {
        for batch in [1, 64] {
            let (_, opt) = optimize(&path, batch);
            let reqs = memory::requests(&opt.plan.liveness, batch);
            arena::verify(&reqs, &opt.plan.arena)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(opt.plan.arena.lower_bound_bytes, arena::lower_bound(&reqs));
            let ratio = opt.plan.ratio();
            eprintln!(
                "{} batch {batch}: arena {} lower bound {} ratio {ratio:.4}",
                path.display(),
                opt.plan.arena.arena_bytes,
                opt.plan.arena.lower_bound_bytes
            );
            assert!(
                ratio <= 1.02,
                "{} at batch {batch}: arena/lower bound = {ratio}",
                path.display()
            );
        }
    }
}

#[test]
fn golden_models_keep_no_concat_bn_or_relu_and_lose_multiply_adds() {
    for model in [
        "sparsenet-40-24",
        "sparsenet-bc-100-24",
        "densenet-bc-100-12",
        "sparsenet-bc-1000-12",
    ] {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/models/{model}.snet"));
        let (raw, opt) = optimize(&path, 1);
        for n in opt.graph.node_ids() {
            let op = &opt.graph.node(n).op;
            assert!(
                !matches!(op, Op::Concat | Op::Add | Op::BatchNorm(_) | Op::Relu),
                "{model}: a {} survived optimisation",
                op.mnemonic()
            );
        }
        let macs = ir::cost::graph_macs;
        let (before, after) = (macs(&raw), macs(&opt.graph));
        assert!(
            after < before,
            "{model}: {after} MACs after, {before} before"
        );
        // Naive executors hold far more than the plan.
        let naive = sparsec::stats::stats(&raw, 1).naive_activation_bytes;
        assert!(opt.plan.arena.arena_bytes * 4 < naive, "{model}");
    }
}
