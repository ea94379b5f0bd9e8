//! Example: classify images with a compiled model, linking only the `runtime` crate (no
//! compiler inside). Reads an NCHW float32 batch from a safetensors file (the tensor `input`),
//! runs it, prints the top-5 classes of each row with their logits. Any other input file type
//! is an error naming the file.
//!
//! Trust: it runs the file's native code only if the file is signed by the per-user key
//! `sparsec` signs with by default (`runtime::signature::user_public_key`) or by a key given
//! with `--trust KEY.pub`; any other file runs data-only (CPU) or is refused (CUDA).
//!
//! ```sh
//! cargo run --release -p sparsec -- examples/models/sparsenet-40-24.snet \
//!     --weights ../shared/golden/sparsenet-40-24.safetensors -o model.bin
//! cargo run --release -p classify -- model.bin ../shared/golden/sparsenet-40-24.io.safetensors
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut paths, mut trust) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.clone().next()) {
            ("--trust", Some(key)) => {
                trust.push(key.clone());
                it.next();
            }
            _ => paths.push(a.clone()),
        }
    }
    let [model, input] = paths.as_slice() else {
        eprintln!("usage: classify MODEL.bin INPUT.safetensors [--trust KEY.pub]...");
        return ExitCode::FAILURE;
    };
    match classify(model, input, &trust) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn classify(
    model_path: &str,
    input_path: &str,
    trust: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    // Only safetensors is read here: say so, naming the file, before reading anything.
    let is_safetensors = std::path::Path::new(input_path)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if !is_safetensors {
        return Err(format!(
            "`{input_path}`: this example reads `.safetensors` input only (the tensor `input`)"
        )
        .into());
    }
    // The keys whose signature lets the file's native code run: ours, and any given.
    let mut trusted_keys: Vec<_> = runtime::signature::user_public_key()?.into_iter().collect();
    for path in trust {
        trusted_keys.push(runtime::signature::read_public_key(path.as_ref())?);
    }
    let options = runtime::LoadOptions {
        trusted_keys,
        ..Default::default()
    };
    let model = runtime::Model::load_with(model_path, &options)?;
    let bytes =
        std::fs::read(input_path).map_err(|e| format!("cannot read `{input_path}`: {e}"))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("`{input_path}` is not a safetensors file: {e}"))?;
    let view = tensors
        .tensor("input")
        .map_err(|e| format!("`{input_path}`: {e}"))?;
    if view.dtype() != safetensors::Dtype::F32 {
        return Err(format!(
            "`{input_path}`: `input` is {:?}, expected F32",
            view.dtype()
        )
        .into());
    }
    let input: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let batch = view.shape().first().copied().unwrap_or(1);
    let mut session = model.session();
    let logits = session.run(&input, batch)?;
    let classes = logits.len() / batch.max(1);
    println!(
        "{}: {} images, {} classes; top-5 per row with its logit (not a probability)",
        model.name(),
        batch,
        classes
    );
    println!(
        "model.bin {}: {}",
        model.signature(),
        if model.runs_native_code() {
            "its native code runs"
        } else {
            "run data-only through the runtime's own kernels"
        }
    );
    for (row, l) in logits.chunks(classes.max(1)).enumerate() {
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        let top: Vec<String> = order
            .iter()
            .take(5)
            .map(|&c| format!("{c} ({:.4})", l[c]))
            .collect();
        println!("row {row}: {}", top.join(", "));
    }
    Ok(())
}
