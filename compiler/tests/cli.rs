//! The `sparsec` binary as a user meets it: exit codes and the exact text of its errors
//! (insta snapshots, `cli__*.snap`), a closed output pipe, `run`'s output line, `info`,
//! `bench --json`'s keys, the listing with no arguments, shell completions. Paths under the
//! test's scratch folder print as `[TMP]`.
//!
//! Must not assert timings: `bench` is checked for its keys and their types only.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The repository root: the binary runs there, so example paths print as in the README.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("compiler/ has a parent")
        .to_path_buf()
}

/// The scratch folder, in cargo's folder for test files (`target/tmp`): each run overwrites
/// the same files, so nothing accumulates.
fn tmp() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Runs the binary with the per-user signing key in the scratch folder (never the real home).
fn sparsec(args: &[&str]) -> Output {
    sparsec_with_keys(args, &tmp().join("keys"))
}

fn sparsec_with_keys(args: &[&str], key_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sparsec"))
        .args(args)
        .current_dir(root())
        .env_remove("SPARSEC_THREADS")
        .env("SPARSEC_KEY_DIR", key_dir)
        .output()
        .expect("sparsec runs")
}

/// Standard error with the scratch folder replaced by `[TMP]`.
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).replace(&tmp().display().to_string(), "[TMP]")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The small example compiled with random weights and a maximum batch of 2 (once per test
/// process).
fn model_bin() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = tmp().join("model.bin");
        let out = path.display().to_string();
        let o = sparsec(&[
            "examples/models/sparsenet-40-24.snet",
            "--random-weights",
            "0",
            "--max-batch",
            "2",
            "-o",
            &out,
        ]);
        assert!(o.status.success(), "compiling failed: {}", stderr(&o));
        path
    })
}

/// Writes a `.npy` file of `shape` with `descr` (`<f4` or `<f8`), zero data.
fn npy(name: &str, descr: &str, shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(", ")
    );
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let width = if descr == "<f8" { 8 } else { 4 };
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + shape.iter().product::<usize>() * width, 0);
    let path = tmp().join(name);
    std::fs::write(&path, bytes).expect("write npy");
    path.display().to_string()
}

/// Runs `args`, asserts the exit code, returns standard error.
fn fails(args: &[&str], code: i32) -> String {
    let o = sparsec(args);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    stderr(&o)
}

#[test]
fn no_arguments_lists_the_subcommands() {
    let err = fails(&[], 2);
    for sub in ["run", "stats", "info", "bench", "completions"] {
        assert!(
            err.contains(&format!("\n  {sub} ")),
            "{sub} missing:\n{err}"
        );
    }
    // The usage and the subcommands (the compile options below them are `--help`'s).
    let listing = err.split("\nArguments:").next().unwrap_or_default();
    insta::assert_snapshot!("no_arguments", listing);
}

#[test]
fn model_arguments_are_described() {
    for sub in ["run", "stats", "info", "bench"] {
        let o = sparsec(&[sub, "--help"]);
        assert!(o.status.success());
        let help = stdout(&o);
        let line = help
            .lines()
            .skip_while(|l| l.trim() != "Arguments:")
            .nth(1)
            .unwrap_or_default();
        assert!(
            line.trim_start().starts_with("<MODEL.") && line.len() > 20,
            "`sparsec {sub}` has no description of its model argument:\n{help}"
        );
    }
    insta::assert_snapshot!("run_help", stdout(&sparsec(&["run", "--help"])));
}

/// `sparsec ... | head -1`: read one line, close the pipe, the program ends quietly with 0.
fn closed_pipe(args: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sparsec"))
        .args(args)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sparsec");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("one line");
    assert!(!first.is_empty(), "{args:?} printed nothing");
    // The reader is dropped here: every later write fails with EPIPE.
    let o = child.wait_with_output().expect("sparsec ends");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{args:?}:\n{err}");
    assert_eq!(o.status.code(), Some(0), "{args:?}:\n{err}");
    assert!(err.is_empty(), "{args:?} said something:\n{err}");
}

#[test]
fn a_closed_pipe_ends_quietly() {
    // Each prints well over a pipe buffer (64 KiB) after its first line (100 KiB to 620 KiB),
    // so the writer must meet the closed pipe.
    let model = "examples/models/sparsenet-plus-2000.snet";
    for emit in ["ir", "opt-ir", "plan"] {
        closed_pipe(&[model, "--emit", emit]);
    }
}

