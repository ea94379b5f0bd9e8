//! The runtime's contract on a real compiled model: hostile model.bin bytes are typed
//! `LoadError`s (never a panic, and nothing is mapped executable before validation passes),
//! a model for another target is refused, bad inputs are typed `RunError`s, NaN and infinity
//! propagate without crashing, one `Model` serves 8 threads with bit-identical results, and a
//! session's own threads never change a bit.

use proptest::prelude::*;
use runtime::format::{ModelFile, Writer};
use runtime::{LoadError, Model, RunError};
use sparsec::driver::{self, WeightsSource};
use std::path::PathBuf;
use std::sync::OnceLock;

/// sparsenet-40-24 with random weights, max batch 8 (compiled once per test binary).
fn model_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/models/sparsenet-40-24.snet");
        let graph = driver::load(&path).expect("example compiles");
        driver::compile_cpu(graph, &WeightsSource::Random(3), 8, true)
            .expect("compiles to model.bin")
            .1
    })
}

fn input(batch: usize) -> Vec<f32> {
    (0..batch * 3 * 32 * 32)
        .map(|i| ((i * 2654435761) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// Rewrites a model.bin with an edited manifest (a valid checksum over the new bytes).
fn rewrite(edit: impl FnOnce(&mut runtime::format::Manifest)) -> Vec<u8> {
    let file = ModelFile::parse(model_bytes()).expect("valid");
    let mut m = file.manifest.clone();
    let mut w = Writer::new();
    let weights = w.add_section(file.weights());
    let consts = w.add_section(file.consts());
    let (code, entry) = file.cpu_code().expect("cpu code");
    let code = w.add_section(code);
    m.weights = weights;
    m.consts = consts;
    m.cpu_code = Some(runtime::format::CpuCode {
        code,
        entry_offset: entry,
    });
    edit(&mut m);
    w.finish(&m)
        .expect("the writer accepts the edited manifest")
}

#[test]
fn model_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Model>();
}

#[test]
fn another_architecture_is_refused_before_mapping() {
    let bytes = rewrite(|m| m.target.arch = "aarch64".into());
    let err = Model::from_bytes(&bytes).expect_err("foreign target");
    assert!(
        matches!(&err, LoadError::Architecture { file, machine } if file == "aarch64" && *machine == "x86_64"),
        "{err}"
    );
    let bytes = rewrite(|m| m.target.features = vec!["quantum-fma".into()]);
    let err = Model::from_bytes(&bytes).expect_err("unknown feature");
    assert!(
        matches!(
            err,
            LoadError::Target { .. } | LoadError::UnsupportedCpu { .. }
        ),
        "{err}"
    );
}

#[test]
fn inconsistent_descriptors_are_refused() {
    // Point a step at the wrong output buffer: sizes no longer match its descriptor.
    let bytes = rewrite(|m| {
        let last = m.steps.len() - 1;
        m.steps[0].output = m.steps[last].output;
    });
    match Model::from_bytes(&bytes) {
        Err(LoadError::Descriptor { .. } | LoadError::Step { .. }) => {}
        other => panic!("expected a descriptor error, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let model = Model::from_bytes(model_bytes()).expect("loads");
    let mut s = model.session();
    assert!(matches!(
        s.run(&input(1)[1..], 1),
        Err(RunError::InputLength { .. })
    ));
    assert!(matches!(
        s.run(&input(9), 9),
        Err(RunError::Batch { batch: 9, max: 8 })
    ));
    assert!(matches!(s.run(&[], 0), Err(RunError::ZeroBatch)));
    // The session still works after errors.
    assert_eq!(s.run(&input(1), 1).expect("runs").len(), 100);
}

#[test]
fn nan_and_infinity_propagate_without_crashing() {
    let model = Model::from_bytes(model_bytes()).expect("loads");
    let mut s = model.session();
    let mut x = input(2);
    x[5] = f32::NAN;
    x[3 * 32 * 32 + 7] = f32::INFINITY;
    let y = s.run(&x, 2).expect("runs").to_vec();
    assert!(
        y[..100].iter().all(|v| v.is_nan()),
        "a NaN input pixel reaches every logit of its row"
    );
    assert!(
        y[100..].iter().any(|v| !v.is_finite()),
        "an infinite input pixel is not silently dropped"
    );
}

#[test]
fn eight_threads_share_one_model_bit_identically() {
    let model = Model::from_bytes(model_bytes()).expect("loads");
    let x = input(4);
    let want = model.session().run(&x, 4).expect("runs").to_vec();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let mut s = model.session();
                    (0..5)
                        .map(|_| s.run(&x, 4).expect("runs").to_vec())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for got in h.join().expect("thread") {
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                );
            }
        }
    });
}

