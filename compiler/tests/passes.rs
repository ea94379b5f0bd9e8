//! Pass-level tests in the manner of Cranelift's filetests: every `.snet` file in
//! `tests/passes/<pass>/` (the folder names a pass of `passes::PIPELINE`) is lowered, run
//! through the pipeline up to the pass before `<pass>` and then through `<pass>`
//! (`passes::optimize_until`, verifier after every pass), and the IR before and after that one
//! pass is snapshotted with its rewrite count (`snapshots/passes__pass@<pass>__<file>.snap`).
//! A file whose name starts with `no-` is a case the pass must leave alone (no rewrite, the IR
//! unchanged); every other file must be rewritten. Small models only: the whole suite runs in
//! well under a second.

use sparsec::passes::{self, PIPELINE};
use std::path::Path;

/// The snapshot text of one file, or why it could not be made.
fn run(path: &Path) -> Result<String, String> {
    let name = |p: Option<&std::ffi::OsStr>| {
        p.and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| format!("{}: not a UTF-8 path", path.display()))
    };
    let pass = name(path.parent().and_then(Path::file_name))?;
    let file = name(path.file_name())?;
    let at = PIPELINE
        .iter()
        .position(|&(n, _)| n == pass)
        .ok_or_else(|| format!("folder `{pass}` names no pass of the pipeline"))?;
    let source = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (graph, errors) = sparsec::compile_source(file.trim_end_matches(".snet"), &source);
    let raw = match graph {
        Some(g) if errors.is_empty() => g,
        _ => return Err(sparsec::diagnostics::render(&file, &source, &errors)),
    };
    let mut before = raw.clone();
    if at > 0 {
        passes::optimize_until(&mut before, PIPELINE[at - 1].0).map_err(|e| e.to_string())?;
    }
    let mut after = raw;
    let timings = passes::optimize_until(&mut after, &pass).map_err(|e| e.to_string())?;
    let rewrites = timings.last().map_or(0, |t| t.rewrites);
    let (before, after) = (ir::print::print(&before), ir::print::print(&after));
    if file.starts_with("no-") {
        if rewrites != 0 || before != after {
            return Err(format!(
                "{pass} must leave {file} alone, but made {rewrites} rewrites:\n{after}"
            ));
        }
    } else if rewrites == 0 || before == after {
        return Err(format!(
            "{pass} made {rewrites} rewrites on {file}; the file should exercise it"
        ));
    }
    Ok(format!(
        "pass {pass}: {rewrites} rewrites\n\n--- before\n{before}\n--- after\n{after}"
    ))
}

#[test]
fn pass() {
    insta::glob!("passes", "*/*.snet", |path| {
        let text = run(path).unwrap_or_else(|e| panic!("{e}"));
        insta::assert_snapshot!(text);
    });
}

/// Every pass of the pipeline has a folder of inputs, and every folder names a pass.
#[test]
fn every_pass_has_a_folder() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/passes");
    let mut folders: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    folders.sort();
    let mut names: Vec<String> = PIPELINE.iter().map(|&(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(folders, names);
}

#[test]
fn optimize_until_an_unknown_pass_is_an_error_naming_the_pipeline() {
    let (graph, errors) = sparsec::compile_source("m", "input [3, 8, 8]\nstem { relu() }\n");
    assert!(errors.is_empty(), "{errors:?}");
    let mut graph = graph.unwrap_or_else(|| panic!("no graph without errors"));
    let err = passes::optimize_until(&mut graph, "fold-everything")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("fold-everything") && err.contains("fold-batch-norm, fuse-relu-epilogue"),
        "{err}"
    );
}
