//! The runtime links no compiler: its normal dependency tree (from `cargo tree`) holds no
//! cranelift, petgraph, clap, codespan-reporting, nor the `ir` or `sparsec` crates.

#[test]
fn runtime_dependency_tree_has_no_compiler_crate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "tree",
            "-p",
            "runtime",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"runtime"),
        "unexpected cargo tree output:\n{tree}"
    );
    for banned in [
        "cranelift-codegen",
        "cranelift-frontend",
        "petgraph",
        "clap",
        "codespan-reporting",
        "ir",
        "sparsec",
    ] {
        assert!(
            !crates.contains(&banned),
            "the runtime depends on {banned}:\n{tree}"
        );
    }
}