/// Every way a session can split work gives the same bits: 1 thread; batches smaller than the
/// team (each convolution split between threads, in the batch arena); batches at least as large
/// (images tiled over the threads' own arenas, claimed in any order). Checked against one
/// thread's batch-1 rows, for teams of 1 to 4 and batches 1 to 8, reusing each session.
#[test]
fn thread_counts_and_batch_splits_agree_bit_for_bit() {
    let model = Model::from_bytes(model_bytes()).expect("loads");
    let x = input(8);
    let classes = model.output().shape[0] as usize;
    let mut single = model.session_with_threads(1);
    let rows: Vec<Vec<f32>> = (0..8)
        .map(|i| {
            let one = &x[i * 3 * 32 * 32..][..3 * 32 * 32];
            single.run(one, 1).expect("runs").to_vec()
        })
        .collect();
    for threads in 1..=4 {
        let mut s = model.session_with_threads(threads);
        assert_eq!(s.threads(), threads);
        for batch in [1, 2, 3, 5, 8, 1, 7] {
            let got = s.run(&x[..batch * 3 * 32 * 32], batch).expect("runs");
            assert_eq!(got.len(), batch * classes);
            for (i, row) in got.chunks_exact(classes).enumerate() {
                assert!(
                    row.iter()
                        .zip(&rows[i])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{threads} threads, batch {batch}: row {i} differs from one thread's"
                );
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Damage {
    Truncate(usize),
    Flip(usize, u8),
    Splice(usize, usize, usize),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Truncations, byte flips and splices of a real model.bin: every one is a LoadError.
    #[test]
    fn damaged_model_bytes_are_load_errors(d in prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(a, x)| Damage::Flip(a, x)),
        (any::<usize>(), any::<usize>(), 1usize..64).prop_map(|(a, b, n)| Damage::Splice(a, b, n)),
    ]) {
        let mut bytes = model_bytes().to_vec();
        let len = bytes.len();
        match d {
            Damage::Truncate(a) => bytes.truncate(a % len),
            Damage::Flip(a, x) => bytes[a % len] ^= x,
            Damage::Splice(a, b, n) => {
                let from = a % len;
                let to = b % len;
                let chunk: Vec<u8> = bytes[from..(from + n).min(len)].to_vec();
                bytes.splice(to..to, chunk);
            }
        }
        prop_assert!(Model::from_bytes(&bytes).is_err());
    }
}

/// Default sessions share one process-wide budget of worker threads (the cores less one): a
/// second session beside a running one gets only the workers left, and the results are the
/// same bits. (Other tests' sessions may hold workers too, so only the sum is bounded.)
#[test]
fn default_sessions_share_the_process_thread_budget() {
    let model = Model::from_bytes(model_bytes()).expect("loads");
    let x = input(1);
    let mut a = model.session();
    let want = a.run(&x, 1).expect("runs").to_vec();
    let mut b = model.session();
    let got = b.run(&x, 1).expect("runs").to_vec();
    assert_eq!(want, got);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        a.threads() + b.threads() <= cores + 1,
        "{} + {} threads on {cores} cores",
        a.threads(),
        b.threads()
    );
    drop(a);
    let mut c = model.session();
    assert_eq!(c.run(&x, 1).expect("runs"), &want[..]);
}
