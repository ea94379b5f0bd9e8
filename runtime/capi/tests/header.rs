//! `include/sparsec.h` is what cbindgen generates from `src/lib.rs` today: a stale header fails
//! here. `SPARSEC_BLESS=1 cargo test -p sparsec-capi --test header` rewrites it.

use std::path::Path;

#[test]
fn header_is_current() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))?;
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()?;
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = dir.join("include/sparsec.h");
    if std::env::var_os("SPARSEC_BLESS").is_some() {
        std::fs::write(&path, &generated)?;
    }
    let checked_in = std::fs::read(&path)?;
    assert!(
        checked_in == generated,
        "{} is stale: run `SPARSEC_BLESS=1 cargo test -p sparsec-capi --test header` and commit it",
        path.display()
    );
    Ok(())
}
