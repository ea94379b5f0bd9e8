//! Front-end and planner scale: parse + lower + verify + print, and memory planning, for
//! SparseNet-BC-style networks of 1k, 10k and 100k layers. A benchmark, not a test: it prints
//! medians and never asserts a time. Run: `cargo bench -p sparsec --bench scale`.

use std::time::{Duration, Instant};

/// A bottleneck SparseNet with `layers` layers split over 3 blocks (2 convs per layer).
fn network(layers: usize) -> String {
    let per_block = layers / 6;
    format!(
        r#"model "scale-{layers}"
input [3, 32, 32]
let k = 12
unit bottleneck {{
  bn1 = batch_norm()
  relu()
  conv1 = conv(4 * growth, kernel = 1)
  bn2 = batch_norm()
  relu()
  conv2 = conv(growth, kernel = 3, pad = 1)
}}
unit transition {{
  bn1 = batch_norm()
  relu()
  conv1 = conv(floor(in_channels * 0.5), kernel = 1)
  avg_pool(2)
}}
stem {{ conv0 = conv(2 * k, kernel = 3, pad = 1) }}
block(layers = {per_block}, growth = k, unit = bottleneck, links = sparse(2))
transition(unit = transition)
block(layers = {per_block}, growth = k, unit = bottleneck, links = sparse(2))
transition(unit = transition)
block(layers = {per_block}, growth = k, unit = bottleneck, links = sparse(2))
head {{
  features.norm_last = batch_norm()
  relu()
  avg_pool(8)
  classifier.linear = linear(10)
}}
"#
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed());
    }
    (median(times), last.expect("at least one run"))
}

fn main() {
    println!(
        "| layers | nodes | parse+lower | verify | print | total front end | plan (liveness + arena) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for layers in [1_000usize, 10_000, 100_000] {
        let source = network(layers);
        let runs = if layers >= 100_000 { 3 } else { 7 };
        let (t_lower, graph) = time(runs, || {
            let (g, errors) = sparsec::compile_source("scale", &source);
            assert!(errors.is_empty(), "{errors:?}");
            g.expect("no errors")
        });
        let (t_verify, _) = time(runs, || ir::verify::verify(&graph).is_ok());
        let (t_print, text) = time(runs, || ir::print::print(&graph));
        let (t_plan, plan) = time(runs, || {
            sparsec::plan::memory::plan(&graph, 1).expect("acyclic")
        });
        assert!(!text.is_empty() && plan.arena.arena_bytes > 0);
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        println!(
            "| {layers} | {} | {} | {} | {} | {} | {} |",
            graph.node_count(),
            ms(t_lower),
            ms(t_verify),
            ms(t_print),
            ms(t_lower + t_verify + t_print),
            ms(t_plan)
        );
    }
}
