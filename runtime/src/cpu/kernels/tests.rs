//! Kernel tests: every kernel (portable, AVX2 or NEON, team) against an f64 reference on random
//! shapes and on the example models' layers, the detected kernels against the portable ones,
//! the descriptor checks, packing, and the throughput measurements docs/benchmarks quotes
//! (`conv_throughput`).

use super::*;
use std::time::Instant;

/// The same rule as `ir::interp::relative_error`: `‖got − want‖₂ / ‖want‖₂`.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "output lengths differ");
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        diff += (f64::from(g) - w).powi(2);
        norm += w * w;
    }
    if diff == 0.0 {
        0.0
    } else {
        (diff / norm).sqrt()
    }
}

/// The tolerance of every comparison with the f64 reference (false for NaN).
fn within_tolerance(err: f64) -> bool {
    err < 1e-5
}

/// A descriptor spoiled in one named way.
type Spoil<D> = (&'static str, fn(&mut D));

/// xorshift64*: deterministic test data without dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

/// The kernel tables under test, named: the portable one always, and the detected one (the
/// AVX2 one where the CPU has it, the NEON one on aarch64). Never empty, so no test can pass by
/// skipping.
fn tables() -> Vec<(&'static str, [usize; abi::KERNEL_COUNT])> {
    let portable = portable_kernel_table();
    let detected = kernel_table();
    if detected == portable {
        eprintln!("note: no AVX2+FMA or NEON kernels on this CPU: only the portable kernels run");
        vec![("portable", portable)]
    } else {
        vec![("portable", portable), (kernel_variant(), detected)]
    }
}

fn conv_kernel(t: &[usize; abi::KERNEL_COUNT]) -> abi::ConvKernel {
    // SAFETY: the table holds a `ConvKernel` at `KERNEL_CONV`.
    unsafe { std::mem::transmute::<usize, abi::ConvKernel>(t[abi::KERNEL_CONV]) }
}

fn pool_kernel(t: &[usize; abi::KERNEL_COUNT]) -> abi::PoolKernel {
    // SAFETY: the table holds a `PoolKernel` at `KERNEL_POOL`.
    unsafe { std::mem::transmute::<usize, abi::PoolKernel>(t[abi::KERNEL_POOL]) }
}

fn linear_kernel(t: &[usize; abi::KERNEL_COUNT]) -> abi::LinearKernel {
    // SAFETY: the table holds a `LinearKernel` at `KERNEL_LINEAR`.
    unsafe { std::mem::transmute::<usize, abi::LinearKernel>(t[abi::KERNEL_LINEAR]) }
}

/// A weights section under construction: arrays at 64-byte-aligned offsets.
#[derive(Default)]
struct Section(Vec<f32>);

impl Section {
    fn push(&mut self, data: &[f32]) -> u64 {
        while !self.0.len().is_multiple_of(16) {
            self.0.push(f32::NAN);
        }
        let off = 4 * self.0.len() as u64;
        self.0.extend_from_slice(data);
        off
    }
    fn bytes(&self) -> u64 {
        4 * self.0.len() as u64
    }
}

/// Input pieces of one image, their channel counts and the combined input in f64 with the
/// prologue applied: `[c][h][w]`.
struct Pieces {
    data: Vec<Vec<f32>>,
    channels: Vec<u64>,
}

impl Pieces {
    fn random(rng: &mut Rng, sum: bool, n: usize, channels: usize, hw: usize) -> Pieces {
        let channels: Vec<u64> = if sum {
            vec![channels as u64; n]
        } else {
            // Split `channels` into `n` nonzero parts.
            let mut parts = vec![1u64; n];
            for _ in n..channels {
                parts[rng.next() as usize % n] += 1;
            }
            parts
        };
        let data = channels.iter().map(|&c| rng.vec(c as usize * hw)).collect();
        Pieces { data, channels }
    }
    fn abi(&self) -> Vec<Piece> {
        self.data
            .iter()
            .zip(&self.channels)
            .map(|(d, &channels)| Piece {
                ptr: d.as_ptr(),
                channels,
            })
            .collect()
    }
    fn combined(&self, sum: bool, pro: Option<(&[f32], &[f32])>, relu: bool) -> Vec<f64> {
        let mut x: Vec<f64> = if sum {
            let mut x = vec![0.0f64; self.data[0].len()];
            for d in &self.data {
                for (a, &v) in x.iter_mut().zip(d) {
                    *a += f64::from(v);
                }
            }
            x
        } else {
            self.data.iter().flatten().map(|&v| f64::from(v)).collect()
        };
        let channels = if sum {
            self.channels[0] as usize
        } else {
            self.channels.iter().sum::<u64>() as usize
        };
        let hw = x.len() / channels;
        for (c, plane) in x.chunks_exact_mut(hw).enumerate() {
            for v in plane {
                if let Some((s, t)) = pro {
                    *v = *v * f64::from(s[c]) + f64::from(t[c]);
                }
                if relu && *v < 0.0 {
                    *v = 0.0;
                }
            }
        }
        x
    }
}

struct ConvCase {
    desc: ConvDesc,
    section: Section,
    pieces: Pieces,
    want: Vec<f64>,
}

/// A random convolution (or the given shape) and its f64 reference output.
#[expect(clippy::too_many_arguments, reason = "a test's shape, spelled out")]
fn conv_case(
    rng: &mut Rng,
    ic: usize,
    hw: (u32, u32),
    oc: u32,
    k: u32,
    stride: u32,
    pad: u32,
    n_pieces: usize,
    sum: bool,
    flags: u32,
) -> ConvCase {
    let (ih, iw) = hw;
    let oh = (ih + 2 * pad - k) / stride + 1;
    let ow = (iw + 2 * pad - k) / stride + 1;
    let mut desc = ConvDesc {
        in_channels: ic as u32,
        in_h: ih,
        in_w: iw,
        out_channels: oc,
        out_h: oh,
        out_w: ow,
        kernel_h: k,
        kernel_w: k,
        stride_h: stride,
        stride_w: stride,
        pad_h: pad,
        pad_w: pad,
        combine: if sum {
            abi::COMBINE_SUM
        } else {
            abi::COMBINE_CONCAT
        },
        flags,
        n_pieces: n_pieces as u32,
        ..ConvDesc::default()
    };
    let (ih, iw, oc, k, stride, pad) = (
        ih as usize,
        iw as usize,
        oc as usize,
        k as usize,
        stride as usize,
        pad as usize,
    );
    let (oh, ow) = (oh as usize, ow as usize);
    let pieces = Pieces::random(rng, sum, n_pieces, ic, ih * iw);
    let weight = rng.vec(oc * ic * k * k);
    let bias = rng.vec(oc);
    let scale = rng.vec(ic);
    let shift = rng.vec(ic);
    let mut section = Section::default();
    desc.weight_off = section.push(&pack_conv_weights(&desc, &weight));
    if flags & abi::FLAG_BIAS != 0 {
        desc.bias_off = section.push(&bias);
    }
    if flags & abi::FLAG_PROLOGUE != 0 {
        desc.scale_off = section.push(&scale);
        desc.shift_off = section.push(&shift);
    }
    let pro = (flags & abi::FLAG_PROLOGUE != 0).then_some((&scale[..], &shift[..]));
    let x = pieces.combined(sum, pro, flags & abi::FLAG_PROLOGUE_RELU != 0);
    let mut want = vec![0.0f64; oc * oh * ow];
    for o in 0..oc {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = if flags & abi::FLAG_BIAS != 0 {
                    f64::from(bias[o])
                } else {
                    0.0
                };
                for c in 0..ic {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * stride + ky).wrapping_sub(pad);
                            let ix = (ox * stride + kx).wrapping_sub(pad);
                            if iy < ih && ix < iw {
                                let wv = weight[((o * ic + c) * k + ky) * k + kx];
                                s += f64::from(wv) * x[(c * ih + iy) * iw + ix];
                            }
                        }
                    }
                }
                if flags & abi::FLAG_RELU != 0 && s < 0.0 {
                    s = 0.0;
                }
                want[(o * oh + oy) * ow + ox] = s;
            }
        }
    }
    ConvCase {
        desc,
        section,
        pieces,
        want,
    }
}

