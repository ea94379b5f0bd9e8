//! Every pass preserves meaning on every example model: the reference interpreter gives the
//! same output (relative error below 1e-5) on the lowered graph and on the optimised graph,
//! with random "trained-looking" weights and a random non-zero input. The golden models are
//! also checked against PyTorch in `golden_interpreter.rs`; this covers the other topologies
//! (sum aggregation, residual, dense, max-pool stems, per-block growth), and the feature
//! extractors of `tests/models/` (the output materialised by a copy, issue 12).

use ir::interp::{self, Tensor};
use sparsec::driver::{self, WeightsSource};
use sparsec_tests::{damp_summed_branches, random_input};
use std::path::PathBuf;

fn input(shape: [usize; 4], seed: u64) -> Tensor {
    let data = random_input(shape.iter().product(), seed);
    Tensor { shape, data }
}

#[test]
fn optimised_graphs_compute_what_lowered_graphs_compute() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut paths: Vec<_> = ["../examples/models", "models"]
        .into_iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).expect("model folder"))
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    for path in paths {
        let mut raw = driver::load(&path).expect("example compiles");
        driver::bind(&mut raw, &WeightsSource::Random(7)).expect("random weights");
        damp_summed_branches(&mut raw);
        let mut opt = raw.clone();
        sparsec::passes::optimize(&mut opt, true).expect("passes");
        let t = raw.node(raw.inputs()[0]).ty;
        let x = input(
            [2, t.channels as usize, t.height as usize, t.width as usize],
            11,
        );
        let want = interp::run(&raw, std::slice::from_ref(&x)).expect("lowered graph runs");
        let got = interp::run(&opt, &[x]).expect("optimised graph runs");
        let error = interp::relative_error(&got[0].data, &want[0].data);
        let scale = want[0].data.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        eprintln!(
            "{}: relative error {error:.3e} (max |y| {scale:.3})",
            path.display()
        );
        assert!(
            scale > 0.0 && scale.is_finite(),
            "{}: the output is zero or not finite, the test would prove nothing",
            path.display()
        );
        assert!(
            error < 1e-5,
            "{}: optimised vs lowered relative error {error:e}",
            path.display()
        );
    }
}
