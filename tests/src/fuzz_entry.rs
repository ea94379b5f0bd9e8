//! The entry functions of the fuzz targets (`fuzz/fuzz_targets/*.rs`, cargo-fuzz) and of the
//! corpus regression test (`tests/tests/fuzz_corpus.rs`, stable Rust): one function per input
//! surface, taking untrusted bytes. Each may return any typed error; a panic, an abort, a hang
//! or an allocation beyond what the bytes justify is a finding (docs/fuzzing.md).
//!
//! Must not execute native code from its input: model.bin is run only through the data-only
//! schedule (`LoadOptions::default()`); the `allow_unsigned_code` path is loaded (validated,
//! mapped) and dropped, never run, and a file whose signature verifies is never loaded with
//! that key trusted.

use runtime::format;
use runtime::signature::{self, SigningKey, VerifyingKey};
use runtime::{LoadOptions, Model};
use sparsec::tensor_io::{self, FileKind};

/// The fuzz targets, by name (the folder names under `fuzz/corpus/`).
pub const TARGETS: [&str; 5] = ["model_bin", "npy", "safetensors", "snet", "onnx"];

/// The input of target `name` (one of [`TARGETS`]); false for an unknown name.
pub fn run_target(name: &str, data: &[u8]) -> bool {
    match name {
        "model_bin" => model_bin(data),
        "npy" => npy(data),
        "safetensors" => safetensors(data),
        "snet" => snet(data),
        "onnx" => onnx(data),
        _ => return false,
    }
    true
}

/// The signing key of the signed seed files (`scripts/fuzz.sh` makes them): fixed and public,
/// so a fuzzed file whose signature still verifies is recognisable.
pub fn fuzz_signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// Largest arena (bytes per image) and scratch a fuzzed model.bin is run with: a larger one is
/// a valid file too, loaded and validated but not run (it would only make the fuzzer slow).
const RUN_MAX_BYTES: u64 = 16 << 20;

/// model.bin, with the xxh3 checksum recomputed first (as an attacker can): the header, the
/// signature check (trusting the fuzz key, whose files are then never loaded), the validating
/// loader with default options (data-only) and with `allow_unsigned_code` (loaded, never run),
/// and for a file that loads a run at batch 1 on one thread and at batch 2 on two.
pub fn model_bin(data: &[u8]) {
    let mut bytes = data.to_vec();
    format::seal(&mut bytes);
    let key: VerifyingKey = fuzz_signing_key().verifying_key();
    let trusted = matches!(
        signature::check(&bytes, &[key]),
        Ok(signature::SignatureState::Trusted { .. })
    );
    if let Ok(file) = format::ModelFile::parse(&bytes) {
        let _ = Model::layer_kinds(&file);
    }
    // Native code is mapped but never called: the model is dropped without a session.
    if !trusted {
        let options = LoadOptions {
            allow_unsigned_code: true,
            ..LoadOptions::default()
        };
        drop(Model::from_bytes_with(&bytes, &options));
    }
    let Ok(model) = Model::from_bytes(&bytes) else {
        return;
    };
    if model.runs_native_code() {
        return; // cannot happen with the default options; never run file code here
    }
    let m = model.manifest();
    if m.arena_bytes_per_image > RUN_MAX_BYTES || m.scratch_bytes > RUN_MAX_BYTES {
        return;
    }
    let per_image: usize = model.input().shape.iter().map(|&d| d as usize).product();
    for (threads, batch) in [(1, 1), (2, 2.min(model.max_batch()))] {
        let x = crate::random_input(per_image * batch, 1);
        let _ = model.session_with_threads(threads).run(&x, batch);
    }
}

/// A `.npy` file as `sparsec run` reads it.
pub fn npy(data: &[u8]) {
    let _ = tensor_io::parse(FileKind::Npy, data);
}

/// A safetensors file: as `sparsec run` reads inputs, and as weights bound to a small model.
pub fn safetensors(data: &[u8]) {
    let _ = tensor_io::parse(FileKind::Safetensors, data);
    if let Some(mut graph) = tiny_graph() {
        let _ = sparsec::weights::bind_safetensors(&mut graph, data);
    }
}