/// Runs a case's convolution with `kernel`, checking the descriptor first.
fn run_conv(kernel: abi::ConvKernel, case: &ConvCase) -> Result<Vec<f32>, String> {
    validate_conv(&case.desc, case.section.bytes())?;
    let d = &case.desc;
    let mut out = vec![f32::NAN; (d.out_channels * d.out_h * d.out_w) as usize];
    let mut scratch = vec![f32::NAN; conv_scratch_bytes(d).div_ceil(4) as usize];
    let pieces = case.pieces.abi();
    // SAFETY: the descriptor is valid for this section, and every buffer has its size.
    let status = unsafe {
        kernel(
            d,
            pieces.as_ptr(),
            out.as_mut_ptr(),
            case.section.0.as_ptr().cast(),
            scratch.as_mut_ptr().cast(),
        )
    };
    if status != abi::STATUS_OK {
        return Err(format!("status {status}"));
    }
    Ok(out)
}

fn random_flags(rng: &mut Rng, known: u32) -> u32 {
    (rng.next() as u32) & known
}

#[test]
fn conv_matches_the_f64_reference() -> Result<(), String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let all = abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU | abi::FLAG_BIAS | abi::FLAG_RELU;
    let mut cases = Vec::new();
    for _ in 0..160 {
        let sum = rng.coin();
        let n_pieces = rng.range(1, 4) as usize;
        let ic = if sum {
            rng.range(1, 19) as usize
        } else {
            rng.range(n_pieces as u32, 19) as usize
        };
        let k = if rng.coin() { 1 } else { 3 };
        let (stride, pad) = (rng.range(1, 2), rng.range(0, 1));
        let ih = rng.range(k.max(1), 14);
        let iw = rng.range(k.max(1), 21);
        let oc = rng.range(1, 13);
        let flags = random_flags(&mut rng, all);
        cases.push(conv_case(
            &mut rng,
            ic,
            (ih, iw),
            oc,
            k,
            stride,
            pad,
            n_pieces,
            sum,
            flags,
        ));
    }
    // Real layer shapes: full tiles, flat 1x1, widths of 8, 7 and 32, output-channel tails.
    let f = abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU;
    for (ic, hw, oc, k, stride, pad, n) in [
        (48, (8, 8), 24, 3, 1, 1, 3),
        (96, (16, 16), 24, 3, 1, 1, 4),
        (37, (7, 7), 13, 3, 1, 1, 2),
        (64, (32, 32), 18, 1, 1, 0, 4),
        (40, (14, 14), 10, 1, 2, 0, 2),
        (3, (23, 23), 9, 7, 2, 3, 1),
        (5, (9, 11), 6, 3, 2, 1, 1),
        (24, (32, 32), 12, 3, 1, 1, 1),
        // Several bands: of pixels (flat), of rows, of strided rows, of single rows.
        (300, (20, 20), 7, 1, 1, 0, 3),
        (200, (24, 24), 8, 3, 1, 1, 4),
        (150, (30, 30), 5, 3, 2, 1, 2),
        (2000, (10, 10), 5, 3, 1, 1, 4),
    ] {
        cases.push(conv_case(&mut rng, ic, hw, oc, k, stride, pad, n, false, f));
    }
    for (name, table) in tables() {
        for (i, case) in cases.iter().enumerate() {
            let got = run_conv(conv_kernel(&table), case)?;
            let err = rel_err(&got, &case.want);
            if !within_tolerance(err) {
                return Err(format!(
                    "{name}: case {i}: relative error {err:e} for {:?}",
                    case.desc
                ));
            }
        }
    }
    Ok(())
}

