//! House rules checked on the source tree: every Rust file opens with a `//!` doc saying what
//! it owns; every `unsafe` block or impl has a `// SAFETY:` comment within the three lines
//! before it (or on the same line).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n == "target" || n == "snapshots")
            {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["ir", "compiler", "runtime", "tests", "examples", "benches"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    assert!(files.len() > 20, "found only {} Rust files", files.len());
    files
}

#[test]
fn every_module_opens_with_a_doc_comment() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            !text
                .lines()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.starts_with("//!"))
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` module doc: {missing:#?}"
    );
}

#[test]
fn every_unsafe_block_states_its_safety_argument() {
    let mut bad = Vec::new();
    for path in sources() {
        if path.ends_with("tidy.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let opens_unsafe =
                code.contains("unsafe {") || code.trim_start().starts_with("unsafe impl");
            if !opens_unsafe {
                continue;
            }
            let window = &lines[i.saturating_sub(3)..=i];
            if !window.iter().any(|l| l.contains("SAFETY")) {
                bad.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "unsafe without a `// SAFETY:` comment:\n{}",
        bad.join("\n")
    );
}
