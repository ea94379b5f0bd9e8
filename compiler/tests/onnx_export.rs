//! ONNX export (`sparsec MODEL.snet --emit onnx`, `compiler/src/onnx/export.rs`): every example
//! model, with random weights, exports to ONNX and imports back to the same unoptimised IR
//! (the graph-name line aside: the name comes from the file stem) and the same plan; the
//! weights travel as initializers, bit for bit. Numerical agreement with ONNX Runtime is
//! `scripts/onnx-ort-check.py`'s job (it needs onnxruntime from PyPI).

use anyhow::{Context, Result};
use sparsec::driver::{self, WeightsSource};
use sparsec::plan::memory;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The text without its first line (the one that names the graph).
fn body(text: &str) -> &str {
    text.split_once('\n').map_or("", |(_, rest)| rest)
}

fn plan(graph: ir::Graph) -> Result<String> {
    let opt = driver::optimize(graph, &WeightsSource::None, 1, true)?;
    Ok(memory::print(&opt.graph, &opt.plan))
}

#[test]
fn every_example_model_round_trips_through_onnx() -> Result<()> {
    let mut models: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/models"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "snet"))
        .collect();
    models.sort();
    assert!(models.len() >= 14, "found {} example models", models.len());
    for path in models {
        let name = path.display().to_string();
        let mut graph = driver::load(&path)?;
        sparsec::weights::bind_random(&mut graph, 7);
        let bytes = sparsec::onnx::export(&graph).with_context(|| name.clone())?;
        let back = sparsec::onnx::import(&bytes, &graph.name).with_context(|| name.clone())?;
        assert_eq!(
            body(&ir::print::print(&back)),
            body(&ir::print::print(&graph)),
            "{name}: IR after the round trip"
        );
        for (id, p) in graph.params.iter() {
            let q = back.params.get(id);
            assert_eq!((&q.name, &q.shape), (&p.name, &p.shape), "{name}");
            assert_eq!(q.data, p.data, "{name}: data of `{}`", p.name);
        }
        assert_eq!(
            plan(back)?,
            plan(graph)?,
            "{name}: plan after the round trip"
        );
    }
    Ok(())
}

#[test]
fn export_without_weights_names_the_first_unbound_parameter() -> Result<()> {
    let graph = driver::load(&repo().join("examples/models/sparsenet-40-24.snet"))?;
    let e = sparsec::onnx::export(&graph).err().context("exported")?;
    assert_eq!(
        e.to_string(),
        "parameter `features.conv0.weight` has no data: pass --weights W.safetensors or \
         --random-weights SEED"
    );
    Ok(())
}

fn sparsec(args: &[&str]) -> Result<std::process::Output> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_sparsec"))
        .args(args)
        .current_dir(repo())
        .output()?)
}

#[test]
fn the_cli_exports_and_reads_back_the_same_plan() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("sparsec-onnx-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let onnx = dir.join("m.onnx").display().to_string();
    let snet = "examples/models/sparsenet-40-24.snet";
    let o = sparsec(&[snet, "--random-weights", "1", "--emit", "onnx", "-o", &onnx])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let from_onnx = sparsec(&[&onnx, "--emit", "plan"])?;
    let from_snet = sparsec(&[snet, "--emit", "plan"])?;
    let without_o = sparsec(&[snet, "--random-weights", "1", "--emit", "onnx"])?;
    std::fs::remove_dir_all(&dir)?;
    assert!(from_onnx.status.success());
    assert_eq!(
        body(&String::from_utf8_lossy(&from_onnx.stdout)),
        body(&String::from_utf8_lossy(&from_snet.stdout))
    );
    assert!(!without_o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&without_o.stderr),
        "error: --emit onnx writes a file: pass -o MODEL.onnx\n"
    );
    Ok(())
}