/// Winograd F(2x2, 3x3) and F(4x4, 3x3) against the same f64 reference: every flag,
/// concatenated and summed pieces, one and several bands, output-channel tails; and which
/// flag the compiler picks for each shape.
#[test]
fn winograd_matches_the_f64_reference() -> Result<(), String> {
    let mut rng = Rng(0x5eed);
    let (w2, w4) = (abi::FLAG_WINOGRAD, abi::FLAG_WINOGRAD4);
    let (pro, pro_relu) = (abi::FLAG_PROLOGUE, abi::FLAG_PROLOGUE_RELU);
    let (bias, relu) = (abi::FLAG_BIAS, abi::FLAG_RELU);
    let mut cases = Vec::new();
    for (ic, hw, oc, n, sum, flags, w) in [
        (8, (2, 16), 1, 1, false, 0, w2),
        (24, (32, 32), 24, 3, false, pro | pro_relu, w4),
        (96, (16, 16), 13, 4, false, bias | relu, w4),
        (12, (6, 32), 7, 2, true, pro | bias, w2),
        (600, (16, 16), 5, 4, false, pro_relu, w4),
        (20, (8, 16), 6, 2, true, pro | pro_relu, w4),
        (16, (12, 16), 8, 1, false, bias, w2),
        (16, (8, 48), 8, 1, false, relu, w2),
        (40, (20, 48), 30, 2, false, pro | relu, w2),
        (8, (4, 32), 1, 1, false, 0, w4),
        (96, (32, 32), 24, 4, false, pro | pro_relu | bias, w4),
        (12, (8, 64), 7, 2, true, pro | bias | relu, w4),
        (300, (12, 32), 9, 3, false, pro_relu | relu, w4),
    ] {
        let case = conv_case(&mut rng, ic, hw, oc, 3, 1, 1, n, sum, flags | w);
        let plain = ConvDesc { flags, ..case.desc };
        assert_eq!(winograd_flag(&plain, 4), w, "{:?}", case.desc);
        assert_eq!(winograd_flag(&plain, 2), w2, "{:?}", case.desc);
        assert_eq!(winograd_flag(&plain, 0), 0, "{:?}", case.desc);
        cases.push(case);
    }
    for (name, table) in tables() {
        for (i, case) in cases.iter().enumerate() {
            let got = run_conv(conv_kernel(&table), case)?;
            let err = rel_err(&got, &case.want);
            if !within_tolerance(err) {
                return Err(format!(
                    "{name}: winograd case {i}: relative error {err:e} for {:?}",
                    case.desc
                ));
            }
        }
    }
    // Not eligible for either: odd height, width not a multiple of 16, stride 2, 1x1, too
    // few channels. Not for F(4x4): height not a multiple of 4, width not one of 32 (or 16
    // with a height that is a multiple of 8).
    for (ic, hw, k, stride, flags) in [
        (16, (7, 16), 3, 1, w2 | w4),
        (16, (8, 24), 3, 1, w2 | w4),
        (16, (16, 16), 3, 2, w2 | w4),
        (16, (16, 16), 1, 1, w2 | w4),
        (4, (16, 16), 3, 1, w2 | w4),
        (16, (6, 32), 3, 1, w4),
        (16, (12, 16), 3, 1, w4),
        (16, (8, 48), 3, 1, w4),
    ] {
        let pad = if k == 3 { 1 } else { 0 };
        let case = conv_case(&mut rng, ic, hw, 4, k, stride, pad, 1, false, 0);
        if flags & w2 != 0 {
            assert_eq!(winograd_flag(&case.desc, 4), 0, "{:?}", case.desc);
        }
        for w in [w2, w4] {
            if flags & w != 0 {
                let d = ConvDesc {
                    flags: w,
                    ..case.desc
                };
                assert!(validate_conv(&d, 1 << 30).is_err(), "{d:?}");
            }
        }
    }
    // Both flags at once are inconsistent, even on a shape both take.
    let case = conv_case(&mut rng, 16, (32, 32), 4, 3, 1, 1, 1, false, 0);
    let d = ConvDesc {
        flags: w2 | w4,
        ..case.desc
    };
    assert!(validate_conv(&d, 1 << 30).is_err());
    Ok(())
}

#[test]
fn conv_pads_after_the_prologue() -> Result<(), String> {
    // One 1x1 input 0, prologue 0 * 2 + 1 = 1, a 3x3 window of ones with pad 1: only the
    // centre tap sees 1, the 8 padded taps see 0 (not the prologue of 0).
    let desc = ConvDesc {
        in_channels: 1,
        in_h: 1,
        in_w: 1,
        out_channels: 1,
        out_h: 1,
        out_w: 1,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 1,
        stride_w: 1,
        pad_h: 1,
        pad_w: 1,
        flags: abi::FLAG_PROLOGUE,
        n_pieces: 1,
        ..ConvDesc::default()
    };
    let mut section = Section::default();
    let mut d = desc;
    d.weight_off = section.push(&pack_conv_weights(&desc, &[1.0; 9]));
    d.scale_off = section.push(&[2.0]);
    d.shift_off = section.push(&[1.0]);
    let case = ConvCase {
        desc: d,
        section,
        pieces: Pieces {
            data: vec![vec![0.0]],
            channels: vec![1],
        },
        want: vec![1.0],
    };
    for (name, table) in tables() {
        assert_eq!(run_conv(conv_kernel(&table), &case)?, [1.0], "{name}");
    }
    Ok(())
}

struct PoolCase {
    desc: PoolDesc,
    section: Section,
    pieces: Pieces,
    want: Vec<f64>,
}

fn random_pool(rng: &mut Rng) -> PoolCase {
    let sum = rng.coin();
    let n_pieces = rng.range(1, 4) as usize;
    let c = rng.range(n_pieces as u32, 9) as usize;
    let global = rng.range(0, 3) == 0;
    let max = rng.coin();
    // 2x2 (transitions), 3x3 (stems, strided or not), 1x1 stride 1 (the identity that
    // materialises a graph output).
    let (k, stride) = match rng.range(0, 2) {
        0 => (2, 2),
        1 => (3, rng.range(1, 2)),
        _ => (1, 1),
    };
    let pad = if k == 3 { rng.range(0, 1) } else { 0 };
    let (ih, iw) = (rng.range(k, 12) as usize, rng.range(k, 12) as usize);
    let flags = random_flags(
        rng,
        abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU | abi::FLAG_RELU,
    ) | if global { abi::FLAG_GLOBAL } else { 0 };
    let window = (k as usize, stride as usize, pad as usize);
    pool_case(rng, c, (ih, iw), window, max, n_pieces, sum, flags)
}

