//! Example: classify images with a compiled model, linking only the `runtime` crate (no
//! compiler inside). Reads an NCHW float32 batch from a safetensors file (the tensor `input`),
//! runs it, prints the top-5 classes of each row.
//!
//! ```sh
//! cargo run --release -p sparsec -- examples/models/sparsenet-40-24.snet \
//!     --weights ../shared/golden/sparsenet-40-24.safetensors -o model.bin
//! cargo run --release -p classify -- model.bin ../shared/golden/sparsenet-40-24.io.safetensors
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, input] = args.as_slice() else {
        eprintln!("usage: classify MODEL.bin INPUT.safetensors");
        return ExitCode::FAILURE;
    };
    match classify(model, input) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn classify(model_path: &str, input_path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let model = runtime::Model::load(model_path)?;
    let bytes = std::fs::read(input_path)?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)?;
    let view = tensors.tensor("input")?;
    if view.dtype() != safetensors::Dtype::F32 {
        return Err(format!("`input` is {:?}, expected F32", view.dtype()).into());
    }
    let input: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let batch = view.shape().first().copied().unwrap_or(1);
    let mut session = model.session();
    let logits = session.run(&input, batch)?;
    let classes = logits.len() / batch;
    println!("{}: {} images, {} classes", model.name(), batch, classes);
    for (row, l) in logits.chunks(classes).enumerate() {
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