#[test]
fn run_prints_probabilities_or_logits() {
    let model = model_bin().display().to_string();
    let input = npy("two.npy", "<f4", &[2, 3, 32, 32]);
    let o = sparsec(&[
        "run",
        &model,
        "--input",
        &input,
        "--top",
        "3",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("top 3 of 100 classes per row (softmax probability):")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{text}");
    for (i, row) in rows.iter().enumerate() {
        let (head, rest) = row.split_once(": ").expect("row N: ...");
        assert_eq!(head, format!("row {i}"));
        let p: Vec<f64> = rest
            .split(", ")
            .map(|e| {
                let v = e.split_once(" (").expect("class (p)").1;
                v.trim_end_matches(')').parse().expect("a number")
            })
            .collect();
        assert_eq!(p.len(), 3, "{row}");
        assert!(p.iter().all(|&v| (0.0..=1.0).contains(&v)), "{row}");
        assert!(p.windows(2).all(|w| w[0] >= w[1]), "{row}");
        assert!(p.iter().sum::<f64>() <= 1.0 + 1e-3, "{row}");
    }
    let o = sparsec(&[
        "run",
        &model,
        "--input",
        &input,
        "--logits",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).lines().next(),
        Some("top 5 of 100 classes per row (logit):")
    );
}

#[test]
fn run_and_file_errors() {
    let model = model_bin().display().to_string();
    let good = npy("one.npy", "<f4", &[1, 3, 32, 32]);
    let dir = tmp().join("dir.npy");
    std::fs::create_dir_all(&dir).expect("dir");
    let dir = dir.display().to_string();
    let txt = tmp().join("x.txt");
    std::fs::write(&txt, b"not a tensor").expect("txt");
    let txt = txt.display().to_string();
    let f64_input = npy("f64.npy", "<f8", &[1, 3, 32, 32]);
    let three = npy("three.npy", "<f4", &[3, 3, 32, 32]);
    let missing_dir = tmp().join("no-such-dir/y.npy").display().to_string();
    let scratch = tmp_str();

    let cases: [(&str, Vec<&str>, i32); 11] = [
        (
            "input_is_a_directory",
            vec!["run", &model, "--input", &dir],
            1,
        ),
        (
            "model_is_a_directory",
            vec!["run", &scratch, "--input", &good],
            1,
        ),
        (
            "output_cannot_be_written",
            vec!["run", &model, "--input", &good, "--output", &missing_dir],
            1,
        ),
        (
            "input_unknown_extension",
            vec!["run", &model, "--input", &txt],
            1,
        ),
        (
            "output_unknown_extension",
            vec!["run", &model, "--input", &good, "--output", "y.txt"],
            1,
        ),
        (
            "threads_zero",
            vec!["run", &model, "--input", &good, "--threads", "0"],
            2,
        ),
        (
            "iters_zero",
            vec!["run", &model, "--profile", "--iters", "0"],
            2,
        ),
        (
            "top_zero",
            vec!["run", &model, "--input", &good, "--top", "0"],
            2,
        ),
        ("npy_float64", vec!["run", &model, "--input", &f64_input], 1),
        (
            "batch_above_maximum",
            vec!["run", &model, "--input", &three],
            1,
        ),
        (
            "profile_batch_above_maximum",
            vec!["run", &model, "--profile", "--batch", "3"],
            1,
        ),
    ];
    for (name, args, code) in cases {
        let err = fails(&args, code);
        assert!(err.matches("os error").count() <= 1, "{err}");
        insta::assert_snapshot!(name, err);
    }
    // The failed write left no results behind it on standard output.
    let o = sparsec(&["run", &model, "--input", &good, "--output", &missing_dir]);
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
}

#[test]
fn compile_file_errors_print_their_cause_once() {
    let scratch = tmp_str();
    let cases: [(&str, Vec<&str>); 3] = [
        ("source_is_a_directory", vec!["examples"]),
        ("stats_source_is_a_directory", vec!["stats", "examples"]),
        (
            "model_bin_cannot_be_written",
            vec![
                "examples/models/sparsenet-40-24.snet",
                "--random-weights",
                "0",
                // Forced kernels: no accuracy report on stderr, only the error.
                "--winograd",
                "4x4",
                "-o",
                &scratch,
            ],
        ),
    ];
    for (name, args) in cases {
        let err = fails(&args, 1);
        assert_eq!(err.matches("os error").count(), 1, "{err}");
        insta::assert_snapshot!(name, err);
    }
}

#[test]
fn profile_says_winograd_figures_are_direct_equivalents() {
    let model = model_bin().display().to_string();
    let o = sparsec(&["run", &model, "--profile", "--iters", "1", "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("% of peak"), "{text}");
    // The note appears exactly when the model has Winograd steps (as `info` reports them).
    let info = stdout(&sparsec(&["info", &model]));
    let winograd = info.contains("Winograd");
    let note = text.lines().any(|l| {
        l.contains("run as Winograd")
            && l.contains("direct-convolution equivalents and can pass 100%")
    });
    assert_eq!(note, winograd, "{info}\n{text}");
    // One thread cannot show contention between threads.
    assert!(!text.contains("warning:"), "{text}");
}

#[test]
fn memory_svg_escapes_names_and_labels_blocks() {
    let source = std::fs::read_to_string(root().join("examples/models/sparsenet-40-24.snet"))
        .expect("example model");
    let source = source.replace(
        "model \"sparsenet-40-24\"",
        "model \"a<b>&'c\\\" <script>\"",
    );
    assert!(source.contains("<script>"), "the model line was replaced");
    let path = tmp().join("odd-name.snet");
    std::fs::write(&path, source).expect("write model");
    let o = sparsec(&[&path.display().to_string(), "--emit", "memory-svg"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = stdout(&o);
    assert!(!svg.contains("<script>"), "an unescaped model name");
    assert!(
        svg.contains("a&lt;b&gt;&amp;&apos;c"),
        "{}",
        &svg[..400.min(svg.len())]
    );
    // The arena chart: step ticks with their axis name, offset ticks, and blocks named by
    // their producer in the picture (not only in hover text).
    assert!(svg.contains(">schedule step</text>"));
    assert!(svg.contains(">@0.00 MiB</text>"));
    assert!(svg.contains("font-size=\"8\">b1 %1 conv2d stem</text>"));
}

fn tmp_str() -> String {
    tmp().display().to_string()
}

#[test]
fn info_describes_a_model() {
    let model = model_bin().display().to_string();
    let o = sparsec(&["info", &model]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in [
        "sparsenet-40-24: model.bin format version ",
        "target:   CPU on ",
        "input:    `input` [N, 3, 32, 32] float32",
        "output:   `output` [N, 100] float32 (100 classes, logits)",
        "batch:    at most 2 (recompile with --max-batch for more)",
        "memory:   arena ",
        "steps:    ",
        "  stem         conv 3x3 direct",
        "  head         linear (global average first)",
    ] {
        assert!(text.contains(want), "no `{want}` in:\n{text}");
    }
    assert!(text.contains("  3x3          conv 3x3 "), "{text}");

    let o = sparsec(&["info", &model, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    insta::assert_snapshot!("info_json_keys", keys(&v, ""));
    assert_eq!(v["input_shape"], serde_json::json!([3, 32, 32]));
    assert_eq!(v["classes"], 100);
    assert_eq!(v["max_batch"], 2);
    let steps: u64 = v["kernels"]
        .as_array()
        .expect("kernels")
        .iter()
        .map(|k| k["steps"].as_u64().expect("steps"))
        .sum();
    assert_eq!(Some(steps), v["steps"].as_u64());

    let err = fails(&["info", "README.md"], 1);
    insta::assert_snapshot!("info_not_a_model", err);
}

/// Every key of a JSON value with its type, one a line, nested keys dotted (array elements
/// as `[]`), sorted.
fn keys(v: &serde_json::Value, prefix: &str) -> String {
    let mut lines = Vec::new();
    collect_keys(v, prefix, &mut lines);
    lines.sort();
    lines.dedup();
    lines.join("\n")
}

fn collect_keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if !prefix.is_empty() {
        out.push(format!("{prefix}: {kind}"));
    }
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect_keys(x, &p, out);
            }
        }
        Value::Array(items) => {
            for x in items.iter().filter(|x| x.is_object()) {
                collect_keys(x, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn bench_json_keys() {
    let model = model_bin().display().to_string();
    let o = sparsec(&[
        "bench",
        &model,
        "--iters",
        "3",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--batch",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    // Peaks and the warning are null on a machine without AVX2/FMA or without contention:
    // their keys are checked, not their types.
    let mut v2 = v.clone();
    for k in [
        "peak_gflops_one_thread",
        "peak_gflops",
        "fraction_of_peak",
        "contention_warning",
    ] {
        assert!(v.get(k).is_some(), "no key {k}");
        v2[k] = serde_json::Value::Null;
    }
    insta::assert_snapshot!("bench_json_keys", keys(&v2, ""));
    assert_eq!(
        (v["batch"].as_u64(), v["iters"].as_u64()),
        (Some(2), Some(3))
    );
    let l = &v["latency_ms"];
    let num = |k: &str| l[k].as_f64().expect("a number");
    assert!(num("min") <= num("median") && num("median") <= num("p90"));
    assert!(num("p90") <= num("p99") && num("p99") <= num("max"));
    assert!(v["images_per_second"].as_f64().expect("throughput") > 0.0);

    let err = fails(&["bench", &model, "--batch", "3"], 1);
    insta::assert_snapshot!("bench_batch_above_maximum", err);
}

#[test]
fn shell_completions() {
    for shell in ["bash", "zsh", "fish"] {
        let o = sparsec(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        for word in ["sparsec", "info", "bench", "emit", "max-batch"] {
            assert!(script.contains(word), "{shell}: no `{word}`");
        }
    }
    let err = fails(&["completions", "tcsh"], 2);
    assert!(err.contains("tcsh"), "{err}");
}

/// Signed and unsigned round trips: the per-user key made on first use (mode 0600) signs by
/// default and `run` trusts it; `--no-sign`, `--sign KEY` with another key, `--trust KEY.pub`,
/// `--require-signature`, `keygen` never overwriting, and a changed byte after signing. The
/// logits are the same text whether the native code or the data-only schedule ran.
#[test]
fn signed_and_unsigned_round_trips() {
    let dir = tmp().join("signing");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    let keys = dir.join("user-keys");
    let run = |args: &[&str]| sparsec_with_keys(args, &keys);
    let path = |name: &str| dir.join(name).display().to_string();
    let compile = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "examples/models/sparsenet-40-24.snet",
            "--random-weights",
            "0",
            "--winograd",
            "off",
            "--max-batch",
            "2",
            "-o",
            out,
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let info_state = |model: &str| {
        let o = run(&["info", model, "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        v["signature"]["state"].as_str().unwrap_or("?").to_string()
    };
    let input = "../shared/golden/sparsenet-40-24.io.safetensors";
    let logits = |model: &str, extra: &[&str]| {
        let mut args = vec!["run", model, "--input", input, "--logits"];
        args.extend_from_slice(extra);
        run(&args)
    };

    // The default: a per-user key, created once, private, signs; `run` trusts it.
    let signed = path("signed.bin");
    let said = compile(&signed, &[]);
    assert!(said.contains("created your signing key"), "{said}");
    assert!(said.contains(", signed by ed25519:"), "{said}");
    let secret = keys.join("signing.key");
    assert!(secret.exists() && keys.join("signing.key.pub").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&secret)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let said = compile(&signed, &[]);
    assert!(!said.contains("created"), "the key is made once: {said}");
    assert_eq!(info_state(&signed), "trusted");
    let info = stdout(&run(&["info", &signed]));
    assert!(
        info.contains("signature: signed by trusted key ed25519:"),
        "{info}"
    );
    let native = logits(&signed, &["--require-signature"]);
    assert!(native.status.success(), "{}", stderr(&native));

    // Unsigned: runs data-only with the same logits, refused when a signature is required.
    let unsigned = path("unsigned.bin");
    assert!(compile(&unsigned, &["--no-sign"]).contains(", unsigned"));
    assert_eq!(info_state(&unsigned), "unsigned");
    let data_only = logits(&unsigned, &[]);
    assert!(data_only.status.success(), "{}", stderr(&data_only));
    assert_eq!(stdout(&data_only), stdout(&native));
    let refused = logits(&unsigned, &["--require-signature"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("must be signed by a trusted key, and it is not: unsigned"),
        "{}",
        stderr(&refused)
    );

    // Another key: untrusted until `--trust` names its public half.
    let other = path("other.key");
    let o = run(&["keygen", "--out", &other]);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = run(&["keygen", "--out", &other]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let theirs = path("theirs.bin");
    compile(&theirs, &["--sign", &other]);
    assert_eq!(info_state(&theirs), "untrusted");
    let o = logits(&theirs, &["--require-signature"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("which is not trusted"),
        "{}",
        stderr(&o)
    );
    let other_pub = format!("{other}.pub");
    let o = logits(&theirs, &["--trust", &other_pub, "--require-signature"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), stdout(&native));

    // A byte of the signature changed: not trusted, runs data-only, refused when required.
    let mut bytes = std::fs::read(&signed).expect("signed file");
    let at = bytes.len() - 40;
    bytes[at] ^= 1;
    let tampered = path("tampered.bin");
    std::fs::write(&tampered, &bytes).expect("write");
    assert_eq!(info_state(&tampered), "invalid");
    let o = logits(&tampered, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), stdout(&native));
    let o = logits(&tampered, &["--require-signature"]);
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));

    // A missing or malformed key is an error naming the file, before any compile work.
    let o = run(&[
        "examples/models/sparsenet-40-24.snet",
        "--random-weights",
        "0",
        "-o",
        &path("never.bin"),
        "--sign",
        &other_pub,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not a sparsec key file: starts with `sparsec-ed25519-public`"),
        "{}",
        stderr(&o)
    );
}

/// `--target cpu-aarch64` cross-compiles on this x86-64 host; `info` says where the file runs,
/// and `run` refuses it with the error naming both architectures and the target to use.
#[test]
#[cfg(target_arch = "x86_64")]
fn a_model_cross_compiled_for_aarch64_is_refused_here() {
    let path = tmp().join("model-aarch64.bin");
    let out = path.display().to_string();
    let o = sparsec(&[
        "examples/models/sparsenet-40-24.snet",
        "--random-weights",
        "0",
        "--winograd",
        "off",
        "--target",
        "cpu-aarch64",
        "-o",
        &out,
    ]);
    assert!(o.status.success(), "compiling failed: {}", stderr(&o));
    let o = sparsec(&["info", &out]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("target:   CPU on aarch64, baseline code, no CPU feature required (cannot run on this machine)"),
        "{}",
        stdout(&o)
    );
    let input = npy("aarch64-input.npy", "<f4", &[1, 3, 32, 32]);
    let err = fails(&["run", &out, "--input", &input], 1);
    assert!(
        err.contains(
            "model.bin was compiled for aarch64, but this machine is x86_64; recompile it with \
             `sparsec --target cpu-x86_64`"
        ),
        "{err}"
    );
}

/// `--precision`: `--emit cuda --precision tf32` says how many convolutions got tensor cores
/// and marks them in the source; FP32 (the default) prints no such line; an unknown precision
/// is a usage error naming the choices.
#[test]
fn precision_is_reported_per_layer() {
    let model = "examples/models/sparsenet-bc-100-24.snet";
    let o = sparsec(&[model, "--emit", "cuda", "--precision", "tf32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("convolutions: 82 tf32, 17 fp32"),
        "{}",
        stderr(&o)
    );
    let source = stdout(&o);
    assert!(
        source.contains(", tf32\n//      -> k_mmatf32_1x1p_"),
        "no tf32 step"
    );
    let o = sparsec(&[model, "--emit", "cuda"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("convolutions:"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("k_mma"));
    let err = fails(&[model, "--emit", "cuda", "--precision", "fp16"], 2);
    assert!(err.contains("fp32") && err.contains("bf16"), "{err}");
}

/// `--precision bf16` on CUDA: `--emit plan --target cuda` shows the buffers the backend stores
/// in BF16 and the arena placed again (`backend/cuda/storage.rs`), and `--emit cuda` reports
/// them; at FP32 the CUDA plan is the CPU's, every buffer f32.
#[test]
fn bf16_buffers_show_in_the_cuda_plan() {
    let model = "examples/models/densenet-bc-100-12.snet";
    let plan = |extra: &[&str]| {
        let mut args = vec![model, "--emit", "plan"];
        args.extend_from_slice(extra);
        let o = sparsec(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let arena = |text: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("arena:"))
            .expect("an arena line");
        line.split_whitespace()
            .nth(1)
            .expect("a size")
            .replace(',', "")
            .parse()
            .expect("a number")
    };
    let bf16 = plan(&["--target", "cuda", "--precision", "bf16"]);
    let fp32 = plan(&["--target", "cuda"]);
    let cpu = plan(&[]);
    assert_eq!(fp32, cpu);
    let narrowed = bf16.lines().filter(|l| l.contains("] bf16 ")).count();
    assert_eq!(narrowed, 35, "{bf16}");
    assert!(!fp32.contains(" bf16 "));
    assert!(
        arena(&bf16) < arena(&fp32),
        "{} vs {}",
        arena(&bf16),
        arena(&fp32)
    );
    let o = sparsec(&[model, "--emit", "cuda", "--precision", "bf16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("activations: 35 of 103 buffers bf16"),
        "{}",
        stderr(&o)
    );
    assert!(
        stdout(&o).contains(", bf16 output\n"),
        "no step writes a bf16 buffer"
    );
}