/// A pool of this shape (window, stride, padding; `FLAG_GLOBAL` in `flags` for a global one)
/// on random input, and its f64 reference output.
#[expect(clippy::too_many_arguments, reason = "a test's shape, spelled out")]
fn pool_case(
    rng: &mut Rng,
    c: usize,
    (ih, iw): (usize, usize),
    (k, s, p): (usize, usize, usize),
    max: bool,
    n_pieces: usize,
    sum: bool,
    flags: u32,
) -> PoolCase {
    let global = flags & abi::FLAG_GLOBAL != 0;
    let (oh, ow) = if global {
        (1, 1)
    } else {
        ((ih + 2 * p - k) / s + 1, (iw + 2 * p - k) / s + 1)
    };
    let mut desc = PoolDesc {
        channels: c as u32,
        in_h: ih as u32,
        in_w: iw as u32,
        out_h: oh as u32,
        out_w: ow as u32,
        kernel_h: k as u32,
        kernel_w: k as u32,
        stride_h: s as u32,
        stride_w: s as u32,
        pad_h: p as u32,
        pad_w: p as u32,
        kind: if max { abi::POOL_MAX } else { abi::POOL_AVG },
        combine: if sum {
            abi::COMBINE_SUM
        } else {
            abi::COMBINE_CONCAT
        },
        flags,
        n_pieces: n_pieces as u32,
        ..PoolDesc::default()
    };
    let pieces = Pieces::random(rng, sum, n_pieces, c, ih * iw);
    let (scale, shift) = (rng.vec(c), rng.vec(c));
    let mut section = Section::default();
    if flags & abi::FLAG_PROLOGUE != 0 {
        desc.scale_off = section.push(&scale);
        desc.shift_off = section.push(&shift);
    }
    let pro = (flags & abi::FLAG_PROLOGUE != 0).then_some((&scale[..], &shift[..]));
    let x = pieces.combined(sum, pro, flags & abi::FLAG_PROLOGUE_RELU != 0);
    let mut want = Vec::new();
    for plane in x.chunks_exact(ih * iw) {
        if global {
            want.push(if max {
                plane.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            } else {
                plane.iter().sum::<f64>() / plane.len() as f64
            });
        } else {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut inside = Vec::new();
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * s + ky).wrapping_sub(p);
                            let ix = (ox * s + kx).wrapping_sub(p);
                            if iy < ih && ix < iw {
                                inside.push(plane[iy * iw + ix]);
                            }
                        }
                    }
                    want.push(if max {
                        inside.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    } else {
                        inside.iter().sum::<f64>() / (k * k) as f64
                    });
                }
            }
        }
    }
    if flags & abi::FLAG_RELU != 0 {
        want.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    PoolCase {
        desc,
        section,
        pieces,
        want,
    }
}

fn run_pool(kernel: abi::PoolKernel, case: &PoolCase) -> Result<Vec<f32>, String> {
    validate_pool(&case.desc, case.section.bytes())?;
    let d = &case.desc;
    let mut out = vec![f32::NAN; (d.channels * d.out_h * d.out_w) as usize];
    let mut scratch = vec![f32::NAN; pool_scratch_bytes(d).div_ceil(4) as usize];
    let pieces = case.pieces.abi();
    // SAFETY: the descriptor is valid for this section, and every buffer has its size.
    let status = unsafe {
        kernel(
            d,
            pieces.as_ptr(),
            out.as_mut_ptr(),
            case.section.0.as_ptr().cast(),
            scratch.as_mut_ptr().cast(),
        )
    };
    if status != abi::STATUS_OK {
        return Err(format!("status {status}"));
    }
    Ok(out)
}

#[test]
fn pool_matches_the_f64_reference() -> Result<(), String> {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let cases: Vec<PoolCase> = (0..200).map(|_| random_pool(&mut rng)).collect();
    for (name, table) in tables() {
        for (i, case) in cases.iter().enumerate() {
            let got = run_pool(pool_kernel(&table), case)?;
            let err = rel_err(&got, &case.want);
            if !within_tolerance(err) {
                return Err(format!(
                    "{name}: case {i}: relative error {err:e} for {:?}",
                    case.desc
                ));
            }
        }
    }
    Ok(())
}

struct LinearCase {
    desc: LinearDesc,
    section: Section,
    pieces: Pieces,
    want: Vec<f64>,
}

fn random_linear(rng: &mut Rng) -> LinearCase {
    let sum = rng.coin();
    let n_pieces = rng.range(1, 4) as usize;
    let ic = rng.range(n_pieces as u32, 70) as usize;
    let out = rng.range(1, 20) as usize;
    let global = rng.coin();
    let (ih, iw) = if global {
        (rng.range(1, 8) as usize, rng.range(1, 8) as usize)
    } else {
        (1, 1)
    };
    let flags = random_flags(
        rng,
        abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU | abi::FLAG_BIAS | abi::FLAG_RELU,
    ) | if global { abi::FLAG_GLOBAL } else { 0 };
    linear_case(rng, ic, (ih, iw), out, n_pieces, sum, flags)
}

/// A linear layer of this shape on random input (`FLAG_GLOBAL` in `flags` averages an `ih x
/// iw` input first), and its f64 reference output.
fn linear_case(
    rng: &mut Rng,
    ic: usize,
    (ih, iw): (usize, usize),
    out: usize,
    n_pieces: usize,
    sum: bool,
    flags: u32,
) -> LinearCase {
    let mut desc = LinearDesc {
        in_channels: ic as u32,
        in_h: ih as u32,
        in_w: iw as u32,
        out_features: out as u32,
        combine: if sum {
            abi::COMBINE_SUM
        } else {
            abi::COMBINE_CONCAT
        },
        flags,
        n_pieces: n_pieces as u32,
        ..LinearDesc::default()
    };
    let pieces = Pieces::random(rng, sum, n_pieces, ic, ih * iw);
    let (weight, bias) = (rng.vec(out * ic), rng.vec(out));
    let (scale, shift) = (rng.vec(ic), rng.vec(ic));
    let mut section = Section::default();
    desc.weight_off = section.push(&weight);
    if flags & abi::FLAG_BIAS != 0 {
        desc.bias_off = section.push(&bias);
    }
    if flags & abi::FLAG_PROLOGUE != 0 {
        desc.scale_off = section.push(&scale);
        desc.shift_off = section.push(&shift);
    }
    let pro = (flags & abi::FLAG_PROLOGUE != 0).then_some((&scale[..], &shift[..]));
    let x = pieces.combined(sum, pro, flags & abi::FLAG_PROLOGUE_RELU != 0);
    let feat: Vec<f64> = x
        .chunks_exact(ih * iw)
        .map(|p| p.iter().sum::<f64>() / p.len() as f64)
        .collect();
    let want = (0..out)
        .map(|o| {
            let b = if flags & abi::FLAG_BIAS != 0 {
                f64::from(bias[o])
            } else {
                0.0
            };
            let v = b + weight[o * ic..][..ic]
                .iter()
                .zip(&feat)
                .map(|(&w, &x)| f64::from(w) * x)
                .sum::<f64>();
            if flags & abi::FLAG_RELU != 0 {
                v.max(0.0)
            } else {
                v
            }
        })
        .collect();
    LinearCase {
        desc,
        section,
        pieces,
        want,
    }
}

