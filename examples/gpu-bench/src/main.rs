//! `gpu-bench MODEL.bin [--check IO.safetensors] [--tolerance E] [--batch B]... [--iters N]
//! [--warmup W]`: loads a model.bin with the runtime (built with `--features cuda` for CUDA
//! models), checks it against a golden input/output pair if asked (relative error below `E`,
//! default 2e-4, PyTorch's float64 forward as reference; a model compiled with `--precision
//! tf32|bf16` is checked with a larger `E`; each row run alone and inside a batch of 7 must
//! agree with the batched result within `E / 20` relative, at least 1e-5: the convolution
//! tiles, and so the order of the sums, depend on the batch size), then times `Session::run` (input copy in, graph replay, output copy out,
//! synchronised) at each batch and prints one JSON object per batch on standard output:
//! `{"model": ..., "backend": ..., "batch": B, "median_ms": ..., "p10_ms": ..., "p90_ms": ...}`.
//! Carried to the GPU machine prebuilt (it has no Rust); see docs/cuda.md.

use std::process::ExitCode;
use std::time::Instant;

struct Args {
    model: String,
    check: Option<String>,
    batches: Vec<usize>,
    iters: usize,
    warmup: usize,
    /// The golden check's bound on the relative error.
    tolerance: f64,
    /// Also time each step alone (`Session::profile`) at every batch.
    profile: bool,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        model: String::new(),
        check: None,
        batches: Vec::new(),
        iters: 100,
        warmup: 10,
        tolerance: 2e-4,
        profile: false,
    };
    let number = |v: Option<String>, what: &str| -> Result<usize, String> {
        v.and_then(|s| s.parse().ok())
            .ok_or(format!("{what} needs a number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--check" => args.check = Some(it.next().ok_or("--check needs a file")?),
            "--batch" => args.batches.push(number(it.next(), "--batch")?),
            "--iters" => args.iters = number(it.next(), "--iters")?.max(1),
            "--warmup" => args.warmup = number(it.next(), "--warmup")?,
            "--tolerance" => {
                args.tolerance = it
                    .next()
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|e| e.is_finite() && *e > 0.0)
                    .ok_or("--tolerance needs a positive number")?;
            }
            "--profile" => args.profile = true,
            _ if args.model.is_empty() && !a.starts_with('-') => args.model = a,
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    if args.model.is_empty() {
        return Err(
            "usage: gpu-bench MODEL.bin [--check IO.safetensors] [--tolerance E] \
                    [--batch B]... [--iters N] [--warmup W] [--profile]"
                .into(),
        );
    }
    Ok(args)
}

fn tensor(path: &str, name: &str) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format!("{path}: {e}"))?;
    let t = st
        .tensor(name)
        .map_err(|e| format!("{path}: {name}: {e}"))?;
    Ok(t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        d += (f64::from(g) - f64::from(w)).powi(2);
        n += f64::from(w).powi(2);
    }
    (d / n).sqrt()
}