/// `.snet` source through the front end and lowering (`sparsec::compile_source`, what
/// `driver::load` runs), and the diagnostics rendered.
pub fn snet(data: &[u8]) {
    let source = String::from_utf8_lossy(data);
    let (_, errors) = sparsec::compile_source("fuzz", &source);
    let _ = sparsec::diagnostics::render("fuzz.snet", &source, &errors);
}

/// An ONNX file through the importer (`driver::load` for `.onnx`).
pub fn onnx(data: &[u8]) {
    let _ = sparsec::onnx::import(data, "fuzz");
}

/// The small model the seeds are made from (`fuzz/seeds/tiny.snet`).
pub const TINY_SNET: &str = include_str!("../../fuzz/seeds/tiny.snet");

/// [`TINY_SNET`] lowered (its parameters unbound).
pub fn tiny_graph() -> Option<ir::Graph> {
    static GRAPH: std::sync::OnceLock<Option<ir::Graph>> = std::sync::OnceLock::new();
    GRAPH
        .get_or_init(|| sparsec::compile_source("tiny", TINY_SNET).0)
        .clone()
}

/// A seed input: the target it is for, a file name, the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Seed inputs made from [`TINY_SNET`] with random weights: model.bin with each Winograd
/// level (unsigned) and signed by [`fuzz_signing_key`], the ONNX export, `.npy` and
/// safetensors inputs, the weights as safetensors, the `.snet` source. `scripts/fuzz.sh`
/// writes them into `fuzz/corpus/` before fuzzing (`SPARSEC_FUZZ_SEEDS=DIR`, see
/// `tests/tests/fuzz_corpus.rs`); the regression test runs them too.
pub fn seeds() -> anyhow::Result<Vec<Seed>> {
    use sparsec::backend::cpu::Winograd;
    use sparsec::driver::{self, WeightsSource};
    use sparsec::kernel_select::KernelPolicy;
    let mut out: Vec<Seed> = vec![("snet", "tiny.snet".into(), TINY_SNET.as_bytes().to_vec())];
    let graph = tiny_graph().ok_or_else(|| anyhow::anyhow!("tiny.snet does not lower"))?;
    for (name, w) in [
        ("f4x4", Winograd::F4x4),
        ("f2x2", Winograd::F2x2),
        ("direct", Winograd::Off),
    ] {
        let (_, bytes) = driver::compile_cpu_with(
            graph.clone(),
            &WeightsSource::Random(1),
            2,
            false,
            &KernelPolicy::Fixed(w),
        )?;
        if w == Winograd::F4x4 {
            let signed = signature::sign(&bytes, &fuzz_signing_key())?;
            out.push(("model_bin", "tiny-signed.bin".into(), signed));
        }
        out.push(("model_bin", format!("tiny-{name}.bin"), bytes));
    }
    let mut bound = graph.clone();
    sparsec::weights::bind_random(&mut bound, 1);
    out.push(("onnx", "tiny.onnx".into(), sparsec::onnx::export(&bound)?));
    let input = tensor_io::Array {
        shape: vec![1, 3, 4, 4],
        data: crate::random_input(48, 2),
    };
    out.push(("npy", "input.npy".into(), tensor_io::write_npy(&input)));
    let raw: Vec<u8> = input.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, input.shape.clone(), &raw)?;
    out.push((
        "safetensors",
        "input.safetensors".into(),
        safetensors::serialize([("input", view)], None)?,
    ));
    let params: Vec<(String, Vec<usize>, Vec<u8>)> = bound
        .params
        .iter()
        .filter_map(|(_, p)| {
            let data = p.data.as_ref()?;
            Some((
                p.name.clone(),
                p.shape.clone(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ))
        })
        .collect();
    let views = params
        .iter()
        .map(|(n, s, d)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .map(|v| (n.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.push((
        "safetensors",
        "tiny-weights.safetensors".into(),
        safetensors::serialize(views, None)?,
    ));
    Ok(out)
}