fn run_linear(kernel: abi::LinearKernel, case: &LinearCase) -> Result<Vec<f32>, String> {
    validate_linear(&case.desc, case.section.bytes())?;
    let d = &case.desc;
    let mut out = vec![f32::NAN; d.out_features as usize];
    let mut scratch = vec![f32::NAN; linear_scratch_bytes(d).div_ceil(4) as usize];
    let pieces = case.pieces.abi();
    // SAFETY: the descriptor is valid for this section, and every buffer has its size.
    let status = unsafe {
        kernel(
            d,
            pieces.as_ptr(),
            out.as_mut_ptr(),
            case.section.0.as_ptr().cast(),
            scratch.as_mut_ptr().cast(),
        )
    };
    if status != abi::STATUS_OK {
        return Err(format!("status {status}"));
    }
    Ok(out)
}

#[test]
fn linear_matches_the_f64_reference() -> Result<(), String> {
    let mut rng = Rng(0x0bad_cafe_f00d_0001);
    let cases: Vec<LinearCase> = (0..200).map(|_| random_linear(&mut rng)).collect();
    for (name, table) in tables() {
        for (i, case) in cases.iter().enumerate() {
            let got = run_linear(linear_kernel(&table), case)?;
            let err = rel_err(&got, &case.want);
            if !within_tolerance(err) {
                return Err(format!(
                    "{name}: case {i}: relative error {err:e} for {:?}",
                    case.desc
                ));
            }
        }
    }
    Ok(())
}

/// One comparison of [`detected_kernels_match_portable_on_model_layers`]: `got` (kernels
/// `name`) against the f64 reference and against the portable kernels' `base`.
fn compare(what: &str, name: &str, got: &[f32], base: &[f32], want: &[f64]) -> Result<(), String> {
    let err = rel_err(got, want);
    let base64: Vec<f64> = base.iter().map(|&v| f64::from(v)).collect();
    let vs = rel_err(got, &base64);
    eprintln!("{what}, {name}: vs f64 {err:.2e}, vs portable {vs:.2e}");
    if !within_tolerance(err) || !within_tolerance(vs) {
        return Err(format!(
            "{what}, {name}: relative error {err:e} (vs portable {vs:e})"
        ));
    }
    Ok(())
}

/// The layers of the example models through every kernel table (NEON on aarch64, AVX2 on
/// x86-64, portable), each against the f64 reference and against the portable kernels, the
/// errors printed: the input packing with the BN-ReLU prologue (concatenated and summed
/// pieces, stride 1 and 2), 1x1 and 3x3 convolutions direct and Winograd, the transitions' 2x2 pools, the
/// global pool, the identity and a stem's 3x3 maximum, and the head.
#[test]
fn detected_kernels_match_portable_on_model_layers() -> Result<(), String> {
    let mut rng = Rng(0xa76);
    let bn = abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU;
    let (bias, relu, global) = (abi::FLAG_BIAS, abi::FLAG_RELU, abi::FLAG_GLOBAL);
    let (w2, w4) = (abi::FLAG_WINOGRAD, abi::FLAG_WINOGRAD4);
    let convs = [
        (
            "conv 1x1 120->48 16x16, 5 pieces",
            (120, (16, 16), 48, 1, 1, 0, 5, false, bn | bias),
        ),
        (
            "conv 1x1 24->12 32x32, sum of 3",
            (24, (32, 32), 12, 1, 1, 0, 3, true, bn),
        ),
        (
            "conv 3x3 stem 3->24 32x32",
            (3, (32, 32), 24, 3, 1, 1, 1, false, bias | relu),
        ),
        (
            "conv 3x3 48->12 32x32 F(2x2)",
            (48, (32, 32), 12, 3, 1, 1, 2, false, bn | w2),
        ),
        (
            "conv 3x3 48->12 16x16 F(4x4)",
            (48, (16, 16), 12, 3, 1, 1, 3, false, bn | w4),
        ),
        (
            "conv 3x3 48->12 32x32 F(4x4)",
            (48, (32, 32), 12, 3, 1, 1, 1, true, bn | w4),
        ),
        (
            "conv 3x3 48->12 8x8 direct",
            (48, (8, 8), 12, 3, 1, 1, 2, false, bn),
        ),
        (
            "conv 3x3/2 24->12 31x31",
            (24, (31, 31), 12, 3, 2, 1, 2, false, bn),
        ),
    ]
    .map(|(what, (ic, hw, oc, k, s, p, n, sum, flags))| {
        (
            what,
            conv_case(&mut rng, ic, hw, oc, k, s, p, n, sum, flags),
        )
    });
    let pools = [
        (
            "avg 2x2 32x32, 4 pieces",
            (60, (32, 32), (2, 2, 0), false, 4, false, bn),
        ),
        (
            "max 2x2 16x16",
            (30, (16, 16), (2, 2, 0), true, 2, false, bn),
        ),
        (
            "avg 2x2 17x15, sum",
            (13, (17, 15), (2, 2, 0), false, 2, true, bn | relu),
        ),
        (
            "global avg 8x8",
            (90, (8, 8), (1, 1, 0), false, 3, false, bn | global),
        ),
        (
            "global max 7x9",
            (20, (7, 9), (1, 1, 0), true, 1, false, bn | global),
        ),
        ("identity 8x8", (20, (8, 8), (1, 1, 0), false, 2, false, bn)),
        (
            "max 3x3/2 15x15",
            (8, (15, 15), (3, 2, 1), true, 1, false, bn),
        ),
    ]
    .map(|(what, (c, hw, window, max, n, sum, flags))| {
        (what, pool_case(&mut rng, c, hw, window, max, n, sum, flags))
    });
    let heads = [
        (
            "head 342x8x8->10",
            (342, (8, 8), 10, 4, false, bn | bias | global),
        ),
        (
            "head 100x9x9->100, sum",
            (100, (9, 9), 100, 2, true, bn | bias | global),
        ),
        ("linear 37->13", (37, (1, 1), 13, 1, false, bias | relu)),
    ]
    .map(|(what, (ic, hw, out, n, sum, flags))| {
        (what, linear_case(&mut rng, ic, hw, out, n, sum, flags))
    });
    let portable = portable_kernel_table();
    for (name, table) in tables() {
        for (what, case) in &convs {
            let got = run_conv(conv_kernel(&table), case)?;
            let base = run_conv(conv_kernel(&portable), case)?;
            compare(what, name, &got, &base, &case.want)?;
        }
        for (what, case) in &pools {
            let got = run_pool(pool_kernel(&table), case)?;
            let base = run_pool(pool_kernel(&portable), case)?;
            compare(what, name, &got, &base, &case.want)?;
        }
        for (what, case) in &heads {
            let got = run_linear(linear_kernel(&table), case)?;
            let base = run_linear(linear_kernel(&portable), case)?;
            compare(what, name, &got, &base, &case.want)?;
        }
    }
    Ok(())
}

