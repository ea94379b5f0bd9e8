//! `sparsec stats` against the published numbers: the golden models' parameter and
//! multiply-accumulate counts exactly (from `../shared/golden/*.json`), the paper's table
//! within 0.005M.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stats(model: &str) -> sparsec::stats::Stats {
    let path = root().join("examples/models").join(format!("{model}.snet"));
    let source = std::fs::read_to_string(&path).expect("example model exists");
    let (graph, errors) = sparsec::compile_source(model, &source);
    assert!(errors.is_empty(), "{model}: {errors:?}");
    sparsec::stats::stats(&graph.expect("no errors, so a graph"), 1)
}

#[test]
fn golden_models_match_pytorch_counts_exactly() {
    let expected = [
        ("sparsenet-40-24", 757_252),
        ("sparsenet-bc-100-24", 1_461_124),
        ("densenet-bc-100-12", 800_032),
        ("sparsenet-bc-1000-12", 4_620_250),
    ];
    for (model, params) in expected {
        let s = stats(model);
        assert_eq!(s.params, params, "{model} parameters");
        let golden = root()
            .join("../shared/golden")
            .join(format!("{model}.json"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&golden).expect("golden json"))
                .expect("valid json");
        assert_eq!(
            s.params,
            json["params"].as_u64().expect("params"),
            "{model} params vs golden"
        );
        assert_eq!(
            s.macs_per_image,
            json["macs_per_image"].as_u64().expect("macs"),
            "{model} MACs vs golden"
        );
    }
}

#[test]
fn paper_table_within_5k_parameters() {
    let table = [
        ("sparsenet-40-24", 0.76),
        ("sparsenet-100-24", 2.52),
        ("sparsenet-100-36", 5.65),
        ("sparsenet-100-16-32-64", 7.22),
        ("sparsenet-bc-100-24", 1.46),
        ("sparsenet-bc-100-36", 3.26),
        ("sparsenet-bc-400-12", 1.70),
    ];
    for (model, millions) in table {
        let s = stats(model);
        let got = s.params as f64 / 1e6;
        assert!(
            (got - millions).abs() <= 0.005 + 1e-9,
            "{model}: {got:.4}M vs paper {millions}M"
        );
    }
}

#[test]
fn depths_are_the_model_names() {
    for (model, depth) in [
        ("sparsenet-40-24", 40),
        ("sparsenet-bc-100-24", 100),
        ("sparsenet-bc-400-12", 400),
        ("sparsenet-bc-1000-12", 1000),
        ("sparsenet-plus-1001", 1001),
        ("sparsenet-plus-2000", 2000),
        ("densenet-40-12", 40),
        ("sparsenet-121-32", 121),
    ] {
        assert_eq!(stats(model).depth, depth, "{model}");
    }
}

#[test]
fn naive_bytes_scale_with_batch() {
    let path = root().join("examples/models/sparsenet-40-24.snet");
    let source = std::fs::read_to_string(path).expect("example");
    let (graph, _) = sparsec::compile_source("m", &source);
    let graph = graph.expect("compiles");
    let one = sparsec::stats::stats(&graph, 1);
    let eight = sparsec::stats::stats(&graph, 8);
    assert_eq!(eight.naive_activation_bytes, 8 * one.naive_activation_bytes);
    let per_scope: u64 = one.scopes.iter().map(|s| s.naive_activation_bytes).sum();
    assert_eq!(per_scope, one.naive_activation_bytes);
}