fn run(args: &Args) -> Result<(), String> {
    // A benchmark of the user's own build: its CUDA kernels are native code from the file,
    // which the runtime runs only when asked to (there is no signature to check yet).
    let trusting = runtime::LoadOptions {
        allow_unsigned_code: true,
        ..Default::default()
    };
    let model = runtime::Model::load_with(&args.model, &trusting).map_err(|e| e.to_string())?;
    let mut session = model.session();
    let per_image: usize = model.input().shape.iter().map(|&d| d as usize).product();
    if let Some(io) = &args.check {
        let input = tensor(io, "input")?;
        let want = tensor(io, "output")?;
        let batch = input.len() / per_image;
        let got = session.run(&input, batch).map_err(|e| e.to_string())?;
        let error = relative_error(got, &want);
        println!(
            "{{\"model\": \"{}\", \"check\": \"{io}\", \"relative_error\": {error:e}}}",
            model.name()
        );
        if error.is_nan() || error >= args.tolerance {
            return Err(format!(
                "relative error {error:e} is not below {:e}",
                args.tolerance
            ));
        }
        let bound = (args.tolerance / 20.0).max(1e-5) as f32;
        // Each row alone, and as the last row of a batch of 7, gives the batched result.
        let got = got.to_vec();
        let classes = got.len() / batch;
        for row in 0..batch {
            let x = &input[row * per_image..(row + 1) * per_image];
            let alone = session.run(x, 1).map_err(|e| e.to_string())?;
            if !agree(alone, &got[row * classes..(row + 1) * classes], bound) {
                return Err(format!("row {row} alone differs from the batched result"));
            }
            let mut seven: Vec<f32> = (0..7 * per_image)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            seven[6 * per_image..].copy_from_slice(x);
            if model.max_batch() >= 7 {
                let y = session.run(&seven, 7).map_err(|e| e.to_string())?;
                if !agree(
                    &y[6 * classes..],
                    &got[row * classes..(row + 1) * classes],
                    bound,
                ) {
                    return Err(format!(
                        "row {row} in a batch of 7 differs from the batched result"
                    ));
                }
            }
        }
        println!(
            "{{\"model\": \"{}\", \"rows_independent_of_batch\": true}}",
            model.name()
        );
    }
    for &batch in &args.batches {
        let input: Vec<f32> = (0..batch * per_image)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        for _ in 0..args.warmup {
            session.run(&input, batch).map_err(|e| e.to_string())?;
        }
        let mut times = Vec::with_capacity(args.iters);
        for _ in 0..args.iters {
            let t = Instant::now();
            session.run(&input, batch).map_err(|e| e.to_string())?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!(
            "{{\"model\": \"{}\", \"backend\": \"{}\", \"batch\": {batch}, \"median_ms\": {:.4}, \
             \"p10_ms\": {:.4}, \"p90_ms\": {:.4}, \"iters\": {}}}",
            model.name(),
            model.backend(),
            at(0.5),
            at(0.1),
            at(0.9),
            args.iters
        );
        if args.profile {
            profile(&mut session, model.name(), &input, batch)?;
        }
    }
    Ok(())
}

/// Prints each step's time alone (JSON, one line per step, slowest first) and the sums per
/// layer kind.
fn profile(
    session: &mut runtime::Session<'_>,
    name: &str,
    input: &[f32],
    batch: usize,
) -> Result<(), String> {
    let p = session.profile(input, batch).map_err(|e| e.to_string())?;
    let total: f64 = p.steps.iter().map(|s| s.seconds).sum();
    println!(
        "{{\"model\": \"{name}\", \"batch\": {batch}, \"profile_sum_ms\": {:.4}, \
         \"graph_ms\": {:.4}}}",
        total * 1e3,
        p.wall_seconds * 1e3
    );
    for (kind, seconds, flops) in p.by_kind() {
        println!(
            "{{\"model\": \"{name}\", \"batch\": {batch}, \"kind\": \"{}\", \"ms\": {:.4}, \
             \"share\": {:.3}, \"gflops\": {:.1}}}",
            kind.name(),
            seconds * 1e3,
            seconds / total,
            flops as f64 / seconds / 1e9
        );
    }
    let mut steps: Vec<_> = p.steps.iter().collect();
    steps.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    for s in steps.iter().take(12) {
        println!(
            "{{\"model\": \"{name}\", \"batch\": {batch}, \"step\": \"{}\", \"us\": {:.1}, \
             \"gflops\": {:.1}}}",
            s.label,
            s.seconds * 1e6,
            s.flops as f64 / s.seconds / 1e9
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether two rows agree within `bound` relative error (max |a - b| / max |b|; 1e-5 for an
/// FP32 model): what a change of tile, and so of summation order, may move (with BF16
/// buffers, a last-bit difference can round a stored value the other way).
fn agree(a: &[f32], b: &[f32], bound: f32) -> bool {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    a.len() == b.len() && diff <= bound * scale
}