/// Where the detected pooling kernels do the portable arithmetic (the prologue, the 2x2 and
/// other windows, the identity, the global maximum: all but the global average, summed in
/// another order), they give its values bit for bit.
#[test]
fn detected_pools_equal_portable_bit_for_bit() -> Result<(), String> {
    let mut rng = Rng(0xb17_b17);
    let portable = portable_kernel_table();
    let mut compared = 0;
    for _ in 0..120 {
        let case = random_pool(&mut rng);
        if case.desc.flags & abi::FLAG_GLOBAL != 0 && case.desc.kind == abi::POOL_AVG {
            continue;
        }
        let base = run_pool(pool_kernel(&portable), &case)?;
        for (name, table) in tables() {
            let got = run_pool(pool_kernel(&table), &case)?;
            if got != base {
                return Err(format!("{name}: {:?}: {got:?} != {base:?}", case.desc));
            }
        }
        compared += 1;
    }
    assert!(compared > 60, "only {compared} cases");
    Ok(())
}

#[test]
fn nan_propagates_through_max_pools() -> Result<(), String> {
    let mut rng = Rng(11);
    for flags in [0, abi::FLAG_GLOBAL] {
        let mut case = pool_case(&mut rng, 2, (8, 8), (2, 2, 0), true, 1, false, flags);
        // Channel 1, row 2, column 5: the 2x2 output (1, 2) of channel 1.
        case.pieces.data[0][64 + 2 * 8 + 5] = f32::NAN;
        let at = if flags == 0 { 16 + 4 + 2 } else { 1 };
        for (name, table) in tables() {
            let got = run_pool(pool_kernel(&table), &case)?;
            assert!(got[at].is_nan(), "{name}: {got:?}");
            assert_eq!(got.iter().filter(|v| v.is_nan()).count(), 1, "{name}");
        }
    }
    Ok(())
}

/// The NEON Winograd phase split (`ld2`/`ld4`) places every value where the portable one does,
/// and the NEON input transforms compute the portable ones' `V` (to rounding), on every kind
/// of layout: one or several bands, F(4x4) with two tile rows per vector of 8 (16x16).
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_winograd_split_and_input_transforms_match_portable() {
    assert!(std::arch::is_aarch64_feature_detected!("neon"));
    let mut rng = Rng(0x4e45_4f4e);
    for (m, ic, (h, w)) in [
        (2, 8, (4, 32)),
        (2, 9, (6, 48)),
        (2, 300, (32, 32)),
        (4, 8, (8, 32)),
        (4, 10, (16, 16)),
        (4, 8, (8, 64)),
    ] {
        let l = winograd::layout(m, ic, 6, h, h, w);
        let row = rng.vec(w);
        let mut want = vec![0.5f32; l.row];
        let mut got = want.clone();
        winograd::split_portable(m, &row, &mut want);
        // SAFETY: the CPU has NEON (asserted above).
        unsafe {
            if m == 2 {
                winograd::neon::split2(&row, &mut got);
            } else {
                winograd::neon::split4(&row, &mut got);
            }
        }
        assert_eq!(got, want, "split, m = {m}, width {w}");
        let mut want = rng.vec(l.scratch_len);
        let mut got = want.clone();
        winograd::transform_input(&mut want, &l, ic, l.rows);
        // SAFETY: the CPU has NEON (asserted above).
        unsafe {
            if m == 2 {
                winograd::neon::transform_input2(&mut got, &l, ic, l.rows);
            } else {
                winograd::neon::transform_input4(&mut got, &l, ic, l.rows);
            }
        }
        let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
        let err = rel_err(&got, &want);
        assert!(err < 1e-6, "input transform, m = {m}, {h}x{w}: {err:e}");
    }
}

#[test]
fn nan_propagates_through_relu_and_max() -> Result<(), String> {
    let mut rng = Rng(7);
    let mut case = conv_case(
        &mut rng,
        2,
        (3, 3),
        2,
        1,
        1,
        0,
        1,
        false,
        abi::FLAG_PROLOGUE_RELU | abi::FLAG_RELU,
    );
    case.pieces.data[0][4] = f32::NAN;
    for (name, table) in tables() {
        let got = run_conv(conv_kernel(&table), &case)?;
        assert!(got[4].is_nan() && got[9 + 4].is_nan(), "{name}: {got:?}");
        assert!(got.iter().filter(|v| v.is_nan()).count() == 2, "{name}");
    }
    Ok(())
}

