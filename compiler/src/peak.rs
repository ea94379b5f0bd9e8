//! The machine's measured float32 FMA peak: threads each running 12 independent 8-wide AVX2
//! FMA chains, timed. Reports (`sparsec run --profile`, the peer benchmark) give every GFLOP/s
//! figure as a fraction of it, measured in the same run.
//!
//! Must not be used for anything but reports: it burns the CPU for the time it is given.

use std::hint::black_box;
use std::time::Instant;

/// `iters` rounds of 12 independent 8-wide FMAs (192 flops a round); returns a value that
/// depends on every accumulator.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_rounds(iters: u64) -> f32 {
    use std::arch::x86_64::{__m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_set1_ps};
    let a = _mm256_set1_ps(0.999_9);
    let b = _mm256_set1_ps(1e-3);
    let mut acc: [__m256; 12] = [_mm256_set1_ps(0.0); 12];
    for (i, r) in acc.iter_mut().enumerate() {
        *r = _mm256_set1_ps(i as f32 * 0.01);
    }
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut sum = acc[0];
    for r in &acc[1..] {
        sum = _mm256_add_ps(sum, *r);
    }
    let lanes: [f32; 8] = std::array::from_fn(|i| {
        // SAFETY: `__m256` is 8 packed f32 with no padding; reading lane `i < 8` of a local.
        unsafe { *(&raw const sum).cast::<f32>().add(i) }
    });
    lanes.iter().sum()
}

const FLOPS_PER_ROUND: f64 = 12.0 * 8.0 * 2.0;

/// GFLOP/s of `threads` threads each running the FMA loop for about `seconds` (best of 3);
/// `None` without AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
pub fn fma_peak(threads: usize, seconds: f64) -> Option<f64> {
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        return None;
    }
    let run = |iters: u64| -> f64 {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(move || {
                    // SAFETY: AVX2 and FMA were detected on this CPU just above.
                    black_box(unsafe { fma_rounds(black_box(iters)) })
                });
            }
        });
        start.elapsed().as_secs_f64()
    };
    // Calibrate to about `seconds` a try.
    let probe = 2_000_000;
    let t = run(probe).max(1e-4);
    let iters = ((probe as f64) * seconds / t).max(1.0) as u64;
    let best = (0..3).map(|_| run(iters)).fold(f64::INFINITY, f64::min);
    Some(FLOPS_PER_ROUND * iters as f64 * threads as f64 / best / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn fma_peak(_threads: usize, _seconds: f64) -> Option<f64> {
    None
}
