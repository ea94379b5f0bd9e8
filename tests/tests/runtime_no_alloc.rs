//! `Session::run` allocates nothing after its first call at a batch size: a counting global
//! allocator watches the second and later calls (same batch, then a smaller one).

use sparsec::driver::{self, WeightsSource};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn run_allocates_nothing_after_the_first_call() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/models/sparsenet-bc-100-24.snet");
    let graph = driver::load(&path).expect("example compiles");
    let bytes = driver::compile_cpu(graph, &WeightsSource::Random(1), 4, true)
        .expect("compiles")
        .1;
    let model = runtime::Model::from_bytes(&bytes).expect("loads");
    let mut session = model.session();
    let x: Vec<f32> = (0..4 * 3 * 32 * 32)
        .map(|i| (i % 17) as f32 / 17.0)
        .collect();
    session.run(&x, 4).expect("first call");
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..3 {
        session.run(&x, 4).expect("runs");
    }
    session
        .run(&x[..2 * 3 * 32 * 32], 2)
        .expect("smaller batch");
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(
        after - before,
        0,
        "run allocated {} times after its first call",
        after - before
    );
}