fn valid_conv() -> (ConvDesc, u64) {
    let mut d = ConvDesc {
        in_channels: 8,
        in_h: 8,
        in_w: 8,
        out_channels: 6,
        out_h: 8,
        out_w: 8,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 1,
        stride_w: 1,
        pad_h: 1,
        pad_w: 1,
        combine: abi::COMBINE_CONCAT,
        flags: abi::FLAG_PROLOGUE | abi::FLAG_BIAS,
        n_pieces: 2,
        ..ConvDesc::default()
    };
    let w = 4 * packed_conv_weight_len(&d);
    d.bias_off = w.next_multiple_of(64);
    d.scale_off = d.bias_off + 64;
    d.shift_off = d.scale_off + 64;
    (d, d.shift_off + 32)
}

#[test]
fn validate_conv_rejects_inconsistent_descriptors() {
    let (good, len) = valid_conv();
    assert_eq!(validate_conv(&good, len), Ok(()));
    let bad: [Spoil<ConvDesc>; 13] = [
        ("zero in_channels", |d| d.in_channels = 0),
        ("zero out_channels", |d| d.out_channels = 0),
        ("zero stride", |d| d.stride_w = 0),
        ("zero kernel", |d| d.kernel_h = 0),
        ("out_h off by one", |d| d.out_h = 7),
        ("out_w for stride 2", |d| d.stride_w = 2),
        ("window larger than the input", |d| {
            (d.kernel_h, d.pad_h, d.out_h) = (11, 1, 0)
        }),
        ("no pieces", |d| d.n_pieces = 0),
        ("more pieces than channels", |d| d.n_pieces = 9),
        ("unknown combine", |d| d.combine = 2),
        ("global flag", |d| d.flags |= abi::FLAG_GLOBAL),
        ("misaligned bias", |d| d.bias_off += 4),
        ("shift past the end", |d| d.shift_off += 64),
    ];
    for (what, spoil) in bad {
        let mut d = good;
        spoil(&mut d);
        assert!(validate_conv(&d, len).is_err(), "{what} was accepted");
    }
    // Too short a section for the weights; a bias past the end only matters with its flag.
    assert!(validate_conv(&good, 4 * packed_conv_weight_len(&good) - 4).is_err());
    let mut d = good;
    d.flags = abi::FLAG_PROLOGUE;
    d.bias_off = u64::MAX;
    assert_eq!(validate_conv(&d, len), Ok(()));
    // Absurd sizes are rejected, never overflow.
    let mut d = good;
    (d.in_channels, d.out_channels) = (1 << 20, 1 << 20);
    assert!(validate_conv(&d, u64::MAX).is_err());
    d.in_channels = u32::MAX;
    assert!(validate_conv(&d, u64::MAX).is_err());
    assert_eq!(conv_scratch_bytes(&d), 0);
}

#[test]
fn validate_pool_and_linear_reject_inconsistent_descriptors() {
    let pool = PoolDesc {
        channels: 4,
        in_h: 8,
        in_w: 8,
        out_h: 4,
        out_w: 4,
        kernel_h: 2,
        kernel_w: 2,
        stride_h: 2,
        stride_w: 2,
        kind: abi::POOL_AVG,
        n_pieces: 1,
        flags: abi::FLAG_PROLOGUE,
        scale_off: 0,
        shift_off: 64,
        ..PoolDesc::default()
    };
    assert_eq!(validate_pool(&pool, 128), Ok(()));
    assert!(validate_pool(&pool, 64 + 12).is_err(), "shift past the end");
    let bad: [Spoil<PoolDesc>; 7] = [
        ("zero channels", |d| d.channels = 0),
        ("out_h off by one", |d| d.out_h = 3),
        ("unknown kind", |d| d.kind = 2),
        ("bias flag", |d| d.flags |= abi::FLAG_BIAS),
        ("global with a 4x4 output", |d| d.flags |= abi::FLAG_GLOBAL),
        ("zero stride", |d| d.stride_h = 0),
        ("misaligned scale", |d| d.scale_off = 16),
    ];
    for (what, spoil) in bad {
        let mut d = pool;
        spoil(&mut d);
        assert!(validate_pool(&d, 128).is_err(), "{what} was accepted");
    }
    let mut global = pool;
    global.flags |= abi::FLAG_GLOBAL;
    (global.out_h, global.out_w, global.kernel_h, global.stride_h) = (1, 1, 0, 0);
    assert_eq!(validate_pool(&global, 128), Ok(()));

    let linear = LinearDesc {
        in_channels: 16,
        in_h: 8,
        in_w: 8,
        out_features: 10,
        flags: abi::FLAG_GLOBAL | abi::FLAG_BIAS,
        n_pieces: 3,
        weight_off: 0,
        bias_off: 640,
        ..LinearDesc::default()
    };
    assert_eq!(validate_linear(&linear, 680), Ok(()));
    assert!(validate_linear(&linear, 679).is_err(), "bias past the end");
    let bad: [Spoil<LinearDesc>; 5] = [
        ("not global on 8x8", |d| d.flags &= !abi::FLAG_GLOBAL),
        ("zero out_features", |d| d.out_features = 0),
        ("zero in_h", |d| d.in_h = 0),
        ("unknown flag", |d| d.flags |= 1 << 7),
        ("prologue without room", |d| {
            d.flags |= abi::FLAG_PROLOGUE;
            (d.scale_off, d.shift_off) = (640, 704);
        }),
    ];
    for (what, spoil) in bad {
        let mut d = linear;
        spoil(&mut d);
        assert!(validate_linear(&d, 680).is_err(), "{what} was accepted");
    }
}

