//! Snapshot tests: every example model lowers to a graph that passes the verifier, and the
//! printed IR of those of `common::SNAPSHOT_MODELS` is snapshotted; the rendered diagnostics of
//! every invalid fixture are snapshotted. The text is the test API: `cargo insta review`
//! after an intended change.

mod common;

use std::path::Path;

/// Compiles a file; returns the printed IR or the rendered diagnostics.
fn compile(path: &Path) -> Result<String, String> {
    let source = std::fs::read_to_string(path).expect("fixture is readable");
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 file name");
    let stem = name.trim_end_matches(".snet");
    let (graph, errors) = sparsec::compile_source(stem, &source);
    match graph {
        Some(g) if errors.is_empty() => {
            if let Err(e) = ir::verify::verify(&g) {
                panic!("{name}: the lowered graph fails verification: {e:?}");
            }
            Ok(ir::print::print(&g))
        }
        _ => Err(sparsec::diagnostics::render(
            &format!("fixtures/errors/{name}"),
            &source,
            &errors,
        )),
    }
}

#[test]
fn emit_ir() {
    insta::glob!("../../examples/models", "*.snet", |path| {
        let ir =
            compile(path).unwrap_or_else(|e| panic!("{} fails to compile:\n{e}", path.display()));
        if common::is_listed(path, &common::SNAPSHOT_MODELS) {
            insta::assert_snapshot!(ir);
        }
    });
}

#[test]
fn diagnostics() {
    insta::glob!("fixtures/errors", "*.snet", |path| {
        let rendered = match compile(path) {
            Ok(_) => panic!("{} compiled, but it is an invalid fixture", path.display()),
            Err(e) => e,
        };
        assert!(rendered.contains("error[E"), "{rendered}");
        assert!(
            rendered.contains("help:"),
            "every diagnostic has a help line:\n{rendered}"
        );
        insta::assert_snapshot!(rendered);
    });
}

/// Lines (1-based) marked `#~ error` (this line) or `#~^ error` (the line above) in a fixture.
fn marked_lines(source: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    for (i, text) in source.lines().enumerate() {
        if text.contains("#~^ error") {
            lines.push(i);
        } else if text.contains("#~ error") {
            lines.push(i + 1);
        }
    }
    lines.sort_unstable();
    lines.dedup();
    lines
}

/// No consequential errors: every error fixture marks the lines that are wrong (`#~ error`),
/// and the compiler reports an error on each of those lines and on no other. A note may point
/// anywhere (a first definition, a use of a bad binding).
#[test]
fn errors_only_on_marked_lines() {
    let mut wrong = Vec::new();
    insta::glob!("fixtures/errors", "*.snet", |path| {
        let source = std::fs::read_to_string(path).expect("fixture is readable");
        let (_, errors) = sparsec::compile_source("t", &source);
        let line_of = |byte: u32| {
            1 + source.as_bytes()[..(byte as usize).min(source.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
        };
        let mut reported: Vec<usize> = errors.iter().map(|d| line_of(d.span.start)).collect();
        reported.sort_unstable();
        reported.dedup();
        let marked = marked_lines(&source);
        if reported != marked {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            wrong.push(format!(
                "{}: errors on lines {reported:?}, marked {marked:?}",
                name.unwrap_or_default()
            ));
        }
    });
    assert!(
        wrong.is_empty(),
        "fixtures with errors on unmarked lines or marks without an error:\n{}",
        wrong.join("\n")
    );
}

/// Every stored snapshot belongs to a test, and to a model, fixture or pass input that it still
/// covers (what `cargo insta test --unreferenced=reject` checks, without needing cargo-insta
/// installed).
#[test]
fn no_orphan_snapshots() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/snapshots");
    let fixtures = root.join("tests/fixtures/errors");
    let pass_inputs = root.join("tests/passes");
    for entry in std::fs::read_dir(dir).expect("snapshot dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf-8");
        assert!(
            !name.ends_with(".new"),
            "pending snapshot {name}: run `cargo insta review`"
        );
        // `tests/cli.rs` names its snapshots: each must still be named there.
        if let Some(snapshot) = name.strip_prefix("cli__") {
            let cli =
                std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli.rs"))
                    .expect("tests/cli.rs");
            let quoted = format!("\"{}\"", snapshot.trim_end_matches(".snap"));
            assert!(
                cli.contains(&quoted),
                "snapshot {name} has no test in cli.rs"
            );
            continue;
        }
        let (prefix, file) = name
            .trim_end_matches(".snap")
            .split_once('@')
            .unwrap_or_else(|| panic!("unexpected file {name} in tests/snapshots"));
        let model = file.trim_end_matches(".snet");
        match prefix {
            "snapshots__emit_ir" | "optimize__emit_opt_ir" | "optimize__emit_plan" => assert!(
                common::SNAPSHOT_MODELS.contains(&model),
                "snapshot {name}: {model} is not in common::SNAPSHOT_MODELS"
            ),
            "cuda__emit_cuda" => assert!(
                common::CUDA_SNAPSHOT_MODELS.contains(&model),
                "snapshot {name}: {model} is not in common::CUDA_SNAPSHOT_MODELS"
            ),
            "snapshots__diagnostics" => assert!(
                fixtures.join(file).exists(),
                "snapshot {name} has no fixture"
            ),
            // `<pass>__<file>`: the input `tests/passes/<pass>/<file>`.
            "passes__pass" => {
                let (pass, input) = file
                    .split_once("__")
                    .unwrap_or_else(|| panic!("snapshot {name}: no pass folder in its name"));
                assert!(
                    pass_inputs.join(pass).join(input).exists(),
                    "snapshot {name} has no input tests/passes/{pass}/{input}"
                );
            }
            _ => panic!("snapshot {name} has no test"),
        }
    }
}