#[test]
fn kernels_reject_bad_calls_with_a_status() -> Result<(), String> {
    let mut rng = Rng(99);
    let case = conv_case(&mut rng, 6, (5, 5), 3, 3, 1, 1, 2, false, 0);
    let d = case.desc;
    let mut out = vec![0.0f32; 75];
    let mut scratch = vec![0.0f32; conv_scratch_bytes(&d) as usize / 4];
    let w: *const u8 = case.section.0.as_ptr().cast();
    for (name, table) in tables() {
        let conv = conv_kernel(&table);
        let call = |d: &ConvDesc, pieces: &[Piece], out: *mut f32, scratch: *mut f32| {
            // SAFETY: every non-null buffer has the size `d` asks for.
            unsafe { conv(d, pieces.as_ptr(), out, w, scratch.cast()) }
        };
        let good = case.pieces.abi();
        let (o, s) = (out.as_mut_ptr(), scratch.as_mut_ptr());
        assert_eq!(call(&d, &good, o, s), abi::STATUS_OK, "{name}");
        // The pieces' channels do not add up to in_channels.
        let mut pieces = good.clone();
        pieces[1].channels += 1;
        assert_eq!(
            call(&d, &pieces, o, s),
            abi::STATUS_BAD_DESCRIPTOR,
            "{name}"
        );
        // A null piece, output or scratch; a misaligned output.
        pieces = good.clone();
        pieces[0].ptr = std::ptr::null();
        assert_eq!(
            call(&d, &pieces, o, s),
            abi::STATUS_BAD_DESCRIPTOR,
            "{name}"
        );
        let null = std::ptr::null_mut();
        assert_eq!(
            call(&d, &good, null, s),
            abi::STATUS_BAD_DESCRIPTOR,
            "{name}"
        );
        assert_eq!(
            call(&d, &good, o, null),
            abi::STATUS_BAD_DESCRIPTOR,
            "{name}"
        );
        let skew = o.cast::<u8>().wrapping_add(1).cast::<f32>();
        assert_eq!(
            call(&d, &good, skew, s),
            abi::STATUS_BAD_DESCRIPTOR,
            "{name}"
        );
        // An inconsistent descriptor, and a null one.
        let mut bad = d;
        bad.out_h += 1;
        assert_eq!(
            call(&bad, &good, o, s),
            abi::STATUS_BAD_DESCRIPTOR,
            "{name}"
        );
        // SAFETY: a null descriptor is rejected before anything is read.
        let status = unsafe { conv(std::ptr::null(), good.as_ptr(), o, w, s.cast()) };
        assert_eq!(status, abi::STATUS_BAD_DESCRIPTOR, "{name}");
    }
    Ok(())
}

#[test]
fn packing_places_each_weight_once() {
    let d = ConvDesc {
        in_channels: 3,
        out_channels: 6,
        kernel_h: 2,
        kernel_w: 3,
        ..ConvDesc::default()
    };
    let w: Vec<f32> = (0..6 * 3 * 6).map(|i| i as f32 + 1.0).collect();
    let p = pack_conv_weights(&d, &w);
    assert_eq!(p.len() as u64, packed_conv_weight_len(&d));
    let ob = CONV_OC_BLOCK;
    for o in 0..6 {
        for i in 0..18 {
            assert_eq!(p[((o / ob) * 18 + i) * ob + o % ob], w[o * 18 + i]);
        }
    }
    let zeros = p.len() - w.len();
    assert_eq!(p.iter().filter(|&&v| v == 0.0).count(), zeros);
}

/// Not an assertion: GFLOP/s of the detected convolution on typical layers (run with
/// `cargo test --release -p runtime -- --nocapture conv_throughput`).
#[test]
fn conv_throughput() -> Result<(), String> {
    let mut rng = Rng(42);
    let f = abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU;
    for (name, table) in tables() {
        let (w2, w4) = (abi::FLAG_WINOGRAD, abi::FLAG_WINOGRAD4);
        for (what, ic, oc, k, pad, n, extra, hw) in [
            ("3x3 96->24 at 32x32", 96, 24, 3, 1, 4, 0, 32),
            (
                "3x3 96->24 at 32x32, Winograd F(2x2)",
                96,
                24,
                3,
                1,
                4,
                w2,
                32,
            ),
            (
                "3x3 96->24 at 32x32, Winograd F(4x4)",
                96,
                24,
                3,
                1,
                4,
                w4,
                32,
            ),
            (
                "3x3 96->24 at 16x16, Winograd F(2x2)",
                96,
                24,
                3,
                1,
                4,
                w2,
                16,
            ),
            (
                "3x3 96->24 at 16x16, Winograd F(4x4)",
                96,
                24,
                3,
                1,
                4,
                w4,
                16,
            ),
            ("1x1 384->96 at 32x32", 384, 96, 1, 0, 5, 0, 32),
            ("1x1 96->96 at 32x32", 96, 96, 1, 0, 4, 0, 32),
            ("1x1 96->96 at 16x16", 96, 96, 1, 0, 4, 0, 16),
            ("1x1 96->96 at 8x8", 96, 96, 1, 0, 4, 0, 8),
            ("1x1 300->48 at 32x32, 25 pieces", 300, 48, 1, 0, 25, 0, 32),
        ] {
            let case = conv_case(&mut rng, ic, (hw, hw), oc, k, 1, pad, n, false, f | extra);
            let kernel = conv_kernel(&table);
            run_conv(kernel, &case)?;
            let d = &case.desc;
            let mut out = vec![0.0f32; (d.out_channels * d.out_h * d.out_w) as usize];
            let mut scratch = vec![0.0f32; conv_scratch_bytes(d).div_ceil(4) as usize];
            let pieces = case.pieces.abi();
            let w: *const u8 = case.section.0.as_ptr().cast();
            let flops = 2.0 * (oc as usize * ic * (k * k) as usize * (hw * hw) as usize) as f64;
            // The best of many runs: other processes on the machine only ever slow one down.
            let start = Instant::now();
            let (mut runs, mut best) = (0u32, f64::INFINITY);
            while runs < 3 || start.elapsed().as_secs_f64() < 0.3 {
                let t = Instant::now();
                // SAFETY: as in `run_conv`: a valid descriptor and buffers of its sizes.
                let status = unsafe {
                    kernel(
                        d,
                        pieces.as_ptr(),
                        out.as_mut_ptr(),
                        w,
                        scratch.as_mut_ptr().cast(),
                    )
                };
                best = best.min(t.elapsed().as_secs_f64());
                assert_eq!(status, abi::STATUS_OK);
                runs += 1;
            }
            eprintln!(
                "conv_throughput: {name} {what}: {:.1} GFLOP/s direct-equivalent ({:.1} us/image, best of {runs})",
                flops / best / 1e9,
                best * 1e6
            );
        }
    }
    Ok(())
}
